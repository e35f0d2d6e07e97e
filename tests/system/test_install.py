"""Installing sctl the ways the README says, with real pip, real virtual environments outside
the checkout, a real supervisord and the default site's real programs; nothing of the
checkout's own environment leaks in (no PYTHONPATH, no .venv on the PATH).

- The README's air-gapped install: a wheelhouse built with ``pip wheel .`` from a fresh copy of
  the checkout, a new virtual environment, ``pip install --no-index --find-links`` with every
  pip configuration (index, find-links) switched off; then the README's ``sctl init`` flow, line
  by line, in an empty home folder, up to ``sctl send reader1 accept``.
- A fresh clone with that environment's ``bin`` on the PATH (as after ``pip install .``):
  ``supervisord -c deploy/actors.conf`` runs the committed file as it is.
- A fresh clone set up as the README says (``bash scripts/run.sh``, which runs setup.sh), then
  the README's quick start, line by line.

"Fresh clone" is a copy of every file git tracks or would track (``git ls-files --cached
--others --exclude-standard``), so uncommitted work is tested as it will be committed. The
default site's ports must be free. Each test takes well under two minutes on 2 cores.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import ROOT

pytestmark = [pytest.mark.system, pytest.mark.timeout(360)]

PORTS = (5570, 5571, 5572, 14000, 18830, 6510, 15025, 2404)  # the default site's
UP_TIMEOUT = 60.0  # seconds for every link of the default site to come up (setup excluded)
RETRIED = re.compile(r"(^|/)sctl (status|send)\b")  # lines that wait for the site to be up
SUB = re.compile(r"(^|/)sctl sub\b")  # runs until Ctrl-C


def readme_block(needle: str) -> list[str]:
    """The command lines of the README's ``sh`` block that contains `needle`."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```sh\n(.*?)```", text, re.S) if needle in b]
    assert len(blocks) == 1, f"the README should hold one sh block with {needle!r}"
    return [line for line in blocks[0].splitlines() if line.strip()]


def export_checkout(dest: Path) -> Path:
    """A fresh clone of the working tree (see the module docstring)."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], cwd=ROOT, capture_output=True, check=True,
                           timeout=30).stdout.split(b"\0")
    for name in filter(None, names):
        src = ROOT / os.fsdecode(name)
        if src.is_file():  # not a file deleted in the working tree
            target = dest / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    assert (dest / "var" / "log").is_dir(), "a clone must hold var/log (supervisord's log)"
    return dest


def outside_env(path_first: list[Path], home: Path | None = None,
                pip_config: bool = True) -> dict[str, str]:
    """The environment of an operator's shell: none of the test run's Python settings, no
    folder of this checkout on the PATH; `path_first` in front. Without `pip_config`, pip sees
    no index nor find-links of this machine (an air-gapped host)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "VIRTUAL_ENV", "SCTL_"))
           and (pip_config or not k.startswith("PIP_"))}
    system = [p for p in env.get("PATH", "/usr/bin:/bin").split(os.pathsep)
              if p and not Path(p).absolute().is_relative_to(ROOT)]
    env["PATH"] = os.pathsep.join([*map(str, path_first), *system])
    if home is not None:
        env["HOME"] = str(home)
    if not pip_config:
        env["PIP_CONFIG_FILE"] = os.devnull
    return env


def run(line: str, cwd: Path, env: dict[str, str], timeout: float = 120
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def check_ports_free() -> None:
    def used(port: int) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    busy = [p for p in PORTS if used(p)]
    assert not busy, f"ports {busy} of the default site are in use: is a site running? " \
                     "(supervisorctl -c deploy/actors.conf shutdown)"


def run_lines(lines: list[str], cwd: Path, env: dict[str, str]) -> dict[str, str]:
    """Run README lines as an operator types them: ``cd`` changes the folder for the next
    lines, ``sctl status``/``sctl send`` are repeated until the site answers (the operator
    waits a few seconds), ``sctl sub`` is stopped with Ctrl-C after its first line, anything
    else must succeed at once. Returns each line's output."""
    outputs: dict[str, str] = {}
    for line in lines:
        words = shlex.split(line, comments=True)
        if words and words[0] == "cd":
            target = words[1]
            if target.startswith("~"):
                target = env["HOME"] + target[1:]
            cwd = (cwd / target).resolve()
            continue
        started = time.monotonic()
        if SUB.search(line):
            outputs[line] = first_line_then_ctrl_c(line, cwd, env)
        else:
            deadline = started + (UP_TIMEOUT if RETRIED.search(line) else 0)
            while True:
                done = run(line, cwd, env)
                if done.returncode == 0 or time.monotonic() > deadline:
                    break
                time.sleep(1.0)
            assert done.returncode == 0, f"`{line}` in {cwd}: exit {done.returncode}\n" \
                                         f"{done.stdout}{done.stderr}"
            outputs[line] = done.stdout
        print(f"{time.monotonic() - started:5.1f} s  {line}")
    return outputs


def first_line_then_ctrl_c(line: str, cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.Popen(["bash", "-c", f"exec {line}"], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.communicate(timeout=15)
    assert first.strip(), f"`{line}` printed nothing"
    return first


def stop_supervisord(pidfile: Path, conf: Path, bin_dir: Path) -> None:
    """Shut supervisord down if it still runs, and wait until it and its programs are gone
    (the next test binds the same ports)."""
    if not pidfile.exists():
        return
    pid = int(pidfile.read_text().strip() or 0)
    subprocess.run([str(bin_dir / "supervisorctl"), "-c", str(conf), "shutdown"],
                   capture_output=True, timeout=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its parent, this test, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The README's air-gapped install, as written (paths moved into the test's folder): the
    virtual environment's folder."""
    base = tmp_path_factory.mktemp("install")
    checkout = export_checkout(base / "checkout")
    venv = base / "opt-sctl"
    started = time.monotonic()
    wheel, make_venv, install = readme_block("pip wheel")
    connected = outside_env([ROOT / ".venv" / "bin"])  # a machine with pip and an index
    done = run(wheel, checkout, connected, timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr
    wheels = {p.name.split("-")[0] for p in (checkout / "wheelhouse").glob("*.whl")}
    assert {"sctl", "supervisor", "pyzmq", "c104", "paho_mqtt"} <= wheels, wheels
    (sctl_wheel,) = (checkout / "wheelhouse").glob("sctl-*.whl")
    with zipfile.ZipFile(sctl_wheel) as wheel:
        packed = set(wheel.namelist())
    sources = {str(p.relative_to(checkout)) for package in ("actors", "broker", "cli")
               for p in (checkout / package).rglob("*") if p.is_file()}
    assert sources - packed == set(), "files of the source tree missing from the wheel " \
                                      "(pyproject.toml [tool.setuptools.package-data])"
    air_gapped = outside_env([], pip_config=False)
    for line in (make_venv, install):
        done = run(line.replace("/opt/sctl", str(venv)), checkout, air_gapped, timeout=150)
        assert done.returncode == 0, f"`{line}`:\n{done.stdout}{done.stderr}"
    for tool in ("sctl", "supervisord", "supervisorctl"):
        assert (venv / "bin" / tool).is_file(), tool
    print(f"wheelhouse and air-gapped install in {time.monotonic() - started:.1f} s")
    yield venv


def test_air_gapped_install_then_the_readme_init_flow(installed: Path, tmp_path: Path) -> None:
    check_ports_free()
    home = tmp_path / "home"
    home.mkdir()
    env = outside_env([installed / "bin"], home=home)
    started = time.monotonic()
    try:
        outputs = run_lines(readme_block("sctl init"), home, env)
    finally:
        stop_supervisord(home / "plant" / "var" / "supervisord.pid",
                         home / "plant" / "actors.conf", installed / "bin")
    print(f"sctl init flow in {time.monotonic() - started:.1f} s")
    sent = next(out for line, out in outputs.items() if "send reader1 accept" in line)
    assert "$SCCMD;SEQ=60" in sent
    conf = (home / "plant" / "actors.conf").read_text()
    assert f'PATH="{installed / "bin"}:%(ENV_PATH)s"' in conf  # the installed sctl, no .venv
    router_log = (home / "plant" / "var" / "log" / "router.log").read_text()
    assert "up: ingress" in router_log


def test_fresh_clone_runs_the_committed_conf_after_pip_install(installed: Path,
                                                               tmp_path: Path) -> None:
    check_ports_free()
    clone = export_checkout(tmp_path / "clone")
    assert not (clone / ".venv").exists()
    env = outside_env([installed / "bin"])  # as after `pip install .` in an active venv
    try:
        done = run("supervisord -c deploy/actors.conf", clone, env)
        assert done.returncode == 0, done.stdout + done.stderr
        outputs = run_lines(["sctl status", "sctl send reader1 accept"], clone, env)
    finally:
        stop_supervisord(clone / "var" / "supervisord.pid", clone / "deploy" / "actors.conf",
                         installed / "bin")
    assert "$SCCMD;SEQ=60" in outputs["sctl send reader1 accept"]


def test_fresh_clone_setup_then_the_readme_quick_start(tmp_path: Path) -> None:
    check_ports_free()
    clone = export_checkout(tmp_path / "clone")
    env = outside_env([])
    log = (tmp_path / "run.log").open("wb")
    started = time.monotonic()
    runner = subprocess.Popen(["bash", "scripts/run.sh"], cwd=clone, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    try:
        deadline = time.monotonic() + 240  # setup.sh (a new .venv, pip install -e .) included
        while not (clone / "var" / "supervisor.sock").exists():
            assert runner.poll() is None, (tmp_path / "run.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "run.log").read_text()
            time.sleep(0.5)
        print(f"setup and supervisord up in {time.monotonic() - started:.1f} s")
        outputs = run_lines(readme_block(".venv/bin/sctl send reader1 accept"), clone, env)
    finally:
        stop_supervisord(clone / "var" / "supervisord.pid", clone / "deploy" / "actors.conf",
                         clone / ".venv" / "bin")
        try:
            runner.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(runner.pid, signal.SIGKILL)
    print(f"fresh clone to quick start done in {time.monotonic() - started:.1f} s")
    assert any("$SCCMD;SEQ=60" in out for line, out in outputs.items() if "accept" in line)
    assert runner.returncode == 0, (tmp_path / "run.log").read_text()
