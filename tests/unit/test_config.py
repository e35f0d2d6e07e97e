"""broker.config: the site file. Every error names the key path and the reason."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from broker import config
from broker.config import (
    ROUTER_SETTINGS,
    ActorConfig,
    ServiceConfig,
    Setting,
    load_site,
    parse_settings,
    parse_site,
    parse_supervisor,
    site_path,
)
from broker.wire.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "site.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_site(path)
    assert info.value.source == str(path)
    assert str(info.value).startswith(f"{path}: ")
    return info.value


# --- valid files ------------------------------------------------------------------------------


def test_empty_file_is_a_site_with_every_default(tmp_path: Path) -> None:
    site = load_site(write(tmp_path, ""))
    r = site.router
    for s in ROUTER_SETTINGS:
        if s.name != "journal_path":
            assert getattr(r, s.name) == s.default, s.name
    assert r.journal_path is None  # "" = journal in memory
    assert r.security == {}
    assert site.actors == {}
    assert site.supervisor == parse_supervisor({}, tmp_path / "site.toml")
    assert site.supervisor is not None
    assert site.supervisor.socket == tmp_path / "../var/supervisor.sock"
    assert site.services == {}
    assert site.hosts() == [""]
    assert site.path == tmp_path / "site.toml"


def test_valid_site_parses(tmp_path: Path) -> None:
    site = load_site(write(tmp_path, """
[router]
ingress = "tcp://127.0.0.1:6000"
egress = "tcp://*:6001"
query = "ipc:///tmp/sctl-query"
journal_max_messages = 10
journal_fsync = true
stats_interval = 2          # an integer is accepted where a number is expected

[supervisor]
max_restarts = 3
log_dir = "/var/log/sctl"

[services.mqtt]
command = "/usr/sbin/mosquitto -c {site}/mosquitto.conf"
runs_on = "gw"

[actors.reader1]
type = "springcore-tcp"
runs_on = "door"
host = "10.0.0.5"
port = 4000

[actors.bus-link_2]
type = "bus-link"
"""))
    r = site.router
    assert (r.ingress, r.egress, r.query) == (
        "tcp://127.0.0.1:6000", "tcp://*:6001", "ipc:///tmp/sctl-query")
    assert r.journal_max_messages == 10
    assert r.journal_fsync is True
    assert r.stats_interval == 2.0 and isinstance(r.stats_interval, float)
    assert r.gap_timeout == 10.0
    assert r.security == {}
    assert site.supervisor is not None
    assert site.supervisor.max_restarts == 3
    assert site.supervisor.log_dir == Path("/var/log/sctl")
    assert site.services["mqtt"] == ServiceConfig(
        name="mqtt", command="/usr/sbin/mosquitto -c {site}/mosquitto.conf", runs_on="gw")
    assert site.hosts() == ["", "door", "gw"]
    assert set(site.actors) == {"reader1", "bus-link_2"}
    reader = site.actor("reader1")
    assert reader == ActorConfig(name="reader1", type="springcore-tcp",
                                 settings={"host": "10.0.0.5", "port": 4000},
                                 source=str(tmp_path / "site.toml"), runs_on="door")
    assert reader.path == "actors.reader1"
    assert "type" not in reader.settings


def test_connect_url_turns_wildcards_into_loopback(tmp_path: Path) -> None:
    site = load_site(write(tmp_path, """
[router]
ingress = "tcp://*:6000"
egress = "tcp://0.0.0.0:6001"
query = "tcp://192.168.1.2:6002"
"""))
    assert site.router.connect_url("ingress") == "tcp://127.0.0.1:6000"
    assert site.router.connect_url("egress") == "tcp://127.0.0.1:6001"
    assert site.router.connect_url("query") == "tcp://192.168.1.2:6002"


def test_unknown_actor_name_is_an_error_naming_the_file(tmp_path: Path) -> None:
    site = load_site(write(tmp_path, ""))
    with pytest.raises(ConfigError, match=r"reader9 is not in .*site\.toml"):
        site.actor("reader9")


def test_default_site_of_the_repo_is_valid() -> None:
    site = load_site(ROOT / "deploy" / "site.toml")
    assert site.router.journal_path is not None
    assert site.router.journal_path.resolve() == (ROOT / "var" / "journal.bin").resolve()
    assert site.router.connect_url("egress").startswith("tcp://127.0.0.1:")


def test_default_site_documents_every_router_key() -> None:
    """deploy/site.toml is where operators read what [router] holds: keep every key there."""
    text = (ROOT / "deploy" / "site.toml").read_text(encoding="utf-8")
    table = tomllib.loads(text)["router"]
    missing = [s.name for s in ROUTER_SETTINGS if s.name not in table]
    assert not missing, f"add {missing} (with a comment) to [router] in deploy/site.toml"


# --- journal_path -----------------------------------------------------------------------------


def test_relative_journal_path_is_relative_to_the_site_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "deploy").mkdir()
    path = write(tmp_path / "deploy", '[router]\njournal_path = "../var/journal.bin"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    site = load_site(path)
    assert site.router.journal_path == tmp_path / "deploy" / ".." / "var" / "journal.bin"


def test_relative_journal_path_with_a_relative_site_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "deploy").mkdir()
    write(tmp_path / "deploy", '[router]\njournal_path = "j.bin"\n')
    monkeypatch.chdir(tmp_path)
    site = load_site("deploy/site.toml")
    assert site.router.journal_path == Path("deploy/j.bin")


def test_absolute_journal_path_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "abs" / "j.bin"
    site = load_site(write(tmp_path, f'[router]\njournal_path = "{target}"\n'))
    assert site.router.journal_path == target


# --- where the file is found ------------------------------------------------------------------


def test_explicit_path_wins_over_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = write(tmp_path, '[router]\nstats_interval = 5.0\n', "explicit.toml")
    env = write(tmp_path, '[router]\nstats_interval = 7.0\n', "env.toml")
    monkeypatch.setenv("SCTL_CONFIG", str(env))
    assert site_path(explicit) == explicit
    assert load_site(explicit).router.stats_interval == 5.0


def test_environment_wins_over_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = write(tmp_path, '[router]\nstats_interval = 7.0\n', "env.toml")
    monkeypatch.setenv("SCTL_CONFIG", str(env))
    assert site_path() == env
    assert site_path(None) == env
    assert site_path("") == env  # an empty -c value means "not given"
    assert load_site().router.stats_interval == 7.0


def test_default_is_deploy_site_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCTL_CONFIG", raising=False)
    assert site_path() == Path("deploy/site.toml") == config.DEFAULT_SITE
    monkeypatch.setenv("SCTL_CONFIG", "")
    assert site_path() == Path("deploy/site.toml")
    (tmp_path / "deploy").mkdir()
    write(tmp_path / "deploy", '[router]\ngap_timeout = 3.0\n')
    monkeypatch.chdir(tmp_path)
    assert load_site().router.gap_timeout == 3.0


# --- errors: reading ----------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_site(path)
    assert info.value.source == str(path)
    assert "site file not found" in str(info.value)
    assert "-c FILE" in str(info.value) and "$SCTL_CONFIG" in str(info.value)


def test_missing_file_named_by_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCTL_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match=r"gone\.toml: site file not found"):
        load_site()


def test_bad_toml(tmp_path: Path) -> None:
    err = error_of(tmp_path, "[router\ningress = 1\n")
    assert "not valid TOML" in err.reason
    assert "line 1" in err.reason  # tomllib's position is passed on


def test_duplicate_key_is_bad_toml(tmp_path: Path) -> None:
    err = error_of(tmp_path, '[router]\ningress = "tcp://a:1"\ningress = "tcp://a:2"\n')
    assert "not valid TOML" in err.reason


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_bytes(b'[router]\n# caf\xe9\n')
    with pytest.raises(ConfigError, match="cannot read the site file"):
        load_site(path)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the site file"):
        load_site(tmp_path)


# --- errors: shape ------------------------------------------------------------------------------


def test_unknown_top_level_table(tmp_path: Path) -> None:
    err = error_of(tmp_path, "[routers]\n")
    assert err.path == "routers"
    assert "unknown top-level table" in err.reason
    assert "router, supervisor, services, actors" in err.reason


@pytest.mark.parametrize("key", ["router", "actors", "supervisor", "services"])
def test_top_level_must_be_tables(tmp_path: Path, key: str) -> None:
    err = error_of(tmp_path, f"{key} = 3\n")
    assert err.path == key
    assert err.reason == "must be a table, got an integer"


def test_security_table_is_parsed(tmp_path: Path) -> None:
    path = write(tmp_path, '[router]\n[router.security]\ncurve = true\nkeys_dir = "k"\n'
                           'grant_commands = ["iec1"]\n')
    sec = load_site(path).router.security
    assert sec == {"curve": True, "keys_dir": tmp_path / "k", "grant_commands": ("iec1",)}


def test_security_keys_errors_name_the_key(tmp_path: Path) -> None:
    err = error_of(tmp_path, '[router]\n[router.security]\ncurv = true\n')
    assert err.path == "router.security.curv" and "unknown key" in err.reason
    err = error_of(tmp_path, '[router]\n[router.security]\ngrant_commands = ["a b"]\n')
    assert err.path == "router.security.grant_commands"


def test_security_must_be_a_table(tmp_path: Path) -> None:
    err = error_of(tmp_path, '[router]\nsecurity = "on"\n')
    assert err.path == "router.security"
    assert "must be a table" in err.reason


def test_unknown_router_key_lists_the_known_keys(tmp_path: Path) -> None:
    err = error_of(tmp_path, "[router]\njournal_max_message = 5\n")
    assert err.path == "router.journal_max_message"
    assert err.reason.startswith("unknown key (known keys: ")
    for s in ROUTER_SETTINGS:
        assert s.name in err.reason
    known = ", ".join(sorted(s.name for s in ROUTER_SETTINGS))
    assert str(err).endswith(f"router.journal_max_message: unknown key (known keys: {known})")


@pytest.mark.parametrize(("line", "path", "reason"), [
    ('journal_max_messages = "many"', "router.journal_max_messages",
     "expected an integer, got a string 'many'"),
    ("journal_max_messages = 1.5", "router.journal_max_messages",
     "expected an integer, got a number 1.5"),
    ("journal_max_messages = true", "router.journal_max_messages",
     "expected an integer, got true/false True"),
    ("journal_max_bytes = [1]", "router.journal_max_bytes", "expected an integer, got a list [1]"),
    ("journal_fsync = 1", "router.journal_fsync", "expected true/false, got an integer 1"),
    ('stats_interval = "1s"', "router.stats_interval", "expected a number, got a string '1s'"),
    ("gap_timeout = false", "router.gap_timeout", "expected a number, got true/false False"),
    ("ingress = 5570", "router.ingress", "expected a string, got an integer 5570"),
    ("journal_path = 0", "router.journal_path", "expected a string, got an integer 0"),
    ("egress = {a = 1}", "router.egress", "expected a string, got a table {'a': 1}"),
])
def test_wrong_type_names_key_and_expected_type(
        tmp_path: Path, line: str, path: str, reason: str) -> None:
    err = error_of(tmp_path, f"[router]\n{line}\n")
    assert err.path == path
    assert err.reason == reason
    assert f"{path}: expected " in str(err)


@pytest.mark.parametrize(("line", "path", "needle"), [
    ("journal_max_messages = 0", "router.journal_max_messages", "must be greater than 0 (got 0)"),
    ("journal_max_bytes = -1", "router.journal_max_bytes", "must be greater than 0 (got -1)"),
    ("max_message_bytes = 0", "router.max_message_bytes", "must be greater than 0"),
    ("stats_interval = 0.0", "router.stats_interval", "must be greater than 0"),
    ("gap_timeout = -2", "router.gap_timeout", "must be greater than 0 (got -2.0)"),
    ('ingress = "127.0.0.1:5570"', "router.ingress", "must be a ZeroMQ endpoint"),
    ('egress = "udp://127.0.0.1:5571"', "router.egress",
     "transport 'udp' is not tcp, ipc or inproc"),
])
def test_bad_value_names_key_and_reason(
        tmp_path: Path, line: str, path: str, needle: str) -> None:
    err = error_of(tmp_path, f"[router]\n{line}\n")
    assert err.path == path
    assert needle in err.reason


@pytest.mark.parametrize(("lines", "path", "other"), [
    (['ingress = "tcp://127.0.0.1:7000"', 'egress = "tcp://127.0.0.1:7000"'],
     "router.egress", "router.ingress"),
    (['ingress = "tcp://127.0.0.1:7000"', 'query = "tcp://127.0.0.1:7000"'],
     "router.query", "router.ingress"),
    (['egress = "tcp://127.0.0.1:7001"', 'query = "tcp://127.0.0.1:7001"'],
     "router.query", "router.egress"),
    # the defaults collide with an explicit value too
    (['egress = "tcp://127.0.0.1:5570"'], "router.egress", "router.ingress"),
])
def test_duplicate_endpoints(tmp_path: Path, lines: list[str], path: str, other: str) -> None:
    err = error_of(tmp_path, "[router]\n" + "\n".join(lines) + "\n")
    assert err.path == path
    assert err.reason.startswith(f"same endpoint as {other} (")


@pytest.mark.parametrize("port", ["0", "*"])
def test_any_port_endpoints_never_collide(tmp_path: Path, port: str) -> None:
    """Port 0 or * binds a port the OS picks, one per socket (the router logs which)."""
    urls = [f"tcp://127.0.0.1:{port}"] * 3
    site = load_site(write(tmp_path, "[router]\n" + "".join(
        f'{which} = "{url}"\n' for which, url in zip(("ingress", "egress", "query"), urls,
                                                      strict=True))))
    assert (site.router.ingress, site.router.egress, site.router.query) == tuple(urls)


# --- errors: actors -----------------------------------------------------------------------------


def test_actor_type_is_required(tmp_path: Path) -> None:
    err = error_of(tmp_path, '[actors.x]\nhost = "h"\n')
    assert err.path == "actors.x.type"
    assert err.reason.startswith("is required")
    assert "actors.x.type: is required" in str(err)


@pytest.mark.parametrize("value", ['""', "3", "true", '["springcore-tcp"]'])
def test_actor_type_must_be_a_non_empty_string(tmp_path: Path, value: str) -> None:
    err = error_of(tmp_path, f"[actors.x]\ntype = {value}\n")
    assert err.path == "actors.x.type"
    assert "is required" in err.reason


@pytest.mark.parametrize("name", [
    '"reader.1"', '"reader 1"', '""', '"r\u00e9der"', '"' + "a" * 65 + '"', '"a/b"',
])
def test_invalid_actor_names(tmp_path: Path, name: str) -> None:
    err = error_of(tmp_path, f'[actors.{name}]\ntype = "bus-link"\n')
    assert err.path.startswith("actors.")
    assert "actor name" in err.reason
    assert "is not usable" in err.reason


def test_longest_actor_name_is_fine(tmp_path: Path) -> None:
    name = "a" * 64
    site = load_site(write(tmp_path, f'[actors.{name}]\ntype = "bus-link"\n'))
    assert list(site.actors) == [name]


def test_router_is_a_reserved_actor_name(tmp_path: Path) -> None:
    err = error_of(tmp_path, '[actors.router]\ntype = "bus-link"\n')
    assert err.path == "actors.router"
    assert "reserved" in err.reason


def test_actor_must_be_a_table(tmp_path: Path) -> None:
    err = error_of(tmp_path, '[actors]\nreader1 = "springcore-tcp"\n')
    assert err.path == "actors.reader1"
    assert err.reason == "must be a table, got a string"


# --- parse_settings: what actor types use for their own tables --------------------------------

DECLARED = (
    Setting("host", str, required=True, doc="device address"),
    Setting("port", int, 4000, check=config.port_number),
    Setting("timeout", float, 2.5, check=config.positive),
    Setting("retries", int, 3, check=config.non_negative),
    Setting("mode", (str, int), "auto"),
)


def test_parse_settings_fills_defaults() -> None:
    out = parse_settings({"host": "h"}, DECLARED, "actors.r1")
    assert out == {"host": "h", "port": 4000, "timeout": 2.5, "retries": 3, "mode": "auto"}


def test_parse_settings_accepts_values_and_ignored_keys() -> None:
    out = parse_settings({"host": "h", "port": 1, "timeout": 3, "mode": 2, "type": "x"},
                         DECLARED, "actors.r1", ignore=("type",))
    assert out["port"] == 1
    assert out["timeout"] == 3.0 and isinstance(out["timeout"], float)
    assert out["mode"] == 2
    assert "type" not in out


@pytest.mark.parametrize(("table", "path", "needle"), [
    ({}, "actors.r1.host", "is required"),
    ({"host": "h", "prot": 1}, "actors.r1.prot",
     "unknown key (known keys: host, mode, port, retries, timeout)"),
    ({"host": "h", "port": 0}, "actors.r1.port", "must be a TCP port 1-65535 (got 0)"),
    ({"host": "h", "port": 65536}, "actors.r1.port", "must be a TCP port 1-65535"),
    ({"host": "h", "port": "4000"}, "actors.r1.port", "expected an integer, got a string '4000'"),
    ({"host": "h", "retries": -1}, "actors.r1.retries", "must be 0 or more (got -1)"),
    ({"host": "h", "timeout": 0}, "actors.r1.timeout", "must be greater than 0"),
    ({"host": "h", "mode": 1.5}, "actors.r1.mode", "expected a string or an integer, got a number"),
    ({"host": "h", "mode": False}, "actors.r1.mode", "expected a string or an integer, got true/f"),
])
def test_parse_settings_errors(table: dict[str, object], path: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(table, DECLARED, "actors.r1", source="site.toml")
    assert info.value.path == path
    assert needle in info.value.reason
    assert str(info.value).startswith(f"site.toml: {path}: ")


def test_parse_settings_with_nothing_declared_says_none() -> None:
    with pytest.raises(ConfigError, match=r"actors\.r1\.x: unknown key \(known keys: none\)"):
        parse_settings({"x": 1}, (), "actors.r1")


def test_parse_site_without_a_file(tmp_path: Path) -> None:
    site = parse_site({"router": {"journal_path": "j.bin"}}, tmp_path / "s.toml")
    assert site.router.journal_path == tmp_path / "j.bin"


def test_config_error_is_a_value_error() -> None:
    err = ConfigError("router.x", "bad", "f.toml")
    assert isinstance(err, ValueError)
    assert str(err) == "f.toml: router.x: bad"
    assert str(ConfigError("", "bad")) == "bad"


# --- placement, services, supervision ------------------------------------------------------------


@pytest.mark.parametrize(("text", "path", "reason"), [
    ('[actors.a]\ntype = "x"\nruns_on = 3\n', "actors.a.runs_on", "expected a string"),
    ('[actors.a]\ntype = "x"\nruns_on = "two words"\n', "actors.a.runs_on", "not usable"),
    ('[router]\nruns_on = ["a"]\n', "router.runs_on", "expected a string"),
    ('[actors.watchdog]\ntype = "x"\n', "actors.watchdog", "reserved"),
    ('[services.m]\n', "services.m.command", "is required"),
    ('[services.m]\ncommand = "x"\nport = 3\n', "services.m.port", "unknown key"),
    ('[services.router]\ncommand = "x"\n', "services.router", "sctl program"),
    ('[actors.m]\ntype = "x"\n[services.m]\ncommand = "x"\n', "services.m", "an actor"),
    ('[supervisor]\nmax_restarts = 0\n', "supervisor.max_restarts", "greater than 0"),
    ('[supervisor]\nhosts = []\n', "supervisor.hosts", "unknown key"),
])
def test_placement_and_service_errors_name_the_key(tmp_path: Path, text: str, path: str,
                                                   reason: str) -> None:
    err = error_of(tmp_path, text)
    assert err.path == path
    assert reason in err.reason


def test_max_message_bytes_fits_a_16_mib_frame_and_stays_under_the_ingress_hard_limit(
        tmp_path: Path) -> None:
    """The default takes a 16 MiB binary field with its envelope; a site may raise it up to
    48 MiB, below the 64 MiB at which the router's ingress socket drops the sender's connection
    instead of refusing the body on sys.router.bad."""
    path = tmp_path / "site.toml"
    path.write_text("[router]\n", encoding="utf-8")
    assert config.load_site(path).router.max_message_bytes == 16 * 1024 * 1024 + 64 * 1024
    limit = 48 * 1024 * 1024
    path.write_text(f"[router]\nmax_message_bytes = {limit}\n", encoding="utf-8")
    assert config.load_site(path).router.max_message_bytes == limit
    err = error_of(tmp_path, f"[router]\nmax_message_bytes = {limit + 1}\n")
    assert err.path == "router.max_message_bytes" and "at most 50331648" in err.reason
