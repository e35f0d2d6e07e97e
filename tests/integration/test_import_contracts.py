"""The layering contracts (``[tool.importlinter]`` in pyproject.toml) hold, and a forbidden
import makes `lint-imports` fail.

`lint-imports` runs on a copy of the source tree, so the planted imports never touch the
checkout.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("broker", "actors", "cli", "tests")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: run `bash scripts/setup.sh` (import-linter "
                    "is a dev dependency)")
    dest = tmp_path_factory.mktemp("tree")
    shutil.copy(ROOT / "pyproject.toml", dest)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, dest / package,
                        ignore=shutil.ignore_patterns("__pycache__", "corpus", "crashes"))
    return dest


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tree, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(tree), "PATH": ""})


def plant(tree: Path, module: str, line: str) -> str:
    path = tree / (module.replace(".", "/") + ".py")
    original = path.read_text()
    path.write_text(original + f"\n{line}\n")
    return original


def test_the_tree_keeps_every_contract(tree: Path) -> None:
    out = lint(tree)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout, out.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("actors.protocols.springcore_tag", "import socket", "Protocol codecs are sans-IO"),
    ("actors.protocols.spec", "import zmq", "Protocol codecs are sans-IO"),
    ("actors.protocols.cmd_tcp", "from actors.core import loop", "Protocol codecs are sans-IO"),
    ("broker.router.stats", "from broker.client import bus", "The router imports only"),
    ("broker.router.query", "from cli.ops import status", "The router imports only"),
    ("broker.wire.topics", "import zmq", "The wire contract opens no sockets"),
    ("broker.client.outbox", "from actors.core import loop", "Layers"),
    ("actors.sim.instrument", "from actors import bus_link", "Simulators do not import"),
    ("actors.core.link", "from actors import springcore_tcp", "The actor framework"),
    ("cli.ops.top", "from tests.support import feed", "Nothing in broker, actors or cli"),
])
def test_a_forbidden_import_breaks_its_contract(tree: Path, module: str, line: str,
                                                contract: str) -> None:
    path = tree / (module.replace(".", "/") + ".py")
    original = plant(tree, module, line)
    try:
        out = lint(tree)
    finally:
        path.write_text(original)
    assert out.returncode != 0, out.stdout
    broken = out.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken and module in broken, out.stdout
