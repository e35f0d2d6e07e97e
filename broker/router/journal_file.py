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
                           "leases"?: the router's lease table when written
                                      (broker.router.leases.LeaseTable.snapshot),
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

Writes are batched: `add`/`add_advance` only queue the record pieces and `flush` writes the batch
with one ``pwritev`` at `disk_end`, the offset where the last complete write ended (and
``fsync`` when asked); bodies are handed to the kernel as they are, never joined into one copy.
The router flushes before it publishes or acks a batch, so an acknowledged message is at least
in the OS page cache (SIGKILL-safe) or on disk (with fsync).

Write failures (disk full, I/O error, read-only filesystem) lose nothing: the queued records stay
queued until they are written in full, `disk_end` stays where the last complete write ended
(the file is cut back to it, best effort) and `flush` raises `JournalWriteError`. The next
`flush` writes the same records at the same offset again, so a partial write is overwritten and
every record offset stays valid; an fsync that fails (EIO) is handled the same way. Creating a
file (a first start, a file set aside) and the write steps of loading (cutting a torn tail,
marking a version 1 file as version 2) are deferred to the first flush (`open_for_writing`), so
a file on a full or read-only disk is still loaded, and the failure comes as the same error.

Loading reads records until one is short, fails its CRC, has an unknown type, is malformed or
breaks gseq continuity: that is a torn tail (the process died mid-write) and the file is
truncated there with a warning that says how many bytes were dropped. A file without our magic
is refused (the path is probably wrong; we never truncate someone else's file); a file whose
snapshot is unreadable is moved aside to ``<path>.corrupt-<time>`` and a fresh journal is
started.

Compaction keeps the file near the in-memory bound: when the bytes before the oldest entry still
held in memory outgrow the bytes after it, a new file is written (magic, a fresh snapshot of the
source table, then the records from that entry on copied byte for byte), fsynced and renamed
over the old one (the copy runs in the kernel, ``copy_file_range``, where it can). The snapshot
carries every advance made so far, so dropping the advance records before the copy start loses
nothing. An offset per entry record makes finding the copy start O(1).

The copy runs off the router loop (`compact_start`, after a flush): a thread writes the temp
file (magic, the snapshot taken when it starts, the old file's bytes from the copy start up to
`disk_end`), then catches up with what the loop appended meanwhile, round by round, and fsyncs
it. The loop goes on appending to the old file; bytes below `disk_end` never change, so the
thread reads them without a lock. Once the thread is done, the next flush (`compact_poll`)
copies the few records appended since its last round, fsyncs the temp file and renames it over
the old one: the rename is the commit point, so a crash at any moment leaves either the old
file or the new one, each complete (a leftover temp file is never read, and the next compaction
overwrites it). Every entry offset then moves by the same amount (one shift, O(1)). A failed
compaction (in the thread or in the loop's last step) removes the temp file, keeps the old
file in use, logs, and is tried again after a backoff (`COMPACT_RETRY_FIRST` doubling to
`COMPACT_RETRY_MAX`); appends go on meanwhile. `close` and a synchronous `compact` (the
fallback of a flush that failed, see `broker.router.journal`) cancel a compaction in progress
first: the thread stops within one chunk of its copy and removes its temp file.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import struct
import threading
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
CANCEL_WAIT: Final = 10.0  # seconds a cancelled background compaction may take to stop
COMPACT_MIN_BYTES: Final = 4 * 1024 * 1024
COMPACT_RETRY_FIRST: Final = 5.0  # seconds after a failed compaction; doubles per failure
COMPACT_RETRY_MAX: Final = 300.0
# Dead bytes over this many times the live ones: background compactions fall behind (a flood of
# appends) or failed (their temp file raced the appends for a small disk), and the loop compacts
# itself (`overgrown`), so the file stays near its bound and the live part fits beside it.
OVERGROWN: Final = 2
ROOM_MARGIN: Final = 1024 * 1024  # free bytes kept beyond what a compaction needs
# `short_of_room` compacts on a full disk only when the dead part is at least 1 / SHORT_PAYS of
# the live part it copies, and when the live part and SHORT_FITS more (the snapshot) fit now.
SHORT_PAYS: Final = 8
SHORT_FITS: Final = 64 * 1024
COPY_CHUNK: Final = 1024 * 1024
# The compaction thread copies this much per call; it sees a cancel between two calls.
BACKGROUND_CHUNK: Final = 8 * 1024 * 1024
# The compaction thread copies what the loop appended meanwhile (and fsyncs it) again and again
# while more than this came in since its last round (at most CATCHUP_ROUNDS times): the loop
# itself then copies and fsyncs only a short tail.
CATCHUP_BYTES: Final = 1024 * 1024
CATCHUP_ROUNDS: Final = 3
IOV_MAX: Final = max(16, min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024))
# copy_file_range cannot copy between these two files: copy through a buffer instead
_NO_COPY_RANGE: Final = frozenset({errno.ENOSYS, errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP})

# A queued piece of a record: the body goes to the kernel as the router holds it.
Piece = bytes | memoryview

# on_entry(gseq, src, epoch, seq, topic, body) is called for every entry record while loading.
EntrySink = Callable[[int, str, int, int, str, bytes], None]
# on_advance(src, epoch, hc) is called for every advance record while loading.
AdvanceSink = Callable[[str, int, int], None]


class JournalWriteError(BusError):
    """The journal file could not be written (disk full, I/O error, read-only filesystem).

    Nothing is lost: what was queued stays queued and the next `JournalFile.flush` writes it
    again. `op` is the step that failed (``write``, ``fsync``, ``create``, ``open``,
    ``set aside``), `errno`/`errno_name`/`strerror` come from the OSError, `path` is the file.
    """

    def __init__(self, path: Path, op: str, exc: OSError) -> None:
        self.path = path
        self.op = op
        self.errno = exc.errno or 0
        self.errno_name = errno.errorcode.get(self.errno, str(self.errno))
        self.strerror = exc.strerror or str(exc)
        super().__init__(f"journal {path}: {op} failed: {self.strerror} ({self.errno_name})")


@dataclass
class Snapshot:
    first: int = 1
    sources: list[tuple[str, int, int]] = field(default_factory=list)
    origin: int = 0  # the router epoch that started this gseq numbering
    leases: Any = None  # the router's lease table (broker.router.leases checks it), or None


def _record(payload: bytes) -> bytes:
    return REC.pack(len(payload), zlib.crc32(payload)) + payload


def _snapshot_record(snap: Snapshot) -> bytes:
    body = msgpack.packb(
        {"first": snap.first, "sources": [list(s) for s in snap.sources],
         "origin": snap.origin, "written": time.time(),
         **({} if snap.leases is None else {"leases": snap.leases})},
        use_bin_type=True,
    )
    return _record(bytes([TYPE_SNAPSHOT]) + body)


def _parse_snapshot(payload: bytes) -> Snapshot:
    obj: Any = msgpack.unpackb(payload[1:], raw=False)
    first = obj["first"]
    if not isinstance(first, int) or first < 1:
        raise ValueError(f"snapshot first gseq {first!r} is invalid")
    sources = [(str(s), int(e), int(h)) for s, e, h in obj["sources"]]
    return Snapshot(first=first, sources=sources, origin=int(obj.get("origin", 0)),
                    leases=obj.get("leases"))


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


def _retire(fd: int, renamed: Path | None) -> None:
    """Make the rename of `renamed` (if given) durable, then close `fd`, the last descriptor
    of the file it replaced, which frees that file's blocks: the old file lasts until the new
    one is in its place for good. Slow for a big file, so a thread does it."""
    if renamed is not None:
        try:
            _fsync_dir(renamed)
        except OSError as exc:  # the file is complete and in place; only the rename may not last
            log.warning("journal %s: fsync of its folder failed after the rename: %s",
                        renamed, exc)
    with contextlib.suppress(OSError):
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # A rename is only durable once the directory entry is on disk.
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pwrite_all(fd: int, pieces: list[Piece], offset: int) -> int:
    """Write `pieces` back to back at `offset` (``pwritev``, at most IOV_MAX at a time, going
    on after a short write); returns the offset after the last byte. Nothing is copied."""
    i, n = 0, len(pieces)
    rest: memoryview | None = None  # the unwritten part of pieces[i] after a short write
    while i < n:
        batch: list[Piece] = pieces[i:i + IOV_MAX]
        if rest is not None:
            batch[0] = rest
        written = os.pwritev(fd, batch, offset)
        if written == 0 and any(len(b) for b in batch):
            raise OSError(errno.EIO, "pwritev wrote nothing")
        offset += written
        rest = None
        for buf in batch:
            size = memoryview(buf).nbytes
            if written < size:
                rest = memoryview(buf).cast("B")[written:]
                break
            written -= size
            i += 1
    return offset


class _Cancelled(Exception):
    """The loop gave up the compaction in progress (`JournalFile.close`, a synchronous one)."""


def _copy_range(src: int, dst: int, start: int, end: int, out: int, chunk: int = COPY_CHUNK,
                cancel: threading.Event | None = None) -> int:
    """Copy bytes [start, end) of `src` to `dst` at `out`; returns `dst`'s new end. In the
    kernel where it can (``copy_file_range``), else through a buffer; `chunk` bytes a call,
    `cancel` (raising `_Cancelled`) checked before each."""
    in_kernel = hasattr(os, "copy_file_range")
    while start < end:
        if cancel is not None and cancel.is_set():
            raise _Cancelled
        count = min(end - start, chunk)
        n = 0
        if in_kernel:
            try:
                n = os.copy_file_range(src, dst, count, start, out)
            except OSError as exc:
                if exc.errno not in _NO_COPY_RANGE:
                    raise
                in_kernel = False
        if not in_kernel:
            data = os.pread(src, count, start)
            n = len(data)
            _pwrite_all(dst, [data], out)
        if n == 0:
            raise OSError(errno.EIO, f"journal file ends before offset {end}")
        start += n
        out += n
    return out


class _Compaction:
    """A compaction in progress. Its thread writes the temp file: magic, `snap`, then the old
    file's bytes [`start`, `copied`) (catching up with the loop's appends, `CATCHUP_ROUNDS`),
    fsynced; on success `fd` is the temp file's write descriptor and `out` its size, on a
    failure `error` says why and the temp file is gone. `done` is set either way.

    The thread reads only bytes below the old file's `disk_end` (read through `disk_end`),
    which the loop never changes once written; it touches nothing else of the loop's."""

    def __init__(self, path: Path, snap: Snapshot, start: int, end: int,
                 disk_end: Callable[[], int]) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self.snap = snap
        self.header = b""  # magic + snapshot record, made by the thread
        self.start = start
        self.copied = end  # the old file's bytes up to here are in the temp file
        self.out = 0
        self.fd: int | None = None
        self.error: OSError | None = None
        self.done = threading.Event()
        self.cancel = threading.Event()
        self._disk_end = disk_end
        self.thread = threading.Thread(target=self._run, name="journal-compaction", daemon=True)

    def _run(self) -> None:
        fd: int | None = None
        try:
            self.header = MAGIC + _snapshot_record(self.snap)
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            out = _pwrite_all(fd, [self.header], 0)
            src = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                copied, target = self.start, self.copied
                for _ in range(CATCHUP_ROUNDS + 1):
                    out = _copy_range(src, fd, copied, target, out, BACKGROUND_CHUNK, self.cancel)
                    copied = target
                    if self.cancel.is_set():
                        raise _Cancelled
                    os.fsync(fd)
                    target = self._disk_end()
                    if target - copied <= CATCHUP_BYTES:
                        break
            finally:
                os.close(src)
            self.copied, self.out, self.fd = copied, out, fd
        except _Cancelled:
            pass
        except OSError as exc:
            self.error = exc
        except Exception as exc:  # a bug: the old file stays in use, the failure is loud
            log.exception("journal %s: compaction thread failed", self.path)
            self.error = OSError(errno.EIO, f"compaction thread failed: {exc!r}")
        finally:
            if self.fd is None and fd is not None:
                self.discard(fd)
            self.done.set()

    def discard(self, fd: int) -> None:
        """Close and remove the temp file."""
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)


class JournalFile:
    """One journal file; owned by one thread (the router loop), which may start one
    compaction thread at a time (`compact_start`)."""

    def __init__(self, path: Path, fsync: bool = False,
                 compact_min_bytes: int = COMPACT_MIN_BYTES) -> None:
        self.path = path
        self.fsync = fsync
        self.compact_min_bytes = compact_min_bytes
        self.compactions = 0
        self.compact_failures = 0
        self.size = 0  # bytes on disk plus bytes queued
        self.disk_end = 0  # where the last complete write ended: the next write goes here
        self._fd: int | None = None
        self._writable = False  # loaded and not closed
        self._pending: list[Piece] = []
        self._first = 1  # gseq of offsets[0]
        # file offset of each entry record (minus _shift), by gseq - _first; a compaction
        # moves them all by the same amount, in _shift
        self._offsets = array("q")
        self._shift = 0
        self._bg: _Compaction | None = None  # a compaction in progress
        self._stuck: threading.Thread | None = None  # a cancelled compaction that hangs
        # write steps of loading, done by open_for_writing (the disk may not take them yet)
        self._header: bytes | None = None  # a new file's magic + snapshot, not created yet
        self._aside: Path | None = None  # an unreadable file still to be moved here
        self._upgrade_pending = False  # a version 1 file whose version byte is still 1
        self._compact_after = 0.0  # monotonic time before which no compaction is tried
        self._compact_delay = 0.0
        # the same for `overgrown` and `short_of_room`: only loop failures set it
        self._overgrown_after = 0.0

    @property
    def queued(self) -> int:
        """Bytes queued and not yet written."""
        return self.size - self.disk_end

    # -- loading -----------------------------------------------------------------------------

    def load(self, on_entry: EntrySink, origin: int = 0,
             on_advance: AdvanceSink | None = None) -> Snapshot:
        """Read the file (if any): feed every intact entry to `on_entry` and every advance
        record to `on_advance`; a torn tail is cut by `open_for_writing`.

        Only reads: the writes of loading (creating a file, cutting a torn tail, upgrading a
        version 1 file, setting an unreadable file aside) wait for `open_for_writing`, so a
        file on a full or read-only disk still loads. `origin` goes into the snapshot of a file
        created now (none, empty or set aside).
        """
        self._writable = True
        if not self.path.exists() or self.path.stat().st_size == 0:
            return self._new(Snapshot(origin=origin))
        with self.path.open("rb") as fh:
            magic = self._check_magic(fh.read(len(MAGIC)))
            try:
                snap = self._read_snapshot(fh)
            except Exception as exc:  # any decoding failure means the same: unreadable
                return self._set_aside(exc, origin)
            good_end = self._read_records(fh, snap.first, on_entry, on_advance)
        total = self.path.stat().st_size
        if total > good_end:
            log.warning("journal %s: torn tail, dropped %d bytes after offset %d "
                        "(the router stopped mid-write; those messages were never acked)",
                        self.path, total - good_end, good_end)
        self._upgrade_pending = magic == MAGIC_V1
        self.size = self.disk_end = good_end
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
        self._shift = 0
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

    def _set_aside(self, exc: Exception, origin: int) -> Snapshot:
        self._aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        log.error("journal %s: snapshot unreadable (%s); moving it to %s and starting a new "
                  "journal", self.path, exc, self._aside)
        return self._new(Snapshot(origin=origin))

    def _new(self, snap: Snapshot) -> Snapshot:
        """Start an empty file (created by `open_for_writing`): records go after its header."""
        self._header = MAGIC + _snapshot_record(snap)
        self.size = self.disk_end = len(self._header)
        self._first = snap.first
        self._offsets = array("q")
        self._shift = 0
        return snap

    def open_for_writing(self) -> None:
        """Do the write steps of loading and open the file for appending (done by `flush` too,
        so a step that failed is retried there); raises JournalWriteError."""
        if self._fd is not None or not self._writable:
            return
        step = "open"
        try:
            if self._aside is not None:
                step = "set aside"
                os.replace(self.path, self._aside)
                self._aside = None
            if self._header is not None:
                step = "create"
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd, _ = self._write_new(self._header, None, [])
                self._header = None
            else:
                fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    self._finish_load(fd)
                except BaseException:
                    os.close(fd)
                    raise
        except OSError as exc:
            raise JournalWriteError(self.path, step, exc) from exc
        self._fd = fd

    def _finish_load(self, fd: int) -> None:
        """Cut a torn tail, mark a version 1 file as version 2 (before an advance record can
        be appended: an older router takes one for a torn tail and would cut the file there,
        so it must refuse the file instead)."""
        if os.fstat(fd).st_size > self.disk_end:
            os.ftruncate(fd, self.disk_end)
            os.fsync(fd)
        if self._upgrade_pending:
            os.pwrite(fd, MAGIC[-1:], len(MAGIC) - 1)
            os.fsync(fd)
            self._upgrade_pending = False
            log.info("journal %s: format version 1 upgraded to %d", self.path, VERSION)

    # -- writing -----------------------------------------------------------------------------

    def add(self, gseq: int, src: str, epoch: int, seq: int, topic: str, body: bytes) -> None:
        """Queue one entry record; gseq must follow the previous one."""
        src_b = src.encode()
        topic_b = topic.encode()
        head = ENTRY.pack(TYPE_ENTRY, gseq, epoch, seq, len(src_b), len(topic_b)) + src_b + topic_b
        crc = zlib.crc32(body, zlib.crc32(head))
        self._offsets.append(self.size - self._shift)
        rec = REC.pack(len(head) + len(body), crc)
        # Three pieces, handed to pwritev as they are: the body is never copied here.
        self._pending += (rec, head, body)
        self.size += REC.size + len(head) + len(body)

    def add_advance(self, src: str, epoch: int, hc: int) -> None:
        """Queue an advance record: (src, epoch)'s hc rose to `hc` without an entry."""
        rec = _advance_record(src, epoch, hc)
        self._pending.append(rec)
        self.size += len(rec)

    def flush(self) -> None:
        """Write the queued records at `disk_end` (and fsync if asked).

        On failure they stay queued, the file is cut back to `disk_end` (best effort: the next
        flush overwrites whatever part was written anyway) and JournalWriteError is raised."""
        if not self._writable:
            return
        self.open_for_writing()
        if not self._pending:
            return
        fd = self._fd
        assert fd is not None
        step = "write"
        try:
            end = _pwrite_all(fd, self._pending, self.disk_end)
            if self.fsync:
                step = "fsync"
                os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self.disk_end)
            raise JournalWriteError(self.path, step, exc) from exc
        self._pending.clear()
        self.disk_end = end

    # -- compaction --------------------------------------------------------------------------

    def should_compact(self, first_retained: int) -> bool:
        """True when the records before `first_retained` outweigh those from it on (and no
        failed compaction is waiting for its retry, and none is in progress)."""
        if self._bg is not None:
            return False
        start = self._offset_of(first_retained)
        dead = start - len(MAGIC)
        if dead <= max(self.size - start, self.compact_min_bytes):
            return False
        return time.monotonic() >= self._compact_after

    def overgrown(self, first_retained: int) -> bool:
        """True when the records before `first_retained` outweigh those from it on
        `OVERGROWN` times over: time for a synchronous `compact`, whether a compaction is in
        progress or not, and even while a failed background one waits for its retry."""
        start = self._offset_of(first_retained)
        dead = start - len(MAGIC)
        if dead <= OVERGROWN * max(self.size - start, self.compact_min_bytes):
            return False
        return time.monotonic() >= self._overgrown_after

    def short_of_room(self, first_retained: int) -> bool:
        """Writing what is queued would leave less free space than a compaction needs (the
        live part, in a new file beside the old one), and a compaction fits now: compact first.
        A compaction writes only the live part, so it drops the file's dead records and also
        the queued ones the journal has evicted already (a batch bigger than the journal's
        bound is mostly dead on arrival). A flood must not fill the disk with dead records until
        no compaction can ever run. Only a failed compaction on the loop backs this off: a
        background one that failed (its temp file raced the appends for the room) is no reason
        to let the disk fill."""
        if self._fd is None or self._first >= first_retained \
                or time.monotonic() < self._overgrown_after:
            return False
        start = self._offset_of(first_retained)
        live = self.size - start  # written or queued
        if (start - len(MAGIC)) * SHORT_PAYS < live:  # it would free too little for its copy
            return False
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return False
        free = st.f_bavail * st.f_frsize
        queued = self.size - self.disk_end
        return free - queued < live + ROOM_MARGIN and free >= live + SHORT_FITS

    def can_shrink(self, first_retained: int) -> bool:
        """Whether the file (written or queued) holds entries before `first_retained`, which
        a compaction would drop."""
        return self._fd is not None and self._first < first_retained

    def compact(self, snap: Snapshot, fallback: bool = False) -> bool:
        """Rewrite the file as snapshot + the records from gseq `snap.first` on, written or
        still queued; queued records before it are never written (the journal evicted them).

        False when the new file cannot be written: the old one stays intact and in use, what
        is queued stays queued, the failure is logged and the next `should_compact` waits for
        a backoff. `fallback`: tried because a flush failed (the live part alone may still fit
        a full disk), so a failure only counts for that flush."""
        if self._fd is None:
            return False
        self._cancel_compaction()
        if self._stuck is not None and self._stuck.is_alive():  # it still owns the temp file
            return False
        start = self._offset_of(snap.first)
        header = MAGIC + _snapshot_record(snap)
        try:
            fd, size = self._write_new(header, start, self._queued_from(start))
        except OSError as exc:
            self._compact_failed(exc, fallback)
            return False
        self._pending.clear()
        self._switch(fd, snap.first, len(header) - start)
        self.disk_end = size  # the queued records are in the new file
        assert self.size == size
        return True

    def compact_start(self, snap: Snapshot) -> bool:
        """Start a compaction in a thread, like `compact` but with the records written so far
        (none may be queued): the loop goes on appending to the old file, and `compact_poll`
        finishes it. False when one is in progress or records are queued."""
        if self._fd is None or self._bg is not None or self._pending:
            return False
        if self._stuck is not None and self._stuck.is_alive():  # it still owns the temp file
            return False
        start = self._offset_of(snap.first)
        bg = _Compaction(self.path, snap, start, max(start, self.disk_end),
                         lambda: self.disk_end)
        self._bg = bg
        bg.thread.start()
        return True

    @property
    def compacting(self) -> bool:
        return self._bg is not None

    def wait_compaction(self, timeout: float | None = None) -> bool:
        """Wait until the compaction thread in progress (if any) is done; True when it is.
        The compaction is finished by the next `compact_poll`."""
        return self._bg is None or self._bg.done.wait(timeout)

    def compact_poll(self) -> bool:
        """Finish the compaction in progress once its thread is done and nothing is queued:
        copy the records appended since its last round to the temp file, fsync it, rename it
        over the file (the commit point) and write to it from then on. True when it did; a
        failure leaves the old file in use and backs off like one of `compact`."""
        bg = self._bg
        if bg is None or not bg.done.is_set() or self._pending:
            return False
        self._bg = None
        fd = bg.fd
        if fd is None:
            if bg.error is not None:
                self._compact_failed(bg.error, False, background=True)
            return False
        delta = len(bg.header) - bg.start
        try:
            src = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                out = _copy_range(src, fd, bg.copied, self.disk_end, bg.out)
            finally:
                os.close(src)
            if out != self.disk_end + delta:
                raise OSError(errno.EIO, f"compacted file has {out} bytes, expected "
                                         f"{self.disk_end + delta}")
            if self.fsync:  # else those records are no more at risk than in the old file
                os.fsync(fd)
            os.replace(bg.tmp, self.path)
        except OSError as exc:
            bg.discard(fd)
            self._compact_failed(exc, False, background=True)
            return False
        if self.fsync:  # acks after this point count on the new file: its name must last too
            try:
                _fsync_dir(self.path)
            except OSError as exc:
                log.warning("journal %s: fsync of its folder failed after the rename: %s",
                            self.path, exc)
            self._switch(fd, bg.snap.first, delta)
        else:
            self._switch(fd, bg.snap.first, delta, self.path)
        return True

    def _cancel_compaction(self) -> None:
        """Stop the compaction in progress (within one chunk of its copy) and remove its file."""
        bg, self._bg = self._bg, None
        if bg is None:
            return
        bg.cancel.set()
        bg.thread.join(CANCEL_WAIT)
        if bg.thread.is_alive():  # stuck in an fsync of a dying disk: leave it, loudly
            log.error("journal %s: a background compaction did not stop within %.0f s (its "
                      "disk hangs?); its temp file %s is left behind", self.path, CANCEL_WAIT,
                      bg.tmp)
            self._stuck = bg.thread  # no other compaction while it may still write that file
            return
        if bg.fd is not None:  # it was done before it saw the cancel
            bg.discard(bg.fd)

    def _switch(self, fd: int, first: int, delta: int, renamed: Path | None = None) -> None:
        """Write to the new file `fd` from now on: it holds the records from gseq `first` on,
        each `delta` bytes from where it was in the old file. `renamed`: the rename still has
        to be made durable (`_retire`)."""
        old, self._fd = self._fd, fd
        if old is not None:
            threading.Thread(target=_retire, args=(old, renamed), name="journal-retire",
                             daemon=True).start()
        del self._offsets[:first - self._first]
        self._shift += delta
        self._first = first
        self.size += delta
        self.disk_end += delta
        self._compact_delay = 0.0
        self.compactions += 1
        log.info("journal %s compacted to %d bytes from gseq %d", self.path, self.size, first)

    def _compact_failed(self, exc: OSError, fallback: bool, background: bool = False) -> None:
        name = errno.errorcode.get(exc.errno or 0, exc.errno)
        if fallback:
            log.debug("journal %s: the live part does not fit either: %s (%s)", self.path,
                      exc.strerror or exc, name)
            return
        self.compact_failures += 1
        self._compact_delay = min(max(2 * self._compact_delay, COMPACT_RETRY_FIRST),
                                  COMPACT_RETRY_MAX)
        self._compact_after = time.monotonic() + self._compact_delay
        if not background:
            self._overgrown_after = self._compact_after
        log.error("journal %s: compaction failed: %s (%s); the old file stays in use, next try "
                  "in %g s", self.path, exc.strerror or exc, name, self._compact_delay)

    def _queued_from(self, start: int) -> list[Piece]:
        """The queued pieces from file offset `start` on (all of them if it is written)."""
        offset = self.disk_end
        for i, piece in enumerate(self._pending):
            if offset >= start:
                return self._pending[i:]
            offset += memoryview(piece).nbytes
        return []

    def _offset_of(self, gseq: int) -> int:
        index = gseq - self._first
        return self._offsets[index] + self._shift if 0 <= index < len(self._offsets) else self.size

    def _write_new(self, header: bytes, copy_from: int | None,
                   queued: list[Piece]) -> tuple[int, int]:
        """Write `header`, the current file's records from offset `copy_from` up to `disk_end`
        (if it is below) and the `queued` pieces to a temp file, fsync it and rename it over
        the file.

        Returns the new file's write descriptor and size. On failure the temp file is removed
        and the current file is untouched; the OSError propagates."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            end = _pwrite_all(fd, [header], 0)
            if copy_from is not None and copy_from < self.disk_end:
                src = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    end = _copy_range(src, fd, copy_from, self.disk_end, end)
                finally:
                    os.close(src)
            if queued:
                end = _pwrite_all(fd, queued, end)
            os.fsync(fd)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        try:
            _fsync_dir(self.path)
        except OSError as exc:  # the file is complete and in place; only the rename may not last
            log.warning("journal %s: fsync of its folder failed after the rename: %s",
                        self.path, exc)
        return fd, end

    def close(self) -> None:
        """Stop a compaction in progress (its temp file is removed, the old file stays), write
        what is queued and close; a JournalWriteError propagates after the close."""
        self._cancel_compaction()
        try:
            self.flush()
        finally:
            self._writable = False
            if self._fd is not None:
                fd, self._fd = self._fd, None
                os.close(fd)
