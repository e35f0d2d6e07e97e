"""The watchdog (``sctl watchdog``): restart policy beyond what supervisord does by itself.

supervisord notices a process that died; it cannot notice one that hangs, and it restarts a
process that crashes after ``startsecs`` in a tight loop forever. The watchdog runs next to
supervisord (one per host, started by it) and, every ``check_interval`` seconds, compares
supervisord's view (XML-RPC over the unix socket) with the actors' heartbeats on the bus:

- **dead** (EXITED, FATAL or BACKOFF: it ended by itself) → started again after a delay that
  grows with each restart inside ``restart_window`` (0 s, 1 s, 2 s, 4 s ... up to
  ``restart_delay_max``). Rendered actor programs have ``autorestart=false``, so these restarts
  are the only ones.
- **hung** (RUNNING, but no heartbeat from that pid for ``hung_after`` heartbeat periods) →
  killed with SIGKILL, which makes it dead (above). Judged only when the bus was heard (router
  stats, other heartbeats) *after* the heartbeat became overdue: with the router down, or this
  host cut off from it, every actor looks silent, and killing them would lose what their
  outboxes hold. After such an outage every actor's silence is counted afresh.
- **intensity**: more than ``max_restarts`` restarts within ``restart_window`` → the program is
  left stopped, ``sys.alarm`` is published and ``sctl status`` shows the reason: the last error
  line of the program's log (read through supervisord), and the ``sctl start`` that restarts it.
- an operator's ``sctl stop`` (or ``supervisorctl stop``) leaves the program STOPPED: not a
  failure, nothing counted, no restart. Starting it again by hand clears its alarm.

Programs are called by their supervisord name (``GROUP:NAME`` for a program in a group).

The watchdog's view (restarts, alarms, reasons) goes to the bus as ``sys.watchdog.<host>`` on
every change and once a second, and to a JSON file next to the supervisord socket, so ``sctl
status`` can show it with the router down. Router and services keep supervisord's own
``autorestart``; the watchdog only raises an alarm when one of them ends FATAL.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import xmlrpc.client
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from actors.core.actor import EXIT_DUPLICATE
from broker.client.bus import Bus
from broker.config import SiteConfig, SupervisorConfig
from broker.wire import topics
from broker.wire.errors import BusError, EnvelopeError
from cli.ops.supervisor_rpc import TAIL_BYTES, Endpoint, failure_text, namespec, proxy

log = logging.getLogger(__name__)

DEAD: Final = frozenset({"EXITED", "FATAL", "BACKOFF"})
START_GRACE: Final = 5.0  # seconds a new process has to send its first heartbeat
BUS_GAP: Final = 2.0  # seconds without any delivery that count as a bus outage
PUBLISH_EVERY: Final = 1.0


def exit_reason(info: dict[str, Any], reason: str) -> str:
    """`reason` (a program's last error line), naming what exit status `EXIT_DUPLICATE`
    means. The restart policy treats it like any exit: a restarted duplicate is refused
    again at once and runs nothing, a holder that died frees the name within its lease's ttl
    (three heartbeats, well inside the restart backoff), and a name held elsewhere for good
    ends in the alarm, with this reason, after max_restarts."""
    if info.get("exitstatus") == EXIT_DUPLICATE:
        return f"another instance holds {info.get('name')} (see log): {reason}"
    return reason


def supervisor_proxy(socket_path: Path, timeout: float = 5.0) -> Any:
    """An XML-RPC proxy to supervisord's unix socket (what supervisorctl uses)."""
    return proxy(Endpoint(("",), f"unix://{socket_path}"), timeout)


def state_file(sup: SupervisorConfig, host: str) -> Path:
    return sup.socket.parent / f"watchdog-{host or 'local'}.json"


def read_state(sup: SupervisorConfig, host: str) -> dict[str, Any] | None:
    """The watchdog's last written view, or None when there is none (never ran)."""
    try:
        data = json.loads(state_file(sup, host).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass
class Program:
    """What the watchdog remembers of one supervised program."""

    name: str
    actor: bool
    spec: str = ""  # supervisord's name for it (GROUP:NAME), from its process info
    restarts: deque[float] = field(default_factory=deque)  # monotonic times, inside window
    total_restarts: int = 0
    restart_at: float | None = None  # a start is scheduled for this monotonic time
    alarm: str | None = None  # why it was left stopped
    last_reason: str = ""  # why it was last restarted
    pid: int = 0
    pid_seen: float = 0.0
    last_beat: float = 0.0  # monotonic time of the last heartbeat from `pid`
    beat_interval: float = 1.0
    killed_pid: int = 0

    def to_data(self) -> dict[str, Any]:
        return {"restarts": len(self.restarts), "total_restarts": self.total_restarts,
                "alarm": self.alarm, "last_reason": self.last_reason or None,
                "restart_pending": self.restart_at is not None}


class RestartPolicy:
    """Restart intensity and delays, without I/O (unit-tested with a fake clock)."""

    def __init__(self, max_restarts: int, window: float, delay_max: float) -> None:
        self.max_restarts = max_restarts
        self.window = window
        self.delay_max = delay_max

    def next_restart(self, prog: Program, now: float) -> float | None:
        """Record one more restart; the delay before it, or None when the program has used up
        its restarts (more than `max_restarts` within `window`)."""
        while prog.restarts and now - prog.restarts[0] > self.window:
            prog.restarts.popleft()
        if len(prog.restarts) >= self.max_restarts:
            return None
        prog.restarts.append(now)
        prog.total_restarts += 1
        n = len(prog.restarts)
        return 0.0 if n == 1 else min(self.delay_max, 2.0 ** (n - 2))


class Watchdog:
    def __init__(self, site: SiteConfig, host: str | None, rpc: Any, bus: Bus) -> None:
        self.site = site
        self.host = host or ""
        self.sup = site.supervision()
        self.rpc = rpc
        self.bus = bus
        self.policy = RestartPolicy(self.sup.max_restarts, self.sup.restart_window,
                                    self.sup.restart_delay_max)
        self.programs: dict[str, Program] = {}
        for name, actor in site.actors.items():
            if host is None or actor.runs_on == self.host:
                self.programs[name] = Program(name, actor=True)
        others = [n for n, s in site.services.items() if host is None or s.runs_on == self.host]
        if host is None or site.router_runs_on == self.host:
            others.append("router")
        for name in others:
            self.programs[name] = Program(name, actor=False)
        self.bus_heard = 0.0  # when anything last arrived from the router
        self.supervisor_error: str | None = None
        self._last_publish = 0.0
        self._changed = True
        bus.subscribe(topics.HEARTBEAT + ".", gapless=False)
        bus.subscribe(topics.SYSTEM + ".", gapless=False)  # router stats, our own view's echo

    # --- inputs ---------------------------------------------------------------------------

    def on_deliveries(self, deliveries: Iterable[Any], now: float) -> None:
        for d in deliveries:
            if self.bus_heard and now - self.bus_heard > BUS_GAP:
                # the bus was out (router down, or this host cut off): heartbeats could not
                # arrive either, so every actor starts afresh instead of looking hung now
                for each in self.programs.values():
                    if each.last_beat:
                        each.last_beat = now
                    else:  # not heard from yet: its start-up grace starts over too
                        each.pid_seen = max(each.pid_seen, now)
            self.bus_heard = now
            prog = self.programs.get(d.topic.split(".", 1)[-1])
            if prog is None or not prog.actor:
                continue
            try:
                data = d.envelope.data
            except EnvelopeError:
                continue
            if data.get("pid") == prog.pid and data.get("state") != "stopping":
                prog.last_beat = now
                interval = data.get("interval")
                if isinstance(interval, int | float) and interval > 0:
                    prog.beat_interval = float(interval)

    # --- one check ------------------------------------------------------------------------

    def check(self, now: float) -> None:
        try:
            infos = {i["name"]: i for i in self.rpc.supervisor.getAllProcessInfo()}
        except (OSError, xmlrpc.client.Error) as exc:
            if self.supervisor_error is None:
                log.warning("supervisord does not answer at %s: %s", self.sup.socket, exc)
            self.supervisor_error = str(exc)
            return
        self.supervisor_error = None
        for prog in self.programs.values():
            info = infos.get(prog.name)
            if info is not None:
                self._check_one(prog, info, now)

    def _check_one(self, prog: Program, info: dict[str, Any], now: float) -> None:
        state = info["statename"]
        prog.spec = namespec(info)
        if state == "RUNNING" and info["pid"] != prog.pid:
            prog.pid, prog.pid_seen, prog.last_beat = info["pid"], now, 0.0
        if not prog.actor:
            if state == "FATAL" and prog.alarm is None:
                self._alarm(prog, f"supervisord gave up starting it: "
                                  f"{self._failure_reason(info)}")
            elif state == "RUNNING" and prog.alarm is not None:
                self._clear(prog, "running again")
            return
        if state == "STOPPED":  # an operator's stop (or ours after an alarm): not a failure
            if prog.restart_at is not None:
                prog.restart_at = None
                self._changed = True
            return
        if state in ("RUNNING", "STARTING") and prog.alarm is not None:
            self._clear(prog, "started again by an operator")
        if state == "RUNNING":
            self._check_hung(prog, info, now)
        elif state in DEAD and prog.alarm is None:
            self._restart_dead(prog, info, now)

    def _check_hung(self, prog: Program, info: dict[str, Any], now: float) -> None:
        if prog.killed_pid == prog.pid:
            return
        # a new process has START_GRACE for its first heartbeat; after that, its heartbeats
        since = prog.last_beat or prog.pid_seen + START_GRACE
        overdue_at = since + self.sup.hung_after * prog.beat_interval
        # Hung only if the bus was heard after the heartbeat became overdue: a silent actor
        # on a silent bus is a network or router outage, and killing it would lose its outbox.
        if now > overdue_at and self.bus_heard > overdue_at:
            reason = (f"hung: pid {prog.pid} RUNNING but no heartbeat for "
                      f"{now - (prog.last_beat or prog.pid_seen):.1f} s")
            log.warning("%s %s; killing it for a restart", prog.name, reason)
            prog.last_reason = reason
            prog.killed_pid = prog.pid
            self._changed = True
            try:
                self.rpc.supervisor.signalProcess(prog.spec, "KILL")
            except (OSError, xmlrpc.client.Error) as exc:
                log.error("could not kill hung %s (pid %d): %s", prog.name, prog.pid, exc)

    def _restart_dead(self, prog: Program, info: dict[str, Any], now: float) -> None:
        if prog.restart_at is None:
            if prog.killed_pid != info.get("pid") or not prog.last_reason.startswith("hung"):
                prog.last_reason = f"{info['statename'].lower()}: {self._failure_reason(info)}"
            delay = self.policy.next_restart(prog, now)
            self._changed = True
            if delay is None:
                self._give_up(prog, info)
                return
            prog.restart_at = now + delay
            log.warning("%s %s; restart %d in %.0f s", prog.name, prog.last_reason,
                        len(prog.restarts), delay)
        if now >= prog.restart_at:
            prog.restart_at = None
            try:
                self.rpc.supervisor.startProcess(prog.spec, False)
            except xmlrpc.client.Fault as exc:
                # ALREADY_STARTED: an operator was quicker; anything else is retried next check
                log.warning("starting %s: %s", prog.name, exc.faultString)
            except OSError as exc:
                log.warning("starting %s: supervisord does not answer: %s", prog.name, exc)

    def _give_up(self, prog: Program, info: dict[str, Any]) -> None:
        if info["statename"] == "BACKOFF":
            try:
                self.rpc.supervisor.stopProcess(prog.spec, False)
            except (OSError, xmlrpc.client.Error) as exc:
                log.warning("stopping %s: %s", prog.name, exc)
        self._alarm(prog, f"stopped after {self.sup.max_restarts} restarts within "
                          f"{self.sup.restart_window:g} s; last: {prog.last_reason}. "
                          f"Fix the cause, then: sctl -c {self.site.path} start {prog.name}")

    def _alarm(self, prog: Program, reason: str) -> None:
        prog.alarm = reason
        self._changed = True
        log.error("ALARM %s: %s", prog.name, reason)
        self.bus.publish(topics.ALARM, "system", {
            "source": "watchdog", "host": self.host or socket.gethostname(),
            "program": prog.name, "reason": reason})

    def _failure_reason(self, info: dict[str, Any]) -> str:
        """The last error line of the program's log, else what supervisord says
        ("Exited too quickly" tells an operator nothing)."""
        return exit_reason(info, failure_text(info, _log_tail(self.rpc, info)))

    def _clear(self, prog: Program, why: str) -> None:
        log.info("%s: alarm cleared (%s)", prog.name, why)
        prog.alarm = None
        prog.restarts.clear()
        self._changed = True

    # --- outputs --------------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        return {"host": self.host, "pid": os.getpid(), "time": time.time(),
                "supervisor_error": self.supervisor_error,
                "programs": {n: p.to_data() for n, p in self.programs.items()}}

    def publish(self, now: float) -> None:
        if not self._changed and now - self._last_publish < PUBLISH_EVERY:
            return
        self._changed = False
        self._last_publish = now
        view = self.view()
        self.bus.publish(f"{topics.SYSTEM}.watchdog.{self.host or 'local'}", "system", view)
        path = state_file(self.sup, self.host)
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(view), encoding="utf-8")
            tmp.replace(path)
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc)


def _log_tail(rpc: Any, info: dict[str, Any]) -> str:
    try:
        return str(rpc.supervisor.tailProcessStdoutLog(namespec(info), 0, TAIL_BYTES)[0])
    except (OSError, xmlrpc.client.Error) as exc:
        log.debug("cannot read the log of %s: %s", info.get("name"), exc)
        return ""


class _NoBus:
    """Stands in for the Bus when the watchdog cannot have one (no CURVE key for its identity):
    dead actors are still restarted, but nothing is heard (so no hung checks) or published."""

    def subscribe(self, prefix: str, **kw: Any) -> None:
        pass

    def publish(self, topic: str, kind: str, data: dict[str, Any]) -> None:
        log.warning("not on the bus, so not published on %s: %s", topic, data)

    def connect(self, wait: float) -> bool:
        return False

    def poll(self, timeout: float) -> list[Any]:
        time.sleep(timeout)
        return []

    def flush(self, timeout: float) -> bool:
        return True

    def close(self) -> None:
        pass


def run(site: SiteConfig, host: str | None, stop: Any) -> int:
    """Process body of ``sctl watchdog``: loop until `stop()` is true."""
    sup = site.supervision()
    bus: Any
    try:
        bus = Bus(site.router, f"watchdog-{host or 'local'}")
    except BusError as exc:
        log.error("watchdog without the bus (%s): it restarts dead actors, but cannot see "
                  "hung ones or publish alarms", exc)
        bus = _NoBus()
    dog = Watchdog(site, host, supervisor_proxy(sup.socket), bus)
    bus.connect(wait=2.0)
    log.info("watchdog for %s: %d programs, supervisord at %s", host or "this host",
             len(dog.programs), sup.socket)
    next_check = 0.0
    try:
        while not stop():
            now = time.monotonic()
            if now >= next_check:
                dog.check(now)
                dog.publish(now)
                next_check = now + sup.check_interval
            dog.on_deliveries(bus.poll(max(0.0, next_check - time.monotonic())),
                              time.monotonic())
    finally:
        bus.flush(1.0)
        bus.close()
    return 0
