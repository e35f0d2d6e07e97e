"""Figure 6: footprint and scale.

- **idle actor RSS**: the ``springcore-tcp`` reader connected to its (silent) simulator, read
  from /proc after it has been up a few seconds;
- **router RSS with a full journal**: ``journal_max_messages = 100000``, filled with more than
  that many 200-byte envelopes (so eviction has run), RSS read once every one is acked;
- **scale**: `PUBLISHERS` publisher processes, each a `Bus` pacing to `RATE` msg/s, into one
  router for `SECONDS`, one `Bus` subscriber checking every sender's ``n`` for count and order;
  the router's CPU share is its user+system CPU time over the wall time of the run (100 % = one
  core).
"""

from __future__ import annotations

import time
from typing import Final

from tests.bench.common import BenchError, Figure, Procs, Scale, cpu_seconds, rss_mb, wait_until
from tests.bench.device import reader_site
from tests.bench.feeds import BusFeed, Tally, collect

JOURNAL: Final = 100_000
SIZE: Final = 200
TICK: Final = 0.01  # each scale publisher wakes 100 times/s (5 messages per wake-up at 500/s)


def actor_rss(scale: Scale) -> float:
    from broker.client.bus import Bus

    with Procs() as procs:
        site = reader_site(procs, 0)
        procs.router(site)
        procs.sctl(site.path, "actor", "door", name="door")
        reader = procs.sctl(site.path, "actor", "reader", name="reader")
        bus = Bus(site.router, "bench-rss")
        if not bus.connect(wait=20):
            raise BenchError("the router did not answer")
        try:
            wait_until(lambda: bus.request("reader", "ping", timeout=5.0).data["result"][
                "link"]["state"] == "up", 30, "the reader's link up")
        finally:
            bus.close()
        time.sleep(scale.pick(3.0, 0.5))  # idle: heartbeats only
        return rss_mb(reader.pid)


def router_rss(scale: Scale) -> tuple[float, int]:
    count = scale.pick(JOURNAL + 10_000, 5_000)
    with Procs() as procs:
        site = procs.site(router=f"journal_max_messages = {JOURNAL}\n")
        router = procs.router(site)
        pub = procs.worker("bus-pub", "bus-pub", site=str(site.path), name="bench-fill",
                           topic="evt.bench.fill", count=count, size=SIZE)
        sent = pub.result()
        if not sent["flushed"]:
            raise BenchError(f"the journal fill was not acknowledged: {sent}")
        return rss_mb(router.pid), count


def scale_run(scale: Scale) -> tuple[Tally, int, float, int, int, float]:
    publishers = scale.pick(20, 3)
    rate = scale.pick(500, 200)
    seconds = scale.pick(60.0, 3.0)
    with Procs() as procs:
        site = procs.site()
        router = procs.router(site)
        feed = BusFeed(site.router, "evt.scale.")
        try:
            cpu0, t0 = cpu_seconds(router.pid), time.monotonic()
            pubs = [procs.worker("bus-pub", f"scale-pub{i}", site=str(site.path),
                                 name=f"scale-pub{i}", topic=f"evt.scale.p{i}", rate=rate,
                                 seconds=seconds, size=SIZE, tick=TICK)
                    for i in range(publishers)]
            expected = int(rate * seconds) * publishers
            tally = collect(feed.receive, Tally(), expected, pubs, timeout=seconds + 120)
            share = (cpu_seconds(router.pid) - cpu0) / (time.monotonic() - t0)
            sent = sum(int(p.result()["sent"]) for p in pubs)
        finally:
            feed.close()
    return tally, sent, share, publishers, rate, seconds


def run(scale: Scale) -> list[Figure]:
    actor = actor_rss(scale)
    router, filled = router_rss(scale)
    tally, sent, share, publishers, rate, seconds = scale_run(scale)
    lost = tally.lost(sent) + tally.backwards
    return [
        Figure("actor_rss_mb", "RSS of an idle actor (springcore-tcp)", actor, "MiB", 40, "low"),
        Figure("router_rss_mb", f"router RSS, journal bound {JOURNAL:,} msgs", router, "MiB",
               150, "low", f"{filled:,} envelopes of {SIZE}-byte payload published"),
        Figure("scale_lost", f"{publishers} publishers x {rate}/s x {seconds:g} s: lost",
               lost, "msgs", 0, "low", f"{tally.count}/{sent} delivered"),
        Figure("scale_router_cpu", "router CPU share during the scale run", share * 100, "%",
               None, "", "100 % = one core"),
    ]
