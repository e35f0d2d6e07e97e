"""`sctl bench`: run the benchmark families, print one table (or one JSON object).

`sctl bench` runs this module as ``python -m tests.bench.runner [NAME...] [--quick] [--json]
[-v]`` with the checkout as its working directory; `main` parses those arguments.

Families (run in this order; name any subset): ``throughput`` (figure 1), ``latency`` (2),
``device`` (3), ``commands`` (4), ``recovery`` (5), ``footprint`` (6: RSS and the 20-publisher
scale run), ``spec`` (SPEC data arrays: simulator → actor → subscriber), ``bridge`` (bus →
``mqtt-bridge`` → Mosquitto → ``mosquitto_sub`` at 1 000 msg/s), ``metrics`` (7: the metrics
program with 50 actors: scrape time, RSS, CPU), ``large`` (256 KiB and 4 MiB events through the
router with a journal file, against a plain ``zmq.proxy``: MB/s, 4 MiB latency at 5/s),
``fanout`` (one publisher at 2 000 msg/s to 8 gap-free subscribers). Each family starts
its own processes and stops them before the next one starts, so families never load the
machine at the same time.

A family that fails (a process that would not start, a worker that crashed) is reported as an
error row and in the JSON under ``errors``; the other families still run, and the exit status
is 1. With ``--json`` the JSON object goes to stdout and the table to stderr. Targets are shown
beside each figure (``ok`` / ``MISSED``) but never change the exit status: they are goals for
this 2-core machine, not tests.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, Final, TextIO

from tests.bench.common import Figure, Scale

FAMILIES: Final = ("throughput", "latency", "device", "commands", "recovery", "footprint",
                   "spec", "bridge", "metrics", "large", "fanout")


def _family(name: str) -> Callable[[Scale], list[Figure]]:
    module = importlib.import_module(f"tests.bench.{name}")
    run: Callable[[Scale], list[Figure]] = module.run
    return run


def run(names: Sequence[str], quick: bool = False, as_json: bool = False,
        out: TextIO = sys.stdout, progress: TextIO = sys.stderr) -> int:
    """Run the named families (all if none); print the result; 0 unless a family failed."""
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        print(f"sctl bench: unknown benchmark {', '.join(unknown)} (known: "
              f"{', '.join(FAMILIES)})", file=progress)
        return 2
    chosen = [n for n in FAMILIES if n in names] if names else list(FAMILIES)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _run(chosen, Scale(quick), as_json, out, progress)
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line of `sctl bench`; Ctrl-C stops the run with status 130 (128 + SIGINT)."""
    import argparse

    from cli.common import setup_logging

    parser = argparse.ArgumentParser(prog="python -m tests.bench.runner",
                                     description="Run the benchmarks and print a table.")
    parser.add_argument("names", nargs="*", metavar="BENCHMARK",
                        help=f"any of {', '.join(FAMILIES)} (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="reduced counts and durations (a first look)")
    parser.add_argument("--json", dest="as_json", action="store_true",
                        help="print one JSON object of figures")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-vv for debug)")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        return run(args.names, quick=args.quick, as_json=args.as_json)
    except KeyboardInterrupt:  # every family has stopped its processes while unwinding
        return 128 + signal.SIGINT


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, so every family stops the processes it started."""
    raise SystemExit(128 + signum)


def _run(chosen: list[str], scale: Scale, as_json: bool, out: TextIO, progress: TextIO) -> int:
    figures: list[Figure] = []
    errors: dict[str, str] = {}
    started = time.monotonic()
    for name in chosen:
        print(f"sctl bench: {name} ...", file=progress, flush=True)
        t0 = time.monotonic()
        try:
            figures += _family(name)(scale)
        except Exception as exc:  # report it and go on with the other families
            errors[name] = f"{type(exc).__name__}: {exc}"
            print(f"sctl bench: {name} FAILED: {errors[name]}", file=progress, flush=True)
        print(f"sctl bench: {name} took {time.monotonic() - t0:.1f} s", file=progress,
              flush=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine(),
            "quick": scale.quick, "families": chosen,
            "seconds": round(time.monotonic() - started, 1)}
    text = table(figures, errors, meta)
    if as_json:  # the table still goes to the progress stream: one run gives both
        obj: dict[str, Any] = {f.key: _number(f.value) for f in figures}
        obj.update(meta=meta, errors=errors)
        print(json.dumps(obj), file=out)
        print(text, file=progress)
    else:
        print(text, file=out)
    return 1 if errors else 0


def _number(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 3)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return (f"{os.cpu_count()} CPU, {cpu}, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def table(figures: Sequence[Figure], errors: dict[str, str], meta: dict[str, Any]) -> str:
    lines = [f"sctl bench — {meta['date']} — {meta['machine']}"
             + (" — QUICK (reduced counts)" if meta["quick"] else ""),
             f"| {'figure':<44} | {'value':>10} | {'unit':<6} | {'target':<9} | {'':<6} | key",
             f"|{'-' * 46}|{'-' * 12}|{'-' * 8}|{'-' * 11}|{'-' * 8}|-----"]
    for f in figures:
        target = "" if f.target is None else ("≥ " if f.better == "high" else "≤ ") + _fmt(
            f.target)
        verdict = {True: "ok", False: "MISSED", None: ""}[f.met]
        lines.append(f"| {f.label:<44} | {_fmt(f.value):>10} | {f.unit:<6} | {target:<9} | "
                     f"{verdict:<6} | {f.key}" + (f"  ({f.note})" if f.note else ""))
    for name, error in errors.items():
        lines.append(f"| {name + ' FAILED':<44} | {error}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
