"""The big-payload and fan-out benchmarks run: `sctl bench --quick --json large fanout`.

Quick mode, through the real CLI command, so a broken import, a worker that no longer starts or
a subscriber process that never says it is ready shows up here rather than on the day someone
runs the benchmarks. Speed is never asserted: only that the figures exist, are numbers, and
that nothing was lost on the library's path.
"""

from __future__ import annotations

import json
import math
import subprocess

import pytest

from tests.support.stack import ROOT, sctl_cmd, subprocess_env


@pytest.mark.timeout(180)  # about 30 s alone; two families of several processes on 2 cores
def test_quick_large_and_fanout_benches_report_their_figures() -> None:
    out = subprocess.run(sctl_cmd("bench", "--quick", "--json", "large", "fanout"), cwd=ROOT,
                         env=subprocess_env(), capture_output=True, text=True, timeout=170)
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout)
    assert figures["errors"] == {}
    assert figures["meta"]["families"] == ["large", "fanout"]
    for key in ("large_256k_mbs", "large_256k_baseline_mbs", "large_256k_ratio",
                "large_4m_mbs", "large_4m_baseline_mbs", "large_4m_ratio", "large_4m_p99_ms",
                "large_4m_baseline_p99_ms", "fanout_p99_ms", "fanout_baseline_p99_ms",
                "fanout_p99_ratio"):
        assert isinstance(figures[key], float) and math.isfinite(figures[key]), key
        assert figures[key] > 0, key
    for key in ("large_256k_lost", "large_4m_lost", "large_4m_paced_lost", "fanout_lost"):
        assert figures[key] == 0, key


def test_head_fields_read_an_envelope_without_its_payload() -> None:
    """The large benchmark keeps only the head of each body it receives and reads src, ts and
    data.n from it after the run."""
    from broker.wire import envelope
    from tests.bench.large import HEAD, HeadTally, head_fields

    body = envelope.make("det1", 1, 4, "event", {"n": 4, "p": bytes(1 << 20)}, ts=12.5).encode()
    assert head_fields(body[:HEAD]) == ("det1", 12.5, 4)
    tally = HeadTally(keep_latency=True)
    for n, at in ((1, 13.0), (2, 13.5), (4, 14.0), (4, 14.5)):
        tally.add(envelope.make("det1", 1, n, "event", {"n": n, "p": bytes(1 << 20)},
                                ts=12.5).encode(), at)
    assert all(len(b) == HEAD for b, _ in tally.arrivals)
    assert tally.backwards == 1 and tally.lost(4) == 1
    assert tally.latency_ms(100) == 2000.0
