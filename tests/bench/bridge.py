"""MQTT bridge: bus → ``mqtt-bridge`` actor → Mosquitto → ``mosquitto_sub``, at 1 000 msg/s.

Processes: the router, a private Mosquitto (`BROKER_OPTIONS`), the bridge (one rule,
``evt.bench.`` → ``sctl/bench/n`` at QoS 1, envelope form), a ``mosquitto_sub -q 1``
subscriber printing each message with its receipt time (``-F '%U %t %p'``: Unix time with
nanoseconds, taken by the C client), a paced ``bus-pub`` worker (`tests.bench.worker`:
``{"n", "p": 16 bytes}`` at `RATE` per second), and this process: a Bus subscribed to
``evt.bench.`` that notes when each message reaches a plain bus subscriber.

What the bridge adds: for each message, its MQTT receipt time - its bus receipt time (both on
this host's clock). Beside it, the whole path from the publisher's envelope ``ts`` to the MQTT
subscriber. A message published and never received over MQTT is lost; one received twice is a
duplicate (QoS 1 is at least once; there should be none without a reconnect). The bridge's CPU
is its user + system time over the run divided by the run's length.
"""

from __future__ import annotations

import json
import shutil
import time
from typing import Any, Final

from tests.bench.common import BenchError, Figure, Procs, Scale, cpu_seconds, percentile

RATE: Final = 1000
DRAIN: Final = 3.0  # seconds to wait after the publisher for the last messages
TOPIC: Final = "evt.bench.n"
# the broker never drops (no queue bound) and sends small packets at once (no Nagle delay
# towards the subscriber; the bridge sets TCP_NODELAY on its own side)
BROKER_OPTIONS: Final = "max_queued_messages 0\nset_tcp_nodelay true\n"


def bridge_site(procs: Procs, port: int) -> Any:
    return procs.site(
        f'[actors.bridge]\ntype = "mqtt-bridge"\nport = {port}\nbackoff_min = 0.2\n'
        f'backoff_max = 1.0\n[[actors.bridge.publish]]\ntopic = "evt.bench."\nqos = 1\n')


def run(scale: Scale) -> list[Figure]:
    from broker.client.bus import Bus
    from tests.support.mosquitto import Mosquitto

    seconds = scale.pick(30.0, 3.0)
    sub_binary = shutil.which("mosquitto_sub")
    if sub_binary is None:
        raise BenchError("mosquitto_sub is missing (Debian package mosquitto-clients)")
    with Procs() as procs:
        broker = Mosquitto(procs.folder / "mosquitto", extra=BROKER_OPTIONS)
        procs.callback(broker.stop)
        broker.start()
        site = bridge_site(procs, broker.port)
        procs.router(site)
        out = procs.start([sub_binary, "-p", str(broker.port), "-q", "1", "-F", "%U %t %p",
                           "-t", "sctl/bench/#", "-t", "sctl-bench/probe"],
                          "mosquitto_sub").log
        _wait_subscribed(broker.port, out)
        bridge = procs.sctl(site.path, "actor", "bridge", name="bridge")
        bus = Bus(site.router, "bench-bridge")
        bus.subscribe("evt.bench.")
        bus.subscribe("evt.bridge.link", gapless=False)
        if not bus.connect(wait=20):
            raise BenchError("the router did not answer the subscriber")
        try:
            _wait_link_up(bus, 30.0)
            cpu0, t0 = cpu_seconds(bridge.pid), time.monotonic()
            pub = procs.worker("bus-pub", "bus-pub", site=str(site.path), name="benchpub",
                               rate=RATE, seconds=seconds, size=16, topic=TOPIC)
            at_bus = _record(bus, pub, seconds + 60)
            sent = int(pub.result()["sent"])
            at_mqtt, dups = _wait_mqtt(out, sent, DRAIN)
            cpu = (cpu_seconds(bridge.pid) - cpu0) / (time.monotonic() - t0)
        finally:
            bus.close()
    return _figures(sent, at_bus, at_mqtt, dups, cpu)


def _wait_subscribed(port: int, out: Any) -> None:
    """Publish probes until mosquitto_sub has printed one: its subscription is live."""
    import subprocess

    pub = shutil.which("mosquitto_pub") or "mosquitto_pub"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        subprocess.run([pub, "-p", str(port), "-t", "sctl-bench/probe", "-m", "x"],
                       check=False, timeout=10, capture_output=True)
        time.sleep(0.2)
        if b"sctl-bench/probe" in out.read_bytes():
            return
    raise BenchError("mosquitto_sub never received its probe")


def _wait_link_up(bus: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for d in bus.poll(0.2):
            if d.topic == "evt.bridge.link" and d.envelope.data.get("state") == "up":
                return
    raise BenchError(f"the bridge's link to the broker was not up within {timeout:g} s")


def _record(bus: Any, pub: Any, timeout: float) -> dict[int, tuple[float, float]]:
    """n -> (envelope ts, bus receipt time) until the publisher is done and its count is in."""
    got: dict[int, tuple[float, float]] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        deliveries = bus.poll(0.05)
        now = time.time()
        for d in deliveries:
            if d.topic == TOPIC:
                env = d.envelope
                got[int(env.data["n"])] = (env.ts, now)
        if pub.popen.poll() is not None and not deliveries:
            return got
    raise BenchError("the publisher did not finish")


def _wait_mqtt(out: Any, sent: int, drain: float) -> tuple[dict[int, float], int]:
    """n -> MQTT receipt time, and how many came more than once; waits up to `drain` seconds
    after the last new arrival for all `sent`."""
    seen: dict[int, float] = {}
    dups = 0
    last_growth = time.monotonic()
    while True:
        seen, dups = _parse(out.read_bytes())
        if len(seen) >= sent or time.monotonic() - last_growth > drain:
            return seen, dups
        before = len(seen)
        time.sleep(0.2)
        if len(_parse(out.read_bytes())[0]) > before:
            last_growth = time.monotonic()


def _parse(raw: bytes) -> tuple[dict[int, float], int]:
    seen: dict[int, float] = {}
    dups = 0
    for line in raw.decode(errors="replace").splitlines():
        at, _, rest = line.partition(" ")
        topic, _, payload = rest.partition(" ")
        if topic != "sctl/bench/n":
            continue
        try:
            n = int(json.loads(payload)["data"]["n"])
            stamp = float(at)
        except (ValueError, KeyError, TypeError):
            continue
        if n in seen:
            dups += 1
        else:
            seen[n] = stamp
    return seen, dups


def _figures(sent: int, at_bus: dict[int, tuple[float, float]], at_mqtt: dict[int, float],
             dups: int, cpu: float) -> list[Figure]:
    both = [n for n in at_mqtt if n in at_bus]
    added = [at_mqtt[n] - at_bus[n][1] for n in both]
    whole = [at_mqtt[n] - at_bus[n][0] for n in both]
    lost = sent - len(at_mqtt)
    note = f"{len(at_mqtt)} of {sent} at {RATE}/s"
    return [
        Figure("bridge_added_p50_ms", "MQTT bridge: added (bus sub → MQTT sub) p50",
               percentile(added, 50) * 1000, "ms", None, "", note),
        Figure("bridge_added_p99_ms", "MQTT bridge: added p99", percentile(added, 99) * 1000,
               "ms", 5.0, "low"),
        Figure("bridge_added_max_ms", "MQTT bridge: added max", percentile(added, 100) * 1000,
               "ms"),
        Figure("bridge_e2e_p99_ms", "MQTT bridge: publisher → MQTT sub p99",
               percentile(whole, 99) * 1000, "ms"),
        Figure("bridge_lost", "MQTT bridge: lost at QoS 1", lost, "msgs", 0, "low"),
        Figure("bridge_duplicates", "MQTT bridge: duplicates", dups, "msgs"),
        Figure("bridge_cpu_pct", "MQTT bridge: actor CPU", cpu * 100, "%"),
    ]
