"""Per-(src, epoch) ingress sequencing: which seq the router takes, drops or skips, and when.

The rules are the "Sequencing" and ``ctl.sync`` ``next`` rules of `broker.wire.protocol`; this
module holds all of their state transitions and does no I/O. The router acts on its answers: it
journals, advances hc, publishes gap reports and sends acks.

hc (the highest seq up to which every seq has been journaled, refused or declared lost) lives in
the journal's `SourceTable`, because it must survive a restart with the journal. The `Sequencer`
reads it and never writes it: every rise goes through the journal (an entry, or
`Journal.advance`), so the table and the file always agree. The sequencer itself owns only what
no one else needs: each pair's open gap, and when each unknown pair was last asked to re-sync.

`check` is called once per sequenced envelope (accepted or refused) and returns a `Verdict`,
plus a `GapEvent` when a gap opens or is declared lost. The router then

- reports the event first, if any;
- NEXT: journals the envelope (a refused one: advances hc to its seq), then calls `took`, which
  returns the gap that seq filled, if it did;
- DUPLICATE: drops it;
- EARLY: drops it (the gap, new or extended, waits for the sender's resend);
- LOST: advances hc to the end of the event's ``missing`` range, then checks the same seq again;
  it is then NEXT or EARLY (opening a new gap), never LOST twice;
- UNKNOWN: drops it, and asks the sender to re-sync when `resync_due`.

A gap episode remembers the lowest early seq seen (``low``): the sender has shown it still holds
that one, so a timed-out gap skips only the seqs below it. If ``low`` has arrived by the time the
gap times out (it is next or behind hc), nothing is skipped and the timeout starts over, so hc
only ever rises and never past a seq the sender can still resend.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from broker.router.journal import SourceKey, SourceTable
from broker.wire import envelope

RESYNC_EVERY_S: Final = 0.25  # at most one resync request per pair per this
_MAX_RESYNC_PAIRS: Final = 10_000  # bounds the resync timestamps; clearing only allows a repeat

GapState = Literal["open", "filled", "lost"]


class Verdict(enum.Enum):
    NEXT = enum.auto()  # seq == hc + 1 (seq 1 of an unknown pair): take it
    DUPLICATE = enum.auto()  # seq <= hc
    EARLY = enum.auto()  # seq > hc + 1: a gap is open
    LOST = enum.auto()  # early, and the gap timed out: skip the missing range, then look again
    UNKNOWN = enum.auto()  # a pair the router does not know, not starting at seq 1


@dataclass(slots=True)
class Gap:
    expected: int  # first missing seq when the gap opened
    got: int  # the out-of-order seq that opened it
    low: int  # lowest out-of-order seq seen since: the oldest the sender still holds
    opened: float  # the sequencer's clock (monotonic)


@dataclass(frozen=True, slots=True)
class GapEvent:
    """One ``sys.router.gap`` report: state "open", "filled" or "lost" (with ``missing``)."""

    key: SourceKey
    state: GapState
    expected: int
    got: int
    missing: tuple[int, ...] = ()  # "lost": (first, last) skipped; hc becomes last

    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"src": self.key[0], "epoch": self.key[1],
                                "expected": self.expected, "got": self.got, "state": self.state}
        if self.missing:
            data["missing"] = list(self.missing)
        return data


class Sequencer:
    """Decides each sequenced envelope against its pair's hc; one thread (the router's) owns it."""

    def __init__(self, sources: SourceTable, gap_timeout: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._sources = sources
        self._gap_timeout = gap_timeout
        self._clock = clock
        self._gaps: dict[SourceKey, Gap] = {}
        self._resync_asked: dict[SourceKey, float] = {}

    @property
    def open_gaps(self) -> int:
        return len(self._gaps)

    def check(self, key: SourceKey, seq: int) -> tuple[Verdict, GapEvent | None]:
        """The verdict on `seq` (>= 1) of `key`, and the gap it opened or declared lost."""
        hc = self._sources.get(key)
        if hc is None:
            if seq != 1:
                return Verdict.UNKNOWN, None
            hc = 0
        if seq == hc + 1:
            return Verdict.NEXT, None
        if seq <= hc:
            return Verdict.DUPLICATE, None
        return self._early(key, hc, seq)

    def took(self, key: SourceKey, seq: int) -> GapEvent | None:
        """hc just rose to `seq`: the gap whose missing range that completes, now filled."""
        if not self._gaps:
            return None
        gap = self._gaps.get(key)
        if gap is None or seq + 1 < gap.got:
            return None
        del self._gaps[key]
        return GapEvent(key, "filled", gap.expected, gap.got)

    def _early(self, key: SourceKey, hc: int, seq: int) -> tuple[Verdict, GapEvent | None]:
        gap = self._gaps.get(key)
        if gap is None:
            gap = self._gaps[key] = Gap(hc + 1, seq, seq, self._clock())
            return Verdict.EARLY, GapEvent(key, "open", gap.expected, gap.got)
        if not self._timed_out(gap, hc, seq):
            return Verdict.EARLY, None
        # Skip only up to the oldest seq the sender has shown it still holds: everything from
        # there on is in its outbox and will be resent, so it must not be lost.
        del self._gaps[key]
        return Verdict.LOST, GapEvent(key, "lost", gap.expected, gap.got, (hc + 1, gap.low - 1))

    def _timed_out(self, gap: Gap, hc: int, seq: int) -> bool:
        """Note an early seq; True when the gap is to be declared lost up to ``gap.low - 1``
        (always above hc, so hc only ever rises)."""
        gap.low = min(gap.low, seq)
        now = self._clock()
        if now - gap.opened < self._gap_timeout:
            return False
        if gap.low <= hc + 1:
            # The lowest early seq seen has arrived since, or is next: which later ones the
            # sender still holds is unknown. Skip nothing; the episode starts over from here.
            gap.low, gap.opened = seq, now
            return False
        return True

    def register(self, key: SourceKey, next_seq: Any) -> tuple[int, GapEvent | None] | None:
        """A sync probe's `next`, the oldest seq the sender still holds: nothing below it will
        ever come again. (hc to advance to, the range that declares lost) to start an unknown
        pair there or skip to it; None when hc stays (or `next` is not a valid seq)."""
        if type(next_seq) is not int or not 1 <= next_seq <= envelope.MAX_U63:
            return None
        hc = self._sources.get(key)
        if hc is None:
            return next_seq - 1, None
        if hc >= next_seq - 1:
            return None
        gap = self._gaps.pop(key, None) or Gap(hc + 1, next_seq, next_seq, self._clock())
        return next_seq - 1, GapEvent(key, "lost", gap.expected, gap.got, (hc + 1, next_seq - 1))

    def resync_due(self, key: SourceKey) -> bool:
        """An unknown pair sent an early seq: True (and noted) unless it was asked recently.

        Accepting such a seq would turn the sender's resends of older, unacked seqs into
        "duplicates"; the router drops it and asks the sender to sync, which tells where its
        outbox starts. One request per round trip is enough."""
        now = self._clock()
        if now - self._resync_asked.get(key, 0.0) < RESYNC_EVERY_S:
            return False
        if len(self._resync_asked) > _MAX_RESYNC_PAIRS:
            self._resync_asked.clear()
        self._resync_asked[key] = now
        return True

    def forget_evicted(self) -> None:
        """Gaps of pairs evicted from the source table can never be filled or lost."""
        for key in [k for k in self._gaps if k not in self._sources]:
            del self._gaps[key]
