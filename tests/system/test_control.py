"""sctl's supervisorctl verbs against a REAL supervisord: start, stop, restart, signal, pid and
logs (-f), on a NAME, a group (``pair:*``, ``pair:dev1``) and ``all``. One site for the module:
router, watchdog, two echo actors in the group ``pair`` and one without a group; each test
leaves every program running."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.echo import EchoServer
from tests.support.stack import ROOT, sctl_cmd, subprocess_env, wait_for
from tests.system.conftest import SupervisedSite

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

ECHO = "tests.support.actors:EchoActor"


def actor(name: str, port: int, group: str = "") -> str:
    return (f'[actors.{name}]\ntype = "{ECHO}"\nport = {port}\nbackoff_max = 1.0\n'
            + (f'group = "{group}"\n' if group else ""))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SupervisedSite]:
    device = EchoServer().start()
    s = SupervisedSite(tmp_path_factory.mktemp("control"),
                       actor("dev1", device.port, "pair") + actor("dev2", device.port, "pair")
                       + actor("dev3", device.port))
    try:
        s.start()
        wait_for(lambda: all_running(s), 30, "every program RUNNING")
        yield s
    finally:
        s.stop()
        device.close()


def all_running(site: SupervisedSite) -> bool:
    return set(states(site).values()) == {"RUNNING"}


def states(site: SupervisedSite) -> dict[str, str]:
    return {i["name"]: i["statename"] for i in site.rpc.getAllProcessInfo()}


def pids(site: SupervisedSite) -> dict[str, int]:
    return {i["name"]: i["pid"] for i in site.rpc.getAllProcessInfo()}


def ok(site: SupervisedSite, *args: str) -> str:
    out = site.sctl(*args)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_stop_and_start_a_program(site: SupervisedSite) -> None:
    assert ok(site, "stop", "dev3").strip() == "dev3: stopped"
    assert states(site)["dev3"] == "STOPPED"  # stop waits until it is
    assert ok(site, "stop", "dev3").strip() == "dev3: not running (STOPPED)"
    assert ok(site, "start", "dev3").strip() == "dev3: started"
    assert states(site)["dev3"] == "RUNNING"


def test_group_patterns(site: SupervisedSite) -> None:
    out = ok(site, "stop", "pair:*")
    assert sorted(out.splitlines()) == ["pair:dev1: stopped", "pair:dev2: stopped"]
    now = states(site)
    assert (now["dev1"], now["dev2"], now["dev3"]) == ("STOPPED", "STOPPED", "RUNNING")
    assert ok(site, "start", "pair:dev1").strip() == "pair:dev1: started"
    assert states(site)["dev2"] == "STOPPED"
    out = ok(site, "start", "pair:*", "--json")
    results = {p["name"]: p["result"] for p in json.loads(out)["programs"]}
    assert results == {"dev1": "already running", "dev2": "started"}
    wrong = site.sctl("stop", "pair")
    assert wrong.returncode == 2 and "pair:*" in wrong.stderr
    assert states(site)["dev1"] == "RUNNING"  # nothing was done


def test_restart_all_in_priority_order(site: SupervisedSite) -> None:
    before = pids(site)
    out = site.sctl("restart", "all", "--json", timeout=90)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert {p["name"] for p in report["programs"]} == {"router", "watchdog", "dev1", "dev2",
                                                       "dev3"}
    assert all(p["ok"] and p["result"] == "started" for p in report["programs"]), report
    after = pids(site)
    assert all(after[n] != before[n] for n in before), (before, after)
    assert all_running(site)


def test_signal_and_pid(site: SupervisedSite) -> None:
    assert int(ok(site, "pid")) == site.rpc.getPID()
    numbers = dict(line.split(": ") for line in ok(site, "pid", "dev3", "pair:*").splitlines())
    assert {k: int(v) for k, v in numbers.items()} == {
        "dev3": pids(site)["dev3"], "pair:dev1": pids(site)["dev1"],
        "pair:dev2": pids(site)["dev2"]}
    old = pids(site)["dev3"]
    assert ok(site, "signal", "KILL", "dev3").strip() == "dev3: signalled KILL"
    wait_for(lambda: pids(site)["dev3"] not in (0, old) and all_running(site), 15,
             "the watchdog to restart dev3")
    bad = site.sctl("signal", "NOPE", "dev3")
    assert bad.returncode == 2 and "'SIG'" in bad.stderr


def test_logs_tail_and_follow(site: SupervisedSite) -> None:
    out = ok(site, "logs", "dev1", "-n", "3")
    lines = out.splitlines()
    assert len(lines) == 3 and all("+" in line.split()[0] or "Z" in line.split()[0]
                                   for line in lines), lines  # times carry their zone
    many = site.sctl("logs", "pair:*")
    assert many.returncode == 2 and "matches 2 programs" in many.stderr
    follow = site.folder / "follow.out"
    with follow.open("wb") as sink:
        tail = subprocess.Popen(sctl_cmd("-c", str(site.site_path), "logs", "dev1", "-f",
                                         "-n", "0", "--json"),
                                cwd=ROOT, env=subprocess_env(), stdout=sink,
                                stderr=subprocess.STDOUT)
    try:
        time.sleep(1.0)  # it has read the log's end; what follows is new
        ok(site, "restart", "dev1")

        def followed() -> list[dict[str, Any]]:
            text = follow.read_text(errors="replace")
            return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

        wait_for(lambda: any("actor dev1 (test-echo) running" in m["line"]
                             for m in followed()), 15, "the restart in the followed log")
        assert all(m["program"] == "dev1" for m in followed())
    finally:
        tail.terminate()
        assert tail.wait(10) == 0
    assert all_running(site)


def test_reload_restarts_only_the_actor_whose_setting_changed(site: SupervisedSite) -> None:
    before = pids(site)
    conf_text = site.conf.read_text()
    text = site.site_path.read_text()
    site.site_path.write_text(text + '[actors.dev9]\ntype = "no-such-type"\n')
    bad = site.sctl("reload")
    assert bad.returncode == 2 and "actors.dev9.type" in bad.stderr, bad.stderr
    assert "nothing changed" in bad.stderr
    assert site.conf.read_text() == conf_text and pids(site) == before

    site.site_path.write_text(text.replace("[actors.dev3]\n",
                                           "[actors.dev3]\nheartbeat_interval = 0.5\n"))
    out = site.sctl("reload", "--json", timeout=90)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["settings"] == ["dev3"], report
    assert report["added"] == report["changed"] == report["removed"] == report["failed"] == []
    assert not report["written"]  # a setting is not in the supervisord file
    after = pids(site)
    assert after["dev3"] != before["dev3"]
    assert {n: p for n, p in after.items() if n != "dev3"} == \
        {n: p for n, p in before.items() if n != "dev3"}
    text_out = site.sctl("reload")
    assert text_out.returncode == 0 and "dev3" not in text_out.stdout.split("unchanged:")[0]
    assert pids(site) == after
