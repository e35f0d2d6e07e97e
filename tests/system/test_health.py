"""`sctl status` tells the truth under a REAL supervisord: exit 0 only when all is well, 3 for
a stopped program, a link down, an alarm, the router down, with the reason in ``problems``;
a link outage keeps its first failure across attempts; an actor that fails at start shows the
last error line of its log (in the start's result, the watchdog's alarm and status), the
alarm's hint is a command that works, and `sctl top --once` shows the FATAL program as FATAL.

One site for the module, taken through the cases in order: router, watchdog (one restart
allowed), dev1 and dev2, echo actors on their own echo devices.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.echo import EchoServer
from tests.support.stack import ROOT, sctl_cmd, subprocess_env, wait_for
from tests.system.conftest import SupervisedSite

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

ECHO = "tests.support.actors:EchoActor"
START_FAILS = "fail_on_start = true\n"


class Health:
    def __init__(self, site: SupervisedSite, devices: dict[str, EchoServer]) -> None:
        self.site = site
        self.devices = devices
        self.last: dict[str, Any] = {}

    def status(self) -> tuple[int, dict[str, Any]]:
        out = self.site.sctl("status", "--json", "--timeout", "1")
        assert out.returncode in (0, 3), out.stdout + out.stderr
        self.last = json.loads(out.stdout)
        assert (out.returncode == 0) == self.last["ok"] == (not self.last["problems"])
        return out.returncode, self.last

    def wait(self, until: Callable[[int, dict[str, Any]], bool], what: str,
             timeout: float = 30.0) -> dict[str, Any]:
        try:
            wait_for(lambda: until(*self.status()), timeout, what)
        except AssertionError:
            raise AssertionError(f"{what}; last problems: {self.last.get('problems')}") from None
        return self.last

    def wait_well(self) -> None:
        self.wait(lambda code, _: code == 0, "sctl status exit 0")

    def edit_dev2(self, extra: str, add: bool) -> None:
        path = self.site.site_path
        text = path.read_text()
        path.write_text(text.replace("[actors.dev2]\n", f"[actors.dev2]\n{extra}") if add
                        else text.replace(extra, ""))


@pytest.fixture(scope="module")
def health(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Health]:
    devices = {n: EchoServer().start() for n in ("dev1", "dev2")}
    tables = "".join(f'[actors.{n}]\ntype = "{ECHO}"\nport = {d.port}\nbackoff_min = 0.2\n'
                     "backoff_max = 0.5\nheartbeat_interval = 0.5\n" for n, d in devices.items())
    site = SupervisedSite(tmp_path_factory.mktemp("health"), tables,
                          supervisor="max_restarts = 1\nrestart_delay_max = 1")
    try:
        site.start()
        yield Health(site, devices)
    finally:
        site.stop()
        for d in devices.values():
            d.close()


def test_all_well_exits_0(health: Health) -> None:
    health.wait_well()
    text = health.site.sctl("status")
    assert text.returncode == 0 and text.stdout.rstrip().endswith(
        "OK: every program running, links up, no alarm")


def test_a_stopped_program_exits_3(health: Health) -> None:
    assert health.site.sctl("stop", "dev1").returncode == 0
    code, report = health.status()
    assert code == 3 and report["problems"] == ["dev1: STOPPED"]
    text = health.site.sctl("status")
    assert text.returncode == 3 and "NOT OK: 1 problem" in text.stdout
    assert health.site.sctl("start", "dev1").returncode == 0
    health.wait_well()


def test_a_link_down_exits_3_with_the_outage_since_its_first_failure(health: Health) -> None:
    device = health.devices["dev2"]
    device.stop()

    def down(code: int, report: dict[str, Any]) -> bool:
        link = report["programs"]["dev2"].get("link") or {}
        return code == 3 and (link.get("attempts") or 0) >= 2

    first = health.wait(down, "dev2's link down after two attempts")
    assert len(first["problems"]) == 1 and first["problems"][0].startswith(
        "dev2: link down since "), first["problems"]
    assert "attempts, last: " in first["problems"][0]
    link = first["programs"]["dev2"]["link"]
    later = health.wait(lambda code, r: (r["programs"]["dev2"].get("link") or {}).get(
        "attempts", 0) > link["attempts"], "more attempts")["programs"]["dev2"]["link"]
    assert later["down_since"] == link["down_since"]  # one outage, however many attempts
    device.start()  # the same port again
    health.wait_well()


def test_a_start_failure_shows_its_reason_and_ends_in_an_alarm(health: Health) -> None:
    site = health.site
    health.edit_dev2(START_FAILS, add=True)
    out = site.sctl("restart", "dev2")
    reason = "actor dev2 failed to start: RuntimeError: fail_on_start is set"
    assert out.returncode == 1 and reason in out.stderr, out.stdout + out.stderr
    report = health.wait(lambda code, r: code == 3 and bool(r["alarms"]),
                         "the watchdog's alarm about dev2")
    row = report["programs"]["dev2"]
    assert row["supervisor_state"] in ("FATAL", "EXITED") and reason in row["exit"]
    assert "Exited too quickly" not in json.dumps(report)
    assert report["alarms"][0]["program"] == "dev2" and reason in report["alarms"][0]["reason"]
    assert f"dev2: {row['supervisor_state']}: {reason}" in report["problems"]
    assert any(p.startswith("dev2: ALARM stopped after 1 restarts") for p in report["problems"])
    top = site.sctl("top", "--once", "--json", "--interval", "1")
    assert top.returncode == 0, top.stderr
    assert json.loads(top.stdout)["actors"]["dev2"]["state"] == row["supervisor_state"]
    # the alarm says how to start it again; once the cause is fixed, that command works
    hint = report["alarms"][0]["reason"].rsplit("Fix the cause, then: ", 1)[1]
    argv = shlex.split(hint)
    assert argv[:2] == ["sctl", "-c"] and argv[3:] == ["start", "dev2"]
    health.edit_dev2(START_FAILS, add=False)
    again = subprocess.run([*sctl_cmd(), *argv[1:]], cwd=ROOT, env=subprocess_env(),
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr
    health.wait_well()


def test_tables_fit_the_terminal_and_top_quits_on_q(health: Health) -> None:
    import os
    import pty
    import select
    import time

    site = health.site
    narrow = subprocess.run(sctl_cmd("-c", str(site.site_path), "status"), cwd=ROOT,
                            env={**subprocess_env(), "COLUMNS": "60"}, capture_output=True,
                            text=True, timeout=60)
    lines = narrow.stdout.splitlines()
    assert narrow.returncode == 0 and all(len(line) <= 60 for line in lines), lines
    row = next(line for line in lines if line.startswith("dev1 "))
    assert "RUNNING" in row.split()  # the state is never cut
    main, sub = pty.openpty()
    top = subprocess.Popen(sctl_cmd("-c", str(site.site_path), "top", "--interval", "0.5"),
                           cwd=ROOT, env=subprocess_env(), stdin=sub, stdout=sub, stderr=sub)
    os.close(sub)
    try:
        seen = b""
        deadline = time.monotonic() + 20
        while b"q quits" not in seen and time.monotonic() < deadline:
            if select.select([main], [], [], 0.5)[0]:  # a screen drawn: top is in its loop
                seen += os.read(main, 65536)
        assert b"q quits" in seen and b"dev1" in seen
        os.write(main, b"q")
        assert top.wait(10) == 0
    finally:
        if top.poll() is None:
            top.kill()
        os.close(main)


def test_router_down_exits_3(health: Health) -> None:
    assert health.site.sctl("stop", "router").returncode == 0
    code, report = health.status()
    assert code == 3 and report["problems"][0].startswith("router: not reachable")
    assert "router: STOPPED" in report["problems"]
    health.site.rpc.startProcess("router", True)  # the actors' last words reach it at the end
