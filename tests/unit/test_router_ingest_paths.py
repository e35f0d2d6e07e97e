"""The router's ingest shortcut agrees with its general path.

`Router._ingest` journals "the next seq of a known pair, on a kind its topic allows" directly,
without the sequencer's verdict (`Router._sequence`). A router whose `_hc_of` never matches takes
the general path for every message; fed the same random stream, both routers must journal the
same entries, hold the same per-source state, acknowledge the same pairs and count the same
things. No socket is opened: `_ingest` only fills the journal and the batch's pending frames.
"""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.config import RouterConfig
from broker.router.bad_input import BadInput
from broker.router.server import Router
from broker.wire import envelope

CONFIG = RouterConfig(ingress="tcp://127.0.0.1:1", egress="tcp://127.0.0.1:2",
                      query="tcp://127.0.0.1:3", journal_path=None, journal_max_messages=500,
                      journal_max_bytes=10**6, journal_fsync=False, max_message_bytes=4096,
                      egress_hwm=1000, stats_interval=1.0, gap_timeout=60.0)
SOURCES = ("a1", "b2", "router")
TOPICS = (  # (topic, kind): allowed pairs, kind mismatches, reserved and sync topics
    ("evt.a1.tag", "event"), ("evt.a1.tag", "log"), ("hb.a1", "heartbeat"), ("hb.a1", "event"),
    ("log.a1", "log"), ("cmd.a1", "command"), ("cmd.a1", "event"), ("rep.c1", "reply"),
    ("sys.alarm", "system"), ("sys.router.stats", "system"), ("ack.a1", "system"),
    ("ctl.sync", "system"),
)


def _body(src: str, epoch: int, seq: int, kind: str, n: int) -> bytes:
    extra: dict[str, Any] = {"id": f"m{n}", "ts": 1.0}
    data: dict[str, Any] = {"n": n}
    if kind == "command":
        extra.update(reply_to="rep.c1", deadline=2e9)
        data = {"command": "x", "args": {}}
    elif kind == "reply":
        extra["corr"] = "c"
        data = {"status": "ok"}
    elif kind == "system" and seq == 0:
        data = {"token": f"t{n}", "next": 1}
    return envelope.make(src, epoch, seq, kind, data, **extra).encode()


@st.composite
def streams(draw: st.DrawFn) -> list[list[bytes]]:
    """Mostly in-order streams per (src, epoch), with duplicates, skips, restarts at 1, seq 0
    probes, oversized and garbage bodies; an empty frame list ends a batch."""
    out: list[list[bytes]] = []
    next_seq: dict[tuple[str, int], int] = {}
    for n in range(draw(st.integers(1, 60))):
        src = draw(st.sampled_from(SOURCES))
        epoch = draw(st.sampled_from((1, 2)))
        topic, kind = draw(st.sampled_from(TOPICS))
        expected = next_seq.get((src, epoch), 1)
        seq = draw(st.sampled_from((expected, expected, expected, expected - 1, expected + 2,
                                    1, 0)))
        seq = max(seq, 0)
        if seq >= expected:
            next_seq[(src, epoch)] = seq + 1
        shape = draw(st.sampled_from(("ok", "ok", "ok", "ok", "garbage", "huge", "frames")))
        body = _body(src, epoch, seq, kind, n)
        if shape == "garbage":
            body = body[: len(body) // 2]
        elif shape == "huge":
            body = _body(src, epoch, seq, kind, n)[:-1] + msgpack.packb({"x": "y" * 5000})
        frames = [topic.encode(), body] if shape != "frames" else [topic.encode()]
        out.append(frames)
        if draw(st.integers(0, 3)) == 0:
            out.append([])
    return out


class Clock:
    """The routers' time, moved by the test: rate limits and resync requests then decide the
    same for both routers."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _router(general: bool, clock: Clock | None = None) -> Router:
    router = Router(CONFIG)
    router.router_epoch = router.journal.origin = 42  # both routers stamp alike
    router._sequencer._clock = clock or Clock()
    router._bad_input = BadInput(rate=1e9)  # every refusal reported, whatever the timing
    router.bad = router._bad_input.counts
    if general:
        router._hc_of = lambda key: None  # never "next": the general path
    return router


def _end_batch(router: Router, batches: list[Any]) -> None:
    """What `Router._finish_batch` acknowledges and sends, without its sockets."""
    pending = [(t, msgpack.unpackb(b)["data"], s) for t, b, s in router._pending]
    batches.append((sorted(router._touched), pending))
    router._touched.clear()
    router._pending.clear()


def _state(router: Router, batches: list[Any]) -> dict[str, Any]:
    journal = router.journal
    entries = []
    for gseq, topic, body in journal.scan(journal.first, journal.last + 1):
        env = envelope.decode(body)
        # the router's own envelopes carry fresh ids and times; compare what they say
        entries.append((gseq, topic, env.src, env.seq, env.data if env.src == "router" else body))
    _end_batch(router, batches)
    return {"entries": entries, "sources": sorted(journal.sources.snapshot()),
            "batches": batches, "counts": dict(router.counts), "bad": dict(router.bad)}


@settings(max_examples=200, deadline=None)
@given(streams())
def test_shortcut_and_general_path_journal_the_same(stream: list[list[bytes]]) -> None:
    clock = Clock()
    fast, general = _router(general=False, clock=clock), _router(general=True, clock=clock)
    batches: dict[Router, list[Any]] = {fast: [], general: []}
    for frames in stream:
        clock.now += 0.3
        for router in (fast, general):
            if frames:
                router._ingest(list(frames))
            else:
                _end_batch(router, batches[router])
    assert _state(fast, batches[fast]) == _state(general, batches[general])


def test_the_shortcut_is_taken() -> None:
    """Guards the test above: with `_hc_of` left alone, in-order events skip the sequencer."""
    router = _router(general=False)
    calls = []
    router._sequence = lambda *a, **k: calls.append(a)  # type: ignore[method-assign]
    router._ingest([b"evt.a1.tag", _body("a1", 1, 1, "event", 1)])  # first: general path
    router.journal.sources.put(("a1", 1), 1)
    router._ingest([b"evt.a1.tag", _body("a1", 1, 2, "event", 2)])
    assert len(calls) == 1 and len(router.journal) == 1
