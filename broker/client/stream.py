"""Gap-free, in-order egress for library subscribers, without I/O.

The router stamps every journaled message with a gap-free ``gseq``. A subscriber that sees the
whole stream can therefore tell exactly what it missed: plain PUB/SUB drops at a full queue, on
reconnect and before a subscription propagates. `Stream` takes live messages in arrival order
and returns them in gseq order, holding back anything ahead of a gap while the Bus fetches the
missing range from the router's query socket (`wanted` says which range; `on_replay` takes the
answer).

Rules:
- ``expected`` is the next gseq to hand out. Below it: duplicate, dropped. Equal: delivered, and
  held messages that now follow are delivered too. Above it: held (bounded; past the bound the
  live copy is dropped, the replay brings it back) and the gap is fetched.
- A replay answer lists only the entries that match the subscriber's prefixes, plus ``next``,
  the first gseq the router did not examine: everything below ``next`` is settled.
- ``evicted`` entries (older than the router's journal) are lost to this subscriber: counted and
  reported by the caller, never silently skipped.
- A new router epoch may or may not continue the gseq numbering (a router without journal
  restarts at 1). Live messages of a new epoch are held *unverified* until a replay answer says
  which: the same ``origin`` (the epoch that started the numbering) means gseq continued; a new
  one means the numbering restarted, so whatever was held from the old numbering is released in
  order, the holes in it are counted as lost, and the stream restarts at the new ``first``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Generic, Protocol, TypeVar

DEFAULT_MAX_HELD: Final = 20_000


class Stamped(Protocol):
    @property
    def gseq(self) -> int: ...

    @property
    def router_epoch(self) -> int: ...


T = TypeVar("T", bound=Stamped)


class Stream(Generic[T]):
    def __init__(self, max_held: int = DEFAULT_MAX_HELD) -> None:
        self.expected: int | None = None
        self.router_epoch: int | None = None
        self.origin: int | None = None
        self.max_held = max_held
        self._held: dict[int, T] = {}
        self._unverified: list[T] = []  # live messages of a router epoch not yet checked
        self.duplicates = 0
        self.gaps = 0  # times a live message arrived ahead of `expected`
        self.filled = 0  # messages delivered from replay
        self.lost = 0  # gseqs the journal no longer had
        self.resets = 0  # router restarts that lost the journal
        self.held_dropped = 0

    def start_at(self, gseq: int, router_epoch: int | None = None,
                 origin: int | None = None) -> None:
        """Deliver from `gseq` on (at subscribe time: the router's head + 1, or --since)."""
        self.expected = max(1, gseq)
        self._held = {g: m for g, m in self._held.items() if g >= self.expected}
        if router_epoch is not None:
            self.router_epoch, self.origin = router_epoch, origin

    def take_next(self, item: T) -> bool:
        """The in-order fast path of `on_live`: True, and `item` taken, when it is the next gseq
        of the current router epoch and nothing is held or unverified: `on_live` would return
        ``[item]`` and change no counter, and `wanted` stays None, so the caller has no replay
        to ask for. False: nothing done, call `on_live`."""
        if item.gseq == self.expected and item.router_epoch == self.router_epoch \
                and not self._held and not self._unverified:
            self.expected += 1
            return True
        return False

    def cursor(self, router_epoch: int | None) -> int:
        """`take_next` for a batch without a call per item: the gseq it would take next from
        live items of `router_epoch`, or -1 when it would take none (not started, something
        held or unverified, another epoch). As long as nothing else calls the Stream,
        `take_next` is True exactly for the items of that epoch whose gseq equals the cursor,
        each moving it on by one; the caller counts it on and hands it back to `advance`."""
        if self.expected is None or self._held or self._unverified \
                or router_epoch != self.router_epoch:
            return -1
        return self.expected

    def advance(self, cursor: int) -> None:
        """The batch of `cursor` took everything in order up to `cursor` (exclusive)."""
        if cursor != -1:
            self.expected = cursor

    def on_live(self, item: T) -> list[T]:
        g = item.gseq
        if self.router_epoch is None or self.expected is None:
            self.router_epoch = item.router_epoch
            self.expected = self.expected or g
        elif item.router_epoch != self.router_epoch:
            if len(self._unverified) < self.max_held:
                self._unverified.append(item)
            else:
                self.held_dropped += 1
            return []
        if g < self.expected:
            self.duplicates += 1
            return []
        if g > self.expected:
            if not self._held:
                self.gaps += 1
            self._hold(item)
            return []
        return self._advance([item])

    def _hold(self, item: T) -> None:
        if item.gseq in self._held:
            self.duplicates += 1
        elif len(self._held) < self.max_held:
            self._held[item.gseq] = item
        else:
            self.held_dropped += 1

    def _advance(self, out: list[T]) -> list[T]:
        assert self.expected is not None
        self.expected += len(out)
        while self.expected in self._held:
            out.append(self._held.pop(self.expected))
            self.expected += 1
        return out

    def wanted(self) -> tuple[int, int | None] | None:
        """(from, until) still missing, until=None meaning "up to the head"; None if no gap."""
        if self.expected is None:
            return None
        if self._unverified:
            return self.expected, None
        if not self._held:
            return None
        return self.expected, min(self._held) - 1

    def on_replay(self, items: Iterable[T], next_gseq: int, evicted: int,
                  router_epoch: int | None = None, origin: int | None = None,
                  first: int = 1) -> list[T]:
        """Merge a replay answer; return what can now be delivered, in order.

        `router_epoch`, `origin` and `first` come from the answer's header; they settle whether
        a router restart kept the gseq numbering.
        """
        if self.expected is None:
            return []
        settled: list[T] = []
        if router_epoch is not None and router_epoch != self.router_epoch:
            continued, settled = self._settle_epoch(router_epoch, origin, first)
            if not continued:
                return settled  # the answer was asked in the old numbering: ask again
        if evicted > 0:
            self.lost += evicted
            self.expected += evicted
        out: list[T] = settled
        held = sorted(self._held)  # one ascending walk over what live delivery is holding
        at = 0
        for item in items:
            if item.gseq < self.expected:
                continue
            # Entries between matches did not match the prefixes: skipping them is not a loss.
            at = self._release_below(item.gseq, held, at, out)
            self.expected = item.gseq + 1
            self._held.pop(item.gseq, None)
            out.append(item)
            self.filled += 1
        self._release_below(next_gseq, held, at, out)
        if next_gseq > self.expected:
            self.expected = next_gseq
        return self._advance_held(out)

    def _release_below(self, gseq: int, held: list[int], at: int, out: list[T]) -> int:
        """Held live messages below `gseq` go out first, in order; returns the new position
        in `held` (its sorted keys)."""
        assert self.expected is not None
        while at < len(held) and held[at] < gseq:
            g = held[at]
            at += 1
            item = self._held.pop(g, None)
            if item is not None and g >= self.expected:
                out.append(item)
                self.expected = g + 1
        return at

    def _advance_held(self, out: list[T]) -> list[T]:
        assert self.expected is not None
        while self.expected in self._held:
            out.append(self._held.pop(self.expected))
            self.expected += 1
        return out

    def _settle_epoch(self, router_epoch: int, origin: int | None,
                      first: int) -> tuple[bool, list[T]]:
        """A replay answer from a new router epoch: keep the numbering, or restart it."""
        out: list[T] = []
        assert self.expected is not None
        if self.origin is None or origin is None:  # numbering unknown: judge by the range
            continued = first <= self.expected
        else:
            continued = origin == self.origin
        if not continued:
            self.resets += 1
            for g in sorted(self._held):  # received before the restart: still deliver them
                self.lost += g - self.expected
                out.append(self._held.pop(g))
                self.expected = g + 1
            self.expected = max(1, first)
        self.router_epoch, self.origin = router_epoch, origin
        pending, self._unverified = self._unverified, []
        for item in pending:
            out.extend(self.on_live(item))
        return continued, out

    @property
    def held(self) -> int:
        return len(self._held)
