"""The site file (DESIGN §6): one TOML file describes the whole site.

This module knows the shape of ``[router]`` and that each ``[actors.NAME]`` table has a ``type``;
what else an actor table holds is declared by the actor type (`Setting` lists, checked with
`parse_settings`), so the bus stays ignorant of devices. Every error names the file, the dotted
key path and the reason, and is raised before anything starts.

The file is found from ``-c``, else ``$SCTL_CONFIG``, else ``deploy/site.toml``. Relative paths
inside it (journal_path, ...) are relative to the file's folder.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from broker.wire import topics
from broker.wire.errors import ConfigError, TopicError

DEFAULT_SITE: Final = Path("deploy/site.toml")
ENV_VAR: Final = "SCTL_CONFIG"
TOP_LEVEL: Final = ("router", "supervisor", "services", "actors")
RESERVED_PROGRAMS: Final = frozenset({"router", "watchdog"})


@dataclass(frozen=True)
class Setting:
    """One declared key of a config table.

    `kind` is the Python type expected (int accepts only integers, float accepts integers too);
    `check` may raise ValueError with a reason; `required` settings have no default.
    """

    name: str
    kind: type | tuple[type, ...]
    default: Any = None
    doc: str = ""
    required: bool = False
    check: Callable[[Any], None] | None = None


def positive(value: Any) -> None:
    if value <= 0:
        raise ValueError("must be greater than 0")


def non_negative(value: Any) -> None:
    if value < 0:
        raise ValueError("must be 0 or more")


def port_number(value: Any) -> None:
    if not 1 <= value <= 65535:
        raise ValueError("must be a TCP port 1-65535")


def zmq_endpoint(value: Any) -> None:
    if not isinstance(value, str) or "://" not in value:
        raise ValueError("must be a ZeroMQ endpoint such as tcp://127.0.0.1:5570")
    scheme = value.split("://", 1)[0]
    if scheme not in ("tcp", "ipc", "inproc"):
        raise ValueError(f"transport {scheme!r} is not tcp, ipc or inproc")


def parse_settings(
    table: Mapping[str, Any],
    declared: Sequence[Setting],
    path: str,
    source: str = "",
    ignore: Sequence[str] = (),
) -> dict[str, Any]:
    """Check `table` against `declared`; return every declared name with its value or default.

    Unknown keys are errors (a typo must not silently fall back to a default).
    """
    known = {s.name: s for s in declared}
    for key in table:
        if key not in known and key not in ignore:
            hint = ", ".join(sorted(known)) or "none"
            raise ConfigError(f"{path}.{key}", f"unknown key (known keys: {hint})", source)
    out: dict[str, Any] = {}
    for s in declared:
        if s.name not in table:
            if s.required:
                raise ConfigError(f"{path}.{s.name}", "is required", source)
            out[s.name] = s.default
            continue
        out[s.name] = _coerce(table[s.name], s, f"{path}.{s.name}", source)
    return out


def _coerce(value: Any, s: Setting, path: str, source: str) -> Any:
    kinds = s.kind if isinstance(s.kind, tuple) else (s.kind,)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = False if isinstance(value, bool) and bool not in kinds else isinstance(value, kinds)
    if not ok:
        names = " or ".join(_type_name(k) for k in kinds)
        got = f"{_type_name(type(value))} {value!r}"
        raise ConfigError(path, f"expected {names}, got {got}", source)
    if s.check is not None:
        try:
            s.check(value)
        except (ValueError, TopicError) as exc:
            raise ConfigError(path, f"{exc} (got {value!r})", source) from None
    return value


def _type_name(t: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true/false",
            list: "a list", dict: "a table"}.get(t, t.__name__)


ROUTER_SETTINGS: Final = (
    Setting("ingress", str, "tcp://127.0.0.1:5570", "XSUB endpoint publishers connect to",
            check=zmq_endpoint),
    Setting("egress", str, "tcp://127.0.0.1:5571", "XPUB endpoint subscribers connect to",
            check=zmq_endpoint),
    Setting("query", str, "tcp://127.0.0.1:5572", "ROUTER endpoint for replay and state",
            check=zmq_endpoint),
    Setting("journal_path", str, "", "file that keeps the journal across restarts ('' = memory)"),
    Setting("journal_max_messages", int, 200_000, "journal bound by count", check=positive),
    Setting("journal_max_bytes", int, 128 * 1024 * 1024, "journal bound by body bytes",
            check=positive),
    Setting("journal_fsync", bool, False, "fsync the journal file after every batch"),
    Setting("max_message_bytes", int, 1024 * 1024, "larger ingress bodies are refused as bad",
            check=positive),
    Setting("egress_hwm", int, 100_000, "messages queued per subscriber before ZeroMQ drops "
            "(subscribers then backfill from the journal)", check=positive),
    Setting("stats_interval", float, 1.0, "seconds between sys.router.stats", check=positive),
    Setting("gap_timeout", float, 10.0, "seconds before an unfilled ingress gap is declared lost",
            check=positive),
)


def _name_list(value: Any) -> None:
    if not all(isinstance(v, str) for v in value):
        raise ValueError("must be a list of names")
    for v in value:
        topics.check_name(v, "name")


SECURITY_SETTINGS: Final = (
    Setting("curve", bool, False, "CURVE on every router socket, per-message authorization"),
    Setting("keys_dir", str, "keys", "folder of NAME.key / NAME.key_secret files (relative "
            "to the site file); the router's pair is router.key(_secret)"),
    Setting("grant_commands", list, [], "names of actor keys that may send cmd.* (operator "
            "keys always may)", check=_name_list),
)


def _security(table: Mapping[str, Any], site: Path) -> dict[str, Any]:
    """``[router.security]`` checked; {} when absent. keys_dir becomes a Path against the site
    file's folder, grant_commands a tuple. See `broker.security` for what the keys mean."""
    if not table:
        return {}
    values = parse_settings(table, SECURITY_SETTINGS, "router.security", str(site))
    keys_dir = Path(values["keys_dir"])
    values["keys_dir"] = keys_dir if keys_dir.is_absolute() else site.parent / keys_dir
    values["grant_commands"] = tuple(values["grant_commands"])
    return values


@dataclass(frozen=True)
class RouterConfig:
    ingress: str
    egress: str
    query: str
    journal_path: Path | None
    journal_max_messages: int
    journal_max_bytes: int
    journal_fsync: bool
    max_message_bytes: int
    egress_hwm: int
    stats_interval: float
    gap_timeout: float
    security: Mapping[str, Any] = field(default_factory=dict)

    def connect_url(self, which: str) -> str:
        """The endpoint a client connects to: a wildcard bind address becomes loopback."""
        url: str = getattr(self, which)
        for wildcard in ("://*:", "://0.0.0.0:"):
            url = url.replace(wildcard, "://127.0.0.1:")
        return url


@dataclass(frozen=True)
class ActorConfig:
    """One ``[actors.NAME]`` table: its type, where it runs (`runs_on`, the host name used by
    ``sctl deploy render --host``; "" = the router's host) and the rest of its keys, which the
    actor type checks (`Actor.from_config`)."""

    name: str
    type: str
    settings: Mapping[str, Any]
    source: str = ""
    runs_on: str = ""

    @property
    def path(self) -> str:
        return f"actors.{self.name}"


SUPERVISOR_SETTINGS: Final = (
    Setting("socket", str, "../var/supervisor.sock",
            "supervisord's unix control socket (relative to the site file)"),
    Setting("log_dir", str, "../var/log", "folder of every program's log files"),
    Setting("sctl", str, "../.venv/bin/sctl", "the sctl executable the programs run"),
    Setting("log_maxbytes", str, "10MB", "rotate a log file at this size"),
    Setting("log_backups", int, 5, "rotated log files kept", check=non_negative),
    Setting("startsecs", int, 1, "seconds a program must stay up to count as started",
            check=non_negative),
    Setting("stopwaitsecs", int, 10, "seconds after SIGTERM before SIGKILL", check=positive),
    Setting("watchdog", bool, True, "run `sctl watchdog` (hung actors, restart intensity)"),
    Setting("check_interval", float, 0.5, "seconds between the watchdog's checks",
            check=positive),
    Setting("hung_after", float, 2.5,
            "heartbeat periods of silence after which a RUNNING actor counts as hung and is "
            "killed for restart", check=positive),
    Setting("max_restarts", int, 5, "restarts allowed within restart_window before the "
            "watchdog stops the program and raises sys.alarm", check=positive),
    Setting("restart_window", float, 60.0, "seconds over which restarts are counted",
            check=positive),
    Setting("restart_delay_max", float, 30.0, "longest delay before a restart (the delay "
            "doubles from 1 s with each restart inside the window)", check=positive),
)


@dataclass(frozen=True)
class SupervisorConfig:
    """``[supervisor]``: how `sctl deploy render` writes the supervisord file and how the
    watchdog restarts programs. Paths are resolved against the site file's folder."""

    socket: Path
    log_dir: Path
    sctl: Path
    log_maxbytes: str
    log_backups: int
    startsecs: int
    stopwaitsecs: int
    watchdog: bool
    check_interval: float
    hung_after: float
    max_restarts: int
    restart_window: float
    restart_delay_max: float


SERVICE_SETTINGS: Final = (
    Setting("command", str, required=True,
            doc="the program to run; {site} is replaced by the site file's folder"),
    Setting("runs_on", str, "", "host the service runs on ('' = the router's host)"),
    Setting("priority", int, 10, "supervisord start order (lower first; the router is 1)",
            check=non_negative),
    Setting("check_port", int, 0, "TCP port on 127.0.0.1 that answers when the service is "
            "up (shown by sctl status; 0 = none)", check=non_negative),
)


@dataclass(frozen=True)
class ServiceConfig:
    """``[services.NAME]``: a program that is not an sctl process (a private Mosquitto)."""

    name: str
    command: str
    runs_on: str = ""
    priority: int = 10
    check_port: int = 0


@dataclass(frozen=True)
class SiteConfig:
    path: Path
    router: RouterConfig
    actors: Mapping[str, ActorConfig]
    supervisor: SupervisorConfig | None = None
    services: Mapping[str, ServiceConfig] = field(default_factory=dict)
    router_runs_on: str = ""

    @property
    def folder(self) -> Path:
        return self.path.parent

    def supervision(self) -> SupervisorConfig:
        return self.supervisor or parse_supervisor({}, self.path)

    def hosts(self) -> list[str]:
        """Every host named by `runs_on` ("" is the router's host)."""
        names = {self.router_runs_on, *(a.runs_on for a in self.actors.values()),
                 *(s.runs_on for s in self.services.values())}
        return sorted(names)

    def actor(self, name: str) -> ActorConfig:
        try:
            return self.actors[name]
        except KeyError:
            raise ConfigError("", f"{name} is not in {self.path}", str(self.path)) from None


def site_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEFAULT_SITE


def load_site(path: str | os.PathLike[str] | None = None) -> SiteConfig:
    p = site_path(path)
    source = str(p)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("", "site file not found (use -c FILE or set $SCTL_CONFIG)",
                          source) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("", f"cannot read the site file: {exc}", source) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"not valid TOML: {exc}", source) from None
    return parse_site(raw, p)


def parse_site(raw: Mapping[str, Any], path: Path) -> SiteConfig:
    source = str(path)
    for key in raw:
        if key not in TOP_LEVEL:
            raise ConfigError(key, f"unknown top-level table (expected {', '.join(TOP_LEVEL)})",
                              source)
    router_raw = _table(raw, "router", source)
    security = _security(_table(router_raw, "security", source, "router.security"), path)
    values = parse_settings(router_raw, ROUTER_SETTINGS, "router", source,
                            ignore=("security", "runs_on"))
    router_runs_on = _runs_on(router_raw, "router", source)
    jp = values.pop("journal_path")
    journal = None
    if jp:
        journal = Path(jp) if Path(jp).is_absolute() else path.parent / jp
    router = RouterConfig(journal_path=journal, security=security, **values)
    _check_endpoints_distinct(router, source)
    actors: dict[str, ActorConfig] = {}
    for name, table in _table(raw, "actors", source).items():
        actors[name] = _actor(name, table, source)
    services: dict[str, ServiceConfig] = {}
    for name, table in _table(raw, "services", source).items():
        services[name] = _service(name, table, source, actors)
    return SiteConfig(path=path, router=router, actors=actors,
                      supervisor=parse_supervisor(_table(raw, "supervisor", source), path),
                      services=services, router_runs_on=router_runs_on)


def parse_supervisor(table: Mapping[str, Any], site: Path) -> SupervisorConfig:
    values = parse_settings(table, SUPERVISOR_SETTINGS, "supervisor", str(site))
    for key in ("socket", "log_dir", "sctl"):
        p = Path(values[key])
        values[key] = p if p.is_absolute() else site.parent / p
    return SupervisorConfig(**values)


def _runs_on(table: Mapping[str, Any], path: str, source: str) -> str:
    value = table.get("runs_on", "")
    if not isinstance(value, str):
        raise ConfigError(f"{path}.runs_on", f"expected a string (a host name), got "
                                             f"{_type_name(type(value))} {value!r}", source)
    if value:
        try:
            topics.check_name(value, "host name")
        except TopicError as exc:
            raise ConfigError(f"{path}.runs_on", str(exc), source) from None
    return value


def _service(name: str, table: Any, source: str,
             actors: Mapping[str, ActorConfig]) -> ServiceConfig:
    path = f"services.{name}"
    try:
        topics.check_name(name, "service name")
    except TopicError as exc:
        raise ConfigError(path, str(exc), source) from None
    if name in RESERVED_PROGRAMS or name in actors:
        raise ConfigError(path, f"{name!r} is already the name of "
                                f"{'an actor' if name in actors else 'an sctl program'}",
                          source)
    if not isinstance(table, dict):
        raise ConfigError(path, f"must be a table, got {_type_name(type(table))}", source)
    values = parse_settings(table, SERVICE_SETTINGS, path, source)
    _runs_on(values, path, source)
    return ServiceConfig(name=name, **values)


def _table(raw: Mapping[str, Any], key: str, source: str, path: str = "") -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(path or key, f"must be a table, got {_type_name(type(value))}", source)
    return value


def _actor(name: str, table: Any, source: str) -> ActorConfig:
    path = f"actors.{name}"
    try:
        topics.check_name(name, "actor name")
    except TopicError as exc:
        raise ConfigError(path, str(exc), source) from None
    if name in RESERVED_PROGRAMS:
        raise ConfigError(path, f"{name!r} is reserved for sctl's own {name} program", source)
    if not isinstance(table, dict):
        raise ConfigError(path, f"must be a table, got {_type_name(type(table))}", source)
    kind = table.get("type")
    if not isinstance(kind, str) or not kind:
        raise ConfigError(f"{path}.type", "is required: the actor type, e.g. \"springcore-tcp\"",
                          source)
    settings = {k: v for k, v in table.items() if k not in ("type", "runs_on")}
    return ActorConfig(name=name, type=kind, settings=settings, source=source,
                       runs_on=_runs_on(table, path, source))


def _check_endpoints_distinct(router: RouterConfig, source: str) -> None:
    seen: dict[str, str] = {}
    for which in ("ingress", "egress", "query"):
        url = getattr(router, which)
        if url in seen:
            raise ConfigError(f"router.{which}", f"same endpoint as router.{seen[url]} ({url})",
                              source)
        seen[url] = which
