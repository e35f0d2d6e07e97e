"""``sctl reload``: bring a running site in line with its site file, restarting only what
changed.

1. The caller has checked the site file; a mistake in it stops everything before this module
   runs, so a bad site changes nothing.
2. supervisord must answer before anything is written (else: nothing changed, exit 3).
3. The supervisord file is rendered and written where supervisord reads it, then supervisord
   rereads it (``reloadConfig``) and, as ``supervisorctl update`` does, removes the groups
   that are gone, restarts those whose definition changed and adds the new ones. If
   supervisord cannot read the new file, the previous one is put back.
4. A setting of an actor is not in the supervisord file (the program line is ``sctl actor
   NAME`` whatever the table holds), so the running actors say what they run on: each
   heartbeat carries digests of the actor's table and of ``[router]`` as the actor read them
   at start (`actors.core.actor.config_digest`). A running actor whose digest differs from the
   new file's is restarted; one whose router digest differs means ``[router]`` changed, and
   the router is restarted first. Without the router nothing can be compared: that is said,
   and the exit status is 3.
"""

from __future__ import annotations

import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from broker.client.bus import Bus, client_name
from broker.config import SiteConfig
from broker.wire.errors import BusError, ConfigError, SctlError
from cli.ops.heartbeats import heartbeats
from cli.ops.programs import FAILURE, NO_ANSWER, OK, Beats, Job, start_jobs, stop_jobs
from cli.ops.supervisor_rpc import Supervisor, SupervisorError, endpoints, namespec

RPC_TIMEOUT: Final = 60.0  # stopProcessGroup waits for stopwaitsecs


class ReloadError(SctlError):
    """Nothing (or not all) could be done; `code` is the exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Outcome:
    file: Path
    written: bool
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # definition changed: restarted
    settings: list[str] = field(default_factory=list)  # settings changed: restarted
    unchecked: list[str] = field(default_factory=list)  # running, but no digest to compare
    unchanged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    code: int = OK

    def to_data(self) -> dict[str, Any]:
        return {"file": str(self.file), "written": self.written, "added": self.added,
                "removed": self.removed, "changed": self.changed, "settings": self.settings,
                "unchecked": self.unchecked, "unchanged": self.unchanged,
                "failed": self.failed}

    def lines(self) -> list[str]:
        out = [f"wrote {self.file}" if self.written else f"{self.file} is up to date"]
        for label, names in (("added (started)", self.added), ("removed", self.removed),
                             ("definition changed (restarted)", self.changed),
                             ("settings changed (restarted)", self.settings),
                             ("not checked (no fresh heartbeat)", self.unchecked),
                             ("unchanged", self.unchanged)):
            if names:
                out.append(f"{label}: {', '.join(names)}")
        if not (self.added or self.removed or self.changed or self.settings):
            out.append("nothing to restart")
        out += [f"ERROR {f}" for f in self.failed]
        return out


def reload_site(site: SiteConfig, host: str | None, target: Path,
                timeout: float | None) -> Outcome:
    from cli.ops.supervisord import render

    try:
        text = render(site, target, host)
    except ConfigError as exc:
        raise ReloadError(f"{exc}; nothing changed", 2) from None
    eps = endpoints(site, host)
    if len(eps) != 1:
        raise ReloadError(f"{site.path} places programs on several hosts: reload one at a "
                          "time (--host)", 2)
    client = Supervisor(eps[0], RPC_TIMEOUT)
    try:
        client.processes()
    except SupervisorError as exc:
        raise ReloadError(f"{exc}; nothing changed", NO_ANSWER) from None
    old = target.read_text(encoding="utf-8") if target.exists() else None
    outcome = Outcome(target, old != text)
    if outcome.written:
        _write(target, text)
    try:
        added, changed, removed = client.call("reloadConfig")[0]
    except (xmlrpc.client.Fault, SupervisorError) as exc:
        if outcome.written:
            _restore(target, old)
        why = exc.faultString if isinstance(exc, xmlrpc.client.Fault) else str(exc)
        raise ReloadError(f"supervisord could not reread {target}: {why}; the previous file "
                          "is back, nothing changed", FAILURE) from None
    with Beats(site) as beats:
        _update(client, added, changed, removed, outcome, timeout, beats)
        _check_read(client, text, target, outcome)
        _restart_changed_settings(site, host, client, set(added) | set(changed), outcome,
                                  timeout, beats)
    return outcome


def _write(target: Path, text: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)


def _restore(target: Path, old: str | None) -> None:
    if old is None:
        target.unlink(missing_ok=True)
    else:
        _write(target, old)


def _update(client: Supervisor, added: list[str], changed: list[str], removed: list[str],
            outcome: Outcome, timeout: float | None, beats: Beats) -> None:
    """What ``supervisorctl update`` does with the groups `reloadConfig` reported."""
    for group in removed + changed:
        try:
            client.call("stopProcessGroup", group, True)
            client.call("removeProcessGroup", group)
        except (xmlrpc.client.Fault, SupervisorError) as exc:
            outcome.failed.append(f"{group}: {_text(exc)}")
            outcome.code = max(outcome.code, FAILURE)
    outcome.removed += removed
    for group in changed + added:
        try:
            client.call("addProcessGroup", group)
        except (xmlrpc.client.Fault, SupervisorError) as exc:
            outcome.failed.append(f"{group}: {_text(exc)}")
            outcome.code = max(outcome.code, FAILURE)
    outcome.changed += changed
    outcome.added += added
    if changed or added:  # autostart: wait until they run, or say why not
        groups = set(changed) | set(added)
        jobs = _jobs(client, lambda info: info["group"] in groups)
        start_jobs(jobs, timeout, beats)
        _account(jobs, outcome)


def _check_read(client: Supervisor, text: str, target: Path, outcome: Outcome) -> None:
    """A program of the rendered file that supervisord does not know after rereading means
    that it reads another file."""
    names = {line[len("[program:"):-1] for line in text.splitlines()
             if line.startswith("[program:") and line.endswith("]")}
    known = {i["name"] for i in client.processes()}
    missing = sorted(names - known)
    if missing:
        outcome.failed.append(f"supervisord does not know {', '.join(missing)} after "
                              f"rereading: is {target} the file it was started with? (-o FILE)")
        outcome.code = max(outcome.code, FAILURE)


def _restart_changed_settings(site: SiteConfig, host: str | None, client: Supervisor,
                              done: set[str], outcome: Outcome, timeout: float | None,
                              beats: Beats) -> None:
    from actors.core.actor import config_digest

    infos = {i["name"]: i for i in client.processes()}
    running = {n for n, i in infos.items() if i["statename"] == "RUNNING"
               and i["group"] not in done}
    try:
        bus = Bus(site.router, client_name())
        try:
            latest = heartbeats(bus, 2.0)
        finally:
            bus.close()
    except BusError as exc:
        outcome.failed.append(f"the router does not answer ({exc}): the settings of the "
                              f"running actors could not be compared")
        outcome.code = max(outcome.code, NO_ANSWER)
        return
    restart: list[str] = []
    router_changed = router_compared = False
    for name, actor in sorted(site.actors.items()):
        if name not in running or (host is not None and actor.runs_on != host):
            continue
        hb = latest.get(name)
        digest = (hb.data.get("config") or {}) if hb is not None and hb.alive and \
            hb.data.get("pid") == infos[name]["pid"] else {}
        new = config_digest(actor, site.router)
        if not digest.get("actor"):
            outcome.unchecked.append(name)
        elif digest["actor"] != new["actor"]:
            restart.append(name)
        else:
            outcome.unchanged.append(name)
        if digest.get("router"):
            router_compared = True
            router_changed = router_changed or digest["router"] != new["router"]
    if router_changed and "router" in running:
        restart.insert(0, "router")
    elif "router" in running:
        # [router] is compared through the running actors' heartbeats: without one, say so
        (outcome.unchanged if router_compared else outcome.unchecked).insert(0, "router")
    if restart:
        jobs = _jobs(client, lambda info: info["name"] in restart)
        stop_jobs(jobs, timeout)
        for job in jobs:
            job.result = "" if job.code == OK else job.result
        start_jobs([j for j in jobs if not j.result], timeout, beats)
        _account(jobs, outcome)
        outcome.settings += [j.info["name"] for j in jobs if j.code == OK]


def _jobs(client: Supervisor, wanted: Any) -> list[Job]:
    configs = {f"{c['group']}:{c['name']}": c for c in client.call("getAllConfigInfo")}
    return [Job(client, i, configs.get(namespec(i), {}), str(i["name"]))
            for i in client.processes() if wanted(i)]


def _account(jobs: list[Job], outcome: Outcome) -> None:
    for job in jobs:
        if job.code != OK:
            outcome.failed.append(f"{job.label}: {job.result}")
            outcome.code = max(outcome.code, job.code)


def _text(exc: BaseException) -> str:
    return exc.faultString if isinstance(exc, xmlrpc.client.Fault) else str(exc)
