"""A router restarting on its journal file holds again the leases held when the last one
stopped: the table rebuilt from the file's snapshot and its ``sys.router.lease`` records
(`LeaseHistory`), restored with fresh expiries (`LeaseTable.restore`), kept through compactions
(the snapshot carries the table), and a whole in-process router closed and opened again on the
same file. Clocks are passed in; no sleeps."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import msgpack
import pytest

from broker.config import RouterConfig
from broker.router.journal import Journal
from broker.router.leases import Lease, LeaseEvent, LeaseHistory, LeaseTable
from broker.router.server import Router
from broker.wire import envelope, protocol, topics

T0 = 1000.0
WALL = 1_700_000_000.0
LEASE = topics.ROUTER_LEASE


class Records:
    """The router's sys.router.lease records as a journal holds them: real envelopes."""

    def __init__(self) -> None:
        self.encoder = envelope.Encoder("router", 42)
        self.seq = 0
        self.entries: list[tuple[int, str, str, bytes]] = []  # (gseq, src, topic, body)

    def add(self, events: LeaseEvent | list[LeaseEvent] | tuple[LeaseEvent, ...]
            | None) -> None:
        for event in [events] if isinstance(events, LeaseEvent) else events or ():
            self.raw(event.data())

    def raw(self, data: dict[str, Any], src: str = "router", topic: str = LEASE) -> None:
        self.seq += 1
        _, body = self.encoder.build(self.seq, "system", data)
        self.entries.append((len(self.entries) + 1, src, topic, body))

    def history(self) -> LeaseHistory:
        history = LeaseHistory()
        for entry in self.entries:
            history.observe(*entry)
        return history


def names(leases: list[Lease]) -> dict[str, tuple[int, int]]:
    return {lease.name: (lease.epoch, lease.generation) for lease in leases}


def test_each_names_newest_record_decides_what_is_held_at_the_end() -> None:
    t, rec = LeaseTable(), Records()
    rec.add(t.claim("held", 11, "hA", 100, 3.0, T0, WALL, machine="boot/ns").events)  # gen 1
    rec.add(t.claim("freed", 12, "hA", 101, 3.0, T0, WALL).events)  # gen 2
    rec.add(t.release("freed", 12))
    rec.add(t.claim("lapsed", 13, "hA", 102, 1.0, T0, WALL).events)  # gen 3
    rec.add(t.expire(T0 + 1.0))
    rec.add(t.claim("moved", 14, "hA", 103, 3.0, T0, WALL, machine="m").events)  # gen 4
    rec.add(t.claim("moved", 15, "hA", 104, 3.0, T0 + 0.1, WALL, machine="m",
                    replaces=14).events)  # replaced, granted: gen 5
    rec.add(t.claim("held", 99, "hB", 200, 3.0, T0 + 0.2, WALL).events)  # refused: names 11
    rec.add(t.claim("back", 16, "hA", 105, 1.0, T0, WALL).events)  # gen 6
    rec.add(t.expire(T0 + 1.5))
    rec.add(t.renew(("back", 16), T0 + 1.6))  # regained: gen 7
    rec.raw({"n": 1}, topic="sys.router.stats")  # other topics are not lease records

    history = rec.history()
    held, generation = history.result()
    assert names(held) == {"back": (16, 7), "held": (11, 1), "moved": (15, 5)}
    assert generation == t.generation == 7
    assert history.records == 12 and history.ignored == 0
    original = t.holder("held", T0 + 0.5)
    assert original is not None
    restored = {lease.name: lease for lease in held}["held"]
    assert (restored.host, restored.pid, restored.since, restored.ttl, restored.machine) == \
        (original.host, original.pid, original.since, original.ttl, "boot/ns")


def test_restored_leases_fence_other_epochs_until_they_expire_and_generations_go_on() -> None:
    t = LeaseTable()
    old = Lease("b1", 11, "hA", 100, WALL, 3.0, 0.0, 5, "boot/ns")
    events = t.restore([old], 8, T0)
    assert [e.event for e in events] == ["restored"]
    assert events[0].data() == {"event": "restored", "name": "b1", "epoch": 11, "host": "hA",
                                "pid": 100, "since": WALL, "ttl": 3.0, "generation": 5,
                                "machine": "boot/ns"}
    assert t.held == {"b1": 11} and t.table(T0)["b1"]["expires_in"] == 3.0

    rogue = t.claim("b1", 22, "hB", 200, 3.0, T0 + 1.0, WALL + 1)  # another epoch: refused
    assert not rogue.granted and rogue.lease.epoch == 11
    own = t.claim("b1", 11, "hA", 100, 3.0, T0 + 1.0, WALL + 1)  # the holder: at once
    assert own.granted and own.events == () and own.lease.generation == 5
    assert own.lease.since == WALL  # the same grant, held on

    assert [e.event for e in t.expire(T0 + 4.0)] == ["expired"]  # dead holder: one ttl
    successor = t.claim("b1", 22, "hB", 200, 3.0, T0 + 4.1, WALL + 4)
    assert successor.granted and successor.lease.generation == 9  # after the journal's 8
    assert successor.events[-1].data()["previous"]["epoch"] == 11


def test_a_restored_holder_that_never_comes_back_expires_after_its_ttl() -> None:
    t = LeaseTable()
    t.restore([Lease("b2", 7, "hA", 1, WALL, 2.0, 0.0, 3)], 3, T0)
    assert t.expire(T0 + 1.9) == [] and t.holder("b2", T0 + 1.9) is not None
    assert [e.event for e in t.expire(T0 + 2.0)] == ["expired"]
    assert t.claim("b2", 8, "hB", 2, 2.0, T0 + 2.1, WALL).lease.generation == 4


def test_the_snapshot_is_laid_under_the_records_and_the_generation_never_goes_back() -> None:
    before = LeaseTable()
    before.claim("a", 1, "h", 1, 3.0, T0, WALL)
    before.claim("b", 2, "h", 2, 3.0, T0, WALL)
    before.claim("c", 3, "h", 3, 3.0, T0, WALL)
    before.release("c", 3)
    before.claim("c", 4, "h", 4, 3.0, T0, WALL)  # generation 4
    snapshot = before.snapshot()
    assert snapshot["generation"] == 4 and len(snapshot["held"]) == 3
    rec = Records()  # after the snapshot: b is released, d granted
    rec.add(before.release("b", 2))
    rec.add(before.claim("d", 5, "h", 5, 3.0, T0, WALL).events)
    held, generation = rec.history().result(snapshot)
    assert names(held) == {"a": (1, 1), "c": (4, 4), "d": (5, 5)}
    assert generation == 5

    # a compaction copies records from before its snapshot too: replayed over it, they say
    # the same (every later change is among the copied records as well)
    rec = Records()
    rec.add(LeaseEvent("granted", Lease("a", 1, "h", 1, WALL, 3.0, 0.0, 1)))
    assert names(rec.history().result(snapshot)[0])["a"] == (1, 1)
    # only freed names, all records long gone: the snapshot still says where counting was
    empty = LeaseTable()
    empty.generation = 41
    held, generation = LeaseHistory().result(empty.snapshot())
    assert held == [] and generation == 41


def test_garbage_and_malformed_records_are_ignored_and_described() -> None:
    rec = Records()
    good = LeaseEvent("granted", Lease("b1", 11, "hA", 100, WALL, 3.0, 0.0, 2))
    rec.add(good)
    rec.entries.append((len(rec.entries) + 1, "router", LEASE, b"\xc1garbage"))
    rec.raw(good.data(), src="b1")  # not the router's: ignored
    rec.raw({**good.data(), "event": "stolen"})
    rec.raw({**good.data(), "name": "b2", "epoch": True})
    rec.raw({**good.data(), "name": "b3", "epoch": None})
    rec.raw({**good.data(), "name": "bad name"})
    rec.raw({**good.data(), "name": "b4", "ttl": -1})
    rec.raw({**good.data(), "name": "b5", "since": "yesterday"})
    rec.raw({**good.data(), "name": "b6", "host": 7})
    rec.raw({"event": "released"})  # no name: cannot free anything
    history = rec.history()
    snapshot = {"generation": 3, "held": [{"name": "s1"}, {**good.data(), "name": "s2"}, 5]}
    held, generation = history.result(snapshot)
    assert names(held) == {"b1": (11, 2), "s2": (11, 2)}
    assert generation == 3
    assert history.records == 1 and history.ignored == 12
    text = "\n".join(history.problems)
    for expected in ("gseq 2: not an envelope", "gseq 3: src 'b1' is not the router",
                     "unknown event 'stolen'", "epoch must be an integer", "is not usable",
                     "ttl > 0", "host and machine must be strings", "needs name (a string)"):
        assert expected in text, text
    assert len(history.problems) == 10  # the first few, each with its gseq

    alone = LeaseHistory()
    assert names(alone.result(snapshot)[0]) == {"s2": (11, 2)}
    assert alone.ignored == 2 and all(p.startswith("snapshot: ") for p in alone.problems)
    unreadable = LeaseHistory()
    assert unreadable.result("nonsense") == ([], 0) and unreadable.ignored == 1


def test_compactions_keep_held_leases_whose_records_fell_out(tmp_path: Path) -> None:
    """The records of a long-held lease leave the retained window; the snapshot that every
    compaction writes keeps it, so a restart still finds it."""
    path = tmp_path / "journal.bin"
    table = LeaseTable()
    j = Journal(10, 10**6, path, compact_min_bytes=0)
    j.leases_snapshot = table.snapshot
    j.open()
    rec = Records()
    rec.add(table.claim("b1", 11, "hA", 100, 3.0, T0, WALL).events)
    rec.add(table.claim("gone", 12, "hA", 101, 3.0, T0, WALL).events)
    rec.add(table.release("gone", 12))
    for _, src, topic, body in rec.entries:
        j.append(topic, body, src, 42, rec.seq)
    for i in range(1, 60):  # traffic pushes the lease records out, compactions drop them
        j.append("evt.a.x", b"x" * 50, "a", 1, i)
        j.flush()
        assert j._file is not None
        j._file.wait_compaction(10)
    j.flush()
    assert j._file is not None and j._file.compactions > 0 and j.first > len(rec.entries)
    j.close()

    history = LeaseHistory()
    k = Journal(10, 10**6, path)
    k.open(history.observe)
    assert history.records == 0  # no lease record left in the file
    held, generation = history.result(k.loaded_leases)
    assert names(held) == {"b1": (11, 1)} and generation == 2
    k.close()


CONFIG: dict[str, Any] = dict(
    ingress="tcp://127.0.0.1:0", egress="tcp://127.0.0.1:0", query="tcp://127.0.0.1:0",
    journal_max_messages=1000, journal_max_bytes=10**6, journal_fsync=False,
    max_message_bytes=4096, egress_hwm=1000, stats_interval=60.0, gap_timeout=60.0)


def ask(router: Router, **req: Any) -> dict[str, Any]:
    header: dict[str, Any] = protocol.unpack_map(router._queries.answer(
        msgpack.packb(req))[0], "reply")
    assert header.get("ok"), header
    return header


def claim(router: Router, name: str, epoch: int, ttl: float = 5.0) -> dict[str, Any]:
    return ask(router, op="claim", name=name, epoch=epoch, host="hA", pid=100, ttl=ttl)


def lease_records(router: Router) -> list[dict[str, Any]]:
    j = router.journal
    return [envelope.decode(body).data for _, topic, body in j.scan(j.first, j.last + 1)
            if topic == LEASE]


def test_a_router_restarting_on_its_journal_holds_the_leases_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = RouterConfig(journal_path=tmp_path / "journal.bin", **CONFIG)
    first = Router(config)
    first.open()
    try:
        granted = claim(first, "b1", 11)
        claim(first, "b2", 12)
        ask(first, op="release", name="b2", epoch=12)
        claim(first, "b3", 13)
    finally:
        first.close()

    caplog.set_level(logging.INFO, "broker.router.server")
    second = Router(config)
    second.open()
    try:
        table = ask(second, op="leases")["leases"]
        assert sorted(table) == ["b1", "b3"]
        assert table["b1"]["since"] == granted["holder"]["since"]
        assert table["b1"]["generation"] == granted["generation"] == 1
        restored = [d for d in lease_records(second) if d["event"] == "restored"]
        assert [(d["name"], d["epoch"]) for d in restored] == [("b1", 11), ("b3", 13)]
        assert second.journal._flushed == second.journal.last  # on disk before any query
        lines = [r.getMessage() for r in caplog.records if "restored 2 lease(s)" in r.message]
        assert len(lines) == 1 and "b1 (epoch 11 on hA pid 100, generation 1)" in lines[0]

        assert not claim(second, "b1", 99)["granted"]  # another epoch: refused
        again = claim(second, "b1", 11)  # the holder: granted at once, the same grant
        assert again["granted"] and again["generation"] == 1
        assert claim(second, "b4", 14)["generation"] == 4  # after b3's 3
    finally:
        second.close()


def test_a_router_with_its_journal_in_memory_starts_with_an_empty_table(
        caplog: pytest.LogCaptureFixture) -> None:
    config = RouterConfig(journal_path=None, **CONFIG)
    router = Router(config)
    router.open()
    try:
        claim(router, "b1", 11)
    finally:
        router.close()
    caplog.set_level(logging.INFO, "broker.router.server")
    again = Router(config)
    again.open()
    try:
        assert ask(again, op="leases")["leases"] == {}
        assert lease_records(again) == []
        assert not [r for r in caplog.records if "lease" in r.getMessage()]
    finally:
        again.close()


def test_records_with_unhashable_or_huge_fields_are_skipped_not_fatal() -> None:
    history = LeaseHistory()
    history.record({"event": [], "name": "a"}, 7)
    history.record({"event": {"x": 1}, "name": "a"}, 8)
    good = Lease("a", 1, "h", 1, WALL, 3.0, 0.0, 1).holder()
    history.record({**good, "event": "granted", "generation": 2**64}, 9)
    history.record({**good, "event": "granted", "epoch": 2**70}, 10)
    held, generation = history.result({"generation": 2**64, "held": []})
    assert held == [] and generation == 0 and history.ignored == 4
    assert any("gseq 7" in p for p in history.problems)
    history.record({**good, "event": "granted"}, 11)  # the same record, readable, counts
    assert [lease.epoch for lease in history.result()[0]] == [1]
