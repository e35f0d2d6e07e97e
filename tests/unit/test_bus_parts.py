"""Outbox, Publisher and Stream: the sans-IO halves of the Bus's delivery guarantees."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.client import publisher
from broker.client.outbox import Entry, Outbox, Overflow
from broker.client.publisher import Publisher
from broker.client.stream import Stream
from broker.wire import envelope, rules
from broker.wire.errors import EnvelopeError, TopicError


def add(box: Outbox, seq: int, size: int = 10) -> Overflow | None:
    return box.add(seq, b"t", b"x" * size)


def drain_unsent(box: Outbox) -> list[int]:
    sent = [e[0] for e in box.unsent()]
    box.mark_sent(len(sent))
    return sent


class TestOutbox:
    def test_ack_releases_prefix_only(self) -> None:
        box = Outbox()
        for s in range(1, 6):
            add(box, s)
        assert drain_unsent(box) == [1, 2, 3, 4, 5]
        assert box.ack(3) == 3
        assert len(box) == 2
        assert box.ack(2) == 0  # stale ack changes nothing
        assert len(box) == 2

    def test_rewind_resends_unacked_in_order_before_new(self) -> None:
        box = Outbox()
        for s in range(1, 4):
            add(box, s)
        drain_unsent(box)
        add(box, 4)
        box.ack(1)
        assert box.rewind() == 2
        assert drain_unsent(box) == [2, 3, 4]

    def test_overflow_by_count_drops_oldest_and_reports_episode_once(self) -> None:
        box = Outbox(max_messages=3)
        for s in range(1, 4):
            assert add(box, s) is None
        first = add(box, 4)
        assert first is not None and first.dropped == 1 and first.first_seq == 1
        assert first.new_episode
        second = add(box, 5)
        assert second is not None and not second.new_episode
        assert box.dropped_total == 2
        assert drain_unsent(box) == [3, 4, 5]
        box.ack(5)  # back under half: the next overflow is a new episode
        for s in range(6, 9):
            add(box, s)
        again = add(box, 9)
        assert again is not None and again.new_episode

    def test_overflow_by_bytes(self) -> None:
        box = Outbox(max_messages=100, max_bytes=100)
        add(box, 1, 40)
        add(box, 2, 40)
        over = add(box, 3, 40)
        assert over is not None and over.dropped == 1
        assert box.bytes <= 100

    def test_ack_beyond_sent_releases_waiting_too(self) -> None:
        # after a router restart, the sync answer may ack seqs we had not yet re-sent
        box = Outbox()
        for s in range(1, 5):
            add(box, s)
        drain_unsent(box)
        box.rewind()
        assert box.ack(3) == 3
        assert drain_unsent(box) == [4]


    def test_mark_sent_moves_a_prefix_of_the_unsent(self) -> None:
        box = Outbox()
        for s in range(1, 6):
            add(box, s)
        box.mark_sent(2)
        assert (box.inflight, box.waiting, len(box)) == (2, 3, 5)
        assert [e[0] for e in box.unsent()] == [3, 4, 5]
        box.mark_sent(3)
        assert (box.inflight, box.waiting, box.first_seq) == (5, 0, 1)

    @settings(max_examples=200, deadline=None)
    @given(ops=st.lists(st.tuples(st.sampled_from(["add", "send", "ack", "rewind"]),
                                  st.integers(0, 6)), max_size=40))
    def test_held_counts_what_the_queues_hold(self, ops: list[tuple[str, int]]) -> None:
        box = Outbox(max_messages=5, max_bytes=60)
        seq = 0
        for op, n in ops:
            if op == "add":
                seq += 1
                add(box, seq, n * 4)
            elif op == "send":
                box.mark_sent(min(n, box.waiting))
            elif op == "ack":
                box.ack(seq - n)
            else:
                box.rewind()
            assert len(box) == box.held == box.inflight + box.waiting
            held: list[Entry] = [*box._inflight, *box._waiting]
            assert [e[0] for e in held] == list(range(seq - len(held) + 1, seq + 1))
            assert all(e[0] > box.acked for e in held)
            assert box.bytes == sum(len(t) + len(b) for _, t, b, _ in held)


def make_publisher(max_message_bytes: int = 1 << 20) -> tuple[Publisher, dict[str, int]]:
    counters: dict[str, int] = defaultdict(int)
    return Publisher("me", 1, max_message_bytes, Outbox(), counters, lambda: None), counters


class TestPublisher:
    def test_timestamp_and_ext_data_are_refused_before_a_seq_is_used(self) -> None:
        """The router decodes msgpack timestamps to datetimes and refuses them, and refuses ext
        types: the publisher refuses them first, and the next envelope still gets seq 1."""
        pub, counters = make_publisher()
        for value in (msgpack.Timestamp(1, 0), [msgpack.Timestamp(0, 5)],
                      msgpack.ExtType(3, b"x")):
            with pytest.raises(EnvelopeError, match="timestamp"):
                pub.publish("evt.a", "event", {"t": value})
        assert (pub.seq, len(pub.outbox), counters["published"]) == (0, 0, 0)
        assert pub.publish("evt.a", "event", {"t": 1.5}).seq == 1

    @pytest.mark.parametrize("topic", ["evt.a", "cmd.me", "rep.me", "hb.me", "log.me", "ack.me",
                                       "sys.router.x", "sys.alarm", "ctl.sync", "ctl.x"])
    @pytest.mark.parametrize("kind", [*sorted(envelope.KINDS), "bogus"])
    def test_topic_and_kind_checks_agree_with_the_router(self, topic: str, kind: str) -> None:
        """Refused or not, and with which error, the first publish on a topic (which learns
        its rule) and the next (from the cache) decide alike; and what they let through the
        router's `rules.refusal` lets through too."""
        extra: dict[str, Any] = {"command": {"reply_to": "rep.me"}, "reply": {"corr": "c"}}
        pub, _ = make_publisher()
        got = [outcome(lambda: pub.publish(topic, kind, {}, **extra.get(kind, {})))
               for _ in range(2)]
        assert got[0][0] == got[1][0]
        if got[0][0] == "ok":
            env = got[0][1]
            fields = (env.src, env.epoch, env.seq, env.kind, env.data)
            assert rules.refusal(rules.topic_rule(topic.encode()), fields) is None
        else:
            assert got[0] == got[1]

    def test_kind_errors_are_those_of_the_rule(self) -> None:
        pub, _ = make_publisher()
        with pytest.raises(TopicError, match=r"ack\.me is reserved for the router"):
            pub.publish("ack.me", "event", {})
        with pytest.raises(EnvelopeError, match=r"kind 'event' may not be published on cmd\.me "
                                                r"\(expects command\)"):
            pub.publish("cmd.me", "event", {})
        with pytest.raises(EnvelopeError, match="expects anything but command"):
            pub.publish("evt.a", "command", {}, reply_to="rep.me")
        with pytest.raises(EnvelopeError, match="kind 'bogus' is not one of"):
            pub.publish("evt.a", "bogus", {})
        with pytest.raises(TopicError):
            pub.publish("evt..a", "event", {})
        assert pub.seq == 0

    def test_send_unsent_stops_at_a_full_pipe_and_counts_what_went(
            self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(publisher, "_send", FakePub.send)
        pub, counters = make_publisher()
        for i in range(5):
            pub.publish("evt.a", "event", {"i": i})
        sock = FakePub(accept_messages=3)
        assert pub.send_unsent(sock) is False  # type: ignore[arg-type]
        assert [envelope.decode(body).seq for _, body in sock.messages] == [1, 2, 3]
        assert (pub.outbox.inflight, pub.outbox.waiting, counters["sent"]) == (3, 2, 3)
        sock.accept_messages = 10
        assert pub.send_unsent(sock) is True  # type: ignore[arg-type]
        assert [envelope.decode(body).seq for _, body in sock.messages] == [1, 2, 3, 4, 5]
        assert (pub.outbox.inflight, pub.outbox.waiting, counters["sent"]) == (5, 0, 5)

    def test_a_failed_body_frame_leaves_its_entry_unsent(
            self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(publisher, "_send", FakePub.send)
        pub, counters = make_publisher()
        for i in range(3):
            pub.publish("evt.a", "event", {"i": i})
        sock = FakePub(accept_messages=10, fail_body_of=2)
        with pytest.raises(zmq.ZMQError):
            pub.send_unsent(sock)  # type: ignore[arg-type]
        assert (pub.outbox.inflight, pub.outbox.waiting, counters["sent"]) == (1, 2, 1)


def outcome(call: Any) -> tuple[str, Any]:
    try:
        return "ok", call()
    except (EnvelopeError, TopicError) as exc:
        return type(exc).__name__, str(exc)


class FakePub:
    """Stands in for the PUB socket and, with `send` in place of `publisher._send` (pyzmq's
    C-level send), takes `accept_messages` messages, then raises zmq.Again at the next topic
    frame; `fail_body_of` makes that message's body frame fail."""

    def __init__(self, accept_messages: int, fail_body_of: int = 0) -> None:
        self.accept_messages = accept_messages
        self.fail_body_of = fail_body_of
        self.messages: list[tuple[bytes, bytes]] = []
        self._topic = b""

    def send(self, frame: bytes, flags: int) -> None:
        if flags & zmq.SNDMORE:
            if len(self.messages) >= self.accept_messages:
                raise zmq.Again()
            self._topic = frame
        elif len(self.messages) + 1 == self.fail_body_of:
            raise zmq.ZMQError(zmq.ETERM)
        else:
            self.messages.append((self._topic, frame))


@dataclass(frozen=True)
class Msg:
    gseq: int
    router_epoch: int = 1


class TestStream:
    def test_in_order_passes_through(self) -> None:
        s: Stream[Msg] = Stream()
        out = [m.gseq for g in range(1, 6) for m in s.on_live(Msg(g))]
        assert out == [1, 2, 3, 4, 5]
        assert s.wanted() is None

    def test_gap_is_held_then_filled_by_replay(self) -> None:
        s: Stream[Msg] = Stream()
        s.start_at(1)
        assert [m.gseq for m in s.on_live(Msg(1))] == [1]
        assert s.on_live(Msg(4)) == []
        assert s.on_live(Msg(5)) == []
        assert s.wanted() == (2, 3)
        out = s.on_replay([Msg(2), Msg(3)], next_gseq=4, evicted=0)
        assert [m.gseq for m in out] == [2, 3, 4, 5]
        assert s.expected == 6 and s.gaps == 1 and s.filled == 2

    def test_replay_skips_non_matching_gseqs(self) -> None:
        s: Stream[Msg] = Stream()
        s.start_at(10)
        s.on_live(Msg(20))
        out = s.on_replay([Msg(12), Msg(17)], next_gseq=20, evicted=0)
        assert [m.gseq for m in out] == [12, 17, 20]
        assert s.wanted() is None

    def test_duplicates_dropped(self) -> None:
        s: Stream[Msg] = Stream()
        s.on_live(Msg(1))
        assert s.on_live(Msg(1)) == []
        assert s.duplicates == 1

    def test_evicted_is_counted_as_lost(self) -> None:
        s: Stream[Msg] = Stream()
        s.start_at(1)
        s.on_live(Msg(10))
        out = s.on_replay([Msg(6)], next_gseq=10, evicted=5)
        assert [m.gseq for m in out] == [6, 10]
        assert s.lost == 5

    def test_router_restart_without_journal_restarts_numbering(self) -> None:
        s: Stream[Msg] = Stream()
        s.start_at(1, router_epoch=1, origin=1)
        for g in range(1, 50):
            s.on_live(Msg(g))
        s.on_live(Msg(52))  # held: 50, 51 missing when the old router died
        # the new router (origin 2) numbers from 1; its first live message we see is 7
        assert s.on_live(Msg(7, router_epoch=2)) == []
        assert s.wanted() == (50, None)  # asks; the answer settles the numbering
        out = s.on_replay([], next_gseq=50, evicted=0, router_epoch=2, origin=2, first=1)
        assert [m.gseq for m in out] == [52]  # what we had from the old router still goes out
        assert s.lost == 2 and s.resets == 1
        assert s.wanted() == (1, 6)
        out = s.on_replay([Msg(g, 2) for g in range(1, 7)], next_gseq=7, evicted=0,
                          router_epoch=2, origin=2, first=1)
        assert [m.gseq for m in out] == [1, 2, 3, 4, 5, 6, 7]

    def test_router_restart_with_journal_continues(self) -> None:
        s: Stream[Msg] = Stream()
        s.start_at(1, router_epoch=1, origin=1)
        for g in range(1, 5):
            s.on_live(Msg(g))
        assert s.on_live(Msg(7, router_epoch=2)) == []
        out = s.on_replay([Msg(5, 2), Msg(6, 2)], next_gseq=7, evicted=0, router_epoch=2,
                          origin=1, first=1)
        assert [m.gseq for m in out] == [5, 6, 7]
        assert s.resets == 0

    def test_held_bound(self) -> None:
        s: Stream[Msg] = Stream(max_held=3)
        s.start_at(1)
        for g in range(2, 10):
            s.on_live(Msg(g))
        assert s.held == 3 and s.held_dropped == 5
        # the replay brings back what the live path had to drop
        out = s.on_replay([Msg(g) for g in range(1, 10)], next_gseq=10, evicted=0)
        assert [m.gseq for m in out] == list(range(1, 10))


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 200), loss=st.floats(0, 0.9), seed=st.integers(0, 2**32))
def test_stream_delivers_everything_once_in_order(n: int, loss: float, seed: int) -> None:
    """Whatever the live path loses or reorders, live + replay yields 1..n exactly once."""
    rnd = random.Random(seed)
    s: Stream[Msg] = Stream(max_held=rnd.randint(1, 50))
    s.start_at(1)
    live = [g for g in range(1, n + 1) if rnd.random() >= loss]
    delivered: list[int] = []
    for g in live:
        delivered += [m.gseq for m in s.on_live(Msg(g))]
        if rnd.random() < 0.3 and (w := s.wanted()):
            journal = [Msg(x) for x in range(w[0], (w[1] or n) + 1)]
            delivered += [m.gseq for m in s.on_replay(journal, (w[1] or n) + 1, 0)]
    while s.expected is not None and s.expected <= n:
        start = s.expected
        journal = [Msg(x) for x in range(start, n + 1)]
        delivered += [m.gseq for m in s.on_replay(journal, n + 1, 0)]
    assert delivered == list(range(1, n + 1))


def test_non_map_data_is_refused_before_a_seq_is_used() -> None:
    """The router refuses an envelope whose data is not a map: the publisher refuses it first."""
    pub, counters = make_publisher()
    for data in (["x"], "xy", 5):
        with pytest.raises(EnvelopeError, match="data must be a map"):
            pub.publish("evt.a", "event", data)  # type: ignore[arg-type]
    assert (pub.seq, counters["published"]) == (0, 0)
    assert pub.publish("evt.a", "event", {}).seq == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["publish", "publish", "publish", "turn", "room", "unsync",
                                 "sync"]), max_size=60),
       st.integers(0, 30))
def test_a_turns_publishes_all_go_out_in_order_by_the_turns_end(steps: list[str],
                                                                room: int) -> None:
    """`Bus._on_enqueued`/`pollables`: the first publish of a loop turn is sent at once, the
    rest when `pollables()` ends the turn; a full pipe (zmq.Again) waits for POLLOUT, an
    unsynced Bus for the sync. Whatever the order of those, every seq is sent exactly once, in
    order, and after a turn's end nothing is left unsent unless the Bus cannot send."""
    from pathlib import Path

    from broker.client import bus as busmod
    from broker.client.bus import SEND_AT_ONCE, Bus
    from broker.config import parse_site

    class TurnPub(FakePub):
        def send_multipart(self, frames: Any, flags: int = 0) -> None:
            """A sync probe (handle() probes while unsynced): not part of the stream."""

    fake = TurnPub(room)
    bus = Bus(parse_site({}, Path("site.toml")).router, "me")
    bus._pub = fake  # type: ignore[assignment]
    bus.synced = True
    original, window = publisher._send, busmod.TURN_WINDOW
    publisher._send = FakePub.send  # type: ignore[assignment]
    busmod.TURN_WINDOW = 3600.0  # type: ignore[misc]  # every step inside one loop turn
    try:
        bus.pollables()  # the driver's first turn begins
        sent_at_once = 0
        for step in steps:
            before = len(fake.messages)
            if step == "publish":
                bus.publish("evt.a", "event", {})
                if bus.synced and len(fake.messages) > before:
                    sent_at_once += 1
            elif step == "turn":
                flags = dict(bus.pollables())[fake]
                left = bus._outbox.waiting
                assert not left or not bus.synced or bus._blocked, "unsent after the turn"
                assert flags == (zmq.POLLOUT if bus._blocked else 0)
                sent_at_once = 0
            elif step == "room":
                fake.accept_messages += 5
                if bus._blocked:
                    bus.handle({fake: zmq.POLLOUT})
            elif step == "unsync":
                bus.synced = False
            else:  # the sync answer arrives; the driver's next turn begins
                bus.synced = True
                bus.pollables()
                sent_at_once = 0
            assert sent_at_once <= SEND_AT_ONCE
        fake.accept_messages = 10**6
        bus.synced = True
        bus.handle({fake: zmq.POLLOUT})
        bus.pollables()
    finally:
        publisher._send = original  # type: ignore[assignment]
        busmod.TURN_WINDOW = window  # type: ignore[misc]
    seqs = [msgpack.unpackb(body)["seq"] for _, body in fake.messages]
    assert seqs == list(range(1, steps.count("publish") + 1))


def test_a_bus_nobody_pumps_sends_every_publish_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A script that publishes between other work and does not pump its Bus (no loop turn
    whose end would send the rest) still gets every publish sent at once."""
    from pathlib import Path

    from broker.client import bus as busmod
    from broker.client.bus import Bus
    from broker.config import parse_site

    fake = FakePub(100)
    bus = Bus(parse_site({}, Path("site.toml")).router, "me")
    bus._pub = fake  # type: ignore[assignment]
    bus.synced = True
    monkeypatch.setattr(publisher, "_send", FakePub.send)
    bus.pollables()  # a turn began...
    bus.publish("evt.a", "event", {})
    bus.publish("evt.a", "event", {})
    assert len(fake.messages) == 1  # ...so the second waits for its end
    monkeypatch.setattr(busmod, "TURN_WINDOW", 0.0)  # ...which does not come
    bus.publish("evt.a", "event", {})
    assert [msgpack.unpackb(b)["seq"] for _, b in fake.messages] == [1, 2, 3]
    bus._pub = None


def test_resends_that_bring_no_ack_back_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """A router that reads but does not acknowledge gets the outbox again after 1, 2, 4 ...
    seconds (up to RESEND_MAX), not every second; one ack brings the wait back to 1 s."""
    from pathlib import Path

    from broker.client import bus as busmod
    from broker.client.bus import Bus
    from broker.config import parse_site

    class Probes(FakePub):
        probes = 0

        def send_multipart(self, frames: list[bytes], flags: int = 0) -> None:
            self.probes += 1

    clock = [100.0]
    monkeypatch.setattr(busmod.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(publisher, "_send", Probes.send)
    fake = Probes(10_000)
    bus = Bus(parse_site({}, Path("site.toml")).router, "me")
    bus._pub = fake  # type: ignore[assignment]
    bus.synced = True
    bus.publish("evt.a", "event", {})
    resent_at = []
    for step in range(200):  # 20 s in 0.1 s steps, the sync answered at once each time
        clock[0] = 100.0 + step / 10
        before = fake.probes
        bus.tick()
        if fake.probes > before:
            resent_at.append(round(clock[0] - 100.0, 1))
            bus._on_synced({"sync": "", "router_epoch": 1, "head": 0, "first": 1, "origin": 1})
    assert resent_at == [1.0, 3.0, 7.0, 15.0]  # waits 1, 2, 4, 8 (RESEND_MAX)
    bus._publisher.ack(1)  # progress: the next resend comes 1 s after the last progress again
    bus.publish("evt.a", "event", {})
    probes = fake.probes
    clock[0] = 121.0  # 1.1 s after the ack; the wait before it had reached 8 s
    bus.tick()
    assert not bus.synced and fake.probes == probes + 1
    bus._pub = None
