"""The sender side of ingress at-least-once delivery.

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

import builtins  # the `bytes` property of Outbox hides the type in its class
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

DEFAULT_MAX_MESSAGES: Final = 100_000
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024

# (seq, topic, body, end): `end` is the outbox's running total of bytes added, this entry's
# included. Entries leave oldest first (acks, overflow), so the bytes still held are always
# ``added - end of the last entry gone``: a release of any length costs one subtraction. A
# plain tuple, not a NamedTuple: one is built per publish and a tuple is far cheaper to build,
# and the cyclic GC untracks exact tuples of atoms, so a full outbox does not make every
# collection walk it again.
Entry = tuple[int, bytes, bytes, int]


@dataclass
class Overflow:
    """What `Outbox.add` had to drop to make room."""

    dropped: int
    first_seq: int
    last_seq: int
    new_episode: bool


class Outbox:
    """Two queues: `_inflight` (sent, waiting for an ack) then `_waiting` (not yet sent); in
    seq order end to end, as entries move from the head of one to the tail of the other.

    `held` counts both, kept up to date rather than summed from two len() calls: `add` and the
    Publisher read it at every publish.
    """

    def __init__(self, max_messages: int = DEFAULT_MAX_MESSAGES,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("outbox bounds must be positive")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._inflight: deque[Entry] = deque()
        self._waiting: deque[Entry] = deque()
        self.held = 0  # entries in both queues
        self._added = 0  # bytes ever added (an Entry's `end`)
        self._gone = 0  # bytes ever released or dropped: the `end` of the last entry gone
        self.acked = 0  # highest seq the router acknowledged
        self.dropped_total = 0
        self._in_episode = False

    def __len__(self) -> int:
        return self.held

    @property
    def bytes(self) -> int:
        return self._added - self._gone

    def add(self, seq: int, topic: builtins.bytes, body: builtins.bytes) -> Overflow | None:
        """Queue the next envelope as unsent; what had to go to keep the bounds, if anything."""
        self._added += len(topic) + len(body)
        self._waiting.append((seq, topic, body, self._added))
        self.held += 1
        if self.held <= self.max_messages and self._added - self._gone <= self.max_bytes:
            return None
        first = (self._inflight or self._waiting)[0][0]
        dropped = 0
        while self.held > 1 and (self.held > self.max_messages
                                 or self._added - self._gone > self.max_bytes):
            self._gone = (self._inflight or self._waiting).popleft()[3]
            self.held -= 1
            dropped += 1
        self.dropped_total += dropped
        new_episode = not self._in_episode
        self._in_episode = True
        return Overflow(dropped, first, first + dropped - 1, new_episode)

    def ack(self, seq: int) -> int:
        """Forget entries up to `seq`; return how many were released."""
        if seq <= self.acked:
            return 0
        self.acked = seq
        released = 0
        for queue in (self._inflight, self._waiting):
            if not queue:
                continue
            if queue[-1][0] <= seq:  # the usual ack: it covers the whole queue
                released += len(queue)
                self._gone = queue[-1][3]
                queue.clear()
                continue
            while queue[0][0] <= seq:
                self._gone = queue.popleft()[3]
                released += 1
            break  # this queue keeps an entry past seq, and the next one holds later seqs
        self.held -= released
        if self._in_episode and self.held <= self.max_messages // 2 \
                and self._added - self._gone <= self.max_bytes // 2:
            self._in_episode = False
        return released

    def unsent(self) -> Iterator[Entry]:
        """The entries not yet handed to ZeroMQ, oldest first. Nothing may change the outbox
        while they are iterated; `mark_sent` then says how many went."""
        return iter(self._waiting)

    def mark_sent(self, count: int) -> None:
        """The first `count` entries of `unsent` were handed to ZeroMQ: one call per burst."""
        waiting, inflight = self._waiting, self._inflight
        if count == len(waiting):
            inflight.extend(waiting)
            waiting.clear()
        else:
            for _ in range(count):
                inflight.append(waiting.popleft())

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
        return queue[0][0] if queue else None

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def waiting(self) -> int:
        return len(self._waiting)
