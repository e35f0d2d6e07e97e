"""``python -m tests.fuzz [TARGET ...] [--seconds N] [--runs N] [--seed S]``.

Fuzzes each target (all if none are named) in turn and prints one line per target: runs, arcs
covered (seeds only → after fuzzing), corpus size, crash. Exit status 1 if any target crashed
(the minimised input is saved under tests/fuzz/crashes/ and printed), 2 for a bad argument.
"""

from __future__ import annotations

import argparse
import sys

from tests.fuzz.engine import fuzz
from tests.fuzz.targets import TARGETS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split(
        "\n\n")[1] if __doc__ else None)
    parser.add_argument("targets", nargs="*", metavar="TARGET",
                        help=f"targets to fuzz (default: all): {', '.join(TARGETS)}")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="wall-time budget per target (default 10)")
    parser.add_argument("--runs", type=int, default=None,
                        help="stop a target after this many inputs (deterministic with --seed)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--hang", type=float, default=2.0,
                        help="seconds one input may run before it counts as a hang")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    args = parser.parse_args(argv)
    if args.list:
        for target in TARGETS.values():
            print(f"{target.name:20} {target.doc}")
        return 0
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    crashed = 0
    print(f"{'target':20} {'runs':>8} {'arcs':>13} {'corpus':>6}  result")
    for name in args.targets or list(TARGETS):
        r = fuzz(TARGETS[name], seconds=args.seconds, runs=args.runs, seed=args.seed,
                 hang_seconds=args.hang)
        arcs = f"{r.seed_arcs}->{r.arcs}"
        verdict = "ok" if r.crash is None else f"CRASH {r.crash.error}"
        print(f"{name:20} {r.runs:>8} {arcs:>13} {r.corpus:>6}  {verdict}", flush=True)
        if r.crash is not None:
            crashed += 1
            print(f"    input {r.crash.data!r}\n    saved {r.crash.path}", flush=True)
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
