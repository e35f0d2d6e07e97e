"""The rendered supervisord file and the watchdog's restart policy, without processes."""

from __future__ import annotations

import configparser
import itertools
import xmlrpc.client
from pathlib import Path
from typing import Any

import pytest

from broker.config import load_site
from cli.ops.supervisord import render
from cli.ops.watchdog import Program, RestartPolicy, Watchdog

SITE = """
[router]
journal_path = "journal.bin"

[supervisor]
max_restarts = 3
restart_window = 60
restart_delay_max = 4

[services.mqtt]
command = "/usr/sbin/mosquitto -c {site}/mosquitto.conf"
runs_on = "gw"
priority = 5

[actors.reader1]
type = "springcore-tcp"
host = "10.0.0.5"
runs_on = "door"

[actors.scada]
type = "iec104-server"
allow = ["10.0.0.9"]
"""


def parse(text: str) -> configparser.RawConfigParser:
    cp = configparser.RawConfigParser()
    cp.read_string(text)
    return cp


@pytest.fixture
def site_path(tmp_path: Path) -> Path:
    p = tmp_path / "site.toml"
    p.write_text(SITE, encoding="utf-8")
    return p


def test_every_program_is_rendered_with_the_restart_policy(site_path: Path) -> None:
    site = load_site(site_path)
    cp = parse(render(site, site_path.parent / "actors.conf"))
    programs = [s.split(":", 1)[1] for s in cp.sections() if s.startswith("program:")]
    assert programs == ["router", "watchdog", "mqtt", "reader1", "scada"]
    router, reader = cp["program:router"], cp["program:reader1"]
    assert router["priority"] == "1" and int(reader["priority"]) > int(router["priority"])
    assert router["command"] == "sctl -c %(here)s/site.toml router"  # found on the PATH below
    assert router["environment"].startswith('PATH="') and ':%(ENV_PATH)s"' in router["environment"]
    assert reader["command"].endswith("-c %(here)s/site.toml actor reader1")
    # actors: the watchdog restarts them (growing delays, intensity); supervisord reports death
    assert (reader["autorestart"], reader["startretries"]) == ("false", "0")
    assert router["autorestart"] == "true"
    for section in ("program:router", "program:reader1", "program:mqtt"):
        p = cp[section]
        assert p["stopsignal"] == "TERM"
        assert p["stopasgroup"] == p["killasgroup"] == "true"
        assert p["stdout_logfile_maxbytes"] == "10MB" and p["stdout_logfile_backups"] == "5"
        assert p["stdout_logfile"].startswith("%(here)s/../var/log/")
    assert cp["program:mqtt"]["command"] == "/usr/sbin/mosquitto -c %(here)s/mosquitto.conf"
    assert cp["unix_http_server"]["file"] == "%(here)s/../var/supervisor.sock"
    assert cp["supervisorctl"]["serverurl"] == "unix://%(here)s/../var/supervisor.sock"
    # no absolute path into the site's folder (the sctl folder outside it is absolute: PATH)
    assert str(site_path.parent) not in render(site, site_path.parent / "actors.conf")


def test_without_watchdog_supervisord_restarts_actors(site_path: Path) -> None:
    site_path.write_text(SITE.replace("max_restarts = 3", "max_restarts = 3\nwatchdog = false"))
    cp = parse(render(load_site(site_path), site_path.parent / "actors.conf"))
    assert "program:watchdog" not in cp
    assert cp["program:reader1"]["autorestart"] == "true"


def test_host_filter_renders_only_that_hosts_programs(site_path: Path) -> None:
    site = load_site(site_path)
    door = parse(render(site, site_path.parent / "door.conf", host="door"))
    assert [s for s in door.sections() if s.startswith("program:")] == [
        "program:watchdog", "program:reader1"]
    assert door["program:watchdog"]["command"].endswith("watchdog --host door")
    main = parse(render(site, site_path.parent / "main.conf", host=""))
    assert [s for s in main.sections() if s.startswith("program:")] == [
        "program:router", "program:watchdog", "program:scada"]


def test_paths_are_relative_to_the_output_folder(site_path: Path) -> None:
    out = site_path.parent / "sub" / "actors.conf"
    text = render(load_site(site_path), out)
    assert "-c %(here)s/../site.toml router" in text


# --- the watchdog's decisions -------------------------------------------------------------------


def test_restart_delays_grow_and_intensity_stops() -> None:
    policy = RestartPolicy(max_restarts=4, window=60.0, delay_max=3.0)
    prog = Program("a", actor=True)
    delays = [policy.next_restart(prog, t) for t in (0.0, 1.0, 2.0, 3.0)]
    assert delays == [0.0, 1.0, 2.0, 3.0]  # 0, 1, 2, then capped at delay_max
    assert policy.next_restart(prog, 4.0) is None  # a fifth within the window: give up
    assert policy.next_restart(prog, 100.0) == 0.0  # window passed: counting starts over


class FakeSupervisor:
    """Answers like supervisord's XML-RPC `supervisor` namespace, records the calls."""

    def __init__(self) -> None:
        self.infos: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []

    def set(self, name: str, state: str, pid: int = 0, exitstatus: int = 1) -> None:
        self.infos[name] = {"name": name, "group": name, "statename": state, "pid": pid,
                            "exitstatus": exitstatus, "spawnerr": "", "description": "",
                            "start": 0, "now": 0}

    def getAllProcessInfo(self) -> list[dict[str, Any]]:
        return list(self.infos.values())

    def startProcess(self, name: str, wait: bool) -> bool:
        self.calls.append(("start", _program(name)))
        return True

    def stopProcess(self, name: str, wait: bool) -> bool:
        self.calls.append(("stop", _program(name)))
        return True

    def signalProcess(self, name: str, sig: str) -> bool:
        self.calls.append((f"signal {sig}", _program(name)))
        return True

    def tailProcessStdoutLog(self, name: str, offset: int, length: int) -> list[Any]:
        return ["", 0, False]  # bytes, offset, overflow: an empty log


def _program(namespec: str) -> str:
    """supervisord takes NAME or GROUP:NAME; an ungrouped program is its own group."""
    group, _, name = namespec.partition(":")
    return name or group


class FakeRpc:
    def __init__(self) -> None:
        self.supervisor = FakeSupervisor()


class FakeBus:
    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []

    def subscribe(self, prefix: str, **kw: Any) -> None:
        pass

    def publish(self, topic: str, kind: str, data: dict[str, Any]) -> None:
        self.published.append((topic, data))


class Beat:
    def __init__(self, actor: str, pid: int) -> None:
        self.topic = f"hb.{actor}"
        self.envelope = type("E", (), {"data": {"pid": pid, "state": "running",
                                                "interval": 1.0}})()


def make_dog(site_path: Path) -> tuple[Watchdog, FakeSupervisor, FakeBus]:
    rpc, bus = FakeRpc(), FakeBus()
    dog = Watchdog(load_site(site_path), None, rpc, bus)  # type: ignore[arg-type]
    return dog, rpc.supervisor, bus


def test_dead_actor_is_restarted_with_growing_delays_then_alarmed(site_path: Path) -> None:
    dog, sup, bus = make_dog(site_path)
    sup.set("reader1", "EXITED", exitstatus=1)
    starts = []
    for i in range(200):  # bounded: 20 s of checks, every 0.1 s
        t = i / 10
        dog.check(t)
        if sup.calls and sup.calls[-1] == ("start", "reader1"):
            starts.append(t)
            sup.calls.clear()
            sup.set("reader1", "EXITED")  # it dies again at once
    assert len(starts) == 3  # max_restarts
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps == pytest.approx([1.1, 2.1], abs=0.11)  # noticed at the next check, + delay
    alarm = [d for topic, d in bus.published if topic == "sys.alarm"]
    assert len(alarm) == 1 and alarm[0]["program"] == "reader1"
    assert "stopped after 3 restarts" in alarm[0]["reason"]
    assert dog.programs["reader1"].alarm is not None


def test_operator_stop_is_not_a_failure(site_path: Path) -> None:
    dog, sup, bus = make_dog(site_path)
    sup.set("reader1", "STOPPED")
    for i in range(50):
        dog.check(i * 0.1)
    assert sup.calls == [] and bus.published == []
    assert dog.programs["reader1"].total_restarts == 0


def test_hung_actor_is_killed_only_while_the_bus_is_heard(site_path: Path) -> None:
    dog, sup, _ = make_dog(site_path)
    sup.set("reader1", "RUNNING", pid=42)
    dog.check(0.0)
    dog.on_deliveries([Beat("reader1", 42)], 6.0)
    for t in (6.5, 7.0, 8.0, 8.4):  # < hung_after (2.5) periods since the last beat
        dog.on_deliveries([Beat("other", 1)], t)
        dog.check(t)
    assert sup.calls == []
    dog.check(20.0)  # nothing heard since 8.4: a bus outage, not a hung actor
    assert sup.calls == []
    dog.on_deliveries([Beat("other", 1)], 20.0)  # the bus is back: silence counts afresh
    dog.check(20.5)
    assert sup.calls == []
    for t in (21.0, 22.0, 22.6, 23.0):  # reader1 still silent while the bus is heard
        dog.on_deliveries([Beat("other", 1)], t)
        dog.check(t)
    assert sup.calls == [("signal KILL", "reader1")]
    assert "hung" in dog.programs["reader1"].last_reason


def test_an_outage_before_the_first_heartbeat_is_not_a_hang(site_path: Path) -> None:
    """The bus went away before this actor's first heartbeat reached the watchdog: when it
    comes back, the actor gets its start-up grace again instead of being killed at once."""
    dog, sup, _ = make_dog(site_path)
    sup.set("reader1", "RUNNING", pid=42)
    dog.on_deliveries([Beat("other", 1)], 0.5)
    dog.check(1.0)  # pid 42 seen; no heartbeat from it yet
    for t in (1.5, 2.0, 12.0):  # the bus is silent from 0.5 to 12.0 (a cut)
        dog.check(t)
    dog.on_deliveries([Beat("other", 1)], 12.0)
    for t in (12.5, 13.0, 14.0, 15.0):
        dog.on_deliveries([Beat("other", 1)], t)
        dog.check(t)
    assert sup.calls == []
    dog.on_deliveries([Beat("reader1", 42)], 15.5)
    dog.check(16.0)
    assert sup.calls == []


def test_supervisord_down_is_reported_not_fatal(site_path: Path) -> None:
    dog, sup, _ = make_dog(site_path)

    def broken() -> list[dict[str, Any]]:
        raise xmlrpc.client.Fault(1, "boom")

    sup.getAllProcessInfo = broken  # type: ignore[method-assign]
    dog.check(0.0)
    assert dog.supervisor_error is not None and "boom" in dog.supervisor_error
