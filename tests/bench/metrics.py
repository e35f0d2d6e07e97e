"""Figure 7: the metrics program (``sctl metrics``) under a site of `ACTORS` actors.

A load process (``python -m tests.bench.metrics load 'JSON'``, its own process and GIL) plays
`ACTORS` actors: a heartbeat a second from each, with the counters and link a real actor sends,
and `EVENT_RATE` events a second spread over them. The site file names the same actors, so
every one has its series. The metrics program runs as ``sctl metrics`` on port 0, with
`PAGE_CLIENTS` status page clients connected to ``/events`` (reading as a browser does).

- **scrape**: ``GET /metrics`` `SCRAPES` times, one after another, each read to its end (the
  time a Prometheus scrape waits): p50, p99, max, and the page's size and sample count;
- **status JSON**: ``GET /api/status``, what each page client is sent twice a second;
- **RSS** of the metrics program at the end of the run (/proc), and its CPU share over the run.
"""

from __future__ import annotations

import http.client
import json
import re
import sys
import time
from typing import Any, Final

from tests.bench.common import (
    BenchError,
    Figure,
    Procs,
    Scale,
    cpu_seconds,
    percentile,
    rss_mb,
    wait_until,
)

ACTORS: Final = 50
EVENT_RATE: Final = 1000  # events a second over all the actors
PAGE_CLIENTS: Final = 2
SCRAPES: Final = 200
UP: Final = re.compile(r"metrics up: http://127\.0\.0\.1:(\d+)/")


def site_tables(n: int) -> str:
    return "".join(f'[actors.a{i:02d}]\ntype = "bus-link"\nhost = "127.0.0.1"\nport = 9\n'
                   for i in range(n))


def heartbeat(name: str, n: int, started: float, now: float) -> dict[str, Any]:
    """What an actor's heartbeat holds (actors.core.actor.Actor._status), counters moving."""
    counters = dict.fromkeys((
        "published", "sent", "resent", "acked", "outbox_dropped", "alarms", "sync_probes",
        "router_restarts", "delivered", "gaps", "gap_filled", "lost", "duplicates",
        "bad_frames", "requests", "request_retries", "request_timeouts", "resets",
        "held_dropped", "denied", "commands", "command_ok", "command_errors",
        "command_duplicates", "command_expired", "callback_errors", "running"), 0)
    counters.update(events=n, published=n + 1, sent=n + 1, acked=n, outbox=1, commands=n // 10,
                    command_ok=n // 10)
    return {"type": "bus-link", "state": "running", "pid": 1000, "host": "bench",
            "version": "0.1.0", "uptime": now - started, "interval": 1.0,
            "config": {"actor": "0" * 16, "router": "1" * 16}, "counters": counters,
            "link": {"state": "up", "since": started, "reason": "connected to 127.0.0.1:9",
                     "down_since": None, "attempts": 0, "last_error": ""}}


def load(a: dict[str, Any]) -> dict[str, Any]:
    """The load role: heartbeats of `actors` names and `rate` events/s for `seconds`."""
    from broker.client.bus import Bus
    from broker.config import load_site

    site = load_site(a["site"])
    bus = Bus(site.router, "bench-actors", outbox_max_messages=1_000_000)
    if not bus.connect(wait=20):
        raise SystemExit("the router did not answer")
    names = [f"a{i:02d}" for i in range(int(a["actors"]))]
    rate, seconds = float(a["rate"]), float(a["seconds"])
    start = time.monotonic()
    wall0 = time.time()
    sent = beats = 0
    next_beat = start
    while (now := time.monotonic()) - start < seconds:
        if now >= next_beat:
            for name in names:
                bus.publish(f"hb.{name}", "heartbeat", heartbeat(name, sent, wall0, time.time()))
            beats += len(names)
            next_beat += 1.0
        due = int((now - start) * rate)
        while sent < due:
            name = names[sent % len(names)]
            bus.publish(f"evt.{name}.tag", "event", {"tag": f"{sent:014X}", "n": sent})
            sent += 1
        bus.poll(0.005)
    flushed = bus.flush(30.0)
    bus.close()
    return {"events": sent, "heartbeats": beats, "flushed": flushed}


class Client:
    def __init__(self, port: int) -> None:
        self.port = port

    def get(self, path: str) -> tuple[float, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            started = time.perf_counter()
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            took = time.perf_counter() - started
        finally:
            conn.close()
        if resp.status != 200:
            raise BenchError(f"GET {path}: HTTP {resp.status}")
        return took, body


def page_client(port: int) -> Any:
    """A status page client: /events, its stream read by a thread as a browser would."""
    import socket
    import threading

    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")

    def read() -> None:
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass

    threading.Thread(target=read, daemon=True).start()
    return sock


def run(scale: Scale) -> list[Figure]:
    seconds = scale.pick(25.0, 6.0)
    scrapes = scale.pick(SCRAPES, 20)
    with Procs() as procs:
        site = procs.site(site_tables(ACTORS))
        procs.router(site)
        metrics = procs.sctl(site.path, "metrics", "--listen", "127.0.0.1:0", name="metrics")
        wait_until(lambda: UP.search(metrics.output()), 20, "the metrics program's up line")
        up = UP.search(metrics.output())
        assert up is not None
        client = Client(int(up.group(1)))
        loader = procs.start([sys.executable, "-m", "tests.bench.metrics", "load", json.dumps(
            {"site": str(site.path), "actors": ACTORS, "rate": EVENT_RATE,
             "seconds": seconds})], "load")
        pages = [page_client(client.port) for _ in range(PAGE_CLIENTS)]
        try:
            wait_until(lambda: client.get("/metrics")[1].count(b"sctl_actor_up{") == ACTORS
                       and b'sctl_actor_heartbeat_age_seconds{actor="a49"}' in
                       client.get("/metrics")[1], 20, "every actor's heartbeat in /metrics")
            cpu0, t0 = cpu_seconds(metrics.pid), time.monotonic()
            time.sleep(scale.pick(10.0, 2.0))  # load on, page clients served, nobody scraping
            cpu = (cpu_seconds(metrics.pid) - cpu0) / (time.monotonic() - t0) * 100
            times, body = [], b""
            for _ in range(scrapes):
                took, body = client.get("/metrics")
                times.append(took * 1000)
            status_times = [client.get("/api/status")[0] * 1000 for _ in range(scrapes // 4)]
            rss = rss_mb(metrics.pid)
            sent = loader.result()
        finally:
            for sock in pages:
                sock.close()
    samples = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    note = f"{ACTORS} actors, {EVENT_RATE} events/s, {PAGE_CLIENTS} page clients"
    return [
        Figure("metrics_scrape_p50_ms", "metrics: /metrics scrape p50", percentile(times, 50),
               "ms", note=note),
        Figure("metrics_scrape_p99_ms", "metrics: /metrics scrape p99", percentile(times, 99),
               "ms", 50.0, "low"),
        Figure("metrics_scrape_max_ms", "metrics: /metrics scrape max", max(times), "ms"),
        Figure("metrics_scrape_kib", "metrics: /metrics page size", len(body) / 1024, "KiB",
               note=f"{samples} samples"),
        Figure("metrics_status_p99_ms", "metrics: /api/status p99",
               percentile(status_times, 99), "ms"),
        Figure("metrics_rss_mb", "metrics: program RSS under load", rss, "MiB", 40.0, "low"),
        Figure("metrics_cpu_pct", "metrics: program CPU, no scrape (% of a core)", cpu, "%",
               note=f"{sent['events']} events sent in the run"),
        Figure("metrics_writer_ratio", "metrics: prometheus_client writer / ours",
               writer_ratio(), "x", note="text format, same 50-actor families"),
    ]


def writer_ratio() -> float:
    """How much longer prometheus_client's text writer takes than `cli.ops.exposition` on the
    families of a 50-actor site (in this process: a ratio, not a scrape time)."""
    import tempfile
    from pathlib import Path

    from prometheus_client.exposition import generate_latest

    from broker.client.delivery import Delivery
    from broker.config import load_site
    from broker.wire import envelope
    from cli.ops.exposition import write
    from cli.ops.metrics import registry
    from cli.ops.monitor import SiteMonitor

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "site.toml"
        path.write_text(f'[router]\n{site_tables(ACTORS)}')
        monitor = SiteMonitor(load_site(path))
    now = time.time()

    def delivery(topic: str, data: dict[str, Any], ts: float) -> Delivery:
        return Delivery(topic, envelope.make("x", 1, 1, "event", data, ts=ts).encode(), 1, 1)

    monitor.feed([delivery(f"hb.a{i:02d}", heartbeat(f"a{i:02d}", 9, now - 60, now), now)
                  for i in range(ACTORS)] +
                 [delivery(f"evt.a{i % ACTORS:02d}.tag", {}, now - i % 7 / 1000)
                  for i in range(5000)], now, time.monotonic())
    families = list(registry(monitor).collect())

    class Fixed:
        def collect(self) -> list[Any]:
            return families

    def best(f: Any) -> float:
        times = []
        for _ in range(15):
            started = time.process_time()
            f()
            times.append(time.process_time() - started)
        return min(times)

    return best(lambda: generate_latest(Fixed())) / best(lambda: write(families))


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "load":
    print(json.dumps(load(json.loads(sys.argv[2]))), flush=True)
