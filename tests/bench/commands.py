"""Figure 4: commands. Library `Bus.request` round trip to an actor, and the operator's wall
times: ``sctl send reader wink`` (start-up, site file, sync handshake, the command through the
actor to the simulated reader and back) and ``sctl --help`` (import cost: the CLI must import
its commands' modules lazily).

The request is ``ping`` to the ``springcore-tcp`` actor (answered by the actor itself, so it
measures the bus and the dispatch, not the device); ``wink`` goes to the simulated reader. The
wall times run the installed ``sctl`` console script, as an operator does; each is the median
of several runs (the first run also pays a cold disk cache).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

from tests.bench.common import (
    BenchError,
    Figure,
    Procs,
    Scale,
    percentile,
    subprocess_env,
    wait_until,
)
from tests.bench.device import reader_site

SCTL: Final = Path(sys.executable).parent / "sctl"


def sctl_wall(*args: str) -> float:
    """Wall time in ms of one ``sctl ARGS`` run; a failing run is an error, not a figure."""
    argv = [str(SCTL), *args] if SCTL.exists() else [sys.executable, "-m", "cli", *args]
    start = time.perf_counter()
    out = subprocess.run(argv, env=subprocess_env(), capture_output=True, text=True, timeout=60)
    took = (time.perf_counter() - start) * 1000
    if out.returncode != 0:
        raise BenchError(f"sctl {' '.join(args)} exited {out.returncode}: {out.stderr[-500:]}")
    return took


def run(scale: Scale) -> list[Figure]:
    from broker.client.bus import Bus

    requests = scale.pick(500, 50)
    walls = scale.pick(7, 3)
    with Procs() as procs:
        site = reader_site(procs, 0)
        procs.router(site)
        procs.sctl(site.path, "actor", "door", name="door")
        procs.sctl(site.path, "actor", "reader", name="reader")
        bus = Bus(site.router, "bench-cmd")
        if not bus.connect(wait=20):
            raise BenchError("the router did not answer")
        try:
            def linked() -> bool:
                try:
                    reply = bus.request("reader", "ping", timeout=1.0)
                except Exception:
                    return False
                return bool(reply.data["result"]["link"]["state"] == "up")

            wait_until(linked, 30, "the reader's link up")
            rtts: list[float] = []
            for _ in range(requests):
                start = time.perf_counter()
                reply = bus.request("reader", "ping", timeout=5.0)
                rtts.append((time.perf_counter() - start) * 1000)
                if reply.data["status"] != "ok":
                    raise BenchError(f"ping answered {reply.data}")
        finally:
            bus.close()
        send = [sctl_wall("-c", str(site.path), "send", "reader", "wink") for _ in range(walls)]
    helps = [sctl_wall("--help") for _ in range(walls)]
    return [
        Figure("request_p50_ms", "Bus.request round trip p50 (ping)", percentile(rtts, 50),
               "ms", 2.0, "low", f"p99 {percentile(rtts, 99):.2f} ms over {requests}"),
        Figure("send_wall_ms", "`sctl send reader wink` wall, median", statistics.median(send),
               "ms", 300, "low", f"min {min(send):.0f} ms"),
        Figure("help_wall_ms", "`sctl --help` wall, median", statistics.median(helps), "ms",
               200, "low", f"min {min(helps):.0f} ms"),
    ]
