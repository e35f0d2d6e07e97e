"""The sender side of ingress at-least-once delivery.

Every sequenced envelope a client publishes waits here until the router acks its seq. Entries are
contiguous in seq: the oldest is ``acked + 1`` unless overflow dropped some; the sent-but-unacked
ones come first, then the ones not yet handed to ZeroMQ. A resend (after a timeout, or after a
router restart) moves every unacked entry back to unsent: the router journals only in seq order
and drops duplicates, so resending everything unacked is both correct and simple.

Bounds (docs/backpressure.md). The outbox is bounded by count and bytes, and what happens at the
bound depends on whether the router is connected (`connected`, set by the Bus from its PUB
socket's monitor):

- connected: the bound is backpressure. `has_room` says whether an event of a given size still
  fits; the Publisher refuses device events that do not (`BusFull`) before they take a seq.
  Framework traffic (heartbeats, replies, alarms, logs, commands, and events an actor publishes
  after it paused its device) may use a headroom of `HEADROOM` of each bound beyond it. Only
  past bound + headroom, a router connected but acknowledging nothing for that long, does the
  outbox drop its oldest.
- unreachable: overflow drops the oldest entry at the bound and counts it.

Either way the Bus raises one ``sys.alarm`` per overflow episode (an episode ends when the outbox
is back under half of its bounds). `congested` has hysteresis: set when the outbox reaches
`HIGH_WATER` of a bound, cleared when it is back to `LOW_WATER` of both; actors pause their
device reads while it is set and the router connected.
"""

from __future__ import annotations

import builtins  # the `bytes` property of Outbox hides the type in its class
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

DEFAULT_MAX_MESSAGES: Final = 100_000
# Eight 16 MiB frames (max_message_bytes' default is 16 MiB + 64 KiB): a detector streaming
# frames keeps several in flight while the router journals the first. A bound, not a
# reservation: an outbox holds this much only while its producer outruns the router.
DEFAULT_MAX_BYTES: Final = 128 * 1024 * 1024
HEADROOM: Final = 0.25  # share of each bound that framework traffic may use beyond it
HIGH_WATER: Final = 0.75  # `congested` from this share of a bound ...
LOW_WATER: Final = 0.5  # ... until back to this share of both

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
    connected: bool  # the router was connected: the headroom was exhausted too


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
        self.headroom_messages = max(1, int(max_messages * HEADROOM))
        self.headroom_bytes = max(1, int(max_bytes * HEADROOM))
        self._high = (max(1, int(max_messages * HIGH_WATER)), max(1, int(max_bytes * HIGH_WATER)))
        self._low = (int(max_messages * LOW_WATER), int(max_bytes * LOW_WATER))
        self.congested = False  # see the module doc: hysteresis between the watermarks
        self.connected = False
        # where `add` drops the oldest: the bounds, plus the headroom while connected
        self._limit = (max_messages, max_bytes)

    def set_connected(self, connected: bool) -> None:
        """The Bus's PUB socket has (or lost) its connection to the router's ingress."""
        self.connected = connected
        self._limit = ((self.max_messages + self.headroom_messages,
                        self.max_bytes + self.headroom_bytes) if connected
                       else (self.max_messages, self.max_bytes))

    def has_room(self, size: int) -> bool:
        """Whether one more envelope of `size` bytes stays within the bounds (an empty outbox
        always takes one, whatever its size)."""
        return not self.held or (self.held < self.max_messages
                                 and self._added - self._gone + size <= self.max_bytes)

    @property
    def fill(self) -> float:
        """The fuller of the two bounds' shares in use, 0.0 .. 1.0 + HEADROOM."""
        return max(self.held / self.max_messages, (self._added - self._gone) / self.max_bytes)

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
        if not self.congested and (self.held >= self._high[0]
                                   or self._added - self._gone >= self._high[1]):
            self.congested = True
        max_messages, max_bytes = self._limit
        if self.held <= max_messages and self._added - self._gone <= max_bytes:
            return None
        first = (self._inflight or self._waiting)[0][0]
        dropped = 0
        while self.held > 1 and (self.held > max_messages
                                 or self._added - self._gone > max_bytes):
            self._gone = (self._inflight or self._waiting).popleft()[3]
            self.held -= 1
            dropped += 1
        self.dropped_total += dropped
        new_episode = not self._in_episode
        self._in_episode = True
        return Overflow(dropped, first, first + dropped - 1, new_episode, self.connected)

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
        if self.congested and self.held <= self._low[0] \
                and self._added - self._gone <= self._low[1]:
            self.congested = False
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
