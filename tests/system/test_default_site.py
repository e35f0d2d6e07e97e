"""The newcomer's path: the README's run command brings up the default site (deploy/), every
actor reports its link up within 30 s, and `sctl send reader1 accept` reaches the door."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from typing import Any

from broker.config import load_site
from tests.support.stack import ROOT, sctl_cmd, subprocess_env, wait_for

SITE = ROOT / "deploy" / "site.toml"
PORTS = (5570, 5571, 5572, 14000, 18830, 6510, 15025, 2404)  # those deploy/site.toml uses


def sctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(sctl_cmd("-c", str(SITE), *args), cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=30)


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_run_command_brings_up_the_default_site() -> None:
    busy = [p for p in PORTS if port_in_use(p)]
    assert not busy, f"ports {busy} of the default site are in use: is it already running? " \
                     "(.venv/bin/supervisorctl -c deploy/actors.conf shutdown)"
    log = (ROOT / "var").joinpath("run-test.log")
    log.parent.mkdir(exist_ok=True)
    with log.open("wb") as out:
        run = subprocess.Popen(["bash", "scripts/run.sh"], cwd=ROOT, env=subprocess_env(),
                               stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    actors = list(load_site(SITE).actors)
    report: dict[str, Any] = {}
    try:
        def all_up() -> bool:
            nonlocal report
            res = sctl("status", "--json", "--timeout", "1")
            if res.returncode not in (0, 3):  # 3: not all well yet
                return False
            report = json.loads(res.stdout)
            rows = report["actors"]
            return all(rows[a].get("alive") and (rows[a].get("link") or {}).get("state") == "up"
                       for a in actors)
        started = time.monotonic()
        try:
            wait_for(all_up, 60, "every actor of the default site with its link up")
        except AssertionError:
            down = {a: (r.get("supervisor_state"), r.get("link")) for a, r in
                    report.get("actors", {}).items() if (r.get("link") or {}).get("state") != "up"}
            raise AssertionError(f"not up: {down}\n{log.read_text(errors='replace')[-2000:]}") \
                from None
        took = time.monotonic() - started
        print(f"default site up in {took:.1f} s (setup included)")
        assert took < 30 + 15, "slower than 30 s after setup"  # setup.sh is idempotent, ~1 s
        res = sctl("send", "reader1", "accept")
        assert res.returncode == 0, res.stderr
        assert "$SCCMD;SEQ=60" in res.stdout
        text = sctl("status").stdout
        for name in actors:
            assert name in text
    finally:
        subprocess.run([str(ROOT / ".venv/bin/supervisorctl"), "-c", "deploy/actors.conf",
                        "shutdown"], cwd=ROOT, capture_output=True, timeout=60)
        try:
            run.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(timeout=10)
