"""The journal's file: append-only records that survive SIGKILL and power loss.

Layout
------
::

    file     = MAGIC record*
    MAGIC    = b"SCTLJNL" version:u8             (8 bytes; this module writes version 2)
    record   = length:u32 crc32:u32 payload      (big-endian; crc32 of payload, zlib polynomial)
    payload  = type:u8 ...

    type 0x53 "S" snapshot, always the first record:
              msgpack map {"first": gseq of the first entry record that follows,
                           "sources": [[src, epoch, hc], ...] (oldest first),
                           "origin": router epoch that created the file (gseq 1),
                           "written": unix time}
    type 0x45 "E" entry, gseq contiguous from the snapshot's "first":
              gseq:u64 epoch:u64 seq:u64 src_len:u16 topic_len:u16 src topic body
    type 0x41 "A" advance (version 2): a (src, epoch) whose hc rose without an entry (a refused
              envelope used up its seq, a sync probe's ``next`` started the pair or skipped a
              lost range, a timed-out gap was declared lost):
              epoch:u64 hc:u64 src_len:u16 src

The source table is rebuilt as: the snapshot's pairs, then every entry record's (src, epoch,
seq) and every advance record's (src, epoch, hc), each only ever raising a pair's hc (hc never
goes down in the router, so the order of records does not matter for the value).

Versions: version 1 files (no "A" records) are read as they are, and their version byte is
rewritten to 2 before anything is appended, so that an older router, which would take an "A"
record for a torn tail and cut the file there, refuses the file instead (bad magic). A file
with a higher version is refused.

Writes are batched: `add`/`add_advance` only queue the record bytes and `flush` writes the batch
with one ``write`` (and ``fsync`` when asked). The router flushes before it publishes or acks a
batch, so an acknowledged message is at least in the OS page cache (SIGKILL-safe) or on disk
(with fsync).

Loading reads records until one is short, fails its CRC, has an unknown type, is malformed or
breaks gseq continuity: that is a torn tail (the process died mid-write) and the file is
truncated there with a warning that says how many bytes were dropped. A file without our magic
is refused (the path is probably wrong; we never truncate someone else's file); a file whose
snapshot is unreadable is moved aside to ``<path>.corrupt-<time>`` and a fresh journal is
started.

Compaction keeps the file near the in-memory bound: when the bytes before the oldest entry still
held in memory outgrow the bytes after it, a new file is written (magic, a fresh snapshot of the
source table, then the records from that entry on copied byte for byte), fsynced and renamed
over the old one. The snapshot carries every advance made so far, so dropping the advance
records before the copy start loses nothing. An offset per entry record makes finding the copy
start O(1).
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import time
import zlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final

import msgpack

from broker.wire.errors import BusError

log = logging.getLogger(__name__)

MAGIC_PREFIX: Final = b"SCTLJNL"
VERSION: Final = 2
MAGIC: Final = MAGIC_PREFIX + bytes([VERSION])
MAGIC_V1: Final = MAGIC_PREFIX + b"\x01"
REC: Final = struct.Struct(">II")
ENTRY: Final = struct.Struct(">BQQQHH")
ADVANCE: Final = struct.Struct(">BQQH")
TYPE_SNAPSHOT: Final = 0x53
TYPE_ENTRY: Final = 0x45
TYPE_ADVANCE: Final = 0x41
# Bodies are capped far below this by the router; a larger length field is a torn/garbage header.
MAX_RECORD: Final = 128 * 1024 * 1024
COMPACT_MIN_BYTES: Final = 4 * 1024 * 1024

# on_entry(gseq, src, epoch, seq, topic, body) is called for every entry record while loading.
EntrySink = Callable[[int, str, int, int, str, bytes], None]
# on_advance(src, epoch, hc) is called for every advance record while loading.
AdvanceSink = Callable[[str, int, int], None]


@dataclass
class Snapshot:
    first: int = 1
    sources: list[tuple[str, int, int]] = field(default_factory=list)
    origin: int = 0  # the router epoch that started this gseq numbering


def _record(payload: bytes) -> bytes:
    return REC.pack(len(payload), zlib.crc32(payload)) + payload


def _snapshot_record(snap: Snapshot) -> bytes:
    body = msgpack.packb(
        {"first": snap.first, "sources": [list(s) for s in snap.sources],
         "origin": snap.origin, "written": time.time()},
        use_bin_type=True,
    )
    return _record(bytes([TYPE_SNAPSHOT]) + body)


def _parse_snapshot(payload: bytes) -> Snapshot:
    obj: Any = msgpack.unpackb(payload[1:], raw=False)
    first = obj["first"]
    if not isinstance(first, int) or first < 1:
        raise ValueError(f"snapshot first gseq {first!r} is invalid")
    sources = [(str(s), int(e), int(h)) for s, e, h in obj["sources"]]
    return Snapshot(first=first, sources=sources, origin=int(obj.get("origin", 0)))


def _parse_entry(payload: bytes, expect: int) -> tuple[int, str, int, int, str, bytes] | None:
    """(gseq, src, epoch, seq, topic, body) of an entry record with gseq `expect`, else None."""
    if payload[0] != TYPE_ENTRY or len(payload) < ENTRY.size:
        return None
    _, gseq, epoch, seq, src_len, topic_len = ENTRY.unpack_from(payload)
    end_src = ENTRY.size + src_len
    end_topic = end_src + topic_len
    if gseq != expect or end_topic > len(payload):
        return None
    try:
        src = payload[ENTRY.size:end_src].decode()
        topic = payload[end_src:end_topic].decode()
    except UnicodeDecodeError:
        return None
    return gseq, src, epoch, seq, topic, payload[end_topic:]


def _advance_record(src: str, epoch: int, hc: int) -> bytes:
    src_b = src.encode()
    return _record(ADVANCE.pack(TYPE_ADVANCE, epoch, hc, len(src_b)) + src_b)


def _parse_advance(payload: bytes) -> tuple[str, int, int] | None:
    """(src, epoch, hc) of an advance record, None when it is malformed."""
    if len(payload) < ADVANCE.size:
        return None
    _, epoch, hc, src_len = ADVANCE.unpack_from(payload)
    if len(payload) != ADVANCE.size + src_len:
        return None
    try:
        return payload[ADVANCE.size:].decode(), epoch, hc
    except UnicodeDecodeError:
        return None


def _fsync_dir(path: Path) -> None:
    # A rename is only durable once the directory entry is on disk.
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class JournalFile:
    """One journal file; owned by one thread (the router loop)."""

    def __init__(self, path: Path, fsync: bool = False,
                 compact_min_bytes: int = COMPACT_MIN_BYTES) -> None:
        self.path = path
        self.fsync = fsync
        self.compact_min_bytes = compact_min_bytes
        self.compactions = 0
        self.size = 0  # bytes on disk plus bytes queued
        self._fh: BinaryIO | None = None
        self._pending: list[bytes] = []
        self._first = 1  # gseq of offsets[0]
        self._offsets = array("q")  # file offset of each entry record, by gseq - _first

    # -- loading -----------------------------------------------------------------------------

    def load(self, on_entry: EntrySink, origin: int = 0,
             on_advance: AdvanceSink | None = None) -> Snapshot:
        """Open (or create) the file, feed every intact entry to `on_entry` and every advance
        record to `on_advance`, cut a torn tail.

        `origin` goes into the snapshot of a file created now (none, empty or set aside).
        """
        if not self.path.exists() or self.path.stat().st_size == 0:
            return self._create(Snapshot(origin=origin))
        with self.path.open("rb") as fh:
            magic = self._check_magic(fh.read(len(MAGIC)))
            try:
                snap = self._read_snapshot(fh)
            except Exception as exc:  # any decoding failure means the same: unreadable
                return self._set_aside(exc, origin)
            good_end = self._read_records(fh, snap.first, on_entry, on_advance)
        self._cut_tail(good_end)
        if magic == MAGIC_V1:
            self._upgrade()
        self._fh = self.path.open("ab", buffering=0)
        self.size = good_end
        return snap

    def _check_magic(self, magic: bytes) -> bytes:
        if magic in (MAGIC, MAGIC_V1):
            return magic
        if len(magic) == len(MAGIC) and magic.startswith(MAGIC_PREFIX):
            raise BusError(f"journal file {self.path} has format version {magic[-1]}; this "
                           f"router reads versions 1..{VERSION} (written by a newer sctl?)")
        raise BusError(
            f"journal file {self.path} is not an sctl journal (bad magic); "
            "check router.journal_path or move the file away"
        )

    def _upgrade(self) -> None:
        """Mark a version 1 file as version 2 before an advance record can be appended."""
        with self.path.open("r+b") as fh:
            fh.seek(len(MAGIC) - 1)
            fh.write(MAGIC[-1:])
            fh.flush()
            os.fsync(fh.fileno())
        log.info("journal %s: format version 1 upgraded to %d", self.path, VERSION)

    def _read_snapshot(self, fh: BinaryIO) -> Snapshot:
        payload = self._read_record(fh)
        if payload is None or payload[0] != TYPE_SNAPSHOT:
            raise ValueError("first record is not an intact snapshot")
        return _parse_snapshot(payload)

    @staticmethod
    def _read_record(fh: BinaryIO) -> bytes | None:
        head = fh.read(REC.size)
        if len(head) < REC.size:
            return None
        length, crc = REC.unpack(head)
        if not 0 < length <= MAX_RECORD:
            return None
        payload = fh.read(length)
        if len(payload) < length or zlib.crc32(payload) != crc:
            return None
        return payload

    def _read_records(self, fh: BinaryIO, first: int, on_entry: EntrySink,
                      on_advance: AdvanceSink | None) -> int:
        """Feed records to the sinks up to the first torn/invalid one; returns its offset."""
        self._first = first
        self._offsets = array("q")
        expect = first
        good_end = fh.tell()
        while (payload := self._read_record(fh)) is not None:
            if payload[0] == TYPE_ADVANCE:
                advance = _parse_advance(payload)
                if advance is None:
                    break
                if on_advance is not None:
                    on_advance(*advance)
            else:
                entry = _parse_entry(payload, expect)
                if entry is None:
                    break
                on_entry(*entry)
                self._offsets.append(good_end)
                expect += 1
            good_end = fh.tell()
        return good_end

    def _cut_tail(self, good_end: int) -> None:
        total = self.path.stat().st_size
        if total > good_end:
            log.warning("journal %s: torn tail, dropped %d bytes after offset %d "
                        "(the router stopped mid-write; those messages were never acked)",
                        self.path, total - good_end, good_end)
            with self.path.open("r+b") as fh:
                fh.truncate(good_end)
                fh.flush()
                os.fsync(fh.fileno())

    def _set_aside(self, exc: Exception, origin: int) -> Snapshot:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        log.error("journal %s: snapshot unreadable (%s); moved to %s and starting a new journal",
                  self.path, exc, aside)
        os.replace(self.path, aside)
        return self._create(Snapshot(origin=origin))

    def _create(self, snap: Snapshot) -> Snapshot:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write_new(snap, None, 0)
        self._first = snap.first
        self._offsets = array("q")
        return snap

    # -- writing -----------------------------------------------------------------------------

    def add(self, gseq: int, src: str, epoch: int, seq: int, topic: str, body: bytes) -> None:
        """Queue one entry record; gseq must follow the previous one."""
        src_b = src.encode()
        topic_b = topic.encode()
        head = ENTRY.pack(TYPE_ENTRY, gseq, epoch, seq, len(src_b), len(topic_b)) + src_b + topic_b
        crc = zlib.crc32(body, zlib.crc32(head))
        self._offsets.append(self.size)
        rec = REC.pack(len(head) + len(body), crc)
        # Three pieces, joined once in flush: the body is copied once, not per concatenation.
        self._pending += (rec, head, body)
        self.size += REC.size + len(head) + len(body)

    def add_advance(self, src: str, epoch: int, hc: int) -> None:
        """Queue an advance record: (src, epoch)'s hc rose to `hc` without an entry."""
        rec = _advance_record(src, epoch, hc)
        self._pending.append(rec)
        self.size += len(rec)

    def flush(self) -> None:
        if not self._pending or self._fh is None:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        view = memoryview(data)
        while view:  # a raw file may write less than asked
            written = self._fh.write(view)
            view = view[written or 0:]
        if self.fsync:
            os.fsync(self._fh.fileno())

    # -- compaction --------------------------------------------------------------------------

    def should_compact(self, first_retained: int) -> bool:
        """True when the records before `first_retained` outweigh those from it on."""
        start = self._offset_of(first_retained)
        dead = start - len(MAGIC)
        return dead > max(self.size - start, self.compact_min_bytes)

    def compact(self, snap: Snapshot) -> None:
        """Rewrite the file as snapshot + the records from gseq `snap.first` on."""
        self.flush()
        start = self._offset_of(snap.first)
        keep = snap.first - self._first
        new_base = self._write_new(snap, self.path, start)
        delta = new_base - start
        self._offsets = array("q", (o + delta for o in self._offsets[keep:]))
        self._first = snap.first
        self.compactions += 1
        log.info("journal %s compacted to %d bytes from gseq %d", self.path, self.size,
                 snap.first)

    def _offset_of(self, gseq: int) -> int:
        index = gseq - self._first
        return self._offsets[index] if 0 <= index < len(self._offsets) else self.size

    def _write_new(self, snap: Snapshot, old: Path | None, copy_from: int) -> int:
        """Write magic + snapshot (+ the old file's tail) to a temp file and rename it in.

        Returns the offset where the copied records start in the new file.
        """
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("wb") as out:
            out.write(MAGIC + _snapshot_record(snap))
            base = out.tell()
            if old is not None:
                with old.open("rb") as src:
                    src.seek(copy_from)
                    shutil.copyfileobj(src, out, 1024 * 1024)
            out.flush()
            os.fsync(out.fileno())
            size = out.tell()
        self.close()
        os.replace(tmp, self.path)
        _fsync_dir(self.path)
        self._fh = self.path.open("ab", buffering=0)
        self.size = size
        return base

    def close(self) -> None:
        if self._fh is not None:
            try:
                self.flush()
            finally:
                self._fh.close()
                self._fh = None
