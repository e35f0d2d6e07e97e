"""The MQTT bridge benchmark works: `sctl bench --quick --json bridge` runs end to end (router,
Mosquitto, the mqtt-bridge actor, mosquitto_sub, a paced publisher). Speed is never asserted:
only that the figures exist, are numbers, and that no message was lost at QoS 1."""

from __future__ import annotations

import json
import math
import subprocess

from tests.support.stack import ROOT, sctl_cmd, subprocess_env


def test_quick_bridge_bench_reports_its_figures() -> None:
    out = subprocess.run(sctl_cmd("bench", "--quick", "--json", "bridge"), cwd=ROOT,
                         env=subprocess_env(), capture_output=True, text=True, timeout=55)
    assert out.returncode == 0, out.stderr[-2000:]
    figures = json.loads(out.stdout)
    assert figures["errors"] == {} and figures["meta"]["families"] == ["bridge"]
    for key in ("bridge_added_p50_ms", "bridge_added_p99_ms", "bridge_e2e_p99_ms",
                "bridge_cpu_pct"):
        assert isinstance(figures[key], float) and math.isfinite(figures[key]), key
    assert figures["bridge_lost"] == 0
