"""``sctl metrics`` end to end on loopback: a real router, the instrument simulator and a
bus-link actor polling it, and the metrics program as an ``sctl`` process. Every metrics page
is read with prometheus_client's own parser; the HTTP side gets what a browser, Prometheus and
a hostile or stuck client send."""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import math
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.stack import Proc, Stack, sctl_cmd, subprocess_env, wait_for

TOKEN = "t0ken-for-the-test"
SITE = """
[actors.psu-sim]
type = "sim-instrument"
port = {port}
heartbeat_interval = 0.5

[actors.psu1]
type = "bus-link"
host = "127.0.0.1"
port = {port}
heartbeat_interval = 0.5

[[actors.psu1.poll]]
every = 0.1
command = "wrnrd_until"
args = ['MEAS:VOLT?\\n', '\\n']
event = "voltage"
"""
UP = re.compile(r"metrics up: http://([\d.]+):(\d+)/")
Families = dict[str, dict[tuple[tuple[str, str], ...], float]]


class Metrics:
    """A running ``sctl metrics`` and plain HTTP requests to it."""

    def __init__(self, stack: Stack, name: str, *args: str) -> None:
        self.proc = stack.spawn(name, "metrics", "--listen", "127.0.0.1:0", *args)
        def up() -> re.Match[str] | None:
            assert self.proc.popen is not None and self.proc.popen.poll() is None, \
                self.proc.output()
            return UP.search(self.proc.output())

        wait_for(up, 20, f"the metrics program's up line in {self.proc.log}")
        found = up()
        assert found is not None
        self.host, self.port = found.group(1), int(found.group(2))

    def request(self, path: str, method: str = "GET", headers: dict[str, str] | None = None
                ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request(method, path, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def scrape(self, headers: dict[str, str] | None = None) -> Families:
        """/metrics, every family checked by prometheus_client's parser and the naming rules."""
        status, _, body = self.request("/metrics", headers=headers)
        assert status == 200, body[:300]
        out: Families = {}
        for family in text_string_to_metric_families(body.decode()):
            assert family.name.startswith(("sctl_", "process_", "python_")), family.name
            if family.type == "counter":
                assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
            for s in family.samples:
                out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
        return out

    def status(self) -> dict[str, Any]:
        code, _, body = self.request("/api/status")
        assert code == 200
        result: dict[str, Any] = json.loads(body)
        return result


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("metrics"))
    try:
        stack.write(SITE.format(port=0))
        stack.start_router()
        stack.start_sim("instrument", "psu-sim")
        stack.write(SITE.format(port=stack.listening_port("psu-sim")))
        stack.start_actor("psu1")
        stack.wait_ready("psu1")
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def metrics(site: Stack) -> Metrics:
    return Metrics(site, "metrics")


def actor(families: Families, name: str, actor_name: str, **labels: str) -> float:
    """The sample's value; NaN (equal to nothing) when the page has no such sample."""
    key = tuple(sorted({"actor": actor_name, **labels}.items()))
    return families.get(name, {}).get(key, math.nan)


def test_metrics_follow_the_actors_and_the_router(site: Stack, metrics: Metrics) -> None:
    wait_for(lambda: actor(metrics.scrape(), "sctl_actor_up", "psu1") == 1, 10, "psu1 up")
    bus = site.client(name="metrics-tester")
    assert bus.request("psu1", "ping", timeout=5).data["status"] == "ok"
    assert bus.request("psu1", "no_such_command", timeout=5).data["status"] == "error"
    first = metrics.scrape()

    def outcomes() -> dict[str, float]:
        got = metrics.scrape()["sctl_actor_commands_total"]
        return {dict(k)["outcome"]: v for k, v in got.items() if dict(k)["actor"] == "psu1"}

    wait_for(lambda: outcomes().get("ok", 0) >= 1 and outcomes().get("error", 0) >= 1, 5,
             "psu1's next heartbeat counting the two commands")
    later = metrics.scrape()
    assert actor(later, "sctl_actor_link_state", "psu1", state="up") == 1
    assert actor(later, "sctl_actor_link_state", "psu1", state="down") == 0
    assert actor(later, "sctl_actor_heartbeat_age_seconds", "psu1") < 2
    assert actor(later, "sctl_actor_outbox_messages", "psu1") >= 0
    assert actor(later, "sctl_actor_outbox_dropped_total", "psu1") == 0
    assert actor(later, "sctl_actor_events_total", "psu1") > \
        actor(first, "sctl_actor_events_total", "psu1")
    assert actor(later, "sctl_event_latency_seconds_count", "psu1") > 0
    assert later["sctl_router_up"][()] == 1
    assert later["sctl_router_ingress_messages_total"][()] > 0
    assert later["sctl_router_subscribers"][()] >= 3
    assert later["sctl_router_journal_span_seconds"][()] > 0
    assert later["process_resident_memory_bytes"][()] < 100 * 2**20
    rows = {r["name"]: r for r in metrics.status()["programs"]}
    assert rows["psu1"]["state"] == "running" and rows["psu1"]["link"] == "up"
    assert rows["psu1"]["last_event"] == "evt.psu1.voltage"
    assert rows["router"]["state"] == "running"  # no supervisord here: the stats say so


def test_http_refuses_what_it_does_not_serve(metrics: Metrics) -> None:
    assert metrics.request("/nope")[0] == 404
    assert metrics.request("/metrics/../etc/passwd")[0] == 404
    assert metrics.request("/metrics", method="POST")[0] == 405
    assert metrics.request("/", method="BREW")[0] == 501
    # no token: a page elsewhere that points its own name at 127.0.0.1 gets nothing
    assert metrics.request("/api/status", headers={"Host": "evil.example:9570"})[0] == 403
    assert metrics.request("/api/status", headers={"Host": "localhost:9570"})[0] == 200
    code, headers, body = metrics.request("/")
    assert code == 200 and b"EventSource" in body
    assert "script-src 'sha256-" in headers["Content-Security-Policy"]
    for garbage in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 8,  # a TLS hello
                    b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", b"\r\n\r\n"):
        with socket.create_connection((metrics.host, metrics.port), timeout=5) as s:
            s.sendall(garbage)
            s.shutdown(socket.SHUT_WR)
            answer = b"".join(iter(lambda: s.recv(4096), b""))
            # nothing, or an error (http.server answers what it cannot parse as HTTP/0.9)
            assert b" 200 " not in answer and (
                not answer or re.search(rb"\b(400|414|431)\b", answer)), answer[:300]
    assert metrics.request("/metrics")[0] == 200  # still serving


def test_a_token_is_asked_for_on_every_path(site: Stack, tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    guarded = Metrics(site, "metrics-token", "--token-file", str(tmp_path / "token"))
    try:
        basic = base64.b64encode(f"prometheus:{TOKEN}".encode()).decode()
        for path in ("/", "/metrics", "/events", "/api/status", "/nope"):
            code, headers, _ = guarded.request(path)
            assert code == 401 and headers["WWW-Authenticate"].startswith("Basic"), path
            assert guarded.request(path, headers={"Authorization": "Bearer wrong"})[0] == 401
        assert guarded.request("/nope", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 404
        guarded.scrape({"Authorization": f"Bearer {TOKEN}"})
        guarded.scrape({"Authorization": f"Basic {basic}"})
    finally:
        guarded.proc.stop()


def test_it_refuses_to_listen_beyond_loopback_without_a_token(site: Stack,
                                                              tmp_path: Path) -> None:
    out = site.sctl("metrics", "--listen", "0.0.0.0:0", timeout=20)
    assert out.returncode == 2
    assert "metrics not started: metrics.token_file: is required to listen on 0.0.0.0:0 " \
           "(not a loopback address)" in out.stderr
    site_file = tmp_path / "site.toml"
    site_file.write_text(site.path.read_text() + '\n[metrics]\nlisten = "0.0.0.0:9570"\n')
    for command in (("check",), ("deploy", "render", "-o", str(tmp_path / "x.conf"))):
        checked = subprocess.run(sctl_cmd("-c", str(site_file), *command), env=subprocess_env(),
                                 capture_output=True, text=True, timeout=30)
        assert checked.returncode == 2 and "metrics.token_file: is required" in checked.stderr
    (tmp_path / "token").write_text(TOKEN + "\n")
    wide = Proc(sctl_cmd("-c", str(site.path), "metrics", "--listen", "0.0.0.0:0",
                         "--token-file", str(tmp_path / "token")), tmp_path / "wide.log").start()
    try:
        wait_for(lambda: "metrics up: http://0.0.0.0:" in wide.output(), 20, wide.output())
    finally:
        wide.stop()


def read_event(sock: socket.socket, buf: bytearray) -> dict[str, Any]:
    while b"\n\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, "the event stream ended"
        buf += chunk
    block, _, rest = bytes(buf).partition(b"\n\n")
    buf[:] = rest
    data = [ln[6:] for ln in block.split(b"\n") if ln.startswith(b"data: ")]
    if not data:  # the headers, a retry line or a keep-alive comment
        return read_event(sock, buf)
    result: dict[str, Any] = json.loads(b"".join(data))
    return result


def stream(metrics: Metrics, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket()
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect((metrics.host, metrics.port))
    s.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
    return s


def test_a_client_that_stops_reading_slows_nobody(site: Stack, metrics: Metrics) -> None:
    """A status page client that reads nothing: the bus thread never waits for it; the other
    clients keep getting the live state twice a second and scrapes keep answering; after its
    writes have waited `CLIENT_TIMEOUT` it is dropped."""
    stuck = stream(metrics, rcvbuf=4096)
    live = stream(metrics)
    flood = site.client(name="flood")
    buf = bytearray()
    seen: list[float] = []
    try:
        first = metrics.scrape()["sctl_metrics_deliveries_total"][()]
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < 4.0:
            for _ in range(20):  # big feed entries: the stuck client's buffers fill quickly
                n += 1
                flood.publish("evt.flood.data", "event", {"n": n, "pad": "x" * 180})
            flood.poll(0.02)
            state = read_event(live, buf)
            seen.append(state["time"])
        assert len(seen) >= 6, seen  # about two a second, the stuck client notwithstanding
        assert max(b - a for a, b in itertools.pairwise(seen)) < 1.5
        wait_for(lambda: metrics.scrape()["sctl_metrics_deliveries_total"][()] >= first + n, 5,
                 f"the metrics program receiving the {n} flood events")  # it kept up
        assert metrics.scrape()["sctl_metrics_web_clients"][()] == 2
        wait_for(lambda: metrics.scrape()["sctl_metrics_web_dropped_total"][()] >= 1, 15,
                 "the stuck client dropped")
    finally:
        stuck.close()
        live.close()
