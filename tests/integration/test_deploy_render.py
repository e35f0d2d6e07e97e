"""``sctl deploy render --check`` as the test command and an operator run it: the committed
deploy/actors.conf is what deploy/site.toml renders to, and a stale file is caught."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.stack import ROOT
from tests.unit.test_deploy import SITE


@pytest.fixture
def site_path(tmp_path: Path) -> Path:
    p = tmp_path / "site.toml"
    p.write_text(SITE, encoding="utf-8")
    return p


def test_committed_default_actors_conf_is_not_stale() -> None:
    """deploy/actors.conf must be exactly what `sctl deploy render` gives for deploy/site.toml."""
    out = subprocess.run([sys.executable, "-m", "cli", "-c", "deploy/site.toml", "deploy",
                          "render", "--check"], cwd=ROOT, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr + "\n(run: sctl deploy render)"


def test_check_detects_a_stale_file(site_path: Path) -> None:
    conf = site_path.parent / "actors.conf"
    conf.write_text("; old\n")
    out = subprocess.run([sys.executable, "-m", "cli", "-c", str(site_path), "deploy", "render",
                          "--check"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "stale" in out.stderr
