"""The journal without sockets: bounds, eviction, the file, torn tails, compaction, rebuild."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.router import journal_file
from broker.router.journal import Journal, SourceTable
from broker.wire.errors import BusError


def fill(j: Journal, n: int, src: str = "a", epoch: int = 1, start_seq: int = 1,
         size: int = 10, topic: str = "evt.a.x") -> list[int]:
    gseqs = []
    for i in range(n):
        seq = start_seq + i
        body = f"{src}-{epoch}-{seq}".encode().ljust(size, b".")
        j.sources.put((src, epoch), seq)
        gseqs.append(j.append(topic, body, src, epoch, seq))
    return gseqs


def bodies(j: Journal) -> list[bytes]:
    return [body for _, _, body in j.scan(0, j.next_gseq)]


# -- memory bounds -------------------------------------------------------------------------


def test_count_bound_evicts_oldest_and_counts() -> None:
    j = Journal(max_messages=5, max_bytes=10**6)
    assert fill(j, 8) == list(range(1, 9))
    assert (len(j), j.first, j.last, j.evicted) == (5, 4, 8, 3)
    assert [g for g, _, _ in j.scan(1, 100)] == [4, 5, 6, 7, 8]
    with pytest.raises(IndexError):
        j.entry(3)
    assert j.entry(8) == ("evt.a.x", bodies(j)[-1])


def test_byte_bound_keeps_the_newest_even_when_alone_too_big() -> None:
    j = Journal(max_messages=100, max_bytes=100)
    fill(j, 5, size=30)
    assert len(j) == 3 and j.bytes == 90 and j.evicted == 2
    j.append("evt.a.big", b"x" * 500, "a", 1, 6)
    assert len(j) == 1 and j.first == j.last == 6 and j.bytes == 500


def test_empty_journal_reports_first_after_last() -> None:
    j = Journal(10, 1000)
    assert (j.first, j.last, len(j)) == (1, 0, 0)
    assert list(j.scan(1, 10)) == []


@settings(max_examples=60, deadline=None)
@given(max_messages=st.integers(1, 20), max_bytes=st.integers(1, 400),
       sizes=st.lists(st.integers(0, 120), min_size=1, max_size=200))
def test_bounds_hold_and_entries_stay_contiguous(max_messages: int, max_bytes: int,
                                                 sizes: list[int]) -> None:
    j = Journal(max_messages, max_bytes)
    for i, size in enumerate(sizes, 1):
        j.append(f"evt.a.t{i % 3}", bytes([i % 256]) * size, "a", 1, i)
        assert len(j) <= max_messages
        assert j.bytes <= max_bytes or len(j) == 1
    assert j.last == len(sizes) and j.evicted == len(sizes) - len(j)
    kept = list(j.scan(0, 10**9))
    assert [g for g, _, _ in kept] == list(range(j.first, j.last + 1))
    assert all(body == bytes([g % 256]) * sizes[g - 1] for g, _, body in kept)
    assert j.bytes == sum(len(b) for _, _, b in kept)


def test_long_run_trims_internal_lists() -> None:
    j = Journal(max_messages=10, max_bytes=10**9)
    fill(j, 20_000)
    assert len(j._bodies) < 3000  # the dead prefix is cut, not kept forever
    assert [g for g, _, _ in j.scan(0, 10**9)] == list(range(19_991, 20_001))


def test_last_value_cache_forgets_evicted_topics() -> None:
    j = Journal(max_messages=3, max_bytes=10**6)
    j.append("evt.a.old", b"1", "a", 1, 1)
    for i in range(2, 10_000):
        j.append(f"evt.a.t{i % 2}", b"x", "a", 1, i)
    latest = dict(j.latest())
    assert latest == {"evt.a.t0": 9998, "evt.a.t1": 9999}
    assert len(j._last) < 5000


# -- source table --------------------------------------------------------------------------


def test_source_table_evicts_least_recently_touched() -> None:
    t = SourceTable(max_pairs=3)
    for i in range(3):
        t.put((f"s{i}", 1), i)
    t.touch(("s0", 1))
    t.put(("s3", 1), 9)
    assert ("s1", 1) not in t and ("s0", 1) in t and len(t) == 3 and t.evicted == 1
    t.raise_to(("s0", 1), -5)
    assert t.get(("s0", 1)) == 0
    assert t.snapshot()[-1] == ("s3", 1, 9)


# -- the file ------------------------------------------------------------------------------


def reopen(path: Path, **kw: int) -> Journal:
    j = Journal(kw.pop("max_messages", 1000), kw.pop("max_bytes", 10**6), path, **kw)
    j.open()
    return j


def flush_and_settle(j: Journal) -> None:
    """Flush, and let a compaction this starts (in its thread) be done and finished."""
    j.flush()
    assert j._file is not None and j._file.wait_compaction(10)
    j.flush()


def test_file_round_trip_restores_entries_gseq_and_sources(tmp_path: Path) -> None:
    path = tmp_path / "j" / "journal.bin"
    j = reopen(path)
    fill(j, 5, "a", 1)
    fill(j, 3, "b", 7, start_seq=40, topic="evt.b.y")
    j.append("sys.router.stats", b"s", "router", 123, 1)
    j.flush()
    j.close()
    k = reopen(path)
    assert (k.first, k.last, len(k)) == (1, 9, 9)
    assert bodies(k) == bodies(j)
    assert [t for _, t, _ in k.scan(6, 9)] == ["evt.b.y"] * 3
    assert k.sources.get(("a", 1)) == 5 and k.sources.get(("b", 7)) == 42
    assert ("router", 123) not in k.sources
    assert k.appended == 0 and k.persistent
    assert fill(k, 1, "a", 1, start_seq=6) == [10]  # gseq continues


def test_origin_is_kept_by_the_file_and_new_when_gseq_restarts(tmp_path: Path) -> None:
    path = tmp_path / "journal.bin"
    j = Journal(10, 10**6, path, origin=111, compact_min_bytes=0)
    j.open()
    for i in range(30):  # compactions rewrite the snapshot: the origin must survive them too
        fill(j, 1, start_seq=i + 1)
        flush_and_settle(j)
    assert j._file is not None and j._file.compactions > 0
    j.close()
    k = Journal(10, 10**6, path, origin=222)
    k.open()
    assert k.origin == 111
    assert Journal(10, 10**6, origin=333).origin == 333
    path.write_bytes(journal_file.MAGIC + b"\x00\x00\x00\x05garbage")
    m = Journal(10, 10**6, path, origin=444)
    m.open()
    assert m.origin == 444 and m.last == 0


def test_unflushed_records_are_not_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "journal.bin"
    j = reopen(path)
    fill(j, 2)
    j.flush()
    fill(j, 3, start_seq=3)  # queued, the process "dies" before flush
    k = reopen(path)
    assert k.last == 2 and k.sources.get(("a", 1)) == 2


def test_torn_tail_at_every_offset_loads_a_prefix(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "journal.bin"
    j = reopen(path)
    fill(j, 4, size=20)
    j.close()
    full = path.read_bytes()
    header_end = len(journal_file.MAGIC) + journal_file.REC.unpack_from(full, 8)[0] + 8
    caplog.set_level(logging.WARNING, logger="broker.router.journal_file")
    for cut in range(header_end, len(full)):
        path.write_bytes(full[:cut])
        caplog.clear()
        k = reopen(path)
        assert bodies(k) == bodies(j)[:len(k)]
        assert path.stat().st_size == k.file_bytes <= cut
        if cut > k.file_bytes:
            assert f"dropped {cut - k.file_bytes} bytes" in caplog.text
        k.close()


def test_corrupt_record_truncates_there_and_appending_continues(tmp_path: Path) -> None:
    path = tmp_path / "journal.bin"
    j = reopen(path)
    fill(j, 3, size=20)
    j.close()
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF  # a flipped bit in the last body fails its CRC
    path.write_bytes(bytes(raw))
    k = reopen(path)
    assert k.last == 2 and k.sources.get(("a", 1)) == 2
    fill(k, 2, start_seq=3)
    k.close()
    assert bodies(reopen(path))[-2:] == [b"a-1-3".ljust(10, b"."), b"a-1-4".ljust(10, b".")]


def test_foreign_file_is_refused_and_empty_file_is_fresh(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text("[router]\n")
    with pytest.raises(BusError, match="not an sctl journal"):
        reopen(path)
    assert path.read_text() == "[router]\n"
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    assert reopen(empty).last == 0


def test_unreadable_snapshot_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "journal.bin"
    path.write_bytes(journal_file.MAGIC + b"\x00\x00\x00\x05garbage")
    j = reopen(path)
    assert (j.first, j.last) == (1, 0)
    assert len(list(tmp_path.glob("journal.bin.corrupt-*"))) == 1


def test_compaction_bounds_the_file_and_keeps_sources(tmp_path: Path) -> None:
    path = tmp_path / "journal.bin"
    j = reopen(path, max_messages=10, compact_min_bytes=0)
    fill(j, 5, "gone", 3)  # every entry of this pair will be evicted: only the snapshot has it
    j.flush()
    sizes = []
    for i in range(200):
        fill(j, 1, "a", 1, start_seq=i + 1, size=50)
        flush_and_settle(j)
        sizes.append(path.stat().st_size)
    assert j._file is not None and j._file.compactions > 5
    assert max(sizes) < 3 * 10 * 100  # ~2x the retained records, never the whole history
    assert j.file_bytes == path.stat().st_size
    k = reopen(path, max_messages=10)
    assert (k.first, k.last) == (j.first, j.last) == (196, 205)
    assert bodies(k) == bodies(j)
    assert k.sources.get(("gone", 3)) == 5 and k.sources.get(("a", 1)) == 200
    assert not list(tmp_path.glob("*.tmp"))


def test_source_table_rebuild_respects_bound_and_recency(tmp_path: Path) -> None:
    path = tmp_path / "journal.bin"
    j = reopen(path, max_sources=3)
    for i in range(5):
        fill(j, 1, f"s{i}", 1)
    j.flush()
    j.close()
    k = reopen(path, max_sources=3)
    assert [s for s, _, _ in k.sources.snapshot()] == ["s2", "s3", "s4"]


def test_fsync_after_each_flush_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = journal_file.os.fsync
    monkeypatch.setattr(journal_file.os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    j = Journal(100, 10**6, tmp_path / "journal.bin", fsync=True)
    j.open()
    calls.clear()
    fill(j, 3)
    j.flush()
    j.flush()  # nothing queued: no write, no fsync
    assert len(calls) == 1


# -- hc raised without an entry (refused envelope, sync `next`, lost range) --------------------


def test_advance_only_raises_and_survives_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "journal.bin"
    j = reopen(path)
    fill(j, 2, "a", 1)
    assert j.advance(("a", 1), 3) and j.sources.get(("a", 1)) == 3  # seq 3 was refused
    assert not j.advance(("a", 1), 1) and j.sources.get(("a", 1)) == 3  # never down
    assert j.advance(("b", 2), 9)  # a probe's `next` 10 started a pair without entries
    j.advance(("b", 2), 10)
    j.advance(("router", 5), 4)  # the router's own pairs are not kept in the file
    j.flush()
    assert j._file is not None
    raw = path.read_bytes()
    assert raw.count(bytes([journal_file.TYPE_ADVANCE])) >= 2
    fill(j, 1, "c", 1)
    j.flush()
    j.close()
    k = reopen(path)
    assert k.sources.get(("a", 1)) == 3 and k.sources.get(("b", 2)) == 10
    assert ("router", 5) not in k.sources and k.last == 3
    assert [s for s, _, _ in k.sources.snapshot()] == ["a", "b", "c"]  # recency kept
    fill(k, 1, "a", 1, start_seq=4)
    assert k.last == 4


def test_unflushed_advance_is_not_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "journal.bin"
    j = reopen(path)
    fill(j, 1)
    j.flush()
    j.advance(("a", 1), 2)  # the router dies before the batch is flushed (and acked)
    assert reopen(path).sources.get(("a", 1)) == 1


def test_compaction_keeps_advances_in_the_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "journal.bin"
    j = reopen(path, max_messages=5, compact_min_bytes=0)
    j.advance(("quiet", 1), 7)  # only an advance record, soon before the copied range
    for i in range(50):
        fill(j, 1, "a", 1, start_seq=2 * i + 1, size=40)
        j.advance(("a", 1), 2 * i + 2)  # every other seq refused
        flush_and_settle(j)
    assert j._file is not None and j._file.compactions > 3
    k = reopen(path, max_messages=5)
    assert k.sources.get(("quiet", 1)) == 7 and k.sources.get(("a", 1)) == 100
    assert (k.first, k.last) == (j.first, j.last) and bodies(k) == bodies(j)


def test_torn_advance_record_is_cut_like_any_tail(tmp_path: Path) -> None:
    path = tmp_path / "journal.bin"
    j = reopen(path)
    fill(j, 2)
    j.flush()
    j.advance(("a", 1), 3)
    j.close()
    full = path.read_bytes()
    for cut in range(1, 20):
        path.write_bytes(full[:-cut])
        k = reopen(path)
        assert k.last == 2 and k.sources.get(("a", 1)) == 2
        k.close()


def test_version_1_file_is_read_then_marked_version_2(tmp_path: Path) -> None:
    path = tmp_path / "journal.bin"
    j = reopen(path)
    fill(j, 3)
    j.close()
    path.write_bytes(journal_file.MAGIC_V1 + path.read_bytes()[len(journal_file.MAGIC):])
    k = reopen(path)
    assert k.last == 3 and k.sources.get(("a", 1)) == 3
    k.advance(("a", 1), 4)
    k.close()
    # an older router would cut the file at the advance record: it must see a newer version
    assert path.read_bytes()[:len(journal_file.MAGIC)] == journal_file.MAGIC
    assert reopen(path).sources.get(("a", 1)) == 4


def test_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.bin"
    reopen(path).close()
    raw = path.read_bytes()
    path.write_bytes(journal_file.MAGIC_PREFIX + b"\x03" + raw[len(journal_file.MAGIC):])
    with pytest.raises(BusError, match="format version 3"):
        reopen(path)
    assert path.read_bytes()[len(journal_file.MAGIC):] == raw[len(journal_file.MAGIC):]
