"""Fixtures for every test folder. The helpers live in `tests.support.stack`; the names below
are re-exported for modules that still import them from here."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker.config import SiteConfig, load_site
from tests.support.stack import (  # noqa: F401  (re-exported)
    ROOT,
    Proc,
    Stack,
    free_port,
    free_ports,
    sctl_cmd,
    subprocess_env,
    wait_for,
    write_site,
)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """An empty site in the test's folder (`Stack`): write its tables, start what it needs."""
    s = Stack(tmp_path)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """``spawn(*sctl_args, name=...)``: an ``sctl`` process, stopped at the end (prefer
    `stack`, which also starts the router on port 0 and waits for it)."""
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


@pytest.fixture
def site_file(tmp_path: Path) -> Path:
    return write_site(tmp_path)


@pytest.fixture
def site(site_file: Path) -> SiteConfig:
    return load_site(site_file)

