"""The outbox and the Publisher at their bounds: backpressure while the router is connected,
drop-oldest only while it is unreachable (docs/backpressure.md). No sockets."""

from __future__ import annotations

import logging
import os
from typing import Any

import pytest

from actors.core.loop import Loop
from broker.client.outbox import Outbox
from broker.client.publisher import Publisher
from broker.wire.errors import BusFull

COUNTERS = ("published", "sent", "resent", "acked", "outbox_dropped", "alarms")


def publisher(max_messages: int = 8, max_bytes: int = 1 << 20) -> Publisher:
    return Publisher("p1", 1, 1 << 20, Outbox(max_messages, max_bytes),
                     dict.fromkeys(COUNTERS, 0), lambda: None)


def test_connected_a_full_outbox_refuses_events_before_a_seq_is_used() -> None:
    pub = publisher(max_messages=8)
    pub.set_connected(True)
    for i in range(8):
        pub.publish("evt.a.x", "event", {"i": i})
    with pytest.raises(BusFull) as info:
        pub.publish("evt.a.x", "event", {"i": 8})
    exc = info.value
    assert (exc.held, exc.max_messages) == (8, 8) and exc.size > 0
    assert "8 of 8 messages" in str(exc) and "connected" in str(exc)
    assert pub.seq == 8 and pub.outbox.dropped_total == 0  # no hole, nothing lost
    pub.ack(8)
    assert pub.publish("evt.a.x", "event", {"i": 8}).seq == 9


def test_connected_the_byte_bound_refuses_too() -> None:
    pub = publisher(max_messages=1000, max_bytes=4000)
    pub.set_connected(True)
    pub.publish("evt.a.x", "event", {"blob": b"x" * 3000})
    with pytest.raises(BusFull) as info:
        pub.publish("evt.a.x", "event", {"blob": b"x" * 1500})
    assert info.value.max_bytes == 4000 and info.value.held_bytes > 3000


def test_an_empty_outbox_takes_one_envelope_over_its_byte_bound() -> None:
    pub = publisher(max_bytes=100)
    pub.set_connected(True)
    assert pub.publish("evt.a.x", "event", {"blob": b"x" * 500}).seq == 1


@pytest.mark.parametrize("kind,topic,extra", [
    ("heartbeat", "hb.p1", {}), ("reply", "rep.c1", {"corr": "c"}), ("system", "sys.alarm", {}),
    ("log", "log.p1", {}), ("command", "cmd.a1", {"reply_to": "rep.p1"})])
def test_framework_traffic_uses_the_headroom(kind: str, topic: str,
                                             extra: dict[str, Any]) -> None:
    pub = publisher(max_messages=8)  # headroom: 2 messages
    pub.set_connected(True)
    for i in range(8):
        pub.publish("evt.a.x", "event", {"i": i})
    pub.publish(topic, kind, {"n": 1}, **extra)
    pub.publish("evt.a.run", "event", {"n": 2}, headroom=True)  # an actor, device paused
    assert len(pub.outbox) == 10 and pub.outbox.dropped_total == 0


def test_past_the_headroom_a_connected_router_that_does_not_ack_loses_the_oldest_loudly(
        caplog: pytest.LogCaptureFixture) -> None:
    pub = publisher(max_messages=8)
    pub.set_connected(True)
    with caplog.at_level(logging.WARNING):
        for i in range(11):
            pub.publish("hb.p1", "heartbeat", {"i": i})
    assert pub.outbox.dropped_total == 1
    assert "router connected but nothing acknowledged since" in caplog.text


def test_unreachable_the_outbox_drops_the_oldest_and_names_the_case(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    pub = publisher(max_messages=8)
    pub.set_connected(True)
    pub.set_connected(False)
    assert pub.unreachable_since is not None
    with caplog.at_level(logging.WARNING):
        for i in range(12):
            pub.publish("evt.a.x", "event", {"i": i})  # never BusFull
    assert pub.outbox.dropped_total == 4 and pub.outbox.first_seq == 5
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "router unreachable since" in warnings[0]
    published: list[tuple[str, str, dict[str, Any]]] = []
    monkeypatch.setattr(pub, "publish", lambda topic, kind, data, **kw:
                        published.append((topic, kind, data)))
    pub.ack(12)  # acks flow again: the one alarm of the episode goes out
    [(topic, kind, alarm)] = published
    assert (topic, kind, alarm["alarm"], alarm["dropped"]) == ("sys.alarm", "system",
                                                               "outbox_overflow", 4)
    assert alarm["connected"] is False
    assert str(alarm["reason"]).startswith("router unreachable since")


def test_congested_has_hysteresis_between_the_watermarks() -> None:
    box = Outbox(max_messages=100, max_bytes=1 << 30)
    for seq in range(1, 75):
        box.add(seq, b"t", b"b")
    assert not congested(box)
    box.add(75, b"t", b"b")
    assert congested(box)  # 75 %
    box.ack(20)
    assert congested(box)  # 55 %: above the low watermark
    box.ack(25)
    assert not congested(box)  # 50 %
    assert box.fill == pytest.approx(0.5)


def test_the_byte_watermark_counts_too() -> None:
    box = Outbox(max_messages=1000, max_bytes=1000)
    box.add(1, b"t", b"x" * 800)
    assert congested(box)
    box.ack(1)
    assert not congested(box)


def congested(box: Outbox) -> bool:
    return box.congested


def test_has_room() -> None:
    box = Outbox(max_messages=2, max_bytes=100)
    assert box.has_room(1000)  # empty: one always fits
    box.add(1, b"t", b"x" * 50)
    assert box.has_room(49) and not box.has_room(50)
    box.add(2, b"t", b"x")
    assert not box.has_room(1)  # the count bound


def test_paused_readers_are_not_polled_and_resume() -> None:
    loop = Loop()
    r, w = os.pipe()
    try:
        calls: list[bytes] = []
        loop.add_reader(r, lambda: calls.append(os.read(r, 10)))
        os.write(w, b"a")
        loop.pause_readers()
        loop.run_once(max_wait=0.01)
        assert calls == []  # the byte waits in the pipe
        loop.resume_readers()
        loop.run_once(max_wait=0.01)
        assert calls == [b"a"]
    finally:
        loop.close()
        os.close(r)
        os.close(w)
