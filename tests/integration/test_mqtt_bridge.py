"""mqtt-bridge end to end, every part real: a Mosquitto broker, the router, an echo actor (the
target of MQTT commands) and the bridge (``sctl actor bridge``), with a `FaultProxy` between
the bridge and the broker to take the broker away from the bridge alone. The MQTT side is seen
by Mosquitto's own ``mosquitto_sub`` and driven by ``mosquitto_pub``; the bus side by a Bus
client. One stack for the module (starting it is most of the cost); each test uses its own
topics."""

from __future__ import annotations

import base64
import json
import os
import pwd
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.client.bus import Bus
from tests.support.certs import Pki, pki  # noqa: F401  (the fixture)
from tests.support.echo import EchoServer
from tests.support.hostile import FaultProxy
from tests.support.mosquitto import (  # noqa: F401  (the fixture)
    Mosquitto,
    logs_on_failure,
    mosquitto_factory,
)
from tests.support.mqtt_clients import MqttSub, Received, mqtt_pub
from tests.support.stack import Feed, Stack, free_port

TABLES = """
[actors.echo1]
type = "tests.support.actors:EchoActor"
port = {echo}
heartbeat_interval = 0.5

[actors.echo2]
type = "tests.support.actors:EchoActor"
port = {echo}
heartbeat_interval = 0.5

[actors.bridge]
type = "mqtt-bridge"
port = {proxy}
backoff_min = 0.2
backoff_max = 1.0
heartbeat_interval = 0.5
queue_max = 30
command_topic = "sctl/cmd"
command_timeout = 5.0
allow = {{ echo1 = ["add"], echo2 = ["add"] }}

[[actors.bridge.publish]]
topic = "evt.psu1."

[[actors.bridge.publish]]
topic = "evt.arr."
mqtt = "plant/{{actor}}/{{event}}"
payload = "data"
binary = "omit"
qos = 0

[[actors.bridge.publish]]
topic = "sys.alarm"
retain = true

[[actors.bridge.publish]]
topic = "evt.burst."
"""


class Site:
    def __init__(self, stack: Stack, broker: Mosquitto, proxy: FaultProxy, sub: MqttSub,
                 bus: Bus) -> None:
        self.stack, self.broker, self.proxy, self.sub, self.bus = stack, broker, proxy, sub, bus
        self.feed = Feed(bus)

    def link(self) -> str:
        return str(self.stack.ping("bridge")["link"]["state"])

    def wait_link(self, state: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.link() != state:
            assert time.monotonic() < deadline, f"bridge link never {state}"
            self.feed.poll(0.1)

    def counters(self) -> dict[str, Any]:
        """The bridge's counters from its next heartbeat."""
        hb = self.feed.wait("hb.bridge", after=len(self.feed.seen))
        counters: dict[str, Any] = hb["counters"]
        return counters


SITE_FOLDERS: list[Path] = []  # the module's site, for `process_logs`


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("bridge")
    SITE_FOLDERS.append(folder)
    broker = Mosquitto(folder / "mosquitto").start()
    proxy = FaultProxy(broker.port)
    echo = EchoServer().start()
    stack = Stack(folder, TABLES.format(echo=echo.port, proxy=proxy.port))
    sub = MqttSub(broker.port, ["sctl/#", "plant/#"], folder / "sub.txt")
    try:
        stack.start_router()
        bus = stack.client("cmd.echo1", "hb.bridge", "log.bridge")
        stack.start_actor("echo1")
        stack.start_actor("bridge")
        sub.start()
        s = Site(stack, broker, proxy, sub, bus)
        s.wait_link("up")
        yield s
    finally:
        sub.stop()
        stack.stop()
        proxy.close()
        echo.stop()
        broker.stop()


@pytest.fixture(autouse=True)
def process_logs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    """A failed test shows the logs of the router, the actors and Mosquitto (the module's site
    and its own)."""
    with logs_on_failure(request, tmp_path, *SITE_FOLDERS):
        yield


def test_bus_messages_arrive_as_json_on_their_mqtt_topics(site: Site, tmp_path: Path) -> None:
    site.bus.publish("evt.psu1.volt", "event", {"volt": 12.5, "raw": b"\x01\x02\xff"})
    site.bus.publish("evt.arr.spectrum", "event",
                     {"dtype": "<u2", "shape": [2], "data": b"\x01\x00\x02\x00", "n": 7})
    site.bus.publish("sys.alarm", "system", {"alarm": "outbox_overflow", "source": "dev1"})
    assert site.bus.flush(10)
    got = site.sub.wait(lambda m: {x.topic for x in m} >= {
        "sctl/psu1/volt", "plant/arr/spectrum", "sctl/sys/alarm"}, what="three messages")
    volt = next(m for m in got if m.topic == "sctl/psu1/volt").json()
    assert volt["topic"] == "evt.psu1.volt" and volt["src"] == "tester"
    assert volt["kind"] == "event" and volt["gseq"] > 0 and volt["ts"] > 0
    assert volt["data"] == {"volt": 12.5, "raw": base64.b64encode(b"\x01\x02\xff").decode()}
    # payload = "data", binary = "omit": the map alone, the binary key left out
    assert next(m for m in got if m.topic == "plant/arr/spectrum").json() == \
        {"dtype": "<u2", "shape": [2], "n": 7}
    # retain = true: a subscriber that comes later still gets the last alarm
    late = MqttSub(site.broker.port, ["sctl/sys/alarm"], tmp_path / "late.txt").start()
    try:
        alarm = late.wait(lambda m: bool(m), what="the retained alarm")[0].json()
    finally:
        late.stop()
    assert alarm["data"] == {"alarm": "outbox_overflow", "source": "dev1"}


def replies(site: Site, after: int) -> list[dict[str, Any]]:
    return [{**m.json(), "on": m.topic} for m in site.sub.messages()[after:]
            if m.topic.startswith("sctl/reply/")]


def test_mqtt_commands_run_only_when_allowed_and_always_get_a_reply(site: Site) -> None:
    mark, bus_mark = len(site.sub.messages()), len(site.feed.seen)
    mqtt_pub(site.broker.port, "sctl/cmd/echo1",
             json.dumps({"command": "add", "args": {"a": 2, "b": 3}, "id": "c1"}))
    mqtt_pub(site.broker.port, "sctl/cmd/echo1", b"{not json")
    mqtt_pub(site.broker.port, "sctl/cmd/echo1", json.dumps({"command": "crash", "id": "c2"}))
    mqtt_pub(site.broker.port, "sctl/cmd/echo9", json.dumps({"command": "add", "id": "c3"}))
    # a retained command runs when it is sent, but the broker's replay of it at the next
    # (re)subscription is refused: it would run again at every reconnect
    mqtt_pub(site.broker.port, "sctl/cmd/echo1",
             json.dumps({"command": "add", "args": {"a": 1}, "id": "c4"}), retain=True)
    site.sub.wait(lambda m: len(replies(site, mark)) >= 5, what="five replies")
    site.proxy.refuse()
    site.wait_link("down")
    site.proxy.accept_again()
    site.wait_link("up")
    # the same id again (an MQTT redelivery): answered from the bridge's memory, not run again
    mqtt_pub(site.broker.port, "sctl/cmd/echo1",
             json.dumps({"command": "add", "args": {"a": 2, "b": 3}, "id": "c1"}))
    # (QoS 1 is at least once: a reply in flight when the link broke may come twice)
    site.sub.wait(lambda m: len([r for r in replies(site, mark) if r["id"] == "c1"]) >= 2
                  and any("retained" in r["error"] for r in replies(site, mark)),
                  what="the repeat and the replay")
    by_id: dict[Any, list[dict[str, Any]]] = {}
    for r in replies(site, mark):
        by_id.setdefault(r["id"], []).append(r)
    assert {r["status"] for r in by_id["c1"]} == {"ok"}
    assert {r["result"] for r in by_id["c1"]} == {5}
    assert "not JSON" in by_id[None][0]["error"]
    assert "'crash' on 'echo1' is not allowed" in by_id["c2"][0]["error"]
    assert "'echo9' is not allowed" in by_id["c3"][0]["error"]
    assert by_id["c3"][0]["on"] == "sctl/reply/echo9"
    assert by_id["c4"][0]["status"] == "ok" and "retained" in by_id["c4"][-1]["error"]
    mqtt_pub(site.broker.port, "sctl/cmd/echo1", b"", retain=True)  # clear the retained one
    # on the bus: one command (add, once), and a WARNING for each refusal
    site.feed.drain(0.5)
    commands = {d["command"] for t, d in site.feed.seen[bus_mark:] if t == "cmd.echo1"}
    assert commands == {"add"}
    runs = site.bus.request("echo1", "runs", timeout=10).data["result"]
    assert sorted(runs.values()) == [1, 1]  # c1 (once, though asked twice) and c4
    warnings = [d["message"] for t, d in site.feed.seen[bus_mark:] if t == "log.bridge"]
    assert len([w for w in warnings if "MQTT command for" in w]) == 4, warnings  # not JSON, crash,
    # echo9, the replayed retained one


def test_while_the_broker_is_away_messages_wait_and_overflow_is_counted(site: Site) -> None:
    site.proxy.refuse()
    site.wait_link("down")
    for n in range(40):  # queue_max = 30: the 10 oldest go
        site.bus.publish("evt.burst.n", "event", {"n": n})
    assert site.bus.flush(10)
    deadline = time.monotonic() + 10
    while (counters := site.counters())["queued"] < 30:
        assert time.monotonic() < deadline, counters
    assert counters["dropped"] >= 10
    site.proxy.accept_again()
    got = site.sub.wait(lambda m: len([x for x in m if x.topic == "sctl/burst/n"]) >= 30,
                        what="the 30 queued messages")
    assert [m.json()["data"]["n"] for m in got if m.topic == "sctl/burst/n"] == \
        list(range(10, 40))
    site.wait_link("up")
    warnings = [d["message"] for t, d in site.feed.seen if t == "log.bridge"]
    assert any("queue full" in w for w in warnings), warnings


TLS_TABLES = """
[actors.good]
type = "mqtt-bridge"
port = {port}
backoff_min = 0.2
backoff_max = 1.0
tls = {{ ca = "{ca}", cert = "{client.cert}", key = "{client.key}" }}
[[actors.good.publish]]
topic = "evt.dev2."

[actors.rogue]
type = "mqtt-bridge"
port = {port}
backoff_min = 0.2
backoff_max = 1.0
tls = {{ ca = "{rogue}", cert = "{client.cert}", key = "{client.key}" }}
[[actors.rogue.publish]]
topic = "evt.dev2."
"""


def test_over_tls_and_a_broker_it_cannot_trust_is_a_link_down_saying_why(
        pki: Pki, mosquitto_factory: Callable[..., Mosquitto], stack: Stack,  # noqa: F811
        tmp_path: Path) -> None:
    port = free_port()  # the TLS listener; the first, plain one serves mosquitto_sub
    user = pwd.getpwuid(os.geteuid()).pw_name  # mosquitto as root would drop to its own user
    broker = mosquitto_factory(extra=(
        f"user {user}\nlistener {port} 127.0.0.1\n"
        f"cafile {pki.ca.cert}\ncertfile {pki.server.cert}\nkeyfile {pki.server.key}\n"
        "require_certificate true\n"))
    stack.write(TLS_TABLES.format(port=port, ca=pki.ca.cert, rogue=pki.rogue_ca.cert,
                                  client=pki.client))
    stack.start_router()
    feed = stack.watch("evt.rogue.link")
    sub = MqttSub(broker.port, ["sctl/#"], tmp_path / "sub.txt").start()
    try:
        stack.start_actor("good")
        stack.start_actor("rogue")
        deadline = time.monotonic() + 30
        while stack.ping("good")["link"]["state"] != "up":
            assert time.monotonic() < deadline, stack.output("good")[-2000:]
            time.sleep(0.1)
        stack.client(name="pub").publish("evt.dev2.x", "event", {"v": 1})
        [got] = sub.wait(lambda m: bool(m), what="the message over TLS")
        assert got.topic == "sctl/dev2/x" and got.json()["data"] == {"v": 1}
        down = feed.wait("evt.rogue.link", lambda d: d["state"] == "down", timeout=30)
        assert "TLS handshake failed" in down["reason"], down
        assert "certificate verify failed" in down["reason"], down
    finally:
        sub.stop()


def test_a_command_for_an_actor_known_to_be_down_gets_its_error_at_once(site: Site) -> None:
    """echo2 is allowed but not running: never started, then started (its commands run), then
    stopped. While down its commands are answered at once, not after their 20 s timeout."""
    timeout = 20.0
    mark, bus_mark = len(site.sub.messages()), len(site.feed.seen)

    def ask(ident: str) -> tuple[float, dict[str, Any]]:
        sent = time.time()
        mqtt_pub(site.broker.port, "sctl/cmd/echo2", json.dumps(
            {"command": "add", "args": {"a": 1, "b": 1}, "id": ident, "timeout": timeout}))

        def answer(got: list[Received]) -> Received | None:
            """The reply in `got`, the very list `wait` looked at (the file grows meanwhile)."""
            return next((m for m in got[mark:] if m.topic == "sctl/reply/echo2"
                         and m.json()["id"] == ident), None)

        found = answer(site.sub.wait(lambda got: answer(got) is not None, timeout=2 * timeout,
                                     what=f"the reply to {ident}"))
        assert found is not None
        reply: dict[str, Any] = found.json()
        print(f"{ident}: {reply['status']} after {found.at - sent:.3f} s: {reply.get('error')}")
        return found.at - sent, reply

    # the bridge has listened to heartbeats long enough (3 s) to know echo2 never came
    while site.stack.ping("bridge")["uptime"] < 4.0:
        time.sleep(0.2)
    elapsed, never = ask("d1")
    assert never["status"] == "error", never
    assert never["error"].startswith("echo2 is down: never seen since this process started")
    assert elapsed < timeout / 2

    proc = site.stack.start_actor("echo2")
    try:
        site.stack.wait_ready("echo2")
        _, ran = ask("d2")
        assert ran["status"] == "ok" and ran["result"] == 2, ran
    finally:
        assert proc.stop() == 0
    for ident in ("d3", "d4"):  # its last heartbeat said "stopping"
        elapsed, stopped = ask(ident)
        assert stopped["status"] == "error", stopped
        assert stopped["error"].startswith("echo2 is down: stopping since "), stopped
        assert elapsed < timeout / 2
    deadline = time.monotonic() + 10
    # a heartbeat still on its way from before may lack the counter (sent before on_start)
    while (counters := site.counters()).get("commands_target_down", 0) < 3:
        assert time.monotonic() < deadline, counters
    assert counters["commands_target_down"] == 3
    site.feed.drain(0.5)
    warnings = [d["message"] for t, d in site.feed.seen[bus_mark:] if t == "log.bridge"]
    # one WARNING per episode (never seen; stopped), not one per command
    assert len([w for w in warnings if "echo2 is down" in w]) == 2, warnings
