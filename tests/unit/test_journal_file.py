"""The journal file's background compaction: the loop appends while a thread writes the new file.

The interleavings are made exact with `Gate`, which stands in for ``_copy_range`` and holds the
compaction thread inside its first copy until the test lets it go; nothing waits on a clock."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest

from broker.router import journal_file
from broker.router.journal import Journal
from broker.router.journal_file import JournalFile, Snapshot

Entry = tuple[int, str, int, int, str, bytes]
Advance = tuple[str, int, int]
WAIT = 10.0  # seconds: a bound for the thread, never a means of ordering


def load(path: Path) -> tuple[Snapshot, list[Entry], list[Advance]]:
    """Snapshot, entry records and advance records of the file at `path`, as a restart reads
    them."""
    entries: list[Entry] = []
    advances: list[Advance] = []
    f = JournalFile(path)
    snap = f.load(lambda *e: entries.append(e), on_advance=lambda *a: advances.append(a))
    f.close()
    return snap, entries, advances


def gseqs(path: Path) -> list[int]:
    return [g for g, *_ in load(path)[1]]


def compacting(f: JournalFile) -> bool:
    """Whether a compaction is in progress (a call: each test asks again, mypy narrows not)."""
    return f.compacting


def body(g: int, size: int = 3000) -> bytes:
    return f"message {g} ".encode().ljust(size, b"x")


def add(f: JournalFile, first: int, last: int) -> None:
    for g in range(first, last + 1):
        f.add(g, "a", 1, g, "evt.a.x", body(g))


def written(path: Path, first: int, last: int) -> JournalFile:
    f = JournalFile(path, compact_min_bytes=1)
    f.load(lambda *e: None)
    add(f, first, last)
    f.flush()
    return f


class Gate:
    """Stands in for ``journal_file._copy_range``. The compaction thread's first call (the one
    calls with a cancel event) waits until `release` is set, or, with `until_cancel`, until the
    compaction is cancelled; then every call copies for real. Calls are counted by side."""

    def __init__(self, until_cancel: bool = False) -> None:
        self.real = journal_file._copy_range
        self.until_cancel = until_cancel
        self.entered = threading.Event()
        self.release = threading.Event()
        self.thread_calls = 0
        self.loop_calls = 0

    def __call__(self, src: int, dst: int, start: int, end: int, out: int,
                 chunk: int = journal_file.COPY_CHUNK,
                 cancel: threading.Event | None = None) -> int:
        if cancel is None:
            self.loop_calls += 1
        else:
            self.thread_calls += 1
            if not self.entered.is_set():
                self.entered.set()
                (cancel if self.until_cancel else self.release).wait(WAIT)
        return self.real(src, dst, start, end, out, chunk, cancel)


def test_appends_during_a_background_compaction_load_back_once_and_in_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "journal.bin"
    f = written(path, 1, 20)
    gate = Gate()
    monkeypatch.setattr(journal_file, "_copy_range", gate)
    monkeypatch.setattr(journal_file, "CATCHUP_BYTES", 50_000)
    inode = path.stat().st_ino
    assert f.should_compact(15)
    assert f.compact_start(Snapshot(first=15, sources=[("a", 1, 20)], origin=7))
    assert compacting(f) and not f.should_compact(15) and not f.compact_start(Snapshot(15))
    assert gate.entered.wait(WAIT)
    add(f, 21, 40)  # 60 kB while the thread copies: it catches up on them itself
    f.add_advance("b", 2, 9)
    f.flush()
    assert not f.compact_poll()  # the thread is not done: nothing changes
    gate.release.set()
    assert f.wait_compaction(WAIT)
    assert gate.thread_calls == 2  # the bulk, then one round for what came in meanwhile
    add(f, 41, 45)  # after the thread's last round: the loop copies these itself
    f.flush()
    assert path.stat().st_ino == inode and gseqs(path) == list(range(1, 46))
    assert f.compact_poll() and not compacting(f)
    assert gate.loop_calls == 1 and f.compactions == 1
    assert path.stat().st_ino != inode and f.size == f.disk_end == path.stat().st_size
    add(f, 46, 50)  # offsets rebased: the new file takes appends where they belong
    f.flush()
    f.close()
    snap, entries, advances = load(path)
    assert (snap.first, snap.sources, snap.origin) == (15, [("a", 1, 20)], 7)
    assert [g for g, *_ in entries] == list(range(15, 51))
    assert all(b == body(g) for g, *_, b in entries)
    assert advances == [("b", 2, 9)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.bin"]


def test_a_crash_before_or_after_the_rename_leaves_one_complete_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "journal.bin"
    f = written(path, 1, 20)
    gate = Gate()
    monkeypatch.setattr(journal_file, "_copy_range", gate)
    assert f.compact_start(Snapshot(first=12, sources=[("a", 1, 20)]))
    assert gate.entered.wait(WAIT)
    add(f, 21, 30)
    f.flush()
    gate.release.set()
    assert f.wait_compaction(WAIT)
    add(f, 31, 35)
    f.flush()
    # The thread has written and fsynced the temp file; the loop has not renamed it yet.
    assert (tmp_path / "journal.bin.tmp").exists()
    states = {"thread done": path.read_bytes()}
    real_replace = os.replace

    def replace(src: str | Path, dst: str | Path) -> None:
        states["just before the rename"] = Path(dst).read_bytes()
        real_replace(src, dst)
        states["just after the rename"] = Path(dst).read_bytes()

    monkeypatch.setattr(os, "replace", replace)
    assert f.compact_poll()
    monkeypatch.undo()
    f.close()
    expect = {"thread done": 1, "just before the rename": 1, "just after the rename": 12}
    for i, (state, first) in enumerate(expect.items()):
        restart = tmp_path / f"restart{i}" / "journal.bin"  # a router restarting from it
        restart.parent.mkdir()
        restart.write_bytes(states[state])
        _, entries, _ = load(restart)
        assert [g for g, *_ in entries] == list(range(first, 36)), state
        assert all(b == body(g) for g, *_, b in entries), state
        assert restart.stat().st_size == len(states[state]), state  # no torn tail to cut


def copying(path: Path, monkeypatch: pytest.MonkeyPatch) -> JournalFile:
    """A file of gseq 1..20 whose background compaction (from 15) is held in its copy until
    it is cancelled."""
    f = written(path, 1, 20)
    gate = Gate(until_cancel=True)
    monkeypatch.setattr(journal_file, "_copy_range", gate)
    assert f.compact_start(Snapshot(first=15, sources=[("a", 1, 20)]))
    assert gate.entered.wait(WAIT)
    return f


def test_close_during_a_compaction_cancels_it_and_keeps_the_old_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "journal.bin"
    f = copying(path, monkeypatch)
    thread = f._bg.thread if f._bg is not None else None
    add(f, 21, 25)  # queued: close writes them to the old file
    f.close()
    assert thread is not None and not thread.is_alive()
    assert f.compactions == 0 and f.compact_failures == 0 and not compacting(f)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.bin"]
    assert gseqs(path) == list(range(1, 26))


def test_a_synchronous_compaction_cancels_the_one_in_progress(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "journal.bin"
    f = copying(path, monkeypatch)
    add(f, 21, 25)  # queued: the synchronous compaction takes them too
    assert f.compact(Snapshot(first=18, sources=[("a", 1, 25)]))
    assert f.compactions == 1 and not compacting(f) and f.queued == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.bin"]
    add(f, 26, 27)
    f.close()
    assert gseqs(path) == list(range(18, 28))


def test_a_journal_compacting_while_it_appends_reloads_what_it_holds(tmp_path: Path) -> None:
    """Real interleaving: the thread runs while the journal goes on appending and flushing."""
    rng = random.Random(5)
    path = tmp_path / "journal.bin"
    j = Journal(20, 10**9, path, compact_min_bytes=0)
    j.open()
    assert j._file is not None
    for seq in range(1, 401):
        j.sources.put(("a", 1), seq)
        j.append("evt.a.x", body(seq, rng.randrange(100, 20_000)), "a", 1, seq)
        if seq % 7 == 0:
            j.advance(("b", 1), seq)
        j.flush()
        if seq % 100 == 0:  # now and then the compaction in progress is let to finish
            assert j._file.wait_compaction(WAIT)
            j.flush()
    assert j._file.compactions >= 4
    j.close()
    k = Journal(20, 10**9, path)
    k.open()
    assert (k.first, k.last) == (j.first, j.last) == (381, 400)
    assert [b for _, _, b in k.scan(1, 500)] == [b for _, _, b in j.scan(1, 500)]
    assert k.sources.get(("a", 1)) == 400 and k.sources.get(("b", 1)) == 399
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.bin"]
