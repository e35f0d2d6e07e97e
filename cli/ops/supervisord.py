"""supervisord configuration rendered from the site file (``sctl deploy render``).

One ``[program:X]`` per process of the site: the router (priority 1, started first), the
watchdog (2), every ``[services.NAME]`` (their own priority, 10 by default) and every
``[actors.NAME]`` (30), each with ``stopsignal=TERM``, ``stopasgroup``/``killasgroup``, rotated
log files and the unix-socket control interface ``sctl status`` and the watchdog talk to.

Restart policy: the router and services are restarted by supervisord itself
(``autorestart=true``, ``startretries`` with supervisord's growing BACKOFF delays). Actors are
restarted by the watchdog (``sctl watchdog``, see `cli.ops.watchdog`) when it runs: supervisord
marks a dead actor EXITED/FATAL (``autorestart=false``, ``startretries=0``) and the watchdog
starts it again after a delay that grows with each restart inside ``restart_window``, stops it
with a ``sys.alarm`` after ``max_restarts``, and kills a RUNNING actor whose heartbeat stopped
(hung). Without the watchdog (``[supervisor] watchdog = false``) actors get supervisord's own
``autorestart=true``.

The output is deterministic and holds no absolute path of the checkout: every path is written
relative to ``%(here)s`` (the folder of the rendered file), so the committed
``deploy/actors.conf`` works from any clone, and a test compares it with a fresh rendering.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from broker.config import SiteConfig, SupervisorConfig

ROUTER_PRIORITY: Final = 1
WATCHDOG_PRIORITY: Final = 2
ACTOR_PRIORITY: Final = 30
ROUTER_STARTRETRIES: Final = 5
HEADER: Final = """\
; supervisord configuration RENDERED from {site} by `sctl deploy render{host_opt}`.
; Do not edit: change the site file and render again (a test fails when this file is stale).
;
; Start:   supervisord -n -c {conf}     (bash scripts/run.sh does this for the default site)
; Inspect: supervisorctl -c {conf} status      or      sctl status
; Stop:    supervisorctl -c {conf} shutdown
;
; %(here)s is the folder of this file, so it works from any working directory and any clone.
"""


class Paths:
    """Paths of the site written relative to ``%(here)s``, the folder of the rendered file."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir.resolve()

    def __call__(self, target: Path) -> str:
        rel = os.path.relpath(Path(target).resolve(), self.out_dir)
        return "%(here)s" if rel == "." else f"%(here)s/{rel}"


def render(site: SiteConfig, out_path: Path, host: str | None = None) -> str:
    """The supervisord file for the programs on `host` (None: every program of the site).
    `out_path` is where the text will be written (paths inside are relative to its folder)."""
    sup = site.supervision()
    here = Paths(out_path.parent)
    site_rel = here(site.path)
    sctl = f"{here(sup.sctl)} -c {site_rel}"
    host_opt = "" if host is None else f" --host {host}"
    shown = os.path.relpath(site.path.resolve(), here.out_dir)
    out: list[str] = [HEADER.format(site=shown, host_opt=host_opt, conf=out_path.name)]
    out += _section("unix_http_server", [("file", here(sup.socket)), ("chmod", "0700")])
    out += _section("supervisord", [
        ("logfile", f"{here(sup.log_dir)}/supervisord.log"),
        ("logfile_maxbytes", sup.log_maxbytes), ("logfile_backups", str(sup.log_backups)),
        ("loglevel", "info"), ("pidfile", f"{here(sup.socket.parent)}/supervisord.pid"),
        ("childlogdir", here(sup.log_dir)), ("directory", here(site.folder)),
    ])
    out += _section("rpcinterface:supervisor", [
        ("supervisor.rpcinterface_factory", "supervisor.rpcinterface:make_main_rpcinterface")])
    out += _section("supervisorctl", [("serverurl", f"unix://{here(sup.socket)}")])

    program = functools.partial(_program, sup=sup, here=here, directory=here(site.folder))

    def wanted(runs_on: str) -> bool:
        return host is None or runs_on == host

    if wanted(site.router_runs_on):
        out += program("router", f"{sctl} router", ROUTER_PRIORITY, True, ROUTER_STARTRETRIES)
    if sup.watchdog:
        host_arg = "" if host is None else f" --host {host}"
        out += program("watchdog", f"{sctl} watchdog{host_arg}", WATCHDOG_PRIORITY, True,
                       ROUTER_STARTRETRIES)
    for name in sorted(site.services):
        svc = site.services[name]
        if wanted(svc.runs_on):
            command = svc.command.replace("{site}", here(site.folder))
            out += program(name, command, svc.priority, True, ROUTER_STARTRETRIES)
    for name in sorted(site.actors):
        if wanted(site.actors[name].runs_on):
            # with the watchdog, supervisord only reports the death; the watchdog restarts
            out += program(name, f"{sctl} actor {name}", ACTOR_PRIORITY, not sup.watchdog,
                           0 if sup.watchdog else ROUTER_STARTRETRIES)
    return "\n".join(out).rstrip("\n") + "\n"


def _section(name: str, items: list[tuple[str, str]]) -> list[str]:
    return [f"[{name}]", *(f"{k} = {v}" for k, v in items), ""]


def _program(name: str, command: str, priority: int, autorestart: bool, startretries: int, *,
             sup: SupervisorConfig, here: Paths, directory: str) -> Iterator[str]:
    logs = here(sup.log_dir)
    yield from _section(f"program:{name}", [
        ("command", command),
        ("directory", directory),
        ("environment", 'PYTHONUNBUFFERED="1"'),
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
    ])
