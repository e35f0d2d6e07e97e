"""The router's ingress sequencing and bad-input reports without sockets (the rules are those of
broker.wire.protocol)."""

from __future__ import annotations

from broker.router.bad_input import BadInput
from broker.router.journal import SourceKey, SourceTable
from broker.router.sequencer import GapEvent, Sequencer, Verdict

KEY: SourceKey = ("a", 7)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def sequencer(hc: int | None = None) -> tuple[Sequencer, SourceTable, Clock]:
    sources, clock = SourceTable(), Clock()
    if hc is not None:
        sources.put(KEY, hc)
    return Sequencer(sources, 5.0, clock), sources, clock


def test_unknown_pair_starts_at_one_else_asks_for_resync_at_a_bounded_rate() -> None:
    s, _, clock = sequencer()
    assert s.check(KEY, 1) == (Verdict.NEXT, None)
    assert s.check(KEY, 5) == (Verdict.UNKNOWN, None)
    assert s.resync_due(KEY) and not s.resync_due(KEY)
    clock.now += 0.25
    assert s.resync_due(KEY)


def test_next_duplicate_early_and_a_gap_filled_by_the_resend() -> None:
    s, sources, _ = sequencer(hc=3)
    assert s.check(KEY, 4) == (Verdict.NEXT, None)
    assert s.check(KEY, 3) == (Verdict.DUPLICATE, None)
    assert s.check(KEY, 6) == (Verdict.EARLY, GapEvent(KEY, "open", 4, 6))
    assert s.check(KEY, 7) == (Verdict.EARLY, None) and s.open_gaps == 1
    sources.put(KEY, 4)
    assert s.took(KEY, 4) is None  # 5 still missing
    sources.put(KEY, 5)
    assert s.took(KEY, 5) == GapEvent(KEY, "filled", 4, 6) and s.open_gaps == 0


def test_timed_out_gap_skips_only_below_the_lowest_early_seq() -> None:
    s, _, clock = sequencer(hc=3)
    s.check(KEY, 9)
    s.check(KEY, 6)  # the sender still holds 6: it must not be skipped
    clock.now += 5.0
    lost = GapEvent(KEY, "lost", 4, 9, (4, 5))
    assert s.check(KEY, 10) == (Verdict.LOST, lost)
    assert lost.data() == {"src": "a", "epoch": 7, "expected": 4, "got": 9, "state": "lost",
                           "missing": [4, 5]}


def test_timed_out_gap_whose_lowest_seq_arrived_starts_over() -> None:
    s, sources, clock = sequencer(hc=3)
    s.check(KEY, 9)
    s.check(KEY, 6)
    sources.put(KEY, 5)  # 4 and 5 arrived: 6 is next
    clock.now += 5.0
    assert s.check(KEY, 10) == (Verdict.EARLY, None)
    clock.now += 4.0
    assert s.check(KEY, 11) == (Verdict.EARLY, None)  # the timeout restarted at 10
    clock.now += 1.0
    assert s.check(KEY, 11) == (Verdict.LOST, GapEvent(KEY, "lost", 4, 9, (6, 9)))


def test_sync_next_starts_a_pair_or_declares_the_rest_lost() -> None:
    s, sources, _ = sequencer()
    assert s.register(KEY, 5) == (4, None)
    for bad in (None, "5", 0, True, 2**63):
        assert s.register(KEY, bad) is None
    sources.put(KEY, 4)
    assert s.register(KEY, 5) is None and s.register(KEY, 3) is None
    assert s.register(KEY, 8) == (7, GapEvent(KEY, "lost", 5, 8, (5, 7)))
    s.check(KEY, 9)  # an open gap names what the lost report says it expected and got
    assert s.register(KEY, 10) == (9, GapEvent(KEY, "lost", 5, 9, (5, 9)))
    assert s.open_gaps == 0


def test_gaps_of_evicted_pairs_are_forgotten() -> None:
    sources = SourceTable(max_pairs=1)
    s = Sequencer(sources, 5.0)
    sources.put(KEY, 1)
    s.check(KEY, 3)
    sources.put(("b", 1), 1)
    s.forget_evicted()
    assert s.open_gaps == 0


def test_bad_input_counts_everything_and_reports_at_a_bounded_rate() -> None:
    bad = BadInput(rate=2)
    frames = [b"evt.x", b"\xc1" * 100]
    reports = [bad.refuse("msgpack", frames, "not valid msgpack") for _ in range(3)]
    assert reports[2] is None and bad.counts["msgpack"] == 3 and bad.suppressed == 1
    assert reports[0] == {"reason": "msgpack", "error": "not valid msgpack", "topic": "evt.x",
                          "excerpt": "c1" * 64, "size": 105, "frames": 2, "count": 1,
                          "suppressed": 0}
