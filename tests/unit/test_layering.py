"""The layering of DESIGN §2, checked on the import statements of every module.

cli → actors → broker, never back; codecs in actors/protocols/ import nothing that does I/O.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IO_MODULES = {"socket", "ssl", "select", "selectors", "asyncio", "threading", "subprocess",
              "zmq", "paho", "c104", "broker", "multiprocessing", "http", "urllib"}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def top(name: str) -> str:
    return name.split(".", 1)[0]


@pytest.mark.parametrize("path", modules("broker"), ids=lambda p: p.name)
def test_broker_imports_neither_actors_nor_cli(path: Path) -> None:
    bad = {n for n in imports_of(path) if top(n) in ("actors", "cli")}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", modules("actors"), ids=lambda p: str(p.relative_to(ROOT)))
def test_actors_do_not_import_cli(path: Path) -> None:
    bad = {n for n in imports_of(path) if top(n) == "cli"}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


ALLOWED_IN_CODECS = {"broker.wire.errors"}  # LocalProtocolError / RemoteProtocolError live there


def test_protocol_codecs_do_no_io() -> None:
    offenders = {}
    for path in modules("actors/protocols"):
        bad = {n for n in imports_of(path) if top(n) in IO_MODULES} - ALLOWED_IN_CODECS
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert not offenders, f"codecs must be sans-IO: {offenders}"


def test_the_check_sees_an_offender(tmp_path: Path) -> None:
    """The checker itself must be able to fail."""
    probe = tmp_path / "codec.py"
    probe.write_text("import socket\nfrom zmq import Context\nfrom . import x\n")
    assert {top(n) for n in imports_of(probe)} & IO_MODULES == {"socket", "zmq"}
