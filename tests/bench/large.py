"""Big payloads: 256 KiB and 4 MiB events, the library's path against a plain `zmq.proxy`.

A beamline's SPEC arrays (MCA spectra, 1024 x 1024 16-bit detector frames) are single events of
hundreds of KiB to several MiB. Each size runs on two stacks in the same run, each with its own
fresh broker process and the same envelope bodies (`tests.bench.worker.body` for the plain
publisher, `Bus.publish` for the library's, ``data = {"n": n, "p": payload}``):

- **full stack**: `Bus` publisher (outbox, acks) → ``sctl router`` with its journal in a file
  in a temp folder → gap-checking `Bus` subscriber; zero loss checked by count and order;
- **baseline**: plain PUB → `zmq.proxy` XSUB/XPUB → plain SUB (its HWM drops counted).

Throughput: the publisher sends as fast as it may (the Bus publisher keeps at most `OUTBOX_SHARE`
bytes unacknowledged, so its bounded outbox never has to give way); the rate is measured at the
subscriber, first to last arrival, in MB/s (10^6 bytes of payload a second). The ratio full /
baseline is what counts. Latency: 4 MiB events paced at 5 a second, publish → delivery
(``arrival - envelope.ts``; one machine, one clock), p99 over the run, the baseline beside it.

The subscriber keeps only a copy of the head of each body it receives (`HEAD` bytes: the
envelope's fields and ``data.n``, which every encoder writes before the payload), so a run of a
GiB does not sit in the benchmark's memory, on either stack; the count, order and latency
checks read those heads after the run.
"""

from __future__ import annotations

from typing import Any, Final

import msgpack

from broker.memory import tune_malloc
from tests.bench.common import Figure, Procs, Scale
from tests.bench.feeds import BusFeed, Tally, ZmqFeed, collect

TOPIC: Final = "evt.bench.big"
KIB: Final = 1024
MIB: Final = 1024 * KIB
SIZES: Final = (("256k", 256 * KIB), ("4m", 4 * MIB))
OUTBOX_SHARE: Final = 64 * MIB  # unacknowledged bytes the Bus publisher keeps at most
HEAD: Final = 256  # bytes of each body kept: the envelope head and data.n, not the payload
LATENCY_RATE: Final = 5  # 4 MiB frames a second, a detector's pace
ROUTER_EXTRA = ""  # more [router] settings (a comparison run sets the old defaults here)


class HeadTally(Tally):
    """A `Tally` that records only the first `HEAD` bytes of each body and reads the envelope's
    src, ts and ``data.n`` from them afterwards, without the payload."""

    def add(self, body: bytes | memoryview, now: float) -> None:
        # a copy: a slice of the Bus's memoryview body would keep the whole received frame
        # alive, and the subscriber would then pay fresh pages for every frame it receives
        # while the baseline's SUB reuses the memory of the bodies it drops
        super().add(bytes(body[:HEAD]), now)

    @staticmethod
    def fields(body: bytes | memoryview) -> tuple[str, float, int]:
        return head_fields(body)


def head_fields(head: bytes | memoryview) -> tuple[str, float, int]:
    """(src, ts, data.n) from the first bytes of an envelope body whose data map starts with n."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(head)
    found: dict[str, Any] = {}
    for _ in range(unpacker.read_map_header()):
        key = unpacker.unpack()
        if key != "data":
            found[key] = unpacker.unpack()
            continue
        unpacker.read_map_header()
        if unpacker.unpack() == "n":
            return found["src"], found["ts"], unpacker.unpack()
        break
    raise ValueError("no data.n at the head of the body")


def full_stack(size: int, count: int = 0, rate: float = 0, seconds: float = 0) -> dict[str, Any]:
    """Bus → router (journal file) → Bus; `count` as fast as allowed, or `rate`/s for
    `seconds`."""
    expected = count or int(rate * seconds)
    with Procs() as procs:
        site = procs.site(router='journal_path = "journal.bin"\n' + ROUTER_EXTRA)
        procs.router(site)
        feed = BusFeed(site.router, "evt.bench.")
        try:
            pub = procs.worker("bus-pub", "bus-pub", site=str(site.path), name="bench-big",
                               topic=TOPIC, count=count, rate=rate, seconds=seconds, size=size,
                               window=max(2, OUTBOX_SHARE // size))
            tally = collect(feed.receive, HeadTally(keep_latency=rate > 0), expected, [pub],
                            timeout=300)
            sent = pub.result()
        finally:
            feed.close()
    return {"tally": tally, "sent": sent, **tally.summary(int(sent["sent"]))}


def baseline(size: int, count: int = 0, rate: float = 0, seconds: float = 0) -> dict[str, Any]:
    expected = count or int(rate * seconds)
    with Procs() as procs:
        site = procs.site()  # only for its fresh ports
        ingress, egress = site.router.ingress, site.router.egress
        proxy = procs.worker("zmq-proxy", "zmq-proxy", ingress=ingress, egress=egress)
        feed = ZmqFeed(egress, "evt.bench.")
        try:
            pub = procs.worker("zmq-pub", "zmq-pub", url=ingress, topic=TOPIC, count=count,
                               rate=rate, seconds=seconds, size=size)
            tally = collect(feed.receive, HeadTally(keep_latency=rate > 0), expected, [pub],
                            timeout=300)
            sent = pub.result()
        finally:
            feed.close()
        proxy.stop()
    return {"tally": tally, "sent": sent, **tally.summary(int(sent["sent"]))}


def _mbs(run: dict[str, Any], size: int) -> float:
    return float(run["rate"]) * size / 1e6


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def _throughput(tag: str, size: int, count: int) -> list[Figure]:
    full = full_stack(size, count)
    plain = baseline(size, count)
    full_mbs, plain_mbs = _mbs(full, size), _mbs(plain, size)
    return [
        Figure(f"large_{tag}_mbs", f"{tag} events, full stack (journal file)", full_mbs, "MB/s",
               None, "", f"{full['delivered']}/{count} delivered, {full['rate']:.0f} msg/s, "
               f"resent {full['sent']['resent']}"),
        Figure(f"large_{tag}_lost", f"{tag} events, full stack lost or out of order",
               full["lost"] + full["backwards"], "msgs", 0, "low"),
        Figure(f"large_{tag}_baseline_mbs", f"{tag} events, PUB → zmq.proxy → SUB", plain_mbs,
               "MB/s", None, "", f"{plain['delivered']}/{count} delivered, dropped "
               f"{plain['lost']} (its HWM)"),
        Figure(f"large_{tag}_ratio", f"{tag} events, full stack / baseline",
               _ratio(full_mbs, plain_mbs), "ratio", 0.5, "high"),
    ]


def _latency(seconds: float) -> list[Figure]:
    size = 4 * MIB
    full = full_stack(size, rate=LATENCY_RATE, seconds=seconds)
    plain = baseline(size, rate=LATENCY_RATE, seconds=seconds)
    ft, pt = full["tally"], plain["tally"]
    return [
        Figure("large_4m_p99_ms", f"4m events at {LATENCY_RATE}/s, latency p99",
               ft.latency_ms(99), "ms", 50.0, "low",
               f"p50 {ft.latency_ms(50):.1f} / max {ft.latency_ms(100):.1f} ms; "
               f"{full['delivered']}/{full['sent']['sent']} delivered, lost {full['lost']}"),
        Figure("large_4m_paced_lost", f"4m events at {LATENCY_RATE}/s, lost or out of order",
               full["lost"] + full["backwards"], "msgs", 0, "low"),
        Figure("large_4m_baseline_p99_ms", f"4m events at {LATENCY_RATE}/s, plain proxy p99",
               pt.latency_ms(99), "ms", None, "",
               f"p50 {pt.latency_ms(50):.1f} ms; {plain['delivered']}/{plain['sent']['sent']} "
               "delivered"),
    ]


def run(scale: Scale) -> list[Figure]:
    # The subscribers run in this process: the Bus's as an actor's would (`tune_malloc`), and
    # the baseline's SUB with the same settings, which can only help the baseline.
    tune_malloc()
    counts = {"256k": scale.pick(2000, 60), "4m": scale.pick(150, 8)}
    out: list[Figure] = []
    for tag, size in SIZES:
        out += _throughput(tag, size, counts[tag])
    return out + _latency(scale.pick(30.0, 2.0))
