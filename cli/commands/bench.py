"""`sctl bench`: the benchmarks of a source checkout. They live in tests/bench, which is not
installed and which code under cli/ never imports, so the command runs
``python -m tests.bench.runner`` in the checkout as a child process and exits with its status.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from cli.common import EXIT_USAGE, fail, json_option

if TYPE_CHECKING:
    from pathlib import Path


@click.command()
@click.argument("names", nargs=-1, metavar="[BENCHMARK]...")
@click.option("--quick", is_flag=True, help="reduced counts and durations (a first look)")
@json_option
@click.pass_context
def bench(ctx: click.Context, names: tuple[str, ...], quick: bool, as_json: bool) -> None:
    """Run the benchmarks and print a table: throughput, latency, device, commands, recovery,
    footprint, spec, bridge, metrics, large, fanout (all if none named). Needs a source
    checkout (tests/bench) with the dev tools;
    it starts and stops its own routers, simulators, supervisord and mosquitto."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    if not (root / "tests" / "bench" / "runner.py").is_file():
        fail(f"no benchmarks in {root}: sctl bench runs from a source checkout", EXIT_USAGE)
    argv = [sys.executable, "-m", "tests.bench.runner", *["-v"] * ctx.obj["verbose"]]
    if quick:
        argv.append("--quick")
    if as_json:
        argv.append("--json")
    sys.exit(_run([*argv, "--", *names], root))


def _run(argv: list[str], cwd: Path) -> int:
    """Run the benchmark runner to its end and return its exit status.

    Ctrl-C at the terminal reaches the runner too (one process group), and the runner then
    stops every process it started; so sctl keeps waiting for it instead of killing it, and
    afterwards reports the interruption the way click does for any command ("Aborted!",
    exit 1). A SIGTERM sent to sctl alone is passed on to the runner, which unwinds the same way.
    """
    import signal
    import subprocess

    proc = subprocess.Popen(argv, cwd=cwd)
    previous = signal.signal(signal.SIGTERM, lambda signum, _: proc.send_signal(signum))
    interrupted = False
    try:
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:
                interrupted = True
    finally:
        signal.signal(signal.SIGTERM, previous)
    if interrupted:
        raise KeyboardInterrupt
    return code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as a shell says
