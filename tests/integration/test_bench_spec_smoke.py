"""The SPEC arrays benchmark works: `sctl bench --quick --json spec` runs end to end (router,
SPEC simulator with its live image and spectrum, spec-client actor, subscriber). Speed is
never asserted: only that the figures exist, are numbers, and that no frame was lost."""

from __future__ import annotations

import json
import math
import subprocess

from tests.support.stack import ROOT, sctl_cmd, subprocess_env


def test_quick_spec_bench_reports_its_figures() -> None:
    out = subprocess.run(sctl_cmd("bench", "--quick", "--json", "spec"), cwd=ROOT,
                         env=subprocess_env(), capture_output=True, text=True, timeout=55)
    assert out.returncode == 0, out.stderr[-2000:]
    figures = json.loads(out.stdout)
    assert figures["errors"] == {} and figures["meta"]["families"] == ["spec"]
    for key in ("spec_img_p50_ms", "spec_img_p99_ms", "spec_mca_p50_ms", "spec_mca_p99_ms",
                "spec_actor_cpu_pct"):
        assert isinstance(figures[key], float) and math.isfinite(figures[key]), key
    assert figures["spec_frames_lost"] == 0
