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

from broker import topics
from broker.errors import ConfigError, TopicError

DEFAULT_SITE: Final = Path("deploy/site.toml")
ENV_VAR: Final = "SCTL_CONFIG"


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
    """One ``[actors.NAME]`` table: its type and the rest of its keys, unchecked here."""

    name: str
    type: str
    settings: Mapping[str, Any]
    source: str = ""

    @property
    def path(self) -> str:
        return f"actors.{self.name}"


@dataclass(frozen=True)
class SiteConfig:
    path: Path
    router: RouterConfig
    actors: Mapping[str, ActorConfig]
    supervisor: Mapping[str, Any] = field(default_factory=dict)

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
        if key not in ("router", "actors", "supervisor"):
            raise ConfigError(key, "unknown top-level table (expected router, actors, supervisor)",
                              source)
    router_raw = _table(raw, "router", source)
    security = _table(router_raw, "security", source, "router.security")
    if security:
        # Refused rather than ignored: an operator must not believe CURVE is on when it is not.
        raise ConfigError("router.security", "CURVE security is not implemented yet; remove "
                          "this table (traffic would be unauthenticated plaintext)", source)
    values = parse_settings(router_raw, ROUTER_SETTINGS, "router", source, ignore=("security",))
    jp = values.pop("journal_path")
    journal = None
    if jp:
        journal = Path(jp) if Path(jp).is_absolute() else path.parent / jp
    router = RouterConfig(journal_path=journal, security=security, **values)
    _check_endpoints_distinct(router, source)
    actors: dict[str, ActorConfig] = {}
    for name, table in _table(raw, "actors", source).items():
        actors[name] = _actor(name, table, source)
    return SiteConfig(path=path, router=router, actors=actors,
                      supervisor=_table(raw, "supervisor", source))


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
    if name == "router":
        raise ConfigError(path, "'router' is reserved for the router itself", source)
    if not isinstance(table, dict):
        raise ConfigError(path, f"must be a table, got {_type_name(type(table))}", source)
    kind = table.get("type")
    if not isinstance(kind, str) or not kind:
        raise ConfigError(f"{path}.type", "is required: the actor type, e.g. \"springcore-tcp\"",
                          source)
    settings = {k: v for k, v in table.items() if k != "type"}
    return ActorConfig(name=name, type=kind, settings=settings, source=source)


def _check_endpoints_distinct(router: RouterConfig, source: str) -> None:
    seen: dict[str, str] = {}
    for which in ("ingress", "egress", "query"):
        url = getattr(router, which)
        if url in seen:
            raise ConfigError(f"router.{which}", f"same endpoint as router.{seen[url]} ({url})",
                              source)
        seen[url] = which
