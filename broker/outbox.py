"""The sender side of ingress at-least-once delivery (DESIGN §4.1).

Every sequenced envelope a client publishes waits here until the router acks its seq. Entries are
contiguous in seq: the oldest is ``acked + 1`` unless overflow dropped some; the sent-but-unacked
ones come first, then the ones not yet handed to ZeroMQ. A resend (after a timeout, or after a
router restart) moves every unacked entry back to unsent: the router journals only in seq order
and drops duplicates, so resending everything unacked is both correct and simple.

The outbox is bounded by count and bytes. Overflow drops the oldest entry and counts it; the Bus
raises one ``sys.alarm`` per overflow episode (an episode ends when the outbox is back under half
of its bounds).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final, NamedTuple

DEFAULT_MAX_MESSAGES: Final = 100_000
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024


class Entry(NamedTuple):
    seq: int
    topic: bytes
    body: bytes


@dataclass
class Overflow:
    """What `Outbox.add` had to drop to make room."""

    dropped: int
    first_seq: int
    last_seq: int
    new_episode: bool


class Outbox:
    """Two queues: `_inflight` (sent, waiting for an ack) then `_waiting` (not yet sent)."""

    def __init__(self, max_messages: int = DEFAULT_MAX_MESSAGES,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("outbox bounds must be positive")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._inflight: deque[Entry] = deque()
        self._waiting: deque[Entry] = deque()
        self._bytes = 0
        self.acked = 0  # highest seq the router acknowledged
        self.dropped_total = 0
        self._in_episode = False

    def __len__(self) -> int:
        return len(self._inflight) + len(self._waiting)

    @property
    def bytes(self) -> int:
        return self._bytes

    def add(self, entry: Entry) -> Overflow | None:
        self._waiting.append(entry)
        self._bytes += len(entry.body) + len(entry.topic)
        if len(self) <= self.max_messages and self._bytes <= self.max_bytes:
            return None
        first = (self._inflight or self._waiting)[0].seq
        dropped = 0
        while len(self) > 1 and (len(self) > self.max_messages or self._bytes > self.max_bytes):
            self._pop_oldest()
            dropped += 1
        self.dropped_total += dropped
        new_episode = not self._in_episode
        self._in_episode = True
        return Overflow(dropped, first, first + dropped - 1, new_episode)

    def _pop_oldest(self) -> None:
        e = (self._inflight or self._waiting).popleft()
        self._bytes -= len(e.body) + len(e.topic)

    def ack(self, seq: int) -> int:
        """Forget entries up to `seq`; return how many were released."""
        if seq <= self.acked:
            return 0
        self.acked = seq
        released = 0
        for queue in (self._inflight, self._waiting):
            while queue and queue[0].seq <= seq:
                e = queue.popleft()
                self._bytes -= len(e.body) + len(e.topic)
                released += 1
        if self._in_episode and len(self) <= self.max_messages // 2 \
                and self._bytes <= self.max_bytes // 2:
            self._in_episode = False
        return released

    def next_unsent(self) -> Entry | None:
        return self._waiting[0] if self._waiting else None

    def mark_sent(self) -> None:
        """The entry `next_unsent` returned was handed to ZeroMQ."""
        self._inflight.append(self._waiting.popleft())

    def rewind(self) -> int:
        """Mark every unacked entry as unsent again; return how many will be resent."""
        count = len(self._inflight)
        self._waiting.extendleft(reversed(self._inflight))
        self._inflight.clear()
        return count

    @property
    def first_seq(self) -> int | None:
        """The oldest seq still held (sent or not), None when empty."""
        queue = self._inflight or self._waiting
        return queue[0].seq if queue else None

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def waiting(self) -> int:
        return len(self._waiting)
