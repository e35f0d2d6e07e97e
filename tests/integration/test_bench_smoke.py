"""The benchmark code works: `sctl bench --quick --json device` runs end to end.

One light family in quick mode (a router, the SpringCore simulator and reader actor, a few
seconds of tags), through the real CLI command, so a broken import, a renamed setting or a
process that no longer starts shows up here rather than on the day someone runs the benchmarks.
Speed is never asserted: only that the figures exist, are numbers, and that nothing was lost.
"""

from __future__ import annotations

import json
import math
import subprocess

from tests.support.stack import ROOT, sctl_cmd, subprocess_env


def test_quick_device_bench_reports_its_figures() -> None:
    out = subprocess.run(sctl_cmd("bench", "--quick", "--json", "device"), cwd=ROOT,
                         env=subprocess_env(), capture_output=True, text=True, timeout=50)
    assert out.returncode == 0, out.stderr[-2000:]
    figures = json.loads(out.stdout)
    assert figures["errors"] == {}
    assert figures["meta"]["families"] == ["device"] and figures["meta"]["quick"] is True
    for key in ("device_p50_ms", "device_p99_ms", "device_max_ms"):
        assert isinstance(figures[key], float) and math.isfinite(figures[key]), key
    assert 0 < figures["device_p50_ms"] <= figures["device_p99_ms"] <= figures["device_max_ms"]
    assert figures["device_lost"] == 0



def test_tally_checks_count_and_order_after_the_run() -> None:
    """The benchmarks' loss check: arrivals are only recorded during a run; settling them
    finds jumps (losses), steps back (duplicates or reordering) and latencies per sender."""
    from broker.wire import envelope
    from tests.bench.feeds import Tally

    def body(src: str, n: int) -> bytes:
        return envelope.make(src, 1, n, "event", {"n": n}, ts=100.0).encode()

    tally = Tally(keep_latency=True)
    for i, (src, n) in enumerate([("a", 1), ("b", 1), ("a", 2), ("a", 4), ("a", 4), ("b", 2),
                                  ("a", 3)]):
        tally.add(body(src, n), 100.5 + i)
    assert tally.count == 7 and tally.first_at == 100.5 and tally.last_at == 106.5
    assert tally.backwards == 2  # a4 again, then a3 after a4
    assert tally.lost(6) == 1 and tally.lost(7) == 2  # a3 never arrived in order
    assert tally.summary(6) == {"delivered": 7, "lost": 1, "backwards": 2, "rate": 1.0}
    assert tally.latency_ms(50) == 3500.0
    tally.add(body("b", 3), 107.5)  # settling again checks only what is new
    assert tally.backwards == 2 and len(tally.latency) == 8
