"""Acting on supervisord's programs and waiting for the outcome, for `sctl start`, `stop`,
`restart` and `reload`.

A `Job` is one program on one supervisord. `start_jobs` and `stop_jobs` act in supervisord's
priority order (lowest first to start, so the router is up before the actors; highest first to
stop), every program of one priority at once, then look at supervisord every `POLL` seconds
until each has reached the state, failed, or the priority level's time is up. A program that
fails to start is reported with the last error line of its log; BACKOFF counts as failed for a
program supervisord does not retry (``startretries`` 0, the actors under the watchdog).

supervisord's RUNNING only means "alive for ``startsecs``", and an actor's imports alone may
take longer than that; so an actor has started when its heartbeat from the new pid says
``running`` (`Beats`, from the router's journal), and has failed when that heartbeat says
``stopping`` with the error of its start-up. Without the router, RUNNING is all there is.
"""

from __future__ import annotations

import time
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from broker.client.bus import Bus, client_name
from broker.config import SiteConfig
from broker.wire.errors import BusError
from cli.ops.heartbeats import heartbeats
from cli.ops.supervisor_rpc import FAILED, NOT_RUNNING, Supervisor, SupervisorError, namespec

OK: Final = 0
FAILURE: Final = 1  # supervisord refused, or the program failed
NO_ANSWER: Final = 3  # supervisord did not answer, or the state was not reached in time
POLL: Final = 0.1  # seconds between looks at supervisord while waiting for a state
ALREADY_STARTED: Final = 60  # supervisor.xmlrpc.Faults
NOT_RUNNING_FAULT: Final = 70
BEATS_EVERY: Final = 0.25  # seconds between looks at the heartbeats while actors start


@dataclass
class Job:
    """One program to act on, and what came of it."""

    client: Supervisor
    info: dict[str, Any]
    config: dict[str, Any]
    label: str
    result: str = ""
    code: int = OK
    pending: bool = field(default=False)

    def done(self, result: str, code: int = OK) -> None:
        self.result, self.code, self.pending = result, code, False


def tiers(jobs: list[Job], descending: bool) -> list[list[Job]]:
    """Jobs by supervisord priority: lowest first to start, highest first to stop."""
    by: dict[int, list[Job]] = {}
    for job in jobs:
        by.setdefault(int(job.config.get("priority", 999)), []).append(job)
    return [by[p] for p in sorted(by, reverse=descending)]


def call(job: Job, method: str, *args: Any) -> xmlrpc.client.Fault | None:
    """Call supervisord for `job`: a Fault is returned; not reaching supervisord ends
    the job."""
    try:
        job.client.call(method, namespec(job.info), *args)
    except xmlrpc.client.Fault as fault:
        return fault
    except SupervisorError as exc:
        job.done(f"ERROR {exc}", NO_ANSWER)
    return None


def _wait(tier: list[Job], timeout: float, settle: Callable[[Job, dict[str, Any]], None],
          late: Callable[[Job, dict[str, Any], float], None]) -> None:
    """Look at supervisord until every pending job of `tier` is settled, or `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        pending = [j for j in tier if j.pending]
        if not pending:
            return
        expired = time.monotonic() >= deadline
        for client in {id(j.client): j.client for j in pending}.values():
            try:
                infos = {namespec(i): i for i in client.processes()}
            except SupervisorError as exc:
                for j in pending:
                    if j.client is client:
                        j.done(f"ERROR {exc}", NO_ANSWER)
                continue
            for j in pending:
                if j.client is not client:
                    continue
                info = infos.get(namespec(j.info))
                if info is None:
                    j.done("ERROR removed from supervisord meanwhile", FAILURE)
                    continue
                settle(j, info)
                if j.pending and expired:
                    late(j, info, timeout)
        if expired:
            return
        time.sleep(POLL)


class Beats:
    """The newest heartbeat of each actor of `site`, read from the router's journal at most
    every `BEATS_EVERY` seconds; `of` gives None for a program that is no actor, or when the
    router does not answer (then nothing more is asked)."""

    def __init__(self, site: SiteConfig) -> None:
        self.site = site
        self._bus: Bus | None = None
        self._gone = False
        self._at = 0.0
        self._data: dict[str, dict[str, Any]] = {}

    def of(self, name: str) -> dict[str, Any] | None:
        if name not in self.site.actors or self._gone:
            return None
        if time.monotonic() - self._at >= BEATS_EVERY:
            self._at = time.monotonic()
            try:
                if self._bus is None:
                    self._bus = Bus(self.site.router, client_name())
                self._data = {n: hb.data for n, hb in heartbeats(self._bus, 1.0).items()}
            except BusError:
                self._gone = True
                self.close()
                return None
        return self._data.get(name) or {}

    def close(self) -> None:
        if self._bus is not None:
            self._bus.close()
            self._bus = None

    def __enter__(self) -> Beats:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_jobs(jobs: list[Job], timeout: float | None, beats: Beats | None = None) -> None:
    for tier in tiers(jobs, descending=False):
        for job in tier:
            fault = call(job, "startProcess", False)
            if job.result:
                continue
            if fault is None:
                job.pending = True
            elif fault.faultCode == ALREADY_STARTED:
                job.done("already running")
            else:
                job.done(f"ERROR {fault.faultString}", FAILURE)
        wait = timeout or 10.0 + max(int(j.config.get("startsecs", 1)) for j in tier)
        _wait(tier, wait, lambda j, info: _settle_start(j, info, beats), _late_start)


def _late_start(job: Job, info: dict[str, Any], waited: float) -> None:
    if info["statename"] == "RUNNING":
        job.done(f"ERROR RUNNING, but no heartbeat saying it runs after {waited:g} s",
                 NO_ANSWER)
    else:
        job.done(f"ERROR not RUNNING after {waited:g} s ({info['statename']})", NO_ANSWER)


def _settle_start(job: Job, info: dict[str, Any], beats: Beats | None) -> None:
    state = info["statename"]
    if state == "RUNNING":
        # hb None: no actor, or no router, and RUNNING is all there is to know; a heartbeat
        # of another pid is the previous process's
        hb = None if beats is None else beats.of(str(info["name"]))
        said = None if hb is None or hb.get("pid") != info["pid"] else hb.get("state")
        if hb is None or said == "running":
            job.done("started")
        elif said == "stopping":
            error = (hb or {}).get("error") or "it stopped at once"
            job.done(f"ERROR actor {info['name']} failed to start: {error}", FAILURE)
    elif state in FAILED and (state != "BACKOFF" or not job.config.get("startretries")):
        job.done(f"ERROR {state}: {job.client.failure_reason(info)}", FAILURE)
    elif state == "STOPPED":
        job.done("ERROR stopped while starting (by someone else?)", FAILURE)


def stop_jobs(jobs: list[Job], timeout: float | None) -> None:
    for tier in tiers(jobs, descending=True):
        for job in tier:
            fault = call(job, "stopProcess", False)
            if job.result:
                continue
            if fault is None:
                job.pending = True
            elif fault.faultCode == NOT_RUNNING_FAULT:
                job.done(f"not running ({job.info['statename']})")
            else:
                job.done(f"ERROR {fault.faultString}", FAILURE)
        wait = timeout or 5.0 + max(int(j.config.get("stopwaitsecs", 10)) for j in tier)
        _wait(tier, wait, _settle_stop, lambda j, info, waited: j.done(
            f"ERROR still {info['statename']} after {waited:g} s", NO_ANSWER))


def _settle_stop(job: Job, info: dict[str, Any]) -> None:
    if info["statename"] in NOT_RUNNING:
        job.done("stopped")
