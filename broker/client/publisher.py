"""The sending half of a Bus: numbering, the outbox, acks (at-least-once ingress).

`publish` numbers envelopes 1, 2, 3 ... per (name, epoch) and keeps them in the `Outbox` until
the router's ack covers their seq. Whatever the router would refuse is refused here first, as
an exception the caller sees (the router reports refusals only on ``sys.router.bad``), and
before a seq is taken: a refused envelope must not leave a hole in this sender's stream.

Acks release outbox entries and settle `on_acked` waiters (a command runs only once its
"started" record is journaled); an overflow settles the dropped seqs' waiters as failed. The
overflow alarm waits for the acks to flow again (see `_on_overflow`).

The Bus owns the PUB socket and the sync handshake that decides when sending may start: after
each enqueue the Publisher calls the `flush` hook it was given, and the Bus, when it may send,
lends it the socket (`send_unsent`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Final

import zmq

from broker.client.outbox import Outbox, Overflow
from broker.wire import envelope as envmod
from broker.wire import rules, topics
from broker.wire.envelope import Envelope
from broker.wire.errors import BusFull, EnvelopeError, TopicError

log = logging.getLogger(__name__)

RULE_CACHE: Final = 4096  # topics whose ingress rule is remembered
# pyzmq's C-level send: its Python-level wrapper is a noticeable share of the cost of a frame
_send = zmq.backend.Socket.send
_MORE: Final = int(zmq.SNDMORE | zmq.NOBLOCK)
_LAST: Final = int(zmq.NOBLOCK)
ZERO_COPY_MIN: Final = 64 * 1024  # bodies from this size go zero-copy (a copy is cheaper below)


def _clock(wall: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall))


def _call(callback: Callable[[bool], object], ok: bool) -> None:
    try:
        callback(ok)
    except Exception:  # runs inside handle(): must not cost the batch's deliveries
        log.exception("ack callback failed")


class Publisher:
    def __init__(self, name: str, epoch: int, max_message_bytes: int, outbox: Outbox,
                 counters: dict[str, int], flush: Callable[[], None]) -> None:
        self.name = name
        self.epoch = epoch
        self.max_message_bytes = max_message_bytes
        self.outbox = outbox
        self.seq = 0  # the last seq used
        self.last_progress = time.monotonic()  # the resend timer runs from here
        self._counters = counters  # the Bus's
        self._flush = flush
        self._encoder = envmod.Encoder(name, epoch)
        self._rules: dict[str, tuple[bytes, frozenset[str]]] = {}  # see `_learn`
        self._alarm: dict[str, Any] | None = None  # outbox overflow not yet reported
        self._ack_waiters: dict[int, list[Callable[[bool], object]]] = {}
        self.unreachable_since: float | None = time.time()  # wall clock; None: connected
        self.acked_at = time.time()  # wall clock of the last ack that released something

    def publish(self, topic: str, kind: str, data: dict[str, Any] | None, *,
                headroom: bool = False, **extra: Any) -> Envelope:
        """`Bus.publish`: raises before a seq is used for what the router would refuse, and
        BusFull for an event (unless `headroom`) that does not fit while the router is connected.

        Per-publish hot path: the topic's frame and the kinds the router lets through on it
        are cached per topic str (one dict look-up, no encode, no rule unpacking).
        """
        rule = self._rules.get(topic)
        if rule is None:
            rule = self._learn(topic)
        tframe, passing = rule
        if kind not in passing:
            self._check_kind(topic, tframe, kind)
        seq = self.seq + 1
        # not build(..., **extra) when extra is empty: unpacking even {} has a cost per publish
        env, body = (self._encoder.build(seq, kind, data, **extra) if extra
                     else self._encoder.build(seq, kind, data))
        if len(body) > self.max_message_bytes:
            raise EnvelopeError(f"{topic}: envelope of {len(body)} bytes is over the router's "
                                f"max_message_bytes ({self.max_message_bytes})")
        outbox = self.outbox
        if outbox.connected and kind == "event" and not headroom \
                and not outbox.has_room(len(body)):
            raise self._full(topic, len(body))
        self.seq = seq
        self._counters["published"] += 1
        if not outbox.held:
            self.last_progress = time.monotonic()
        overflow = outbox.add(seq, tframe, body)
        if overflow is not None:
            self._on_overflow(overflow)
        self._flush()
        return env

    def send_unsent(self, pub: zmq.Socket[bytes]) -> bool:
        """Hand the unsent entries to ZeroMQ, oldest first; False when the pipe is full.

        A burst loop: the entries are marked sent and counted once for the burst, at its end.
        """
        sent = 0
        try:
            for _, topic, body, _ in self.outbox.unsent():
                try:
                    # XPUB_NODROP refuses at a message's first frame only, never mid-message
                    _send(pub, topic, _MORE)
                except zmq.Again:
                    return False
                if len(body) < ZERO_COPY_MIN:
                    _send(pub, body, _LAST)
                else:  # ZeroMQ sends the outbox's own bytes (it holds a reference), no copy
                    _send(pub, body, _LAST, False)
                sent += 1
            return True
        finally:
            if sent:
                self.outbox.mark_sent(sent)
                self._counters["sent"] += sent

    def _learn(self, topic: str) -> tuple[bytes, frozenset[str]]:
        """The cached rule of `topic`: its frame and `rules.passing_kinds`."""
        tframe = topic.encode()
        rule = tframe, rules.passing_kinds(rules.topic_rule(tframe))
        if len(self._rules) >= RULE_CACHE:
            self._rules.clear()
        self._rules[topic] = rule
        return rule

    @staticmethod
    def _check_kind(topic: str, tframe: bytes, kind: str) -> None:
        """Raise the error for a kind the router would refuse on `topic`. An unknown kind on a
        topic that takes any is left to the envelope check, whose error names the kinds."""
        _, need, special = rules.topic_rule(tframe)
        if special != rules.NORMAL:
            raise TopicError(f"{topic} is reserved for the router")
        if kind != need and (need is not None or kind == "command"):
            raise EnvelopeError(f"kind {kind!r} may not be published on {topic} "
                                f"(expects {need or 'anything but command'})")

    @property
    def held_from(self) -> int:
        """The oldest seq still held, sent or not (the sync probe's ``next``)."""
        held = self.outbox.first_seq
        return self.seq + 1 if held is None else held

    def _on_overflow(self, overflow: Overflow) -> None:
        """Count and log now; the sys.alarm goes out once the router acknowledges again.

        Published right away it would sit at the tail of a full outbox and be the next thing
        evicted; sent when acks flow again it reaches the router with the episode's totals.
        """
        dropped, first_seq = overflow.dropped, overflow.first_seq
        self._counters["outbox_dropped"] += dropped
        if self._ack_waiters:
            self._settle_waiters(overflow.last_seq, False)
        if overflow.new_episode:
            self._counters["alarms"] += 1
            reason = self._overflow_reason(overflow.connected)
            log.warning("%s: outbox full (%d messages / %d bytes): %s; dropping the oldest "
                        "unacknowledged envelopes from seq %d", self.name,
                        self.outbox.max_messages, self.outbox.max_bytes, reason, first_seq)
            self._alarm = {"alarm": "outbox_overflow", "source": self.name, "reason": reason,
                           "connected": overflow.connected, "first_seq": first_seq,
                           "dropped": 0}
        if self._alarm is not None:
            self._alarm["dropped"] += dropped
            self._alarm["last_seq"] = overflow.last_seq

    def _overflow_reason(self, connected: bool) -> str:
        if not connected:
            since = self.unreachable_since or time.time()
            return f"router unreachable since {_clock(since)}"
        return (f"router connected but nothing acknowledged since {_clock(self.acked_at)}, "
                f"headroom of {self.outbox.headroom_messages} messages / "
                f"{self.outbox.headroom_bytes} bytes used up (is its journal writable?)")

    def _full(self, topic: str, size: int) -> BusFull:
        o = self.outbox
        return BusFull(
            f"{self.name}: outbox full ({o.held} of {o.max_messages} messages, {o.bytes} of "
            f"{o.max_bytes} bytes; {topic} needs {size} more) while the router is connected "
            "and journaling the backlog: publish it again when there is room "
            "(Bus.publish_wait waits)", size=size, held=o.held, held_bytes=o.bytes,
            max_messages=o.max_messages, max_bytes=o.max_bytes)

    def set_connected(self, connected: bool) -> None:
        """The Bus's PUB socket connected to (or lost) the router's ingress."""
        if connected == self.outbox.connected:
            return
        self.outbox.set_connected(connected)
        self.unreachable_since = None if connected else time.time()

    def _raise_alarm(self) -> None:
        alarm, self._alarm = self._alarm, None
        if alarm is None:
            return
        alarm["dropped_total"] = self.outbox.dropped_total
        alarm["message"] = (f"{self.name}: outbox overflow dropped {alarm['dropped']} "
                            f"envelope(s), seq {alarm['first_seq']}..{alarm['last_seq']}: "
                            f"{alarm['reason']}")
        self.publish(topics.ALARM, "system", alarm)

    def ack(self, seq: int) -> None:
        """The router acknowledged every seq up to `seq` of our epoch."""
        released = self.outbox.ack(seq)
        if released:
            self._counters["acked"] += released
            self.last_progress = time.monotonic()
            self.acked_at = time.time()
            if self._alarm is not None:
                self._raise_alarm()
            self._settle_waiters(self.outbox.acked, True)

    def resend(self) -> int:
        """After a (re)sync: everything unacked goes out again; returns how many."""
        resent = self.outbox.rewind()
        self._counters["resent"] += resent
        self.last_progress = time.monotonic()
        return resent

    def on_acked(self, seq: int, callback: Callable[[bool], object]) -> None:
        """`Bus.on_acked`."""
        if seq <= self.outbox.acked:
            _call(callback, True)
        else:
            self._ack_waiters.setdefault(seq, []).append(callback)

    def close(self) -> None:
        """Nothing unacked can be acked any more."""
        self._settle_waiters(self.seq, False)

    def fenced(self) -> None:
        """The router fences this epoch (another instance holds the name): nothing unacked
        will be journaled while it does, so no waiter may go on as if it would."""
        self._settle_waiters(self.seq, False)

    def _settle_waiters(self, upto: int, ok: bool) -> None:
        for seq in [s for s in self._ack_waiters if s <= upto]:
            for callback in self._ack_waiters.pop(seq):
                _call(callback, ok)
