"""The site check (`cli.ops.validate`), the supervisord file's groups, users and PATH
(`cli.ops.supervisord`), the `sctl init` templates and site file resolution. No processes: the
command line is in tests/integration/test_check.py, whole installs in tests/system/test_install.py.
"""

from __future__ import annotations

import configparser
import os
import pwd
import sys
import tomllib
from pathlib import Path

import pytest

from actors.registry import describe_type
from broker.config import check_settings, load_site, site_path
from cli.commands.init import site_text
from cli.ops.supervisord import make_runtime_folders, namespec, render
from cli.ops.validate import validate_file, validate_site

ROOT = Path(__file__).resolve().parents[2]


def write(folder: Path, text: str) -> Path:
    path = folder / "site.toml"
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(folder: Path, text: str) -> list[tuple[str, str]]:
    site, problems = validate_file(write(folder, text))
    assert site is not None
    return [(p.path, p.reason) for p in problems]


def conf(text: str) -> configparser.RawConfigParser:
    cp = configparser.RawConfigParser()
    cp.read_string(text)
    return cp


def test_the_default_site_checks() -> None:
    site, problems = validate_file(ROOT / "deploy" / "site.toml")
    assert site is not None and problems == []
    # the multihost example names certificate files each site provides for itself
    site, problems = validate_file(ROOT / "deploy" / "examples" / "multihost" / "site.toml")
    assert [(p.path, "does not exist" in p.reason) for p in problems] == [
        ("actors.mqttreaders.tls", True)]


def test_problems_come_in_file_order_and_all_at_once(tmp_path: Path) -> None:
    values, problems = check_settings({"b": 1, "port": "x", "a": 2}, (), "t")
    assert [p.path for p in problems] == ["t.b", "t.port", "t.a"] and values == {}
    found = problems_of(tmp_path, '[actors.r]\ntype = "springcore-tcp"\nport = "x"\nzz = 1\n'
                                  '[actors.s]\ntype = "no-such-type"\n')
    assert [p for p, _ in found] == ["actors.r.port", "actors.r.zz", "actors.r.host",
                                     "actors.s.type"]


@pytest.mark.parametrize(("a", "b", "clash"), [
    (("", "127.0.0.1", 5000), ("", "127.0.0.1", 5000), True),
    (("", "0.0.0.0", 5000), ("", "127.0.0.1", 5000), True),     # a wildcard takes every address
    (("", "localhost", 5000), ("", "127.0.0.1", 5000), True),
    (("", "127.0.0.1", 5000), ("", "127.0.0.2", 5000), False),
    (("a", "0.0.0.0", 5000), ("b", "0.0.0.0", 5000), False),     # two hosts
    (("", "127.0.0.1", 5000), ("", "127.0.0.1", 5001), False),
])
def test_listening_ports_clash_only_on_one_host_and_address(
        tmp_path: Path, a: tuple[str, str, int], b: tuple[str, str, int], clash: bool) -> None:
    text = "".join(f'[actors.s{i}]\ntype = "sim-instrument"\nhost = "{addr}"\nport = {port}\n'
                   f'runs_on = "{host}"\n' for i, (host, addr, port) in enumerate((a, b)))
    found = problems_of(tmp_path, text)
    assert [p for p, _ in found] == (["actors.s1.port"] if clash else [])


def test_port_zero_never_clashes(tmp_path: Path) -> None:
    assert problems_of(tmp_path, '[actors.a]\ntype = "sim-instrument"\nport = 0\n'
                                 '[actors.b]\ntype = "sim-instrument"\nport = 0\n') == []


def test_command_targets_are_checked_against_the_target_type(tmp_path: Path) -> None:
    base = ('[actors.r1]\ntype = "springcore-tcp"\nhost = "h"\n[actors.scada]\n'
            'type = "iec104-server"\nallow = ["127.0.0.1"]\n[[actors.scada.command]]\n'
            'ioa = 7\ntype = "C_SC_NA_1"\nactor = "r1"\n')
    assert problems_of(tmp_path, base + 'on = "accept"\noff = "deny"\n') == []
    found = problems_of(tmp_path, base + 'on = "open"\noff = "shut"\n')
    assert [p for p, _ in found] == ["actors.scada.command[0].on", "actors.scada.command[0].off"]
    assert "springcore-tcp" in found[0][1] and "accept" in found[0][1]


def test_groups_and_users_are_rendered(tmp_path: Path) -> None:
    site = load_site(write(tmp_path, '[supervisor]\nuser = "nobody"\n'
                                     '[actors.r1]\ntype = "springcore-tcp"\nhost = "a"\n'
                                     'group = "readers"\n'
                                     '[actors.r2]\ntype = "springcore-tcp"\nhost = "b"\n'
                                     'group = "readers"\nuser = "root"\n'
                                     '[services.m]\ncommand = "/bin/true"\n'))
    assert validate_site(site) == []
    cp = conf(render(site, tmp_path / "actors.conf"))
    assert cp["group:readers"]["programs"] == "r1,r2"
    assert cp["group:readers"]["priority"] == "30"
    assert cp["program:r1"]["user"] == "nobody" and cp["program:r2"]["user"] == "root"
    assert cp["program:router"]["user"] == cp["program:m"]["user"] == "nobody"
    assert cp["unix_http_server"]["chown"] == "nobody"
    assert (namespec(site, "r1"), namespec(site, "m"), namespec(site, "router")) == (
        "readers:r1", "m", "router")


def test_sctl_is_found_on_a_path_that_follows_the_installation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A virtual environment inside the site's tree is written relative to %(here)s (the
    committed deploy/actors.conf stays the same on every clone); one elsewhere is absolute."""
    (tmp_path / "deploy").mkdir()
    site = load_site(write(tmp_path / "deploy", ""))
    out = tmp_path / "deploy" / "actors.conf"
    monkeypatch.setattr(sys, "argv", ["pytest"])
    monkeypatch.setattr(sys, "executable", str(tmp_path / ".venv" / "bin" / "python"))
    env = conf(render(site, out))["program:router"]["environment"]
    assert env == 'PATH="%(here)s/../.venv/bin:%(ENV_PATH)s",PYTHONUNBUFFERED="1"'
    monkeypatch.setattr(sys, "argv", ["/opt/sctl/bin/sctl", "deploy", "render"])
    cp = conf(render(site, out))
    assert cp["program:router"]["environment"].startswith('PATH="/opt/sctl/bin:%(ENV_PATH)s"')
    assert cp["program:router"]["command"] == "sctl -c %(here)s/site.toml router"
    named = load_site(write(tmp_path / "deploy", '[supervisor]\nsctl = "../bin/sctl"\n'))
    command = conf(render(named, out))["program:watchdog"]["command"]
    assert command == "%(here)s/../bin/sctl -c %(here)s/site.toml watchdog"


def test_site_file_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SCTL_CONFIG", raising=False)
    assert site_path() == Path("deploy/site.toml")
    (tmp_path / "site.toml").write_text("")
    assert site_path() == Path("site.toml")  # a folder made by `sctl init`
    monkeypatch.setenv("SCTL_CONFIG", "other.toml")
    assert site_path() == Path("other.toml")
    assert site_path("given.toml") == Path("given.toml")


def tables(text: str) -> dict[str, object]:
    raw = tomllib.loads(text)
    return {"actors": raw["actors"], "services": raw.get("services", {})}


def test_init_template_runs_the_default_sites_programs() -> None:
    """`sctl init` writes the same actors and services as deploy/site.toml (which the system
    tests run), with its runtime files inside the new folder."""
    template = site_text(False, "/usr/sbin/mosquitto")
    assert tables(template) == tables((ROOT / "deploy" / "site.toml").read_text())
    supervisor = tomllib.loads(template)["supervisor"]
    assert (supervisor["socket"], supervisor["log_dir"]) == ("var/supervisor.sock", "var/log")


def test_init_without_mosquitto_comments_the_mqtt_part_out(tmp_path: Path) -> None:
    text = site_text(False, None)
    raw = tomllib.loads(text)
    assert "mosquitto" not in raw.get("services", {})
    assert "mqtt-sim" not in raw["actors"] and "reader1" in raw["actors"]
    assert "# [actors.mqtt-sim]" in text and "no mosquitto on this host" in text
    assert problems_of(tmp_path, text) == []
    assert tomllib.loads(site_text(True, None)).get("actors", {}) == {}


def test_describe_type_lists_own_settings_then_the_base_ones() -> None:
    info = describe_type("iec104-server")
    own = [s["name"] for s in info["settings"] if not s["base"]]
    assert own[:2] == ["ip", "port"] and "allow" in own
    allow = next(s for s in info["settings"] if s["name"] == "allow")
    assert allow["required"] and allow["type"] == "list"
    cert = next(s for s in info["settings"] if s["name"] == "cert")
    assert cert["type"] == "string (path)"
    assert "set" in [c["name"] for c in info["commands"]]


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to a user needs root")
def test_runtime_folders_made_for_a_user_belong_to_it(tmp_path: Path) -> None:
    site = load_site(write(tmp_path, '[router]\njournal_path = "run/journal.bin"\n'
                                     '[supervisor]\nuser = "nobody"\nsocket = "run/s.sock"\n'
                                     'log_dir = "log"\n'))
    assert make_runtime_folders(site) == []
    nobody = pwd.getpwnam("nobody").pw_uid
    assert (tmp_path / "run").stat().st_uid == nobody  # the journal and the watchdog's state
    assert (tmp_path / "log").stat().st_uid == 0       # supervisord writes the logs itself
