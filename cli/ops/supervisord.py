"""supervisord configuration rendered from the site file (``sctl deploy render``).

One ``[program:X]`` per process of the site: the router (priority 1, started first), the
watchdog (2), ``sctl alerts`` (3, when the site has ``[alerts]``), ``sctl metrics`` (4, when it
has ``[metrics]``), every ``[services.NAME]`` (their own priority, 10 by default) and every
``[actors.NAME]`` (30), each with
``stopsignal=TERM``, ``stopasgroup``/``killasgroup``, rotated log files and the unix-socket
control interface ``sctl status`` and the watchdog talk to.
Programs with a ``group`` key are gathered in ``[group:NAME]`` sections, so that
``supervisorctl restart readers:*`` acts on all of them; ``user`` (per program, else
``[supervisor] user``) runs a program as that user.

Restart policy: the router and services are restarted by supervisord itself
(``autorestart=true``, ``startretries`` with supervisord's growing BACKOFF delays). Actors are
restarted by the watchdog (``sctl watchdog``, see `cli.ops.watchdog`) when it runs: supervisord
marks a dead actor EXITED/FATAL (``autorestart=false``, ``startretries=0``) and the watchdog
starts it again after a delay that grows with each restart inside ``restart_window``, stops it
with a ``sys.alarm`` after ``max_restarts``, and kills a RUNNING actor whose heartbeat stopped
(hung). Without the watchdog (``[supervisor] watchdog = false``) actors get supervisord's own
``autorestart=true``.

Finding ``sctl``. The programs run ``sctl`` by name, and each program's ``environment`` sets
``PATH`` to the folder of the ``sctl`` that rendered the file, then ``%(ENV_PATH)s``
(supervisord's own PATH, expanded by supervisord when it reads the file). supervisord looks a
bare command up in the program's PATH, so the file works wherever sctl was installed: a
``.venv`` beside the checkout (``bash scripts/setup.sh``), a virtual environment elsewhere,
``pip install --user``, or the system, without any of those paths being assumed. That folder is
written relative to ``%(here)s`` when it lies inside the site's tree (the folder of the rendered
file or its parent: the checkout's own ``.venv``) and absolute otherwise. So rendering the
default site from the checkout's ``.venv`` gives the same text on every clone, which keeps the
committed ``deploy/actors.conf`` deterministic (a test compares it with a fresh rendering), and
that committed file still works after a plain ``pip install .`` because the installing
environment's ``bin`` is on supervisord's PATH. ``[supervisor] sctl = "/path/to/sctl"`` names
the executable instead (an absolute path, or relative to the site file).

Every other path is written relative to ``%(here)s`` (the folder of the rendered file), so the
output holds no absolute path of the checkout. supervisord cannot make folders: the log,
socket and journal folders the file names are made by `make_runtime_folders` (``sctl deploy
render``, ``sctl init``, ``scripts/setup.sh``) before supervisord needs them.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pwd
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from broker.config import SiteConfig, SupervisorConfig
from broker.wire.errors import ConfigError
from cli.ops import metrics_config

ROUTER_PRIORITY: Final = 1
WATCHDOG_PRIORITY: Final = 2
ALERTS_PRIORITY: Final = 3
METRICS_PRIORITY: Final = 4
ACTOR_PRIORITY: Final = 30
ROUTER_STARTRETRIES: Final = 5
SCTL: Final = "sctl"
HEADER: Final = """\
; supervisord configuration RENDERED from {site} by `sctl deploy render{host_opt}`.
; Do not edit: change the site file and render again (`sctl check` first).
;
; Start:   supervisord -n -c {conf}
; Inspect: supervisorctl -c {conf} status      or      sctl status
; Stop:    supervisorctl -c {conf} shutdown
;
; %(here)s is the folder of this file, so it works from any working directory and any clone.
; Programs find `sctl` on the PATH each one sets: the folder of the sctl that rendered this
; file, then supervisord's own PATH.
"""


class Paths:
    """Paths of the site written relative to ``%(here)s``, the folder of the rendered file."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir.resolve()

    def __call__(self, target: Path) -> str:
        rel = os.path.relpath(Path(target).resolve(), self.out_dir)
        return "%(here)s" if rel == "." else f"%(here)s/{rel}"

    def inside_or_absolute(self, target: Path) -> str:
        """Relative to ``%(here)s`` when `target` lies inside the folder of the rendered file
        or its parent (the site's tree), else absolute."""
        resolved = Path(target).resolve()
        return self(resolved) if resolved.is_relative_to(self.out_dir.parent) else str(resolved)


def sctl_folder() -> Path:
    """The folder of the ``sctl`` running now: its console script's folder when started as
    ``sctl``, else the interpreter's (``python -m cli`` from a virtual environment)."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is not None and script.name == SCTL and script.parent != Path():
        return script.absolute().parent
    return Path(sys.executable).absolute().parent


def program_path(here: Paths) -> str:
    """The PATH every program gets: where this sctl is, then supervisord's own PATH."""
    return f"{here.inside_or_absolute(sctl_folder())}:%(ENV_PATH)s"


def render(site: SiteConfig, out_path: Path, host: str | None = None) -> str:
    """The supervisord file for the programs on `host` (None: every program of the site).
    `out_path` is where the text will be written (paths inside are relative to its folder)."""
    sup = site.supervision()
    here = Paths(out_path.parent)
    site_rel = here(site.path)
    sctl = f"{SCTL if sup.sctl is None else here(sup.sctl)} -c {site_rel}"
    if sup.log_format != "text":
        sctl += f" --log-format {sup.log_format}"
    host_opt = "" if host is None else f" --host {host}"
    shown = os.path.relpath(site.path.resolve(), here.out_dir)
    out: list[str] = [HEADER.format(site=shown, host_opt=host_opt, conf=out_path.name)]
    server = [("file", here(sup.socket)), ("chmod", "0700")]
    if sup.user:  # the watchdog, running as that user, talks to supervisord on the socket
        server.append(("chown", sup.user))
    out += _section("unix_http_server", server)
    out += _section("supervisord", [
        ("logfile", f"{here(sup.log_dir)}/supervisord.log"),
        ("logfile_maxbytes", sup.log_maxbytes), ("logfile_backups", str(sup.log_backups)),
        ("loglevel", "info"), ("pidfile", f"{here(sup.socket.parent)}/supervisord.pid"),
        ("childlogdir", here(sup.log_dir)), ("directory", here(site.folder)),
    ])
    out += _section("rpcinterface:supervisor", [
        ("supervisor.rpcinterface_factory", "supervisor.rpcinterface:make_main_rpcinterface")])
    out += _section("supervisorctl", [("serverurl", f"unix://{here(sup.socket)}")])
    if host is not None and host in sup.inet_http_servers:
        out += _section("inet_http_server", _inet_http_server(sup, host))

    program = functools.partial(_program, sup=sup, here=here, directory=here(site.folder),
                                path=program_path(here))

    def wanted(runs_on: str) -> bool:
        return host is None or runs_on == host

    groups: dict[str, list[tuple[int, str]]] = {}
    if wanted(site.router_runs_on):
        out += program("router", f"{sctl} router", ROUTER_PRIORITY, True, ROUTER_STARTRETRIES)
    if sup.watchdog:
        host_arg = "" if host is None else f" --host {host}"
        out += program("watchdog", f"{sctl} watchdog{host_arg}", WATCHDOG_PRIORITY, True,
                       ROUTER_STARTRETRIES)
    alerts_host = site.alerts.get("runs_on", site.router_runs_on)
    if site.alerts and wanted(alerts_host if isinstance(alerts_host, str) else ""):
        # `sctl alerts` (cli.ops.alerts): one per site, restarted by supervisord itself
        out += program("alerts", f"{sctl} alerts", ALERTS_PRIORITY, True, ROUTER_STARTRETRIES)
    if metrics_config.runs_here(site, host):
        # `sctl metrics` (cli.ops.metrics): one per site, restarted by supervisord itself
        out += program("metrics", f"{sctl} metrics", METRICS_PRIORITY, True,
                       ROUTER_STARTRETRIES)
    for name in sorted(site.services):
        svc = site.services[name]
        if wanted(svc.runs_on):
            command = svc.command.replace("{site}", here(site.folder))
            out += program(name, command, svc.priority, True, ROUTER_STARTRETRIES,
                           user=svc.user)
            if svc.group:
                groups.setdefault(svc.group, []).append((svc.priority, name))
    for name in sorted(site.actors):
        actor = site.actors[name]
        if wanted(actor.runs_on):
            # with the watchdog, supervisord only reports the death; the watchdog restarts
            out += program(name, f"{sctl} actor {name}", ACTOR_PRIORITY, not sup.watchdog,
                           0 if sup.watchdog else ROUTER_STARTRETRIES, user=actor.user)
            if actor.group:
                groups.setdefault(actor.group, []).append((ACTOR_PRIORITY, name))
    for group in sorted(groups):
        members = sorted(groups[group], key=lambda m: m[1])
        out += _section(f"group:{group}", [("programs", ",".join(n for _, n in members)),
                                           ("priority", str(min(p for p, _ in members)))])
    return "\n".join(out).rstrip("\n") + "\n"


def _inet_http_server(sup: SupervisorConfig, host: str) -> list[tuple[str, str]]:
    """How the other hosts' sctl reach this host's supervisord: its address from
    ``[supervisor] inet_http_servers``, basic auth with the password of ``password_file`` as
    supervisord's ``{SHA}`` digest (the password itself is written nowhere)."""
    path = sup.password_file
    try:
        lines = path.read_text(encoding="utf-8").splitlines() if path is not None else []
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("supervisor.password_file", f"cannot read it: {exc}") from None
    if not lines or not lines[0].strip():
        raise ConfigError("supervisor.password_file", f"{path} must hold the password of the "
                          "hosts' supervisord on its first line")
    digest = hashlib.sha1(lines[0].strip().encode()).hexdigest()
    return [("port", sup.inet_http_servers[host]), ("username", sup.username),
            ("password", f"{{SHA}}{digest}")]


def namespec(site: SiteConfig, name: str) -> str:
    """The name supervisord's calls take for program `name`: ``GROUP:NAME`` in a group, else
    ``NAME``."""
    table = site.actors.get(name) or site.services.get(name)
    group = table.group if table is not None else ""
    return f"{group}:{name}" if group else name


def runtime_folders(site: SiteConfig) -> list[tuple[str, Path]]:
    """The folders the rendered file and the programs write into, with the key naming each:
    supervisord's logs, its socket (and pid file), the router's journal."""
    sup = site.supervision()
    out = [("supervisor.log_dir", sup.log_dir), ("supervisor.socket", sup.socket.parent)]
    if site.router.journal_path is not None:
        out.append(("router.journal_path", site.router.journal_path.parent))
    return out


def make_runtime_folders(site: SiteConfig) -> list[ConfigError]:
    """Make every `runtime_folders` folder that is missing; a problem for each that cannot be
    made or written. With ``[supervisor] user``, run as root, the folders made here are given
    to that user: the router writes its journal and the watchdog its state file there."""
    problems = []
    owner = _owner(site.supervision().user) if os.geteuid() == 0 else None
    for key, folder in runtime_folders(site):
        existed = folder.is_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if owner is not None and not existed and key != "supervisor.log_dir":
                os.chown(folder, *owner)  # logs are written by supervisord itself (root)
        except OSError as exc:
            problems.append(ConfigError(key, f"cannot make the folder {folder}: "
                                             f"{exc.strerror or exc}", str(site.path)))
            continue
        if not os.access(folder, os.W_OK | os.X_OK):
            problems.append(ConfigError(key, f"the folder {folder} is not writable",
                                        str(site.path)))
    return problems


def _owner(user: str) -> tuple[int, int] | None:
    if not user:
        return None
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        return None  # `sctl check` reports the unknown user
    return entry.pw_uid, entry.pw_gid


def _section(name: str, items: list[tuple[str, str]]) -> list[str]:
    return [f"[{name}]", *(f"{k} = {v}" for k, v in items), ""]


def _program(name: str, command: str, priority: int, autorestart: bool, startretries: int, *,
             sup: SupervisorConfig, here: Paths, directory: str, path: str,
             user: str = "") -> Iterator[str]:
    logs = here(sup.log_dir)
    items = [
        ("command", command),
        ("directory", directory),
        ("environment", f'PATH="{path}",PYTHONUNBUFFERED="1"'),
        ("priority", str(priority)),
        ("autostart", "true"),
        ("autorestart", "true" if autorestart else "false"),
        ("startsecs", str(sup.startsecs)),
        ("startretries", str(startretries)),
        ("stopsignal", "TERM"),
        ("stopwaitsecs", str(sup.stopwaitsecs)),
        ("stopasgroup", "true"),
        ("killasgroup", "true"),
        ("redirect_stderr", "true"),
        ("stdout_logfile", f"{logs}/{name}.log"),
        ("stdout_logfile_maxbytes", sup.log_maxbytes),
        ("stdout_logfile_backups", str(sup.log_backups)),
    ]
    if user or sup.user:
        items.append(("user", user or sup.user))
    yield from _section(f"program:{name}", items)
