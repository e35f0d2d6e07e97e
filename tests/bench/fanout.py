"""Fan-out: one publisher at 2 000 msg/s to 8 gap-free subscribers, latency against a plain proxy.

Two stacks in the same run, each with its own fresh broker process and the same envelope bodies
(200-byte payloads, ``data = {"n", "p"}``):

- **full stack**: a `Bus` publisher (outbox, acks) → ``sctl router`` (journal in memory) → 8
  `Bus` subscribers, each a gap-free subscription in its own process;
- **baseline**: plain PUB → `zmq.proxy` XSUB/XPUB → 8 plain SUBs, each in its own process.

Every subscriber is its own process (``python -m tests.bench.fanout ROLE 'JSON'``, like
`tests.bench.worker`), as 8 separate programs would be: they do not share a GIL with each other
or with the benchmark. Each records arrivals during the run (`tests.bench.feeds.Tally`: count,
order, ``arrival - envelope.ts``), says ``{"ready": true}`` once subscribed, and prints its
latencies and losses when the run is over. The figures pool the 8 subscribers' latencies:
p50, p99 and max publish → delivery, the ratio of the two stacks' p99, and the messages any
subscriber lost or got out of order.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Final

from tests.bench.common import Figure, Proc, Procs, Scale, percentile, wait_until
from tests.bench.feeds import BusFeed, Tally, ZmqFeed

RATE: Final = 2000
SUBSCRIBERS: Final = 8
SIZE: Final = 200
TOPIC: Final = "evt.bench.fan"
IDLE: Final = 3.0  # a subscriber stops after this long without a message, once some came
READY_TIMEOUT: Final = 30.0


def _subscribers(procs: Procs, role: str, args: dict[str, Any], expected: int) -> list[Proc]:
    subs = [procs.start([sys.executable, "-m", "tests.bench.fanout", role,
                         json.dumps({**args, "name": f"bench-fan{i}", "expected": expected})],
                        f"{role}{i}") for i in range(SUBSCRIBERS)]
    wait_until(lambda: all('"ready"' in s.output() for s in subs), READY_TIMEOUT,
               f"{SUBSCRIBERS} subscribers to subscribe")
    return subs


def full_stack(seconds: float) -> tuple[list[dict[str, Any]], int]:
    expected = int(RATE * seconds)
    with Procs() as procs:
        site = procs.site()
        procs.router(site)
        subs = _subscribers(procs, "bus-sub", {"site": str(site.path)}, expected)
        pub = procs.worker("bus-pub", "bus-pub", site=str(site.path), name="bench-fan",
                           topic=TOPIC, rate=RATE, seconds=seconds, size=SIZE)
        sent = int(pub.result()["sent"])
        return [s.result(timeout=seconds + 120) for s in subs], sent


def baseline(seconds: float) -> tuple[list[dict[str, Any]], int]:
    expected = int(RATE * seconds)
    with Procs() as procs:
        site = procs.site()  # only for its fresh ports
        procs.worker("zmq-proxy", "zmq-proxy", ingress=site.router.ingress,
                     egress=site.router.egress)
        subs = _subscribers(procs, "zmq-sub", {"url": site.router.egress}, expected)
        pub = procs.worker("zmq-pub", "zmq-pub", url=site.router.ingress, topic=TOPIC,
                           rate=RATE, seconds=seconds, size=SIZE)
        sent = int(pub.result()["sent"])
        return [s.result(timeout=seconds + 120) for s in subs], sent


def _pooled(results: list[dict[str, Any]], p: float) -> float:
    return percentile([x for r in results for x in r["latency_ms"]], p)


def _lost(results: list[dict[str, Any]], sent: int) -> int:
    return sum(max(0, sent - (r["delivered"] - r["backwards"])) + r["backwards"]
               for r in results)


def run(scale: Scale) -> list[Figure]:
    seconds = scale.pick(30.0, 2.0)
    full, sent = full_stack(seconds)
    plain, plain_sent = baseline(seconds)
    full_p99, plain_p99 = _pooled(full, 99), _pooled(plain, 99)
    ratio = full_p99 / plain_p99 if plain_p99 > 0 else float("nan")
    return [
        Figure("fanout_p99_ms", f"{RATE}/s to {SUBSCRIBERS} subscribers, latency p99",
               full_p99, "ms", None, "", f"p50 {_pooled(full, 50):.2f} / max "
               f"{_pooled(full, 100):.2f} ms, {sum(r['delivered'] for r in full)}/"
               f"{sent * SUBSCRIBERS} delivered"),
        Figure("fanout_lost", f"{SUBSCRIBERS} subscribers, lost or out of order",
               _lost(full, sent), "msgs", 0, "low"),
        Figure("fanout_baseline_p99_ms", "plain proxy to 8 SUBs, latency p99", plain_p99,
               "ms", None, "", f"p50 {_pooled(plain, 50):.2f} ms, lost "
               f"{_lost(plain, plain_sent)} (its HWM)"),
        Figure("fanout_p99_ratio", "fan-out p99, full stack / plain proxy", ratio, "ratio",
               2.0, "low"),
    ]


# -- the subscriber processes --------------------------------------------------------------

def subscribe(role: str, a: dict[str, Any]) -> dict[str, Any]:
    """One subscriber: record until `expected` arrived or `IDLE` s passed without a message."""
    if role == "bus-sub":
        from broker.config import load_site

        feed: BusFeed | ZmqFeed = BusFeed(load_site(a["site"]).router, "evt.bench.", a["name"])
    else:
        feed = ZmqFeed(a["url"], "evt.bench.")
    print(json.dumps({"ready": True}), flush=True)
    tally = Tally(keep_latency=True)
    cpu = time.process_time()
    expected = int(a["expected"])
    last = time.monotonic()
    deadline = last + float(a.get("timeout", 600))
    try:
        while tally.count < expected and time.monotonic() < deadline:
            if feed.receive(tally):
                last = time.monotonic()
            elif tally.count and time.monotonic() - last > IDLE:
                break
    finally:
        feed.close()
    return {"delivered": tally.count, "backwards": tally.backwards,
            "cpu_s": time.process_time() - cpu,
            "latency_ms": [round(x * 1000, 3) for x in tally.latency]}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("bus-sub", "zmq-sub"):
        print("usage: python -m tests.bench.fanout {bus-sub,zmq-sub} 'JSON'", file=sys.stderr)
        return 2
    print(json.dumps(subscribe(argv[0], json.loads(argv[1]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
