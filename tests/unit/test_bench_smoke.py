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

from tests.conftest import ROOT, sctl_cmd, subprocess_env


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

