"""Figure 3: device to subscriber. SpringCore simulator → ``springcore-tcp`` actor → router →
subscriber, at 100 tags/s.

Three real processes besides the router: the simulator (``sim-springcore-tcp`` with ``rate``
100: it writes one ``$SCRDR`` tag line every 10 ms to its connected client and publishes
``evt.door.sent`` right after the write), the reader actor (parses the line, publishes
``evt.reader.tag``) and this process, a `Bus` subscribed to both. The k-th ``sent`` is paired
with the k-th ``tag`` (both gap-free and in order; the simulator counts a tag it could not write
as ``evt.door.lost``, and any lost one is reported): latency = arrival of the tag - ``ts`` of
the simulator's ``sent`` envelope, i.e. TCP, parsing, the actor's publish and the router.
The subscriber connects before the reader starts, so it sees every tag from the first.
"""

from __future__ import annotations

import time
from typing import Any, Final

from tests.bench.common import BenchError, Figure, Procs, Scale, free_ports, percentile

RATE: Final = 100
DRAIN: Final = 0.3  # seconds of listening after the last counted tag


def reader_site(procs: Procs, rate: float) -> Any:
    """Router + door simulator + reader actor on fresh ports (the reader not started yet)."""
    (port,) = free_ports(1)
    return procs.site(
        f'[actors.door]\ntype = "sim-springcore-tcp"\nport = {port}\nrate = {rate}\n'
        f'[actors.reader]\ntype = "springcore-tcp"\nhost = "127.0.0.1"\nport = {port}\n')


def run(scale: Scale) -> list[Figure]:
    from broker.client.bus import Bus

    seconds = scale.pick(20.0, 3.0)
    with Procs() as procs:
        site = reader_site(procs, RATE)
        procs.router(site)
        procs.sctl(site.path, "actor", "door", name="door")
        bus = Bus(site.router, "bench-device")
        for prefix in ("evt.door.sent", "evt.door.lost", "evt.reader.tag"):
            bus.subscribe(prefix)
        if not bus.connect(wait=20):
            raise BenchError("the router did not answer the subscriber")
        try:
            procs.sctl(site.path, "actor", "reader", name="reader")
            sent: list[float] = []
            tags: list[float] = []
            lost = 0
            end = time.monotonic() + seconds + 20  # start-up included
            while time.monotonic() < end and len(tags) < RATE * seconds:
                lost += _take(bus.poll(0.1), sent, tags)
            drain = time.monotonic() + DRAIN
            while time.monotonic() < drain:
                lost += _take(bus.poll(0.05), sent, tags)
        finally:
            bus.close()
    if not tags:
        raise BenchError("no tag reached the subscriber")
    # a tag sent less than DRAIN before the end may still be on its way: not counted missing
    settled = sum(1 for ts in sent if ts < tags[-1] - DRAIN)
    missing = max(0, settled - len(tags)) + lost
    pairs = min(len(sent), len(tags))
    latency = [tags[k] - sent[k] for k in range(pairs)]
    note = f"{len(tags)} tags for {len(sent)} sent, {lost} reported lost by the simulator"
    return [Figure("device_p50_ms", "device → subscriber p50 at 100 tags/s",
                   percentile(latency, 50) * 1000, "ms", None, "", note),
            Figure("device_p99_ms", "device → subscriber p99 at 100 tags/s",
                   percentile(latency, 99) * 1000, "ms", 5.0, "low"),
            Figure("device_max_ms", "device → subscriber max", percentile(latency, 100) * 1000,
                   "ms"),
            Figure("device_lost", "device → subscriber: tags missing", missing, "tags", 0,
                   "low")]


def _take(got: list[Any], sent: list[float], tags: list[float]) -> int:
    """Sort one poll's deliveries: tag arrival times, the simulator's send times; returns how
    many tags the simulator reported lost."""
    lost = 0
    now = time.time()
    for d in got:
        if d.topic == "evt.reader.tag":
            tags.append(now)
        elif d.topic == "evt.door.sent":
            sent.append(d.envelope.ts)
        else:
            lost += 1
    return lost
