"""The one check of a site file, run before anything starts (``sctl check``, ``sctl deploy
render``, ``sctl init``, ``sctl reload``).

Three layers, every problem listed (not only the first), each naming the file, the dotted key
path and the reason:

1. the file itself and the tables the site owns (`broker.config.read_site`): TOML, ``[router]``,
   ``[supervisor]``, ``[services]``, the shape of each ``[actors.NAME]`` (name, ``type``,
   ``runs_on``, ``group``, ``user``);
2. each actor table against its type's declared settings (`Actor.check_table`: key names,
   types, ranges, required keys, then the type's `cross_check` rules: the 104 mapping, polls,
   TLS files, port or specname, ...), after `actors.registry.actor_class` resolved the type;
3. rules between tables, which no single type can see: commands an actor sends to another
   (`Actor.command_targets`) must name an actor of the site and one of its commands; two
   programs of one host must not listen on the same TCP port (router endpoints, services'
   ``check_port``, actors that declare `Actor.listens`); and what supervisord will need on this
   host: the ``sctl`` named by ``[supervisor] sctl``, the users, the services' executables, a
   unix socket path short enough, folders that can be made.

A site with problems is never started: callers print the list and exit 2.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import shlex
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from actors.core.actor import Actor
from actors.registry import actor_class
from broker.config import SiteConfig, read_site
from broker.wire.errors import ConfigError
from cli.ops.alert_config import check_alerts
from cli.ops.metrics_config import check_metrics
from cli.ops.supervisord import runtime_folders

Problem = ConfigError  # .source (the file), .path (dotted key path), .reason
SOCKET_PATH_MAX: Final = 107  # bytes of a unix socket path (sun_path, without its NUL)
WILDCARDS: Final = frozenset({"", "*", "0.0.0.0", "::", "[::]"})


def validate_file(path: str | os.PathLike[str] | None = None
                  ) -> tuple[SiteConfig | None, list[Problem]]:
    """Read and check the site file `path` resolves to (`broker.config.site_path`); every
    problem, in the order above. The site is None when the file cannot be read or is not TOML."""
    site, problems = read_site(path)
    if site is None:
        return None, problems
    return site, problems + validate_site(site)


def validate_site(site: SiteConfig) -> list[Problem]:
    """Layers 2 and 3 for a site whose own tables were read (`read_site` or `load_site`)."""
    problems: list[Problem] = []
    checked: dict[str, tuple[type[Actor], dict[str, Any]]] = {}
    for name, cfg in site.actors.items():
        try:
            cls = actor_class(cfg.type, f"{cfg.path}.type", cfg.source)
        except ConfigError as exc:
            problems.append(exc)
            continue
        values, found = cls.check_table(cfg)
        problems += found
        if not found:
            checked[name] = (cls, values)
    problems += _command_targets(site, checked)
    problems += _port_clashes(site, checked)
    problems += _host_needs(site)
    problems += check_alerts(site)  # [alerts]: the alerts program's own schema
    problems += check_metrics(site)  # [metrics]: the metrics program's own schema
    return problems


def _command_targets(site: SiteConfig,
                     checked: dict[str, tuple[type[Actor], dict[str, Any]]]) -> Iterator[Problem]:
    source = str(site.path)
    for name, (cls, values) in checked.items():
        told: set[str] = set()
        for key, target, command in cls.command_targets(values):
            where = f"actors.{name}.{key.rsplit('.', 1)[0]}"
            if target not in site.actors:
                if where not in told:
                    told.add(where)
                    known = ", ".join(site.actors) or "none"
                    yield Problem(f"{where}.actor", f"{target!r} is not an actor of this site "
                                                    f"(actors: {known})", source)
                continue
            target_cls = checked.get(target, (None, None))[0]
            if target_cls is not None and command not in target_cls.commands:
                yield Problem(f"actors.{name}.{key}", f"{target} ({target_cls.type_name or '?'})"
                                                      f" has no command {command!r} (commands: "
                                                      f"{', '.join(sorted(target_cls.commands))})",
                              source)


@dataclass(frozen=True)
class _Listener:
    host: str  # runs_on
    address: str
    port: int
    key: str


def _listeners(site: SiteConfig,
               checked: dict[str, tuple[type[Actor], dict[str, Any]]]) -> Iterator[_Listener]:
    for which in ("ingress", "egress", "query"):
        url: str = getattr(site.router, which)
        if not url.startswith("tcp://"):
            continue
        address, _, port = url[len("tcp://"):].rpartition(":")
        if port.isdigit() and int(port):
            yield _Listener(site.router_runs_on, address, int(port), f"router.{which}")
    for name, svc in site.services.items():
        if svc.check_port:
            yield _Listener(svc.runs_on, "127.0.0.1", svc.check_port,
                            f"services.{name}.check_port")
    for name, (cls, values) in checked.items():
        if cls.listens is None:
            continue
        address_key, port_key = cls.listens
        listen_port = values.get(port_key)
        if isinstance(listen_port, int) and listen_port:
            yield _Listener(site.actors[name].runs_on, str(values.get(address_key) or ""),
                            listen_port, f"actors.{name}.{port_key}")


def _same_address(a: str, b: str) -> bool:
    if a in WILDCARDS or b in WILDCARDS:
        return True

    def norm(text: str) -> str:
        text = "127.0.0.1" if text == "localhost" else text.strip("[]")
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            return text

    return norm(a) == norm(b)


def _port_clashes(site: SiteConfig,
                  checked: dict[str, tuple[type[Actor], dict[str, Any]]]) -> Iterator[Problem]:
    seen: list[_Listener] = []
    for listener in _listeners(site, checked):
        for earlier in seen:
            if earlier.host == listener.host and earlier.port == listener.port and \
                    _same_address(earlier.address, listener.address):
                on = f"host {listener.host!r}" if listener.host else "the router's host"
                yield Problem(listener.key, f"port {listener.port} on {on} is already taken "
                                            f"by {earlier.key}: two programs cannot listen on "
                                            "one port", str(site.path))
                break
        seen.append(listener)


def _host_needs(site: SiteConfig) -> Iterator[Problem]:
    """What supervisord needs on this host. Users and executables are only known for the host
    we are on, so they are checked for one-host sites (every runs_on empty)."""
    source = str(site.path)
    sup = site.supervision()
    if sup.sctl is not None and not os.access(sup.sctl, os.X_OK):
        yield Problem("supervisor.sctl", f"{sup.sctl} is not an executable file (leave it out "
                                         "to run the sctl that renders the file)", source)
    socket = os.path.normpath(sup.socket.absolute())
    if len(socket.encode()) > SOCKET_PATH_MAX:
        yield Problem("supervisor.socket", f"{socket} is {len(socket.encode())} bytes long; a "
                                           f"unix socket path may have {SOCKET_PATH_MAX} at "
                                           "most: choose a shorter path", source)
    for key, folder in runtime_folders(site):
        reason = folder_problem(folder)
        if reason:
            yield Problem(key, reason, source)
    if site.hosts() != [""]:
        return
    users = [("supervisor.user", sup.user)]
    users += [(f"services.{n}.user", s.user) for n, s in site.services.items()]
    users += [(f"actors.{n}.user", a.user) for n, a in site.actors.items()]
    for key, user in users:
        if user and not _user_exists(user):
            yield Problem(key, f"no user {user!r} on this host", source)
    for name, svc in site.services.items():
        reason = _executable_problem(svc.command.replace("{site}", str(site.folder)))
        if reason:
            yield Problem(f"services.{name}.command", reason, source)


def folder_problem(folder: Path) -> str:
    """Why `folder` can neither be used nor made, or ""."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            return f"cannot make the folder {folder}"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, so the folder {folder} cannot be made"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{'the folder' if probe == folder else 'cannot make ' + str(folder) + ':'} " \
               f"{probe} is not writable"
    return ""


def _user_exists(user: str) -> bool:
    try:
        if user.isdigit():
            pwd.getpwuid(int(user))
        else:
            pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def _executable_problem(command: str) -> str:
    try:
        words = shlex.split(command)
    except ValueError as exc:
        return f"cannot split the command into words: {exc}"
    if not words:
        return "is empty"
    program = words[0]
    if "/" in program:
        if not os.access(program, os.X_OK) or Path(program).is_dir():
            return f"{program}: no such executable file on this host"
        return ""
    if shutil.which(program) is None:
        return f"{program!r} is not on this host's PATH ({os.environ.get('PATH', '')})"
    return ""
