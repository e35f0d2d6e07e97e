"""The site file: one TOML file describes the whole site, and everything that starts reads it.

This module knows the shape of ``[router]`` and that each ``[actors.NAME]`` table has a ``type``;
what else an actor table holds is declared by the actor type (`Setting` lists, checked with
`check_settings`), so the bus stays ignorant of devices. Every error names the file, the
dotted key path and the reason, and is raised before anything starts.

Two ways to read a file: `load_site` raises the first problem (what every process does before it
starts), `read_site` returns the site with every problem of ``[router]``, ``[supervisor]``,
``[services]`` and the shape of ``[actors]`` listed (what ``sctl check`` builds on; it adds the
actor types' own checks, which this module cannot know).

The file is found from ``-c``, else ``$SCTL_CONFIG``, else ``./site.toml``, else
``deploy/site.toml``. Relative paths inside it (journal_path, log_dir, TLS files, ...) are
relative to the file's folder.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from broker.wire import topics
from broker.wire.errors import ConfigError, TopicError

DEFAULT_SITE: Final = Path("deploy/site.toml")
LOCAL_SITE: Final = Path("site.toml")
ENV_VAR: Final = "SCTL_CONFIG"
TOP_LEVEL: Final = ("router", "supervisor", "services", "actors", "alerts", "metrics")
RESERVED_PROGRAMS: Final = frozenset({"router", "watchdog", "metrics"})


@dataclass(frozen=True)
class Setting:
    """One declared key of a config table.

    `kind` is the Python type expected (int accepts only integers, float accepts integers too);
    `check` may raise ValueError with a reason; `required` settings have no default. A `path`
    setting holds a file path (or a list or table of them): a relative one is taken from the
    site file's folder before `check` sees it, whatever the working directory.

    Settings are declared as data, a tuple of these per actor type, rather than as a dataclass
    per type: the one checker (`check_settings`, behind ``sctl check`` and every actor's
    start), ``sctl describe TYPE``, the ``describe`` command and the docs all read the same
    list, with each key's doc, default and range check beside it, and a type redeclares a base
    setting by name.
    """

    name: str
    kind: type | tuple[type, ...]
    default: Any = None
    doc: str = ""
    required: bool = False
    check: Callable[[Any], None] | None = None
    path: bool = False


def positive(value: Any) -> None:
    if value <= 0:
        raise ValueError("must be greater than 0")


# The largest max_message_bytes a site may set: the router's ingress socket drops the
# connection of a peer that sends a frame over its hard limit (broker.router.server
# XSUB_MAXMSGSIZE, 64 MiB), silently for the peer; a body between max_message_bytes and that
# limit is refused and reported on sys.router.bad instead. This bound keeps room between them.
MAX_MESSAGE_BYTES_LIMIT: Final = 48 * 1024 * 1024
# The default fits one 16 MiB binary field (a 4096 x 2048 16-bit frame, or a 1024 x 1024 frame
# of 16-byte elements) plus the envelope's other fields.
DEFAULT_MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024 + 64 * 1024


def message_size(value: Any) -> None:
    positive(value)
    if value > MAX_MESSAGE_BYTES_LIMIT:
        raise ValueError(f"must be at most {MAX_MESSAGE_BYTES_LIMIT} (48 MiB: the router's "
                         "ingress drops a connection that sends a frame over 64 MiB)")


def non_negative(value: Any) -> None:
    if value < 0:
        raise ValueError("must be 0 or more")


def port_number(value: Any) -> None:
    if not 1 <= value <= 65535:
        raise ValueError("must be a TCP port 1-65535")


# A tcp endpoint ending in one of these binds a port the OS picks (tests, tools that start a
# private router); the router names the ports it got in its "up" log line (broker.router.server).
ANY_PORT: Final = ("0", "*")


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
    base: Path | None = None,
) -> dict[str, Any]:
    """Check `table` against `declared`; return every declared name with its value or default.
    Raises the first problem (`check_settings` lists them all)."""
    values, problems = check_settings(table, declared, path, source, ignore, base)
    if problems:
        raise problems[0]
    return values


def check_settings(
    table: Mapping[str, Any],
    declared: Sequence[Setting],
    path: str,
    source: str = "",
    ignore: Sequence[str] = (),
    base: Path | None = None,
) -> tuple[dict[str, Any], list[ConfigError]]:
    """Every problem of `table` against `declared`, in the table's order, and the values: each
    declared name with its value, or its default where the value is missing or wrong.

    Unknown keys are errors (a typo must not silently fall back to a default). `base` is the
    folder relative `path` settings are taken from (None: left as written).
    """
    known = {s.name: s for s in declared}
    order = {key: i for i, key in enumerate(table)}  # problems in the file's order
    found: list[tuple[int, ConfigError]] = []
    for key in table:
        if key not in known and key not in ignore:
            hint = ", ".join(sorted(known)) or "none"
            found.append((order[key], ConfigError(f"{path}.{key}",
                                                  f"unknown key (known keys: {hint})", source)))
    out: dict[str, Any] = {}
    for s in declared:
        out[s.name] = s.default
        if s.name not in table:
            if s.required:
                found.append((len(order), ConfigError(f"{path}.{s.name}", "is required",
                                                       source)))
            continue
        value = table[s.name]
        if s.path and base is not None:
            value = _under(value, base)
        try:
            out[s.name] = _coerce(value, s, f"{path}.{s.name}", source)
        except ConfigError as exc:
            found.append((order[s.name], exc))
    return out, [exc for _, exc in sorted(found, key=lambda f: f[0])]


def _under(value: Any, base: Path) -> Any:
    """A path setting's value with relative paths taken from `base` (strings, and the strings
    of a list or table; anything else is left for the type check to refuse)."""
    if isinstance(value, str):
        return str(base / value) if value and not Path(value).is_absolute() else value
    if isinstance(value, list):
        return [_under(v, base) if isinstance(v, str) else v for v in value]
    if isinstance(value, dict):
        return {k: _under(v, base) if isinstance(v, str) else v for k, v in value.items()}
    return value


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
    Setting("journal_max_bytes", int, 128 * 1024 * 1024, "journal bound by body bytes (the "
            "default holds eight 16 MiB frames)", check=positive),
    Setting("journal_fsync", bool, False, "fsync the journal file after every batch"),
    Setting("max_message_bytes", int, DEFAULT_MAX_MESSAGE_BYTES, "larger ingress bodies are "
            "refused as bad (default 16 MiB + 64 KiB, at most 48 MiB)", check=message_size),
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


def _security(table: Mapping[str, Any], site: Path,
              problems: list[ConfigError]) -> dict[str, Any]:
    """``[router.security]`` checked; {} when absent. keys_dir becomes a Path against the site
    file's folder, grant_commands a tuple. See `broker.security` for what the keys mean."""
    if not table:
        return {}
    values, found = check_settings(table, SECURITY_SETTINGS, "router.security", str(site))
    problems += found
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
    ``sctl deploy render --host``; "" = the router's host), the supervisord `group` and `user`
    of its program ("" = none, supervisord's own user) and the rest of its keys, which the
    actor type checks (`Actor.from_config`). `folder` is where relative paths in it start."""

    name: str
    type: str
    settings: Mapping[str, Any]
    source: str = ""
    runs_on: str = ""
    group: str = ""
    user: str = ""
    folder: Path | None = field(default=None, compare=False)

    @property
    def path(self) -> str:
        return f"actors.{self.name}"


def _host_name(value: Any) -> None:
    if value:
        topics.check_name(value, "host name")


def _group_name(value: Any) -> None:
    if value:
        topics.check_name(value, "group name")


USER_NAME: Final = re.compile(r"[a-z_][a-z0-9_-]{0,31}\$?|\d+")


def _user_name(value: Any) -> None:
    if value and not USER_NAME.fullmatch(value):
        raise ValueError("must be a user name of this host (such as \"sctl\") or a numeric uid")


# Keys of an [actors.NAME] table that the site reads; every other key is the actor type's.
PLACEMENT_SETTINGS: Final = (
    Setting("runs_on", str, "", "host the program runs on ('' = the router's host)",
            check=_host_name),
    Setting("group", str, "", "supervisord group of the program ('' = none): `sctl start "
            "GROUP:*` and `supervisorctl restart GROUP:*` act on the whole group",
            check=_group_name),
    Setting("user", str, "", "run the program as this user ('' = [supervisor] user)",
            check=_user_name),
)


def _host_addresses(value: Mapping[str, Any]) -> None:
    for host, address in value.items():
        topics.check_name(host, "host name")
        text = address if isinstance(address, str) else ""
        ip, sep, port = text.rpartition(":")
        if not (sep and ip and port.isdigit() and 1 <= int(port) <= 65535):
            raise ValueError(f"{host}: expected \"ADDRESS:PORT\", got {address!r}")


def _log_format(value: Any) -> None:
    if value not in ("text", "json"):
        raise ValueError('must be "text" or "json"')


SUPERVISOR_SETTINGS: Final = (
    Setting("socket", str, "../var/supervisor.sock",
            "supervisord's unix control socket (relative to the site file)"),
    Setting("log_dir", str, "../var/log", "folder of every program's log files"),
    Setting("sctl", str, "", "the sctl executable the programs run ('' = `sctl` found on the "
            "PATH the rendered file sets: the folder of the sctl that rendered it, then "
            "supervisord's own PATH)", path=True),
    Setting("user", str, "", "run every program as this user (supervisord then starts as "
            "root); '' = supervisord's own user", check=_user_name),
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
    Setting("inet_http_servers", dict, {}, "the supervisord of other hosts: HOST = "
            "\"ADDRESS:PORT\" of its [inet_http_server]; a host not listed is reached "
            "through `socket`", check=_host_addresses),
    Setting("username", str, "sctl", "user name for the `inet_http_servers`"),
    Setting("password_file", str, "", "file holding the password of the "
            "`inet_http_servers` (relative to the site file), so that it is on no command line"),
    Setting("log_format", str, "text", "log lines of every program: \"text\", or \"json\" "
            "(one object a line, for Loki, Vector, Fluent Bit)", check=_log_format),
)


@dataclass(frozen=True)
class SupervisorConfig:
    """``[supervisor]``: how `sctl deploy render` writes the supervisord file and how the
    watchdog restarts programs. Paths are resolved against the site file's folder."""

    socket: Path
    log_dir: Path
    sctl: Path | None  # None: `sctl` on the PATH the rendered file sets
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
    inet_http_servers: Mapping[str, str] = field(default_factory=dict)
    username: str = "sctl"
    password_file: Path | None = None
    user: str = ""
    log_format: str = "text"


SERVICE_SETTINGS: Final = (
    Setting("command", str, required=True,
            doc="the program to run; {site} is replaced by the site file's folder"),
    *PLACEMENT_SETTINGS,
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
    group: str = ""
    user: str = ""


@dataclass(frozen=True)
class SiteConfig:
    path: Path
    router: RouterConfig
    actors: Mapping[str, ActorConfig]
    supervisor: SupervisorConfig | None = None
    services: Mapping[str, ServiceConfig] = field(default_factory=dict)
    router_runs_on: str = ""
    # ``[alerts]`` as written: checked by cli.ops.alert_config (`sctl check`, `sctl alerts`)
    alerts: Mapping[str, Any] = field(default_factory=dict)
    # ``[metrics]`` as written (None: no such table): checked by cli.ops.metrics_config
    metrics: Mapping[str, Any] | None = None

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
    """The site file of this invocation: `explicit` (``-c``), else ``$SCTL_CONFIG``, else
    ``./site.toml`` when it exists (a folder made by ``sctl init``), else ``deploy/site.toml``."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    return LOCAL_SITE if LOCAL_SITE.is_file() else DEFAULT_SITE


def read_site(path: str | os.PathLike[str] | None = None
              ) -> tuple[SiteConfig | None, list[ConfigError]]:
    """The site of the file `path` resolves to (`site_path`) and every problem of its
    ``[router]``, ``[supervisor]`` and ``[services]`` tables and of the shape of its actor
    tables, in file order. The site is None when the file cannot be read or is not TOML; with
    problems it holds defaults where the file is wrong, and must not be run."""
    p = site_path(path)
    source = str(p)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        how = "given with -c" if path else f"named by ${ENV_VAR}" if os.environ.get(ENV_VAR) \
            else f"no -c, no ${ENV_VAR}, no ./{LOCAL_SITE} here"
        return None, [ConfigError("", f"site file not found ({how}); name one with -c FILE or "
                                      f"${ENV_VAR}, or make a site with `sctl init DIR`",
                                  source)]
    except IsADirectoryError:
        return None, [ConfigError("", "cannot read the site file: it is a folder (the site "
                                      "file of a folder made by `sctl init` is DIR/site.toml)",
                                  source)]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [ConfigError("", f"cannot read the site file: {exc}", source)]
    except tomllib.TOMLDecodeError as exc:
        return None, [ConfigError("", f"not valid TOML: {exc}", source)]
    return check_site(raw, p)


def load_site(path: str | os.PathLike[str] | None = None) -> SiteConfig:
    """The site; raises the first problem of the file (ConfigError)."""
    site, problems = read_site(path)
    if problems or site is None:
        raise problems[0]
    return site


def parse_site(raw: Mapping[str, Any], path: Path) -> SiteConfig:
    site, problems = check_site(raw, path)
    if problems:
        raise problems[0]
    return site


def check_site(raw: Mapping[str, Any], path: Path) -> tuple[SiteConfig, list[ConfigError]]:
    """A parsed TOML document as a site, and every problem found on the way (see read_site)."""
    source = str(path)
    problems: list[ConfigError] = []
    for key in raw:
        if key not in TOP_LEVEL:
            problems.append(ConfigError(key, f"unknown top-level table (expected "
                                             f"{', '.join(TOP_LEVEL)})", source))
    router, router_runs_on = _check_router(_table(raw, "router", source, problems), path,
                                           problems)
    supervisor, found = check_supervisor(_table(raw, "supervisor", source, problems), path)
    problems += found
    actor_tables = _table(raw, "actors", source, problems)
    actors: dict[str, ActorConfig] = {}
    for name, table in actor_tables.items():
        actor = _actor(name, table, path, problems)
        if actor is not None:
            actors[name] = actor
    services: dict[str, ServiceConfig] = {}
    for name, table in _table(raw, "services", source, problems).items():
        service = _service(name, table, source, actor_tables, problems)
        if service is not None:
            services[name] = service
    site = SiteConfig(path=path, router=router, actors=actors, supervisor=supervisor,
                      services=services, router_runs_on=router_runs_on,
                      alerts=_table(raw, "alerts", source, problems),
                      metrics=_table(raw, "metrics", source, problems) if "metrics" in raw
                      else None)
    problems += _group_clashes(site)
    return site, problems


def _check_router(table: Mapping[str, Any], path: Path,
                  problems: list[ConfigError]) -> tuple[RouterConfig, str]:
    source = str(path)
    security = _security(_table(table, "security", source, problems, "router.security"), path,
                         problems)
    values, found = check_settings(table, ROUTER_SETTINGS, "router", source,
                                   ignore=("security", "runs_on"))
    problems += found
    runs_on, found = check_settings({k: table[k] for k in ("runs_on",) if k in table},
                                    PLACEMENT_SETTINGS[:1], "router", source)
    problems += found
    jp = values.pop("journal_path")
    journal = None
    if jp:
        journal = Path(jp) if Path(jp).is_absolute() else path.parent / jp
    router = RouterConfig(journal_path=journal, security=security, **values)
    problems += _endpoint_clashes(router, source)
    return router, str(runs_on["runs_on"])


def parse_supervisor(table: Mapping[str, Any], site: Path) -> SupervisorConfig:
    supervisor, problems = check_supervisor(table, site)
    if problems:
        raise problems[0]
    return supervisor


def check_supervisor(table: Mapping[str, Any], site: Path
                     ) -> tuple[SupervisorConfig, list[ConfigError]]:
    values, problems = check_settings(table, SUPERVISOR_SETTINGS, "supervisor", str(site),
                                      base=site.parent)
    for key in ("socket", "log_dir"):
        p = Path(values[key])
        values[key] = p if p.is_absolute() else site.parent / p
    values["sctl"] = Path(values["sctl"]) if values["sctl"] else None
    values["inet_http_servers"] = dict(values["inet_http_servers"])
    if values["password_file"]:
        p = Path(values["password_file"])
        values["password_file"] = p if p.is_absolute() else site.parent / p
    elif values["inet_http_servers"]:
        problems.append(ConfigError(
            "supervisor.password_file", "is required with supervisor.inet_http_servers: they "
            "ask for a password", str(site)))
        values["password_file"] = None
    else:
        values["password_file"] = None
    return SupervisorConfig(**values), problems


def _service(name: str, table: Any, source: str, actors: Mapping[str, Any],
             problems: list[ConfigError]) -> ServiceConfig | None:
    path = f"services.{name}"
    try:
        topics.check_name(name, "service name")
    except TopicError as exc:
        problems.append(ConfigError(path, str(exc), source))
        return None
    if name in RESERVED_PROGRAMS or name in actors:
        problems.append(ConfigError(path, f"{name!r} is already the name of "
                                          f"{'an actor' if name in actors else 'an sctl program'}",
                                    source))
        return None
    if not isinstance(table, dict):
        problems.append(ConfigError(path, f"must be a table, got {_type_name(type(table))}",
                                    source))
        return None
    values, found = check_settings(table, SERVICE_SETTINGS, path, source)
    problems += found
    return ServiceConfig(name=name, **values) if values["command"] else None


def _table(raw: Mapping[str, Any], key: str, source: str, problems: list[ConfigError],
           path: str = "") -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        problems.append(ConfigError(path or key, f"must be a table, got "
                                                 f"{_type_name(type(value))}", source))
        return {}
    return value


def _actor(name: str, table: Any, site: Path, problems: list[ConfigError]) -> ActorConfig | None:
    path, source = f"actors.{name}", str(site)
    try:
        topics.check_name(name, "actor name")
    except TopicError as exc:
        problems.append(ConfigError(path, str(exc), source))
        return None
    if name in RESERVED_PROGRAMS:
        problems.append(ConfigError(path, f"{name!r} is reserved for sctl's own {name} program",
                                    source))
        return None
    if not isinstance(table, dict):
        problems.append(ConfigError(path, f"must be a table, got {_type_name(type(table))}",
                                    source))
        return None
    kind = table.get("type")
    if not isinstance(kind, str) or not kind:
        problems.append(ConfigError(f"{path}.type", "is required: the actor type, e.g. "
                                                    "\"springcore-tcp\"", source))
        return None
    names = {s.name for s in PLACEMENT_SETTINGS}
    placement, found = check_settings({k: v for k, v in table.items() if k in names},
                                      PLACEMENT_SETTINGS, path, source)
    problems += found
    settings = {k: v for k, v in table.items() if k != "type" and k not in names}
    return ActorConfig(name=name, type=kind, settings=settings, source=source,
                       folder=site.parent, **placement)


def _group_clashes(site: SiteConfig) -> list[ConfigError]:
    """A supervisord group may not take the name of a program outside any group: supervisord
    makes a group of each such program, named after it."""
    programs = {"router", "watchdog", *site.services, *site.actors}
    grouped = [(f"{kind}.{name}", cfg.group) for kind, tables in
               (("services", site.services), ("actors", site.actors))
               for name, cfg in tables.items() if cfg.group]
    alone = programs - {p.split(".", 1)[1] for p, _ in grouped}
    return [ConfigError(f"{p}.group", f"{g!r} is the name of a program; a group needs a name "
                                      "of its own", str(site.path))
            for p, g in grouped if g in alone]


def _endpoint_clashes(router: RouterConfig, source: str) -> list[ConfigError]:
    seen: dict[str, str] = {}
    problems = []
    for which in ("ingress", "egress", "query"):
        url = getattr(router, which)
        if url.rsplit(":", 1)[-1] in ANY_PORT:  # each bind gets its own port: no clash
            continue
        if url in seen:
            problems.append(ConfigError(f"router.{which}", f"same endpoint as router."
                                                           f"{seen[url]} ({url})", source))
        seen[url] = which
    return problems
