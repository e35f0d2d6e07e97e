"""The README's plain pyzmq + msgpack subscriber works as shown (against a real router), and the
public imports the README lists resolve."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from broker.config import load_site
from tests.support.stack import ROOT, Proc, sctl_cmd, subprocess_env, write_site


def readme_python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, re.S)


def readme_subscriber() -> str:
    blocks = readme_python_blocks()
    plain = [b for b in blocks if "import zmq" in b and "broker" not in b]
    assert len(plain) == 1, "the README should hold one plain pyzmq example"
    return plain[0]


def test_plain_pyzmq_subscriber_from_the_readme(tmp_path: Path,
                                                spawn: Callable[..., Proc]) -> None:
    code = readme_subscriber()
    assert len(code.strip().splitlines()) <= 12
    site = write_site(tmp_path)
    router = load_site(site).router
    spawn("-c", str(site), "router", name="router")
    # the same code, pointed at this test's router and stopped after one message
    code = code.replace("tcp://127.0.0.1:5571", router.egress).replace(
        "while True:", "for _ in range(1):")
    sub = subprocess.Popen([sys.executable, "-c", code], env=subprocess_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for i in range(50):  # publish until the late-joining SUB has its subscription in place
            subprocess.run(sctl_cmd("-c", str(site), "pub", "evt.readme.tag",
                                    '{"tag_id": "04AA"}'), cwd=ROOT, env=subprocess_env(),
                           capture_output=True, timeout=30)
            try:
                out, err = sub.communicate(timeout=0.3 if i < 49 else 5)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        if sub.poll() is None:
            sub.kill()
    assert sub.returncode == 0, err
    gseq, topic, src, data = out.split(" ", 3)
    assert int(gseq) >= 1 and topic == "evt.readme.tag" and src.startswith("sctl-")
    assert data.strip() == "{'tag_id': '04AA'}"


def test_public_imports_in_the_readme_resolve() -> None:
    """Every `from X import Y` in the README's examples and in its API table is importable."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    statements = [node for block in readme_python_blocks() for node in ast.walk(ast.parse(block))
                  if isinstance(node, ast.ImportFrom)]
    statements += [ast.parse(line).body[0]
                   for line in re.findall(r"`(from [a-z_.]+ import [A-Za-z_, ]+)`", text)]
    modules = {s.module for s in statements if isinstance(s, ast.ImportFrom)}
    assert {"broker.bus", "broker.config", "broker.errors", "actors.base"} <= modules
    for stmt in statements:
        assert isinstance(stmt, ast.ImportFrom) and stmt.module is not None
        module = importlib.import_module(stmt.module)
        missing = [a.name for a in stmt.names if not hasattr(module, a.name)]
        assert not missing, f"{stmt.module} has no {missing} (README: public imports)"
