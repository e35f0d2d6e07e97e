"""Figure 2: latency, publish → delivery, at a paced 1 000 and 10 000 msg/s.

The publisher (its own process) paces to the rate; the envelope's ``ts`` is taken when
`Bus.publish` builds it, the subscriber notes the arrival time, and both run on this machine, so
``arrival - ts`` is the whole path: outbox, ZeroMQ, router journal and fan-out, gap checking.
The plain-proxy baseline carries the same bodies (``ts`` set the same way) and is measured
beside it in the same run. p50, p99 and max over every delivered message of a 30 s run per
rate and stack (30 000 and 300 000 messages): on this shared VM one stall of the host delays a
few hundred milliseconds of traffic, which over a 10 s run alone decided the p99 of either stack.
"""

from __future__ import annotations

from typing import Final

from tests.bench.common import Figure, Procs, Scale
from tests.bench.feeds import BusFeed, Tally, ZmqFeed, collect

SIZE: Final = 200
TOPIC: Final = "evt.bench.lat"


def full_stack(rate: int, seconds: float) -> tuple[Tally, int]:
    with Procs() as procs:
        site = procs.site()
        procs.router(site)
        feed = BusFeed(site.router, "evt.bench.")
        try:
            pub = procs.worker("bus-pub", "bus-pub", site=str(site.path), name="bench-lat",
                               topic=TOPIC, rate=rate, seconds=seconds, size=SIZE)
            tally = collect(feed.receive, Tally(keep_latency=True), int(rate * seconds), [pub],
                            timeout=seconds + 60)
            sent = int(pub.result()["sent"])
        finally:
            feed.close()
    return tally, sent


def baseline(rate: int, seconds: float) -> tuple[Tally, int]:
    with Procs() as procs:
        site = procs.site()
        ingress, egress = site.router.ingress, site.router.egress
        procs.worker("zmq-proxy", "zmq-proxy", ingress=ingress, egress=egress)
        feed = ZmqFeed(egress, "evt.bench.")
        try:
            pub = procs.worker("zmq-pub", "zmq-pub", url=ingress, topic=TOPIC, rate=rate,
                               seconds=seconds, size=SIZE)
            tally = collect(feed.receive, Tally(keep_latency=True), int(rate * seconds), [pub],
                            timeout=seconds + 60)
            sent = int(pub.result()["sent"])
        finally:
            feed.close()
    return tally, sent


def _rows(tag: str, rate: int, full: tuple[Tally, int], plain: tuple[Tally, int],
          target: float) -> list[Figure]:
    (full_t, sent), (plain_t, plain_sent) = full, plain
    note = f"plain proxy p50 {plain_t.latency_ms(50):.2f} / max {plain_t.latency_ms(100):.2f} ms"
    return [
        Figure(f"latency_p50_ms_{tag}", f"latency p50 at {rate}/s", full_t.latency_ms(50), "ms",
               None, "", note),
        Figure(f"latency_p99_ms_{tag}", f"latency p99 at {rate}/s", full_t.latency_ms(99), "ms",
               target, "low", f"{full_t.count}/{sent} delivered, lost {full_t.lost(sent)}, "
               f"out of order {full_t.backwards}"),
        Figure(f"latency_max_ms_{tag}", f"latency max at {rate}/s", full_t.latency_ms(100), "ms"),
        Figure(f"baseline_p99_ms_{tag}", f"plain proxy latency p99 at {rate}/s",
               plain_t.latency_ms(99), "ms", None, "",
               f"{plain_t.count}/{plain_sent} delivered, lost {plain_t.lost(plain_sent)}"),
    ]


def run(scale: Scale) -> list[Figure]:
    seconds = scale.pick(30.0, 2.0)
    out: list[Figure] = []
    for tag, rate, target in (("1k", 1000, 2.0), ("10k", 10_000, 10.0)):
        full = full_stack(rate, seconds)
        plain = baseline(rate, seconds)
        out += _rows(tag, rate, full, plain, target)
    return out

