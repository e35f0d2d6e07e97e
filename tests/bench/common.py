"""What every benchmark family shares: the figures it reports, the processes it starts, and the
few measurements (percentiles, RSS, CPU time) read the same way everywhere.

Processes. Every process a family starts goes through a `Procs` (an `ExitStack` underneath):
routers and simulators as real ``sctl`` processes, load generators as ``python -m
tests.bench.worker ROLE``. Leaving the ``with`` block stops them all (SIGTERM, then SIGKILL after
`STOP_TIMEOUT`), also after an error or Ctrl-C, so a benchmark never leaves anything running.

Figures. A family returns `Figure` rows: the JSON key (the issue's output contract), the value,
the unit, the target and whether a higher or lower value is better. The runner prints them as
one table; nothing here asserts on speed (the machine is shared; numbers drift, ratios less so).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from broker.config import SiteConfig, load_site
from tests.support.stack import ROOT, free_ports, sctl_cmd, subprocess_env

__all__ = ["BenchError", "Figure", "Proc", "Procs", "Scale", "free_ports", "percentile",
           "subprocess_env"]

STOP_TIMEOUT: Final = 10.0
WORKER_TIMEOUT: Final = 600.0  # a worker that has not finished by then is killed: a failure
PAGE: Final = os.sysconf("SC_PAGE_SIZE")
TICKS: Final = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Figure:
    """One measured number. `target` is the issue's goal, `better` says its direction
    ("high": value ≥ target is met, "low": value ≤ target, "" : reported only)."""

    key: str
    label: str
    value: float
    unit: str = ""
    target: float | None = None
    better: str = ""
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.target is None or not self.better:
            return None
        return self.value >= self.target if self.better == "high" else self.value <= self.target


@dataclass(frozen=True)
class Scale:
    """How big a run is: `quick` shrinks counts and durations so the whole set runs in seconds
    (the smoke test and a first look); the full scale is the issue's."""

    quick: bool

    def pick(self, full: int | float, quick: int | float) -> Any:
        return quick if self.quick else full


class BenchError(RuntimeError):
    """A benchmark could not be carried out (a process did not start, a worker failed)."""


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of `values`; nan for an empty list."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def rss_mb(pid: int) -> float:
    """Resident set size of `pid` in MiB (from /proc; Linux only, like the deployment)."""
    with open(f"/proc/{pid}/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * PAGE / (1024 * 1024)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time `pid` has used so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise BenchError(f"timed out after {timeout:g} s waiting for {what}")


class Proc:
    """A started child: its Popen and its log file (stdout+stderr, read on failure)."""

    def __init__(self, popen: subprocess.Popen[bytes], log: Path, name: str) -> None:
        self.popen = popen
        self.log = log
        self.name = name

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=STOP_TIMEOUT)

    def result(self, timeout: float = WORKER_TIMEOUT) -> dict[str, Any]:
        """Wait for a worker and return the JSON object it printed last on stdout."""
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(signal.SIGKILL)
            raise BenchError(f"{self.name} did not finish in {timeout:g} s; its log:\n"
                             f"{self.output()[-2000:]}") from None
        lines = [ln for ln in self.output().splitlines() if ln.startswith("{")]
        if self.popen.returncode != 0 or not lines:
            raise BenchError(f"{self.name} failed (exit {self.popen.returncode}); its log:\n"
                             f"{self.output()[-2000:]}")
        result: dict[str, Any] = json.loads(lines[-1])
        return result


class Procs(contextlib.ExitStack):
    """Starts children in a temp folder and stops every one of them on exit."""

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(self.enter_context(tempfile.TemporaryDirectory(prefix="sctl-bench-")))
        self._count = 0

    def start(self, argv: list[str], name: str, **popen: Any) -> Proc:
        self._count += 1
        log = self.folder / f"{self._count:02d}-{name}.log"
        with log.open("wb") as fh:
            popen_obj = subprocess.Popen(argv, cwd=ROOT, env=subprocess_env(), stdout=fh,
                                         stderr=subprocess.STDOUT, **popen)
        proc = Proc(popen_obj, log, name)
        self.callback(proc.stop)
        return proc

    def sctl(self, site: Path, *args: str, name: str) -> Proc:
        return self.start(sctl_cmd("-c", str(site), *args), name)

    def worker(self, role: str, label: str, **args: Any) -> Proc:
        return self.start([sys.executable, "-m", "tests.bench.worker", role, json.dumps(args)],
                          label)

    def site(self, extra: str = "", router: str = "") -> SiteConfig:
        """A site file on fresh loopback ports (router tables `router`, actor tables `extra`)."""
        ingress, egress, query = free_ports(3)
        path = self.folder / f"site{self._count}.toml"
        path.write_text(
            "[router]\n"
            f'ingress = "tcp://127.0.0.1:{ingress}"\n'
            f'egress = "tcp://127.0.0.1:{egress}"\n'
            f'query = "tcp://127.0.0.1:{query}"\n'
            f"{router}\n{extra}\n", encoding="utf-8")
        return load_site(path)

    def router(self, site: SiteConfig) -> Proc:
        """`sctl router` for `site`, returned once its query socket answers."""
        import zmq

        from broker.client.delivery import query

        proc = self.sctl(site.path, "router", name="router")
        url = site.router.connect_url("query")
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()

        def answers() -> bool:
            if proc.popen.poll() is not None:
                raise BenchError(f"router exited with {proc.popen.returncode}:\n"
                                 f"{proc.output()[-2000:]}")
            try:
                query(ctx, url, {"op": "state"}, 0.5)
            except Exception:
                return False
            return True

        wait_until(answers, 20, "the router's query socket")
        return proc
