"""Journal write failures without a real full disk: ``os.pwritev``/``os.fsync``/... replaced by
fakes that write part of what they are given, then fail the way a full, broken or read-only
disk does. Whatever the failure, nothing queued is lost or written twice, and a compaction
that cannot write its new file leaves the old one byte for byte as it was."""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from broker.router import journal_file
from broker.router.journal import RETRY_FIRST, RETRY_MAX, Journal
from broker.router.journal_file import JournalFile, JournalWriteError, Snapshot

Entry = tuple[int, str, int, int, str, bytes]


def entries_of(path: Path) -> list[Entry]:
    """Every entry record of the file at `path`, as a fresh load reads it."""
    got: list[Entry] = []
    f = JournalFile(path)
    f.load(lambda *e: got.append(e))
    f.close()
    return got


def body(i: int, size: int = 3000) -> bytes:
    return f"message {i} ".encode().ljust(size, b"x")


def fill(j: Journal, start: int, n: int, size: int = 3000) -> None:
    for seq in range(start, start + n):
        j.sources.put(("a", 1), seq)
        j.append("evt.a.x", body(seq, size), "a", 1, seq)


class FlakyDisk:
    """Stands in for ``os.pwritev``: each step of `plan` is one call, ``("short", n)`` writes
    only the first n bytes asked, ``("fail", errno)`` writes half of what is asked and
    raises, and when the plan is used up the real call runs."""

    def __init__(self, plan: Sequence[tuple[str, int]]) -> None:
        self.plan = list(plan)
        self.calls = 0
        self.real: Callable[..., int] = os.pwritev

    def __call__(self, fd: int, buffers: Sequence[Any], offset: int) -> int:
        self.calls += 1
        if not self.plan:
            return self.real(fd, buffers, offset)
        what, arg = self.plan.pop(0)
        data = b"".join(bytes(b) for b in buffers)
        if what == "short":
            return os.pwrite(fd, data[:arg], offset)
        os.pwrite(fd, data[:len(data) // 2], offset)
        raise OSError(arg, os.strerror(arg))


def test_partial_write_then_enospc_then_success_loads_every_entry_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "journal.bin"
    j = Journal(10_000, 10**9, path)
    j.open()
    fill(j, 1, 5)
    j.flush()
    on_disk = path.stat().st_size
    fill(j, 6, 20)
    disk = FlakyDisk([("short", 5000), ("fail", errno.ENOSPC)])
    monkeypatch.setattr(os, "pwritev", disk)
    with pytest.raises(JournalWriteError) as info:
        j.flush()
    err = info.value
    assert (err.errno, err.errno_name, err.op, err.path) == (errno.ENOSPC, "ENOSPC", "write",
                                                             path)
    assert "No space left on device" in str(err)
    assert j.blocked and j.last == 5  # what is on disk, not what is held
    assert [g for g, _, _ in j.scan(1, 100)] == [1, 2, 3, 4, 5]
    assert path.stat().st_size == on_disk  # cut back to where the last complete write ended
    assert [seq for _, _, _, seq, _, _ in entries_of(path)] == [1, 2, 3, 4, 5]

    fill(j, 26, 3)  # appends go on queueing while blocked
    monkeypatch.setattr(os, "pwritev", FlakyDisk([("fail", errno.ENOSPC)]))
    assert j.retry() is None and j.fault is not None and j.fault.retries == 1
    monkeypatch.undo()
    ended = j.retry()
    assert ended is not None and ended.held == 23 and ended.retries == 2
    assert not j.fault_info()["blocked"] and j.last == 28
    j.close()
    got = entries_of(path)
    assert [(g, seq) for g, _, _, seq, _, _ in got] == [(g, g) for g in range(1, 29)]
    assert all(b == body(seq) for _, _, _, seq, _, b in got)


def test_a_partial_write_the_file_could_not_be_cut_back_from_is_overwritten(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "journal.bin"
    j = Journal(10_000, 10**9, path)
    j.open()
    fill(j, 1, 10)
    monkeypatch.setattr(os, "pwritev", FlakyDisk([("fail", errno.EIO)]))
    monkeypatch.setattr(os, "ftruncate", _raise(errno.EROFS))
    with pytest.raises(JournalWriteError):
        j.flush()
    assert path.stat().st_size > len(journal_file.MAGIC) + 40  # half a batch left behind
    monkeypatch.undo()
    assert j.retry() is not None
    j.close()
    assert [seq for _, _, _, seq, _, _ in entries_of(path)] == list(range(1, 11))


def test_fsync_failure_keeps_the_batch_for_a_rewrite(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "journal.bin"
    j = Journal(10_000, 10**9, path, fsync=True)
    j.open()
    fill(j, 1, 4)
    monkeypatch.setattr(os, "fsync", _raise(errno.EIO))
    with pytest.raises(JournalWriteError) as info:
        j.flush()
    assert info.value.op == "fsync" and info.value.errno_name == "EIO"
    assert j.blocked and j.last == 0
    monkeypatch.undo()
    assert j.retry() is not None and j.last == 4
    j.close()
    assert [seq for _, _, _, seq, _, _ in entries_of(path)] == [1, 2, 3, 4]


def test_retry_backs_off_from_first_to_max(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    j = Journal(100, 10**6, tmp_path / "journal.bin")
    j.open()
    fill(j, 1, 1)
    monkeypatch.setattr(os, "pwritev", _raise(errno.ENOSPC))
    with pytest.raises(JournalWriteError):
        j.flush()
    assert j.fault is not None
    delays = [j.fault.delay]
    for _ in range(8):
        assert j.retry() is None
        delays.append(j.fault.delay)
    assert delays[0] == RETRY_FIRST and delays[-1] == RETRY_MAX
    assert all(b == min(2 * a, RETRY_MAX) for a, b in itertools.pairwise(delays))
    info = j.fault_info()
    assert info["blocked"] and info["reason"] == "No space left on device"
    assert info["errno"] == "ENOSPC" and info["retries"] == 8 and info["held"] == 1
    assert isinstance(info["free_bytes"], int)
    alarm = j.fault.alarm()
    assert alarm["alarm"] == "journal_write_failed" and alarm["source"] == "router"
    assert alarm["errno"] == "ENOSPC" and alarm["path"] == str(tmp_path / "journal.bin")
    assert "free_bytes" in alarm and "cannot be written" in alarm["message"]


def test_close_while_blocked_logs_and_does_not_raise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "journal.bin"
    j = Journal(100, 10**6, path)
    j.open()
    fill(j, 1, 2)
    j.flush()
    fill(j, 3, 2)
    monkeypatch.setattr(os, "pwritev", _raise(errno.ENOSPC))
    j.close()
    assert "closed with 2 entries" in caplog.text
    monkeypatch.undo()
    assert [seq for _, _, _, seq, _, _ in entries_of(path)] == [1, 2]


class SmallDisk:
    """Stands in for ``os.pwritev`` on a disk of `cap` bytes holding the files of `folder`:
    a write that would grow them past it writes what fits and fails with ENOSPC."""

    def __init__(self, folder: Path, cap: int) -> None:
        self.folder, self.cap = folder, cap
        self.real: Callable[..., int] = os.pwritev

    def __call__(self, fd: int, buffers: Sequence[Any], offset: int) -> int:
        data = b"".join(bytes(b) for b in buffers)
        used = sum(f.stat().st_size for f in self.folder.iterdir())
        size = os.fstat(fd).st_size
        room = self.cap - used
        if offset + len(data) - size > room:
            os.pwrite(fd, data[:max(0, size + room - offset)], offset)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.real(fd, buffers, offset)


def test_a_batch_bigger_than_the_disk_writes_only_what_the_journal_retains(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "journal.bin"
    j = Journal(10_000, 30_000, path, compact_min_bytes=1)
    j.open()
    fill(j, 1, 5)
    j.flush()
    monkeypatch.setattr(os, "pwritev", SmallDisk(tmp_path, 100_000))
    fill(j, 6, 100)  # 300 kB in one batch; the journal keeps the newest 30 kB
    j.flush()  # the whole batch does not fit, the live part does: no fault
    assert j.fault is None and j.last == 105 and path.stat().st_size < 40_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.bin"]
    j.close()
    monkeypatch.undo()
    assert reloaded(path, 105).first == j.first


def reloaded(path: Path, last: int) -> Journal:
    """The journal file at `path` loaded again: it ends at gseq `last`, holds every body from
    its first entry on, and its source table has ("a", 1) at `last`."""
    k = Journal(10_000, 30_000, path)
    k.open()
    assert k.last == last and k.sources.get(("a", 1)) == last
    assert [b for _, _, b in k.scan(k.first, last + 1)] == [body(g) for g in
                                                            range(k.first, last + 1)]
    return k


def only_file_on_disk(monkeypatch: pytest.MonkeyPatch, path: Path, disk: int) -> None:
    """``os.statvfs`` reports a filesystem of `disk` bytes that holds `path` and nothing else."""
    real_statvfs = os.statvfs

    def statvfs(where: Any) -> Any:
        st = real_statvfs(where)
        free = max(0, disk - path.stat().st_size)
        return os.statvfs_result((st.f_bsize, 1, disk, free, free, *tuple(st)[5:]))

    monkeypatch.setattr(os, "statvfs", statvfs)


def test_a_flood_never_fills_the_disk_with_dead_records_a_compaction_could_not_shrink(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file is compacted before a write would leave less free space than a compaction
    needs: the disk (as statvfs reports it) always has room to shrink the file again."""
    path = tmp_path / "journal.bin"
    j = Journal(10_000, 30_000, path, compact_min_bytes=10**9)  # no size-driven compaction
    j.open()
    disk = 400_000  # the filesystem's size; the journal file is all that is on it
    only_file_on_disk(monkeypatch, path, disk)
    for batch in range(40):  # 40 batches of ten 3 kB entries: 1.2 MB through a 400 kB disk
        fill(j, 1 + 10 * batch, 10)
        j.flush()
        free = disk - path.stat().st_size
        live = 30_000 + 3_000  # the bound, and one entry over it
        assert free >= live, f"batch {batch}: {free} bytes free, a compaction needs {live}"
    assert j.fault is None and j.last == 400
    j.close()
    monkeypatch.undo()
    reloaded(path, 400)


def test_a_batch_that_fits_but_would_leave_no_room_is_written_as_its_live_part(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Publishers resend a backlog at once (the router was blocked): one batch many times the
    journal's bound, which the disk still takes. Written as it is, it would be mostly dead
    records, and a compaction (the live part in a new file beside the old one) could never fit
    again; written as a compaction, only its live part reaches the disk."""
    path = tmp_path / "journal.bin"
    j = Journal(10_000, 30_000, path, compact_min_bytes=10**9)  # no size-driven compaction
    j.open()
    disk = 250_000
    only_file_on_disk(monkeypatch, path, disk)
    fill(j, 1, 5)
    j.flush()
    fill(j, 6, 70)  # 210 kB in one batch: it fits, and would leave 25 kB free
    j.flush()
    assert j.fault is None and j.last == 75
    assert disk - path.stat().st_size >= 30_000 + 3_000, "no room left for a compaction"
    j.close()
    monkeypatch.undo()
    reloaded(path, 75)


# -- a file that cannot be created or opened for writing ------------------------------------


def test_creating_the_file_on_a_full_disk_comes_up_blocked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "journal.bin"
    monkeypatch.setattr(os, "pwritev", _raise(errno.ENOSPC))
    j = Journal(100, 10**6, path)
    j.open()  # no raise: blocked
    assert j.fault is not None and j.fault.error.op == "create"
    assert not path.exists() and not list(tmp_path.iterdir())  # no temp file left behind
    fill(j, 1, 3)
    assert j.retry() is None
    monkeypatch.undo()
    assert j.retry() is not None
    j.close()
    assert [seq for _, _, _, seq, _, _ in entries_of(path)] == [1, 2, 3]


def test_a_read_only_disk_still_loads_and_cuts_the_torn_tail_later(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "journal.bin"
    j = Journal(100, 10**6, path)
    j.open()
    fill(j, 1, 3)
    j.flush()
    j.close()
    with path.open("ab") as fh:
        fh.write(b"\x00\x00\x10\x00torn")
    real_open = os.open

    def read_only(p: Any, flags: int, *args: Any) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_open(p, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    k = Journal(100, 10**6, path)
    k.open()
    assert k.fault is not None and k.fault.error.errno_name == "EROFS"
    assert [g for g, _, _ in k.scan(1, 10)] == [1, 2, 3] and k.last == 3
    fill(k, 4, 1)
    monkeypatch.undo()
    assert k.retry() is not None
    k.close()
    assert [seq for _, _, _, seq, _, _ in entries_of(path)] == [1, 2, 3, 4]


def test_a_configuration_error_at_open_still_stops_the_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "pwritev", _raise(errno.EACCES))
    with pytest.raises(JournalWriteError, match="Permission denied"):
        Journal(100, 10**6, tmp_path / "journal.bin").open()


# -- compaction --------------------------------------------------------------------------------


@pytest.mark.parametrize("broken", ["copy_file_range", "fsync", "replace"])
def test_failed_compaction_keeps_the_old_file_byte_identical(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: str) -> None:
    path = tmp_path / "journal.bin"
    f = JournalFile(path, compact_min_bytes=1)
    f.load(lambda *e: None)
    for g in range(1, 21):
        f.add(g, "a", 1, g, "evt.a.x", body(g))
    f.flush()
    before = path.read_bytes()
    assert f.should_compact(15)
    monkeypatch.setattr(os, broken, _raise(errno.ENOSPC))
    assert f.compact(Snapshot(first=15, sources=[("a", 1, 20)])) is False
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.bin"]  # temp file removed
    assert f.compact_failures == 1 and not f.should_compact(15)  # backed off
    f.add(21, "a", 1, 21, "evt.a.x", body(21))  # the old file stays in use
    f.flush()
    assert [g for g, *_ in entries_of(path)] == list(range(1, 22))
    f._compact_after = 0.0  # the backoff has passed
    assert f.should_compact(15) and f.compact(Snapshot(first=15, sources=[("a", 1, 21)]))
    f.add(22, "a", 1, 22, "evt.a.x", body(22))
    f.close()
    got = entries_of(path)
    assert [g for g, *_ in got] == list(range(15, 23))
    assert all(b == body(g) for g, *_, b in got)


def test_compaction_copies_through_a_buffer_where_the_kernel_cannot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "journal.bin"
    f = JournalFile(path, compact_min_bytes=1)
    f.load(lambda *e: None)
    for g in range(1, 11):
        f.add(g, "a", 1, g, "evt.a.x", body(g, 700_000))  # more than one copy chunk in all
    f.flush()
    monkeypatch.setattr(os, "copy_file_range", _raise(errno.EXDEV))
    assert f.compact(Snapshot(first=4, sources=[("a", 1, 10)]))
    f.close()
    got = entries_of(path)
    assert [g for g, *_ in got] == list(range(4, 11))
    assert all(b == body(g, 700_000) for g, *_, b in got)


# -- compaction in the background ------------------------------------------------------------


def _busy(f: JournalFile) -> bool:
    """Whether a compaction is in progress (a call: each test asks again, mypy narrows not)."""
    return f.compacting


def _written(path: Path, fsync: bool = False) -> JournalFile:
    """A file of entries 1..20, due for a compaction from gseq 15."""
    f = JournalFile(path, fsync=fsync, compact_min_bytes=1)
    f.load(lambda *e: None)
    for g in range(1, 21):
        f.add(g, "a", 1, g, "evt.a.x", body(g))
    f.flush()
    assert f.should_compact(15)
    return f


def _compacting(path: Path, fsync: bool = False) -> JournalFile:
    """`_written`, with its compaction from gseq 15 started in its thread."""
    f = _written(path, fsync)
    assert f.compact_start(Snapshot(first=15, sources=[("a", 1, 20)]))
    return f


def _fail_for_tmp(code: int) -> Callable[..., int]:
    real_open = os.open

    def open_(p: Any, flags: int, *args: Any) -> int:
        if str(p).endswith(".tmp"):
            raise OSError(code, os.strerror(code))
        return real_open(p, flags, *args)
    return open_


@pytest.mark.parametrize("broken", ["open", "copy_file_range", "fsync"])
def test_a_failure_in_the_compaction_thread_keeps_the_old_file_in_use(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: str) -> None:
    path = tmp_path / "journal.bin"
    fail = {"open": _fail_for_tmp(errno.EROFS), "copy_file_range": _raise(errno.ENOSPC),
            "fsync": _raise(errno.EIO)}[broken]
    f = _written(path)
    before, inode = path.read_bytes(), path.stat().st_ino
    monkeypatch.setattr(os, broken, fail)  # the loop's appends use none of these
    assert f.compact_start(Snapshot(first=15, sources=[("a", 1, 20)]))
    for g in range(21, 26):  # appends go on while the thread works (and fails)
        f.add(g, "a", 1, g, "evt.a.x", body(g))
    f.flush()
    assert f.wait_compaction(10)
    monkeypatch.undo()
    assert not f.compact_poll() and not _busy(f)
    assert f.compact_failures == 1 and f.compactions == 0 and not f.should_compact(15)
    assert path.stat().st_ino == inode and path.read_bytes()[:len(before)] == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.bin"]  # temp file removed
    f.add(26, "a", 1, 26, "evt.a.x", body(26))  # the old file stays in use
    f.flush()
    assert [g for g, *_ in entries_of(path)] == list(range(1, 27))
    f._compact_after = 0.0  # the backoff has passed: the next try succeeds
    assert f.should_compact(15) and f.compact_start(Snapshot(first=15, sources=[("a", 1, 26)]))
    assert f.wait_compaction(10) and f.compact_poll() and f.compactions == 1
    f.close()
    got = entries_of(path)
    assert [g for g, *_ in got] == list(range(15, 27)) and all(b == body(g) for g, *_, b in got)


@pytest.mark.parametrize("broken", ["copy_file_range", "fsync", "replace"])
def test_a_failure_while_the_loop_finishes_a_compaction_keeps_the_old_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: str) -> None:
    path = tmp_path / "journal.bin"
    f = _compacting(path, fsync=True)  # with journal_fsync, the loop fsyncs that tail too
    assert f.wait_compaction(10)
    for g in range(21, 26):  # a tail the loop copies to the new file itself
        f.add(g, "a", 1, g, "evt.a.x", body(g))
    f.flush()
    before, inode = path.read_bytes(), path.stat().st_ino
    monkeypatch.setattr(os, broken, _raise(errno.ENOSPC))
    assert not f.compact_poll()
    monkeypatch.undo()
    assert f.compact_failures == 1 and f.compactions == 0 and not _busy(f)
    assert path.stat().st_ino == inode and path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.bin"]
    f.add(26, "a", 1, 26, "evt.a.x", body(26))
    f.close()
    assert [g for g, *_ in entries_of(path)] == list(range(1, 27))


def test_a_batch_bigger_than_the_disk_during_a_background_compaction(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "journal.bin"
    j = Journal(10_000, 30_000, path, compact_min_bytes=1)
    j.open()
    fill(j, 1, 20)
    j.flush()  # the file holds twice what memory does: its compaction starts in a thread
    assert j._file is not None and _busy(j._file)
    monkeypatch.setattr(os, "pwritev", SmallDisk(tmp_path, 100_000))
    fill(j, 21, 100)  # 240 kB in one batch; the journal keeps the newest 30 kB
    j.flush()  # the fallback compaction stops the thread's first, then writes the live part
    assert j.fault is None and j.last == 120 and not _busy(j._file)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.bin"]
    j.close()
    monkeypatch.undo()
    assert reloaded(path, 120).first == j.first


def test_a_flood_after_a_failed_background_compaction_is_compacted_on_the_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A background compaction's temp file races the appends for a small disk and loses; the
    appends go on. The file must not grow until the backoff has passed (it could fill the
    disk, and then not even the live part fits beside it): the loop compacts itself."""
    path = tmp_path / "journal.bin"
    j = Journal(10, 10**9, path, compact_min_bytes=1)
    j.open()
    assert j._file is not None
    monkeypatch.setattr(os, "copy_file_range", _raise(errno.ENOSPC))  # the loop's flush uses none
    fill(j, 1, 20)
    j.flush()
    assert _busy(j._file) and j._file.wait_compaction(10)
    monkeypatch.undo()
    fill(j, 21, 20)
    j.flush()  # the thread's failure is counted and backed off, then the loop compacts
    assert j._file.compact_failures == 1 and j._file.compactions == 1 and not _busy(j._file)
    assert path.stat().st_size < 12 * 3100
    j.close()
    assert [g for g, *_ in entries_of(path)] == list(range(31, 41))


def _raise(code: int) -> Callable[..., Any]:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise OSError(code, os.strerror(code))
    return fail


def test_a_failed_background_compaction_does_not_let_a_flood_fill_the_disk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The background compaction's temp file lost the race for the room and backs off; a write
    that would leave no room for a compaction still gets one on the loop first. Only a failed
    compaction on the loop backs that off."""
    path = tmp_path / "journal.bin"
    f = _written(path)
    monkeypatch.setattr(os, "open", _fail_for_tmp(errno.ENOSPC))
    assert f.compact_start(Snapshot(first=15, sources=[("a", 1, 20)]))
    assert f.wait_compaction(10)
    monkeypatch.undo()
    assert not f.compact_poll() and f.compact_failures == 1 and not f.should_compact(15)
    for g in range(21, 24):  # a flood goes on, with little room left on the disk
        f.add(g, "a", 1, g, "evt.a.x", body(g))
    room = f.size - f._offset_of(15) + journal_file.ROOM_MARGIN  # a compaction's new file
    monkeypatch.setattr(os, "statvfs", lambda p: _Statvfs(room + f.queued // 2))
    assert f.short_of_room(15)
    monkeypatch.setattr(os, "open", _fail_for_tmp(errno.ENOSPC))
    assert not f.compact(Snapshot(first=15, sources=[("a", 1, 23)]))  # no room even for that
    assert f.compact_failures == 2 and not f.short_of_room(15)  # now it backs off
    monkeypatch.undo()
    f.close()
    assert [g for g, *_ in entries_of(path)] == list(range(1, 24))


class _Statvfs:
    """What ``os.statvfs`` returns, as far as the journal reads it: `free` bytes available."""

    def __init__(self, free: int) -> None:
        self.f_bavail, self.f_frsize = free, 1
