"""The supervisord of every host of a site, through supervisor's own XML-RPC client
(`supervisor.xmlrpc.SupervisorTransport`, what supervisorctl uses); nothing parses
supervisorctl's output.

Where each supervisord listens: a host named in ``[supervisor] inet_http_servers`` is reached at its
``[inet_http_server]`` ("ADDRESS:PORT") with HTTP basic auth, user ``username`` and the password
read from ``password_file`` (so that it is on no command line); the other hosts of the site share
the local unix socket ``[supervisor] socket``. `endpoints` gives one `Endpoint` per supervisord;
`Supervisor` calls it and turns every way of not reaching it into one `SupervisorError` that
says where and why.

Program patterns, as supervisorctl takes them: ``NAME`` (the process of that name, whatever its
group), ``GROUP:*`` (every process of the group), ``GROUP:NAME`` and ``all``. `select` matches
them against ``getAllProcessInfo`` rows.

Why a program failed is read from its own log through ``tailProcessStdoutLog`` (so it works
for remote hosts too): `last_error_line` picks the last ERROR or CRITICAL record, or the
exception line of a traceback nobody logged.
"""

from __future__ import annotations

import http.client
import json
import re
import xmlrpc.client
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from broker.config import SiteConfig
from broker.wire.errors import SctlError

ALL: Final = "all"
NOT_RUNNING: Final = frozenset({"STOPPED", "EXITED", "FATAL", "BACKOFF", "UNKNOWN"})
FAILED: Final = frozenset({"EXITED", "FATAL", "BACKOFF"})
TAIL_BYTES: Final = 16384  # read back when looking for why a program failed
LEVEL_LINE: Final = re.compile(
    r"^\d{4}-\d\d-\d\d[T ][\d:.,]+(?:Z|[+-]\d\d:?\d\d)? (ERROR|CRITICAL) (.*)$")


class SupervisorError(SctlError):
    """A supervisord could not be reached or refused us (the message says which and why)."""


@dataclass(frozen=True)
class Endpoint:
    """One supervisord: the hosts of the site whose programs it runs, and how to reach it."""

    hosts: tuple[str, ...]
    url: str  # unix:///path or http://ADDRESS:PORT
    username: str | None = None
    password_file: Path | None = None

    @property
    def remote(self) -> bool:
        return self.url.startswith("http://")

    @property
    def label(self) -> str:
        """How messages name it: the host names, else "local"."""
        named = [h for h in self.hosts if h]
        return ", ".join(named) if named else "local"

    @property
    def where(self) -> str:
        shown = self.url if self.remote else self.url[len("unix://"):]
        return f"supervisord of {self.label} ({shown})" if self.hosts != ("",) else \
            f"supervisord ({shown})"


def endpoints(site: SiteConfig, host: str | None = None) -> list[Endpoint]:
    """One `Endpoint` per supervisord serving the hosts of `site` (only `host`'s if given)."""
    sup = site.supervision()
    hosts = site.hosts() if host is None else [host]
    local = tuple(h for h in hosts if h not in sup.inet_http_servers)
    out = [Endpoint(local, f"unix://{sup.socket}")] if local else []
    out += [Endpoint((h,), f"http://{sup.inet_http_servers[h]}", sup.username, sup.password_file)
            for h in hosts if h in sup.inet_http_servers]
    return out


def endpoint_of(eps: Sequence[Endpoint], runs_on: str) -> Endpoint | None:
    return next((e for e in eps if runs_on in e.hosts), None)


def proxy(endpoint: Endpoint, timeout: float = 5.0) -> Any:
    """An XML-RPC proxy over supervisor's transport; every socket operation has `timeout`."""
    from supervisor.xmlrpc import SupervisorTransport

    password = None
    if endpoint.remote and endpoint.password_file is not None:
        password = read_password(endpoint.password_file, endpoint)
    transport = SupervisorTransport(endpoint.username if password else None, password,
                                    endpoint.url)
    make = transport._get_connection

    def connection() -> Any:  # neither of supervisor's connections has a timeout of its own
        conn = make()
        conn.timeout = timeout
        connect = conn.connect

        def connect_with_timeout() -> None:
            connect()
            conn.sock.settimeout(timeout)

        conn.connect = connect_with_timeout
        return conn

    transport._get_connection = connection
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def read_password(path: Path, endpoint: Endpoint) -> str:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SupervisorError(f"cannot read the password for {endpoint.where} from {path} "
                              f"([supervisor] password_file): {exc}") from None
    if not lines or not lines[0].strip():
        raise SupervisorError(f"{path} ([supervisor] password_file) is empty: it must hold "
                              f"the password of {endpoint.where}")
    return lines[0].strip()


def explain(endpoint: Endpoint, exc: BaseException, timeout: float) -> str:
    """What not reaching `endpoint` means, in one sentence."""
    where = endpoint.where
    if isinstance(exc, xmlrpc.client.ProtocolError) and exc.errcode == 401:
        return (f"{where} refused user {endpoint.username!r} with the password from "
                f"{endpoint.password_file} (401 Unauthorized)")
    if isinstance(exc, xmlrpc.client.ProtocolError):
        return f"{where} answered HTTP {exc.errcode} {exc.errmsg}"
    if isinstance(exc, TimeoutError):
        return f"{where} did not answer within {timeout:g} s"
    if isinstance(exc, FileNotFoundError | ConnectionRefusedError) and not endpoint.remote:
        return f"no {where}: its control socket is missing or dead (supervisord not running?)"
    if isinstance(exc, ConnectionRefusedError):
        return (f"{where} refused the connection (supervisord not running there, or no "
                f"[inet_http_server] on that port?)")
    if isinstance(exc, xmlrpc.client.Fault):
        return f"{where}: {exc.faultString}"
    return f"{where} does not answer: {exc}"


class Supervisor:
    """Calls to one supervisord. Faults about a program (`xmlrpc.client.Fault`) reach the
    caller; not reaching supervisord at all is a `SupervisorError`."""

    def __init__(self, endpoint: Endpoint, timeout: float = 5.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._rpc: Any = None

    def call(self, method: str, *args: Any) -> Any:
        try:
            if self._rpc is None:
                self._rpc = proxy(self.endpoint, self.timeout)
            return getattr(self._rpc.supervisor, method)(*args)
        except xmlrpc.client.Fault as exc:
            if exc.faultCode in (1, 6):  # UNKNOWN_METHOD, SHUTDOWN_STATE: not about a program
                raise SupervisorError(explain(self.endpoint, exc, self.timeout)) from None
            raise
        except (OSError, xmlrpc.client.ProtocolError, http.client.HTTPException) as exc:
            raise SupervisorError(explain(self.endpoint, exc, self.timeout)) from None

    def processes(self) -> list[dict[str, Any]]:
        return list(self.call("getAllProcessInfo"))

    def failure_reason(self, info: dict[str, Any]) -> str:
        """Why the program of `info` is not running: its log's last error line, else what
        supervisord says."""
        try:
            text = self.call("tailProcessStdoutLog", namespec(info), 0, TAIL_BYTES)[0]
        except (SupervisorError, xmlrpc.client.Fault):
            text = ""
        return failure_text(info, text)


def namespec(info: dict[str, Any]) -> str:
    """The name supervisord's calls take: GROUP:NAME (valid for an ungrouped program too)."""
    return f"{info['group']}:{info['name']}"


def shown_name(info: dict[str, Any]) -> str:
    return str(info["name"]) if info["group"] == info["name"] else namespec(info)


def matches(info: dict[str, Any], pattern: str) -> bool:
    if pattern == ALL:
        return True
    group, sep, name = pattern.partition(":")
    if not sep:
        return bool(info["name"] == pattern)
    return bool(info["group"] == group and name in ("*", info["name"]))


def pattern_problem(pattern: str, infos: Iterable[dict[str, Any]]) -> str | None:
    """Why `pattern` matches none of `infos`, or None when it matches one."""
    rows = list(infos)
    if any(matches(i, pattern) for i in rows):
        return None
    groups = sorted({i["group"] for i in rows if i["group"] != i["name"]})
    if pattern in groups:
        return f"{pattern!r} is a group: say {pattern}:* for all of its programs"
    names = ", ".join(sorted(shown_name(i) for i in rows)) or "none"
    return f"no program {pattern!r} (programs: {names}; groups as GROUP:*, or {ALL})"


def select(infos: Iterable[dict[str, Any]], patterns: Sequence[str]) -> list[dict[str, Any]]:
    """The rows matching any pattern, each once, in supervisord's order."""
    return [i for i in infos if any(matches(i, p) for p in patterns)]


def failure_text(info: dict[str, Any], log_text: str) -> str:
    """Why a program stopped: its log's last error line, unless the process exited cleanly or
    was killed by a signal (exit status 0 or -1 in supervisord's terms): then an error line
    in the log belongs to an earlier run, and what supervisord says is the truth."""
    if info.get("exitstatus") in (0, -1) and not info.get("spawnerr"):
        return exit_text(info)
    return last_error_line(log_text) or exit_text(info)


def exit_text(info: dict[str, Any]) -> str:
    if info.get("spawnerr"):
        return f"spawn error: {info['spawnerr']}"
    return f"exit status {info.get('exitstatus')} ({info.get('description', '')})"


def last_error_line(text: str) -> str | None:
    """The last ERROR/CRITICAL record of a log (sctl's text or JSON lines, the logger name
    left out), or the exception line of the last traceback that follows no such record (an
    exception nobody logged). None when the log says nothing of the kind."""
    lines = text.splitlines()
    found: str | None = None
    for index, line in enumerate(lines):
        message = _error_record(line)
        if message is not None:
            found = message
        elif line.startswith("Traceback (most recent call last):") and (
                index == 0 or _error_record(lines[index - 1]) is None):
            found = next((n.strip() for n in lines[index + 1:]
                          if n and not n.startswith((" ", "\t"))), found)
    return found


def _error_record(line: str) -> str | None:
    if line.startswith("{"):
        try:
            record = json.loads(line)
        except ValueError:
            return None
        if isinstance(record, dict) and record.get("level") in ("ERROR", "CRITICAL"):
            return str(record.get("message", ""))
        return None
    m = LEVEL_LINE.match(line)
    if m is None:
        return None
    logger, sep, message = m.group(2).partition(": ")
    return message if sep and " " not in logger else m.group(2)
