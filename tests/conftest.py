"""Shared fixtures: free loopback ports, a site file per test, a real router process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker.config import SiteConfig, load_site

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (held open together, so they cannot repeat)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def write_site(tmp_path: Path, extra: str = "", router_extra: str = "") -> Path:
    """A site file on fresh loopback ports; `extra` is appended (actor tables)."""
    path = tmp_path / "site.toml"
    ingress, egress, query = free_ports(3)
    path.write_text(
        "[router]\n"
        f'ingress = "tcp://127.0.0.1:{ingress}"\n'
        f'egress = "tcp://127.0.0.1:{egress}"\n'
        f'query = "tcp://127.0.0.1:{query}"\n'
        f"{router_extra}\n{extra}\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def site_file(tmp_path: Path) -> Path:
    return write_site(tmp_path)


@pytest.fixture
def site(site_file: Path) -> SiteConfig:
    return load_site(site_file)


def sctl_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("SCTL_CONFIG", None)
    return env


class Proc:
    """A child process (router, actor) that a test can kill, restart and wait on."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args = args
        self.log = log
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        fh = self.log.open("ab")
        self.popen = subprocess.Popen(self.args, cwd=ROOT, env=subprocess_env(),
                                      stdout=fh, stderr=subprocess.STDOUT)
        fh.close()
        return self

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.popen is not None
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        return self.popen.wait(timeout=15)

    def stop(self) -> int | None:
        if self.popen is None or self.popen.poll() is not None:
            return None if self.popen is None else self.popen.returncode
        return self.kill(signal.SIGTERM)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    procs: list[Proc] = []

    def _spawn(*args: str, name: str = "proc") -> Proc:
        p = Proc(sctl_cmd(*args), tmp_path / f"{name}.log").start()
        procs.append(p)
        return p

    yield _spawn
    for p in reversed(procs):  # actors before the router they flush to
        try:
            p.stop()
        except subprocess.TimeoutExpired:
            p.kill()


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll `predicate` until true; fail the test (not hang) when `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
