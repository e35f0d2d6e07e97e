"""The springcore-tcp reader and its simulator as the site file sees them: type names resolve,
defaults are the documented ones, and every bad setting is a ConfigError naming its key path,
before anything opens (no sockets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.registry import create_actor, sim_config
from actors.sim.springcore_tcp import SpringCoreTcpSim
from actors.springcore_tcp import SpringCoreTcpActor
from broker.config import load_site
from broker.wire.errors import ConfigError
from tests.support.stack import ANY_PORT, write_site


def make(tmp_path: Path, table: str, name: str = "reader") -> object:
    site = load_site(write_site(tmp_path, table, endpoints=ANY_PORT))
    return create_actor(site, name)


def test_reader_defaults(tmp_path: Path) -> None:
    actor = make(tmp_path, '[actors.reader]\ntype = "springcore-tcp"\nhost = "10.0.0.5"\n')
    assert isinstance(actor, SpringCoreTcpActor)
    assert actor.address == "10.0.0.5:4000"
    assert (actor.config["idle_timeout"], actor.config["line_ending"]) == (0.0, "\r\n")
    assert set(actor.commands) >= {"wink", "accept", "deny", "seq", "leds", "buzz", "raw"}


@pytest.mark.parametrize("line_ending", ['"\\n"', '""'])
def test_reader_line_endings_allowed(tmp_path: Path, line_ending: str) -> None:
    actor = make(tmp_path, '[actors.reader]\ntype = "springcore-tcp"\nhost = "h"\n'
                 f"line_ending = {line_ending}\n")
    assert isinstance(actor, SpringCoreTcpActor)


@pytest.mark.parametrize(("extra", "path", "reason"), [
    ("", "actors.reader.host", "required"),
    ('host = "h"\nport = 0', "actors.reader.port", "1-65535"),
    ('host = "h"\nidle_timeout = -1', "actors.reader.idle_timeout", "0 or more"),
    ('host = "h"\nline_ending = "\\r"', "actors.reader.line_ending", "must be"),
    ('host = "h"\nbackoff_min = 5.0\nbackoff_max = 1.0', "actors.reader.backoff_min",
     "more than backoff_max"),
])
def test_reader_bad_settings_name_the_key(tmp_path: Path, extra: str, path: str,
                                          reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        make(tmp_path, f'[actors.reader]\ntype = "springcore-tcp"\n{extra}\n')
    assert info.value.path == path and reason in info.value.reason


def test_simulator_from_sctl_sim_and_from_the_site(tmp_path: Path) -> None:
    site = load_site(write_site(tmp_path, '[actors.door]\ntype = "sim-springcore-tcp"\n'
                                          "port = 4100\nlegacy = true\n", endpoints=ANY_PORT))
    cfg = sim_config(site, "springcore-tcp", "door", {"rate": 2})
    sim = create_actor(site, "door", cfg=cfg)
    assert isinstance(sim, SpringCoreTcpSim)
    assert (sim.config["port"], sim.config["legacy"], sim.config["rate"]) == (4100, True, 2.0)
    default = create_actor(site, "sim-springcore-tcp",
                           cfg=sim_config(site, "springcore-tcp", None, {"port": 0}))
    assert default.name == "sim-springcore-tcp" and default.config["port"] == 0
    assert set(sim.commands) >= {"present", "emit", "kick"}


@pytest.mark.parametrize(("overrides", "path", "reason"), [
    ({"port": 70000}, "actors.sim-springcore-tcp.port", "or 0"),
    ({"rate": -1}, "actors.sim-springcore-tcp.rate", "0 or more"),
    ({"tag": "XYZ"}, "actors.sim-springcore-tcp.tag", "hex"),
])
def test_simulator_bad_settings_name_the_key(tmp_path: Path, overrides: dict[str, object],
                                             path: str, reason: str) -> None:
    site = load_site(write_site(tmp_path, endpoints=ANY_PORT))
    with pytest.raises(ConfigError) as info:
        create_actor(site, "x", cfg=sim_config(site, "springcore-tcp", None, overrides))
    assert info.value.path == path and reason in info.value.reason
