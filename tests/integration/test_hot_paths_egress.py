"""The fused receive path of a Bus gives exactly what its general path gives.

`Bus._drain_sub` reads a live message's frames unrolled and takes the next gseq in order against
the egress cursor (`Egress.cursor`, `Stream.cursor`) instead of calling `_on_frames` ->
`Egress.on_live` -> `Stream.take_next` for each, as every live message passes there. Here a real
socket carries any mix of in-order, gapped, duplicate, other-epoch, reply-topic, ack and malformed
messages; draining it must give the deliveries, counters, stream state, router epoch, sync state
and log lines that `_on_frames` gives fed one message at a time.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.client import bus as busmod
from broker.client.bus import Bus
from broker.client.delivery import Delivery
from broker.client.stream import Stream
from broker.config import RouterConfig
from broker.wire import envelope, topics
from tests.unit.test_hot_paths import stream_state

ROUTER = RouterConfig(ingress="tcp://127.0.0.1:1", egress="tcp://127.0.0.1:2",
                      query="tcp://127.0.0.1:3", journal_path=None, journal_max_messages=1000,
                      journal_max_bytes=10**6, journal_fsync=False, max_message_bytes=65536,
                      egress_hwm=1000, stats_interval=1.0, gap_timeout=1.0)
NAME = "me"
E1, E2 = 7, 8  # router epochs: the current one, and one of a router restart
_ports = itertools.count()


def stamp(epoch: int, gseq: int) -> bytes:
    return envelope.pack_stamp(epoch, gseq)


ACK_BODY = envelope.make("router", 1, 0, "system", {"epoch": 1, "seq": 3}).encode()
REQUEST_ID = "0" * 32  # of the command each Bus has out; a reply to it is not delivered
REPLY = envelope.make("reader1", 1, 1, "reply", {"status": "ok", "result": None, "error": ""},
                      corr=REQUEST_ID).encode()
# (topic, body, router epoch, gseq): gseq None is the one after the previous live message's,
# so that runs in order are common
live = st.tuples(st.sampled_from(["evt.a.x", "evt.a.y", "evt.b.x", topics.reply(NAME)]),
                 st.sampled_from([b"", b"x", REPLY]), st.sampled_from([E1] * 9 + [E2]),
                 st.none() | st.integers(1, 14))
SYNC_TOKEN = "t0"  # of the sync probe each Bus has out
# the answer to it: the stream of a Bus not started yet starts at head + 1 (mid-batch)
SYNC_BODY = envelope.make("router", 1, 0, "system", {
    "sync": SYNC_TOKEN, "head": 2, "first": 1, "router_epoch": E1, "origin": E1, "epoch": 0,
    "seq": 0}).encode()
odd = st.sampled_from([
    [topics.ack(NAME).encode(), ACK_BODY, stamp(E1, 0)],  # an ack: not ours, nothing to do
    [topics.ack(NAME).encode(), SYNC_BODY, stamp(E1, 0)],
    [topics.ack(NAME).encode(), b"\xc1", stamp(E1, 0)],  # an ack that is not an envelope
    [topics.ack("other").encode(), ACK_BODY, stamp(E1, 0)],  # another sender's: dropped
    [topics.ack(NAME + "0").encode(), b"\xc1", stamp(E1, 0)],  # ours as a prefix: dropped
    [topics.ack("other").encode(), ACK_BODY, stamp(E2, 0)],  # a new router epoch comes first
    [topics.ack("other").encode(), ACK_BODY, stamp(E1, 3)],  # an ack topic with a gseq
    [b"evt.a.x", b"body"],  # two frames
    [b"evt.a.x"],
    [b"evt.a.x", b"body", stamp(E1, 1), b"extra"],  # four frames
    [b"evt.a.\xff", b"body", stamp(E1, 1)],  # the topic is not UTF-8
    [b"evt.a.x", b"body", b"short"],  # a stamp that is not 16 bytes
])
feeds = st.lists(live | odd, max_size=40)


def messages(feed: list[Any], start: int) -> list[list[bytes]]:
    out, gseq = [], start - 1
    for item in feed:
        if isinstance(item, tuple):
            topic, body, epoch, at = item
            gseq = gseq + 1 if at is None else at
            item = [topic.encode(), body, stamp(epoch, gseq)]
        out.append(item)
    return out


def new_bus(gapless: bool, start: int, started: bool) -> Bus:
    """A synced Bus with a sync probe out; `started`: its stream starts at `start`, else it
    waits for the answer to that probe (a new gapless subscription's start probe)."""
    bus = Bus(ROUTER, NAME)
    bus.subscribe("evt.a", gapless=gapless)
    bus.synced, bus.router_epoch, bus._sync_token = True, E1, SYNC_TOKEN
    if started:
        bus._egress.on_synced({"head": start - 1, "origin": E1}, E1)
    else:
        bus._egress.awaiting_start = True
    with mock.patch.object(envelope, "new_id", return_value=REQUEST_ID):
        bus._requests.start("reader1", "wink", {}, 60.0, None)
    return bus


@pytest.fixture(scope="module")
def pipe() -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]]:
    ctx: zmq.Context[Any] = zmq.Context.instance()
    url = f"inproc://hot-paths-egress-{next(_ports)}"
    tx, rx = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    for s in (tx, rx):
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
    tx.bind(url)
    rx.connect(url)
    yield tx, rx
    tx.close(0)
    rx.close(0)


def outcome(bus: Bus, got: list[Delivery]) -> tuple[Any, ...]:
    return ([(d.topic, d.body, d.router_epoch, d.gseq) for d in got], dict(bus.counters),
            stream_state(bus._egress._stream), bus.router_epoch, bus.synced)


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    caplog.clear()
    return lines


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(feed=feeds, gapless=st.booleans(), start=st.integers(1, 4), batch=st.integers(1, 5),
       started=st.booleans())
def test_drain_sub_equals_on_frames_one_by_one(
        pipe: tuple[zmq.Socket[bytes], zmq.Socket[bytes]], caplog: pytest.LogCaptureFixture,
        feed: list[Any], gapless: bool, start: int, batch: int, started: bool) -> None:
    tx, rx = pipe
    feed = messages(feed, start)
    caplog.set_level(logging.WARNING, logger="broker.client.bus")
    general = new_bus(gapless, start, started)
    want: list[Delivery] = []
    for frames in feed:
        general._on_frames(list(frames), want)
    want_log = warnings(caplog)

    fused = new_bus(gapless, start, started)
    fused._sub = rx
    for frames in feed:
        tx.send_multipart(frames)
    got: list[Delivery] = []
    try:
        with mock.patch.object(busmod, "RECV_BATCH", batch):  # batches end anywhere
            for _ in range(len(feed) + 1):
                fused._drain_sub(got)
    finally:
        fused._sub = None
    assert outcome(fused, got) == outcome(general, want)
    assert warnings(caplog) == want_log
    with pytest.raises(zmq.Again):
        rx.recv(zmq.NOBLOCK)  # each message read whole


# (router epoch, gseq) of live items; epoch 2 now and then (a router restart)
items = st.lists(st.tuples(st.sampled_from([1] * 9 + [2]), st.integers(1, 12)), max_size=30)


@settings(max_examples=300, deadline=None)
@given(before=items, batch=items, epoch=st.sampled_from([None, 1, 2]))
def test_cursor_takes_what_take_next_takes(before: list[tuple[int, int]],
                                           batch: list[tuple[int, int]], epoch: int | None) -> None:
    """Whatever the stream holds, a batch counted on against `cursor` and handed to `advance`
    takes the same items, and leaves the same state, as `take_next` called for each, up to
    the first item `take_next` refuses (there the caller hands the cursor back)."""
    plain: Stream[Delivery] = Stream(max_held=5)
    fast: Stream[Delivery] = Stream(max_held=5)
    for s in (plain, fast):
        for e, g in before:
            s.on_live(Delivery("t", b"", e, g))
    cursor = fast.cursor(epoch)
    for e, g in batch:
        d = Delivery("t", b"", e, g)
        took = e == epoch and g == cursor
        assert took == (e == epoch and plain.take_next(d))
        if not took:
            break
        cursor += 1
    fast.advance(cursor)
    assert stream_state(fast) == stream_state(plain)
