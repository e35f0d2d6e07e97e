"""``sctl alerts``: alarms and outages of the site, forwarded to people and their tools.

A site with an ``[alerts]`` table (`cli.ops.alert_config`) gets one more supervisord program,
``alerts`` (``sctl deploy render``), on the router's host or ``[alerts] runs_on``. It is a
program of its own, not a part of the watchdog: the watchdog runs once per host, which would
send each alert once per host, and it restarts actors, which an SMTP server that hangs must
never delay. One alerts program per site sees every host's alarms on the bus.

What it watches (`AlertEngine`), each an episode (`cli.ops.alert_model`):

- ``sys.alarm`` (``alarms = true``): every alarm, once per episode keyed ``ALARM:SOURCE``
  (``outbox_overflow:reader1``, ``device_lost:mqttreaders:DA1275B0``); the watchdog's
  ``program:NAME`` (left stopped after too many restarts) ends when the watchdog clears it;
- ``hb.<actor>`` (``link_down_after`` > 0): a device link down (or reconnecting) for that long
  since its outage began (the heartbeat's ``down_since``, on the actor's clock), keyed
  ``link:ACTOR``; resolved when the link is up again or the actor stops;
- ``sys.watchdog.<host>`` (``restarts = true``): each restart of an actor by the watchdog,
  keyed ``restart:NAME``.

Threads: the main thread owns the Bus and the engine; it never waits for a receiver. Each
receiver (`cli.ops.alert_forwarders`) has its worker thread and bounded queue; the main thread
only hands alerts over. Every alert is also logged (INFO, with the alert in ``extra=``), and the
program's own state goes out on ``sys.alerts`` every `STATUS_EVERY` seconds: open episodes and
each receiver's counters (sent, queued, retries, failed, dropped, suppressed, last error).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from broker.client.bus import Bus
from broker.config import SiteConfig
from broker.wire import topics
from broker.wire.errors import EnvelopeError
from cli.ops.alert_config import ALARM, LINK_DOWN, RESTART, AlertsConfig
from cli.ops.alert_forwarders import Forwarder, make_forwarder
from cli.ops.alert_model import INFO, SUMMARY, TEST, Alert, Episodes, Limiter

log = logging.getLogger(__name__)

TICK: Final = 0.25  # seconds between two looks at quiet episodes and rate-limit summaries
STATUS_EVERY: Final = 5.0
STOP_GRACE: Final = 3.0  # seconds the receivers get at exit to deliver what is queued
STATUS_TOPIC: Final = "sys.alerts"
WATCHDOG_PREFIX: Final = f"{topics.SYSTEM}.watchdog."
LINK_STATES_DOWN: Final = frozenset({"down", "connecting"})
SEVERITY: Final = {ALARM: "critical", LINK_DOWN: "error", RESTART: "warning"}


def _alert(kind: str, key: str, source: str, title: str, wall: float,
           data: Mapping[str, Any]) -> Alert:
    return Alert(id="", key=key, kind=kind, state="", severity=SEVERITY[kind], source=source,
                 title=title, opened=wall, time=wall, data=dict(data))


class AlertEngine:
    """Bus messages in, alerts out (module doc). `now` is monotonic, `wall` Unix time."""

    def __init__(self, cfg: AlertsConfig) -> None:
        self.cfg = cfg
        self.episodes = Episodes(cfg.resolve_after)
        self._restarts: dict[tuple[str, str], int] = {}  # (watchdog host, program) -> total

    def subscriptions(self) -> list[tuple[str, bool]]:
        """(prefix, gapless): alarms gap-free (none may be missed); views and heartbeats
        repeat every second, so best effort does for them."""
        subs = [(WATCHDOG_PREFIX, False)]
        if self.cfg.alarms:
            subs.append((topics.ALARM, True))
        if self.cfg.link_down_after > 0:
            subs.append((topics.HEARTBEAT + ".", False))
        return subs

    def on_message(self, topic: str, data: Mapping[str, Any], ts: float, now: float,
                   wall: float) -> list[Alert]:
        if topic == topics.ALARM:
            return self._alarm(data, now, wall) if self.cfg.alarms else []
        if topic.startswith(WATCHDOG_PREFIX):
            return self._watchdog(topic[len(WATCHDOG_PREFIX):], data, now, wall)
        if topic.startswith(topics.HEARTBEAT + ".") and self.cfg.link_down_after > 0:
            return self._heartbeat(topic.split(".", 1)[1], data, ts, now, wall)
        return []

    def tick(self, now: float, wall: float) -> list[Alert]:
        return self.episodes.expire(now, wall)

    # --- the sources --------------------------------------------------------------------------

    def _alarm(self, data: Mapping[str, Any], now: float, wall: float) -> list[Alert]:
        source = str(data.get("source") or "unknown")
        if source == "watchdog" and "program" in data and "alarm" not in data:
            program = str(data["program"])
            return self._program_alarm(program, str(data.get("reason") or "alarm"), data, now,
                                       wall)
        name = str(data.get("alarm") or "alarm")
        key = f"{name}:{source}" + (f":{data['device']}" if data.get("device") else "")
        title = str(data.get("message") or data.get("reason") or f"{name} from {source}")
        if data.get("state") == "resolved":  # an alarm that says its own episode ended
            ended = self.episodes.resolve(key, title, wall)
            return [ended] if ended is not None else []
        opened = self.episodes.occur(_alert(ALARM, key, source, title, wall, data), now,
                                     quiet=True)
        return [opened] if opened is not None else []

    def _program_alarm(self, program: str, reason: str, data: Mapping[str, Any], now: float,
                       wall: float) -> list[Alert]:
        alert = _alert(ALARM, f"program:{program}", program, f"{program}: {reason}", wall, data)
        opened = self.episodes.occur(alert, now, quiet=False)
        return [opened] if opened is not None else []

    def _watchdog(self, host: str, view: Mapping[str, Any], now: float,
                  wall: float) -> list[Alert]:
        programs = view.get("programs")
        if not isinstance(programs, dict):
            return []
        out: list[Alert] = []
        for name, row in programs.items():
            if not isinstance(row, dict):
                continue
            if self.cfg.alarms:
                if row.get("alarm"):
                    out += self._program_alarm(str(name), str(row["alarm"]),
                                               {"source": "watchdog", "host": host,
                                                "program": name, "reason": row["alarm"]},
                                               now, wall)
                else:
                    ended = self.episodes.resolve(f"program:{name}", "alarm cleared", wall)
                    out += [ended] if ended is not None else []
            if self.cfg.restarts:
                out += self._restarted(host, str(name), row, now, wall)
        return out

    def _restarted(self, host: str, name: str, row: Mapping[str, Any], now: float,
                   wall: float) -> list[Alert]:
        total = row.get("total_restarts")
        if not isinstance(total, int):
            return []
        before = self._restarts.get((host, name))
        self._restarts[(host, name)] = total
        if before is None or total <= before:  # first view: what happened before we ran
            return []
        reason = str(row.get("last_reason") or "")
        alert = _alert(RESTART, f"restart:{name}", name,
                       f"{name} restarted by the watchdog" + (f": {reason}" if reason else ""),
                       wall, {"host": host, "program": name, "total_restarts": total,
                              "reason": reason})
        opened = self.episodes.occur(alert, now, quiet=True, count=total - before)
        return [opened] if opened is not None else []

    def _heartbeat(self, actor: str, data: Mapping[str, Any], ts: float, now: float,
                   wall: float) -> list[Alert]:
        key = f"link:{actor}"
        link = data.get("link")
        if data.get("state") == "stopping" or not isinstance(link, dict):
            ended = self.episodes.resolve(key, "actor stopped", wall)
            return [ended] if ended is not None else []
        if link.get("state") == "up":
            ended = self.episodes.resolve(key, f"link up: {link.get('reason') or ''}", wall)
            return [ended] if ended is not None else []
        since = link.get("down_since")
        if link.get("state") not in LINK_STATES_DOWN or not isinstance(since, int | float):
            return []
        down_for = ts - since  # both on the actor's clock
        if down_for < self.cfg.link_down_after or self.episodes.is_open(key):
            return []
        error = link.get("last_error") or link.get("reason") or "no reason given"
        alert = _alert(LINK_DOWN, key, actor,
                       f"{actor}: device link down for {down_for:.0f} s: {error}", wall,
                       {"actor": actor, "down_since": since, "attempts": link.get("attempts"),
                        "last_error": error})
        opened = self.episodes.occur(alert, now, quiet=False, count=0)
        return [opened] if opened is not None else []


class Dispatcher:
    """Hands each alert to the receivers that take its kind, through their rate limits."""

    def __init__(self, forwarders: Iterable[Forwarder], now: float) -> None:
        self.forwarders = list(forwarders)
        self.limiters = {f.name: Limiter(f.cfg["max_per_minute"], now)
                         for f in self.forwarders}

    def send(self, alert: Alert, now: float) -> None:
        log.info("ALERT %s %s: %s", alert.state, alert.key, alert.title,
                 extra={"alert": {"id": alert.id, "kind": alert.kind, "state": alert.state,
                                  "source": alert.source, "count": alert.count}})
        for fwd in self.forwarders:
            if alert.kind not in (SUMMARY, TEST) and alert.kind not in fwd.cfg["kinds"]:
                continue
            if alert.kind == TEST or self.limiters[fwd.name].admit(alert, now):
                fwd.offer(alert)

    def tick(self, now: float, wall: float) -> None:
        for fwd in self.forwarders:
            summary = self.limiters[fwd.name].summary(now, wall)
            if summary is not None:
                log.warning("alerts: %s: %s", fwd.name, summary.title)
                fwd.offer(summary)

    def status(self) -> dict[str, Any]:
        return {f.name: {**f.status(), "suppressed": self.limiters[f.name].suppressed}
                for f in self.forwarders}


def start_forwarders(site: SiteConfig, cfg: AlertsConfig) -> list[Forwarder]:
    host = socket.gethostname()
    forwarders = [make_forwarder(f, str(site.path), host) for f in cfg.forwarders]
    for fwd in forwarders:
        fwd.start()
    return forwarders


def run(site: SiteConfig, cfg: AlertsConfig, stop: Callable[[], bool]) -> int:
    """Process body of ``sctl alerts``: loop until `stop()` is true."""
    dispatcher = Dispatcher(start_forwarders(site, cfg), time.monotonic())
    engine = AlertEngine(cfg)
    bus = Bus(site.router, "alerts")
    for prefix, gapless in engine.subscriptions():
        bus.subscribe(prefix, gapless=gapless)
    if not bus.connect(wait=2.0):
        log.warning("router not reachable at %s yet; alerts start when it answers",
                    site.router.connect_url("ingress"))
    log.info("alerts for %s: receivers %s; alarms %s, link down after %s, restarts %s",
             site.path, ", ".join(f.name for f in dispatcher.forwarders), cfg.alarms,
             f"{cfg.link_down_after:g} s" if cfg.link_down_after else "off", cfg.restarts)
    next_status = 0.0
    try:
        while not stop():
            now, wall = time.monotonic(), time.time()
            for alert in engine.tick(now, wall):
                dispatcher.send(alert, now)
            dispatcher.tick(now, wall)
            if now >= next_status:
                next_status = now + STATUS_EVERY
                bus.publish(STATUS_TOPIC, "system", {
                    "host": socket.gethostname(), "pid": os.getpid(), "time": wall,
                    "open": engine.episodes.keys(), "receivers": dispatcher.status()})
            for d in bus.poll(TICK):
                try:
                    env = d.envelope
                except EnvelopeError as exc:
                    log.warning("alerts: undecodable message on %s: %s", d.topic, exc)
                    continue
                for alert in engine.on_message(d.topic, env.data, env.ts, time.monotonic(),
                                               time.time()):
                    dispatcher.send(alert, time.monotonic())
    finally:
        _stop(dispatcher.forwarders)
        bus.flush(1.0)
        bus.close()
    return 0


def _stop(forwarders: list[Forwarder]) -> None:
    deadline = time.monotonic() + STOP_GRACE
    for fwd in forwarders:
        left = fwd.stop(max(0.0, deadline - time.monotonic()))
        if left:
            log.warning("alerts: %s: %d alert(s) not delivered at exit (%s)", fwd.name, left,
                        fwd.last_error or "receiver slow")


def send_test(site: SiteConfig, cfg: AlertsConfig, timeout: float) -> dict[str, str]:
    """One test alert through every receiver (``sctl alerts --test``); per receiver "" when
    it was delivered within `timeout`, else why not (the first attempt's failure: the test
    does not wait for retries)."""
    wall = time.time()
    alert = Alert(id=f"test@{wall:.3f}", key=TEST, kind=TEST, state=INFO, severity="info",
                  source="alerts", title=f"test alert from sctl alerts on "
                  f"{socket.gethostname()}", opened=wall, time=wall)
    forwarders = start_forwarders(site, cfg)
    for fwd in forwarders:
        fwd.offer(alert)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(
            f.counters["sent"] or f.counters["failed"] or f.counters["retries"]
            for f in forwarders):
        time.sleep(0.05)
    out = {f.name: "" if f.counters["sent"] else (f.last_error or f"nothing within {timeout:g} s")
           for f in forwarders}
    for fwd in forwarders:
        fwd.stop(0.0)
    return out

