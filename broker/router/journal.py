"""The router's journal: every accepted envelope with its gap-free gseq, bounded, replayable.

Strategy
--------
Entries are contiguous in gseq, so they live in two parallel lists (topic, body) with a head
index: the entry for gseq g is at ``head + g - first``, which makes range lookups O(1) and
eviction O(1) amortised (evicted slots are cleared at once so their bodies are freed, and the
lists are shortened only when the dead prefix outgrows the live part). Bounds are a message count
and a body-byte total; the newest entry is always kept, even when it alone is over the byte bound.

The journal also keeps the two tables a router restart must not lose:

- `SourceTable`, per (src, epoch) the highest contiguous seq journaled (``hc``), bounded to the
  most recently active `MAX_SOURCES` pairs so clients that restart forever cannot grow it;
- a last-value cache, topic -> newest gseq, pruned of evicted gseqs as it grows.

A pair's hc only ever rises. It rises with an entry (`append`, after `SourceTable.put` of the
next seq) or without one (`advance`: a refused envelope used up its seq, a sync probe started
the pair or skipped a lost range, a gap was declared lost).

With a path, every entry is also queued for `broker.router.journal_file.JournalFile` and written by
`flush`, and so is, once per pair per flush, every pair's hc raised by `advance`; loading the
file rebuilds entries, next gseq and the source table (the file's snapshot plus every entry
and advance record after it). Without both kinds of record a restart would take a pair back to
its last entry, and the sender's next seq would open a gap that ends as a loss never suffered.
The router's lease table rides along the same way: the snapshot keeps what `leases_snapshot`
returns when it is written, `loaded_leases` is that map after a load, and `open` shows every
loaded entry to an observer, so the router can replay the ``sys.router.lease`` records after
the snapshot (`broker.router.leases.LeaseHistory`).

Storage faults. A flush that cannot write the file (disk full, I/O error, read-only filesystem:
`JournalWriteError`) leaves the journal *blocked* (`fault`, a `JournalFault`) until a flush
succeeds: the records stay queued, the entries stay in memory, and `last` stays at the newest
gseq on disk, so a query never serves an entry a router restart could give to another message.
The caller retries (`retry`, backoff in `JournalFault.next_try`); `open` on a full or
read-only disk loads what is there and comes up blocked instead of failing.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from broker.router.journal_file import COMPACT_MIN_BYTES, JournalFile, JournalWriteError, Snapshot

log = logging.getLogger(__name__)

MAX_SOURCES: Final = 10_000
# The router's own envelopes come from a new epoch every start and are never resent, so
# tracking them would only push real sources out of the table.
_UNTRACKED_SRC: Final = "router"
_MIN_LAST_PRUNE: Final = 4096

SourceKey = tuple[str, int]
# (gseq, src, topic, body) of each entry `Journal.open` loads, oldest first
EntryObserver = Callable[[int, str, str, bytes], None]

RETRY_FIRST: Final = 0.1  # seconds before the first retry of a blocked journal; doubles
RETRY_MAX: Final = 5.0
# Failures of the disk, not of the configuration: a router starting on one comes up blocked.
# Others at start (permission denied, a path through a file) stop the start with the error.
STORAGE_FAULTS: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS,
                                   errno.EFBIG, errno.ENOMEM})
ALARM_NAME: Final = "journal_write_failed"


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on the filesystem of `path`'s folder."""
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


@dataclass
class JournalFault:
    """A journal that cannot be written: the last error, since when, how often retried."""

    error: JournalWriteError
    since: float = field(default_factory=time.time)  # wall time of the first failure
    started: float = field(default_factory=time.monotonic)
    retries: int = 0
    delay: float = RETRY_FIRST
    next_try: float = 0.0  # monotonic time of the next retry
    held: int = 0  # entries written by the flush that ended the fault
    free_bytes: int | None = None  # at the first failure

    def __post_init__(self) -> None:
        self.next_try = self.started + self.delay

    def failed_again(self, error: JournalWriteError, now: float) -> None:
        self.error = error
        self.delay = min(self.delay * 2, RETRY_MAX)
        self.next_try = now + self.delay

    def alarm(self) -> dict[str, Any]:
        """The data of the ``sys.alarm`` that opens the episode."""
        e = self.error
        free = "unknown" if self.free_bytes is None else f"{self.free_bytes} bytes"
        return {"alarm": ALARM_NAME, "source": "router", "reason": e.strerror,
                "errno": e.errno_name, "op": e.op, "path": str(e.path),
                "free_bytes": self.free_bytes, "since": self.since,
                "message": f"router: journal {e.path} cannot be written ({e.op}: {e.strerror}, "
                           f"{free} free); publishers keep their messages until it can, "
                           f"retrying every {RETRY_MAX:g} s at most"}

    def resolved(self, now: float) -> dict[str, Any]:
        """The data of the journaled ``sys.alarm`` that ends the episode."""
        e = self.error
        duration = round(now - self.started, 3)
        return {"alarm": ALARM_NAME, "source": "router", "state": "resolved",
                "reason": e.strerror, "errno": e.errno_name, "path": str(e.path),
                "since": self.since, "duration": duration, "held": self.held,
                "retries": self.retries,
                "message": f"router: journal {e.path} takes writes again after {duration:g} s "
                           f"of \"{e.strerror}\"; {self.held} held message(s) journaled"}


class SourceTable:
    """(src, epoch) -> highest contiguous seq; least recently touched pairs are evicted first."""

    def __init__(self, max_pairs: int = MAX_SOURCES) -> None:
        self.max_pairs = max_pairs
        self.evicted = 0
        # A dict keeps insertion order: the first key is the least recently touched pair.
        self._hc: dict[SourceKey, int] = {}

    def __len__(self) -> int:
        return len(self._hc)

    def __contains__(self, key: object) -> bool:
        return key in self._hc

    def get(self, key: SourceKey) -> int | None:
        return self._hc.get(key)

    def put(self, key: SourceKey, hc: int) -> None:
        """Set hc for a pair; a new pair may evict the least recently touched one."""
        table = self._hc
        if key not in table and len(table) >= self.max_pairs:
            del table[next(iter(table))]
            self.evicted += 1
        table[key] = hc

    def raise_to(self, key: SourceKey, seq: int) -> None:
        """Rebuild helper: hc only ever grows, whatever order snapshot and records come in."""
        old = self._hc.get(key)
        if old is None or seq > old:
            self.put(key, seq)

    def touch(self, key: SourceKey) -> None:
        """Mark a pair as recently active (called once per pair per batch, not per message)."""
        hc = self._hc.pop(key, None)
        if hc is not None:
            self._hc[key] = hc

    def snapshot(self) -> list[tuple[str, int, int]]:
        return [(src, epoch, hc) for (src, epoch), hc in self._hc.items()]


class Journal:
    """Bounded in-memory journal, optionally backed by a file. One thread owns it."""

    def __init__(
        self,
        max_messages: int,
        max_bytes: int,
        path: Path | None = None,
        fsync: bool = False,
        max_sources: int = MAX_SOURCES,
        compact_min_bytes: int = COMPACT_MIN_BYTES,
        origin: int = 0,
    ) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.path = path
        self.sources = SourceTable(max_sources)
        # The router epoch that started this gseq numbering: kept in the file, so it changes
        # exactly when gseq restarts at 1 (no file, a new file, a file set aside).
        self.origin = origin
        self.first = 1  # gseq of the oldest retained entry (== next_gseq when empty)
        self.next_gseq = 1
        self.bytes = 0
        self.evicted = 0
        self.appended = 0
        self._topics: list[str] = []
        self._bodies: list[bytes] = []
        self._head = 0
        self._last: dict[str, int] = {}
        self._last_prune_at = _MIN_LAST_PRUNE
        self._file = None if path is None else JournalFile(path, fsync, compact_min_bytes)
        self._advanced: dict[SourceKey, None] = {}  # pairs advanced since the last flush
        self.fault: JournalFault | None = None  # set while the file cannot be written
        self._flushed = 0  # newest gseq in the file
        # the router's lease table for every snapshot written, and the one loaded
        self.leases_snapshot: Callable[[], dict[str, Any]] | None = None
        self.loaded_leases: Any = None  # as read; broker.router.leases.LeaseHistory checks it

    @property
    def persistent(self) -> bool:
        return self._file is not None

    @property
    def last(self) -> int:
        """Newest gseq journaled (first - 1 when empty); while blocked, the newest on disk."""
        return self.next_gseq - 1 if self.fault is None else self._flushed

    @property
    def blocked(self) -> bool:
        return self.fault is not None

    def __len__(self) -> int:
        return len(self._topics) - self._head

    @property
    def file_bytes(self) -> int:
        return 0 if self._file is None else self._file.size

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self, observe: EntryObserver | None = None) -> None:
        """Load the file (if any): entries, next gseq and the source table come back, and the
        snapshot's lease map (`loaded_leases`). `observe` sees every entry loaded, in gseq
        order, also those the in-memory bounds evict at once."""
        if self._file is None:
            return
        recent: dict[SourceKey, int] = {}  # pair -> highest seq in the records, newest last

        def on_entry(gseq: int, src: str, epoch: int, seq: int, topic: str, body: bytes) -> None:
            if gseq != self.next_gseq:  # only the first record: the file's gseqs are contiguous
                self.first = self.next_gseq = gseq
            self._append_memory(topic, body)
            if observe is not None:
                observe(gseq, src, topic, body)
            if src != _UNTRACKED_SRC:
                key = (src, epoch)
                recent[key] = max(recent.pop(key, seq), seq)

        def on_advance(src: str, epoch: int, hc: int) -> None:
            if src != _UNTRACKED_SRC:
                key = (src, epoch)
                recent[key] = max(recent.pop(key, hc), hc)

        snap = self._file.load(on_entry, self.origin, on_advance)
        self.origin = snap.origin or self.origin
        self.loaded_leases = snap.leases
        self.appended = 0  # loading is not journaling: `appended` counts this run only
        if len(self) == 0:
            self.first = self.next_gseq = snap.first
        # The snapshot's pairs are older than any record after it, so they go in first.
        for src, epoch, hc in snap.sources:
            self.sources.raise_to((src, epoch), hc)
        for key, seq in recent.items():
            self.sources.raise_to(key, seq)
            self.sources.touch(key)
        log.info("journal %s loaded: gseq %d..%d, %d sources", self.path, self.first,
                 self.last, len(self.sources))
        self._flushed = self.next_gseq - 1
        try:
            self._file.open_for_writing()
        except JournalWriteError as exc:
            if exc.errno not in STORAGE_FAULTS:
                raise
            self._failed(exc)

    def flush(self) -> None:
        """Write queued records (fsync if configured); compact the file when it is too big.

        Raises JournalWriteError when the file cannot be written: the journal is then blocked
        (`fault`) until a flush succeeds; nothing queued is dropped."""
        if self._file is None:
            return
        file = self._file
        self._queue_advances(file)
        try:
            try:
                if len(self) and file.short_of_room(self.first):
                    file.compact(self._snapshot())  # False: backed off, the flush goes on
                file.flush()
            except JournalWriteError:
                # A full disk may still take the live part alone: what memory evicted already
                # (a batch bigger than the bound) need not be written at all.
                if not (len(self) and file.can_shrink(self.first)
                        and file.compact(self._snapshot(), fallback=True)):
                    raise
        except JournalWriteError as exc:
            self._failed(exc)
            raise
        if self.fault is not None:
            self.fault.held = self.next_gseq - 1 - self._flushed
            self.fault = None
        self._flushed = self.next_gseq - 1
        # Compaction runs in a thread; the loop only starts it and, once it is done, adds the
        # records appended meanwhile and renames the new file into place.
        file.compact_poll()
        if not len(self):
            return
        if file.overgrown(self.first):  # the background falls behind a flood, or failed
            file.compact(self._snapshot())
        elif file.should_compact(self.first):
            file.compact_start(self._snapshot())

    def _snapshot(self) -> Snapshot:
        leases = None if self.leases_snapshot is None else self.leases_snapshot()
        return Snapshot(self.first, self.sources.snapshot(), self.origin, leases)

    def retry(self) -> JournalFault | None:
        """Flush a blocked journal once more: the fault it ended, or None while it lasts (the
        next try is backed off: `RETRY_FIRST` doubling to `RETRY_MAX`)."""
        fault = self.fault
        if fault is None:
            return None
        fault.retries += 1
        try:
            self.flush()
        except JournalWriteError:
            return None
        return fault

    def _failed(self, exc: JournalWriteError) -> None:
        if self.fault is None:
            self.fault = JournalFault(exc, free_bytes=free_bytes(exc.path))
        else:
            self.fault.failed_again(exc, time.monotonic())
            log.debug("journal %s still blocked: %s (retry %d, next in %g s)", self.path, exc,
                      self.fault.retries, self.fault.delay)

    def fault_info(self) -> dict[str, Any]:
        """The storage part of the router's state: blocked or not, why, the free space."""
        f = self.fault
        return {"blocked": f is not None, "since": None if f is None else f.since,
                "reason": None if f is None else f.error.strerror,
                "errno": None if f is None else f.error.errno_name,
                "free_bytes": None if self.path is None else free_bytes(self.path),
                "retries": 0 if f is None else f.retries,
                "held": 0 if f is None else self.next_gseq - 1 - self._flushed,
                "compaction_failures": 0 if self._file is None else self._file.compact_failures}

    def close(self) -> None:
        """Write what is queued and close the file. A write failure is logged, not raised:
        what could not be written was never acknowledged, its senders still hold it."""
        if self._file is None:
            return
        self._queue_advances(self._file)
        unwritten = self.next_gseq - 1 - self._flushed
        try:
            self._file.close()
        except JournalWriteError as exc:
            log.error("%s; closed with %d entries and %d bytes unwritten (never acknowledged: "
                      "their senders resend them to the next router)", exc, unwritten,
                      self._file.queued)

    def _queue_advances(self, file: JournalFile) -> None:
        """One advance record per pair advanced since the last flush, with its current hc."""
        for key in self._advanced:
            hc = self.sources.get(key)
            if hc is not None:  # an evicted pair is forgotten, in the file too
                file.add_advance(key[0], key[1], hc)
        self._advanced.clear()

    def advance(self, key: SourceKey, hc: int) -> bool:
        """Raise a pair's hc without an entry (never lowers it); True when it rose.

        With a file, the pair's hc is written at the next `flush`, before the router acks."""
        old = self.sources.get(key)
        if old is not None and hc <= old:
            return False
        self.sources.put(key, hc)
        if self._file is not None and key[0] != _UNTRACKED_SRC:
            self._advanced[key] = None
        return True

    # -- entries -----------------------------------------------------------------------------

    def append(self, topic: str, body: bytes, src: str, epoch: int, seq: int) -> int:
        """Journal one entry and return its gseq. The file record is queued until `flush`."""
        gseq = self.next_gseq
        if self._file is not None:
            self._file.add(gseq, src, epoch, seq, topic, body)
        self._append_memory(topic, body)
        return gseq

    def _append_memory(self, topic: str, body: bytes) -> None:
        gseq = self.next_gseq
        self.next_gseq = gseq + 1
        self.appended += 1
        self._topics.append(topic)
        self._bodies.append(body)
        self.bytes += len(body)
        self._last[topic] = gseq
        if len(self._topics) - self._head > self.max_messages or self.bytes > self.max_bytes:
            self._evict()

    def _evict(self) -> None:
        head, bodies = self._head, self._bodies
        end = len(bodies) - 1  # the newest entry stays whatever its size
        while head < end and (end + 1 - head > self.max_messages or self.bytes > self.max_bytes):
            self.bytes -= len(bodies[head])
            bodies[head] = b""  # free the body now, the slot goes with the next trim
            head += 1
        self.evicted += head - self._head
        self.first += head - self._head
        self._head = head
        if head > 1024 and head * 2 > len(bodies):
            del bodies[:head]
            del self._topics[:head]
            self._head = 0
        if len(self._last) > self._last_prune_at:
            self._prune_last()

    def _prune_last(self) -> None:
        first = self.first
        self._last = {t: g for t, g in self._last.items() if g >= first}
        self._last_prune_at = max(_MIN_LAST_PRUNE, 2 * len(self._last))

    def entry(self, gseq: int) -> tuple[str, bytes]:
        """(topic, body) of a retained gseq; IndexError when evicted or not yet journaled."""
        if not self.first <= gseq <= self.last:
            raise IndexError(f"gseq {gseq} is not in the journal ({self.first}..{self.last})")
        i = self._head + gseq - self.first
        return self._topics[i], self._bodies[i]

    def scan(self, start: int, stop: int) -> Iterator[tuple[int, str, bytes]]:
        """(gseq, topic, body) for retained gseqs in [start, stop), oldest first."""
        start = max(start, self.first)
        stop = min(stop, self.last + 1)
        base = self._head - self.first
        topics, bodies = self._topics, self._bodies
        for gseq in range(start, stop):
            yield gseq, topics[base + gseq], bodies[base + gseq]

    def latest(self) -> Iterator[tuple[str, int]]:
        """(topic, newest gseq) of every topic with an entry still retained (and, while
        blocked, on disk)."""
        first, last = self.first, self.last
        return ((t, g) for t, g in self._last.items() if first <= g <= last)
