"""What the metrics program knows of a site: `SiteMonitor`, fed by the bus and by supervisord.

The metrics program (``sctl metrics``, `cli.ops.metrics`) owns the sockets; this module holds
none and is fed from two threads, each holding `SiteMonitor.lock` while it writes:

- the bus thread hands over every delivery (`feed`): the newest heartbeat of each actor
  (``hb.<actor>``: state, link, counters, pid), the newest ``sys.router.stats``, each host's
  watchdog view (``sys.watchdog.<host>``: restarts, alarms), the ``sys.alarm``\\ s, and every
  event, whose publish → arrival time goes into a per-actor latency histogram;
- the supervisord thread hands over every host's ``getAllProcessInfo`` rows (`supervisor`).

Readers (the Prometheus collector, the status page) take the same lock and read the latest
values: counters are the actors' and the router's own, as their latest report says, so nothing
is counted twice. Only what this program observes itself is counted here: event latencies, the
alarms it saw, the deliveries it received.

A restart between two supervisord polls (the watchdog restarts a dead actor within half a
second) is not lost: supervisord's ``stop`` time of a program moves on at every exit, so a poll
that finds a program started again with a later ``stop`` than the previous poll records the
exit it did not see, with its time, before the new state (`changes`).

Memory is bounded: names heard on the bus beyond the site's are capped (`MAX_NAMES`), the
alarms, changes and feed tail are short deques, latency samples for the page a bounded window.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from broker.client.bus import Delivery
from broker.config import SiteConfig
from broker.wire import topics
from broker.wire.errors import EnvelopeError
from cli.common import dumps
from cli.ops.heartbeats import DEFAULT_INTERVAL, STALE_FACTOR, link_text
from cli.ops.supervisor_rpc import FAILED, NOT_RUNNING

# Upper bounds (seconds) of the event latency histogram: loopback delivery is sub-millisecond,
# a busy router a few ms, an outbox resent after a router outage seconds.
LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                          1.0, 2.5, 5.0, 10.0)
MAX_NAMES: Final = 1000  # actors heard on the bus (beyond the site's) that get series
MAX_ALARMS: Final = 50
MAX_CHANGES: Final = 50
TAIL: Final = 50  # feed messages kept for the page
TAIL_TEXT: Final = 200  # characters of a message's data shown
LATENCY_WINDOW: Final = 10.0  # seconds of latency samples behind the page's p50/p99
MAX_SAMPLES: Final = 2000
WATCHDOG_FRESH: Final = 10.0  # seconds: an older watchdog view is of a watchdog gone
WATCHDOG_PREFIX: Final = f"{topics.SYSTEM}.watchdog."
SERVICE_KINDS: Final = ("router", "service", "watchdog", "metrics")


class Histogram:
    """Counts per `LATENCY_BUCKETS` bucket (not cumulative; the last one is +Inf), sum, count."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds


@dataclass
class Beat:
    """An actor's newest heartbeat: its envelope time (sender's clock) and data."""

    ts: float
    data: dict[str, Any]

    def interval(self) -> float:
        value = self.data.get("interval", DEFAULT_INTERVAL)
        return float(value) if isinstance(value, int | float) and value > 0 else \
            DEFAULT_INTERVAL

    def fresh(self, wall: float) -> bool:
        return wall - self.ts <= STALE_FACTOR * self.interval()

    def counter(self, name: str) -> int | None:
        value = (self.data.get("counters") or {}).get(name)
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass
class Program:
    """One program as supervisord reports it, and since when its state holds."""

    info: dict[str, Any]
    supervisor: str  # the label of the supervisord that runs it
    since: float  # wall time since which its state holds (its start when first seen)
    changed: float | None = None  # wall time of the last change this program saw


@dataclass
class Router:
    """The newest ``sys.router.stats`` and the age of the oldest entry the journal holds."""

    ts: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)
    oldest: tuple[int, float] | None = None  # (gseq, ts) of the journal's first entry


class SiteMonitor:
    def __init__(self, site: SiteConfig) -> None:
        self.site = site
        self.lock = threading.Lock()
        self.beats: dict[str, Beat] = {}
        self.latency: dict[str, Histogram] = {}
        self.samples: deque[tuple[float, float]] = deque(maxlen=MAX_SAMPLES)  # (mono, s)
        self.last_event: dict[str, tuple[float, str]] = {}  # actor -> (ts, topic)
        self.router = Router()
        self.watchdogs: dict[str, tuple[float, dict[str, Any]]] = {}  # host -> (ts, view)
        self.alarms: deque[dict[str, Any]] = deque(maxlen=MAX_ALARMS)
        self.alarm_counts: Counter[tuple[str, str]] = Counter()
        self.tail: deque[tuple[int, float, str, str, Any]] = deque(maxlen=TAIL)
        self.programs: dict[str, Program] = {}
        self.supervisors: dict[str, str | None] = {}  # label -> error (None: answered)
        self.changes: deque[dict[str, Any]] = deque(maxlen=MAX_CHANGES)
        self.deliveries = 0
        self.undecodable = 0
        self._read_back: set[int] = set()  # gseqs read back at start, until live ones pass them

    # --- the bus --------------------------------------------------------------------------

    def feed(self, deliveries: Iterable[Delivery], wall: float, mono: float,
             live: bool = True) -> None:
        """Deliveries from the bus (caller holds `lock`). `live` False: read back from the
        journal at start, so neither a latency nor an alarm count."""
        for d in deliveries:
            if not live:
                self._read_back.add(d.gseq)
            else:
                self.deliveries += 1
                if self._read_back:  # what was read back at start may come live too: once
                    if d.gseq in self._read_back:
                        continue
                    if d.gseq > max(self._read_back):
                        self._read_back.clear()
            topic = d.topic
            kind, _, rest = topic.partition(".")
            try:
                env = d.envelope
            except EnvelopeError:
                self.undecodable += 1
                continue
            if kind == topics.EVENT:
                self._event(rest, topic, env.ts, wall, mono, live)
            elif kind == topics.HEARTBEAT:  # periodic reports: their content is shown, not
                self._beat(rest, env.ts, env.data)  # their arrival in the feed tail
                continue
            elif topic == topics.ROUTER_STATS:
                if env.ts >= self.router.ts:
                    self.router.ts, self.router.data = env.ts, env.data
                continue
            elif topic.startswith(WATCHDOG_PREFIX):
                self.watchdogs[topic[len(WATCHDOG_PREFIX):]] = (env.ts, env.data)
                continue
            elif topic == topics.ALARM:
                self.alarms.append({"ts": env.ts, "src": env.src, **env.data})
                if live:
                    source = str(env.data.get("source") or env.src)
                    self.alarm_counts[(source, str(env.data.get("alarm") or source))] += 1
            self.tail.append((d.gseq, env.ts, topic, env.src, env.data))

    def _beat(self, actor: str, ts: float, data: dict[str, Any]) -> None:
        if self._known(actor, self.beats):
            old = self.beats.get(actor)
            if old is None or ts >= old.ts:
                self.beats[actor] = Beat(ts, data)

    def _event(self, rest: str, topic: str, ts: float, wall: float, mono: float,
               live: bool) -> None:
        actor, _, name = rest.partition(".")
        if name != "run" and self._known(actor, self.last_event):  # command records: no
            seen = self.last_event.get(actor)
            if seen is None or ts >= seen[0]:
                self.last_event[actor] = (ts, topic)
        if live:
            seconds = max(0.0, wall - ts)
            self.samples.append((mono, seconds))
            hist = self.latency.get(actor)
            if hist is None:
                if not self._known(actor, self.latency):
                    return
                hist = self.latency[actor] = Histogram()
            hist.observe(seconds)

    def _known(self, name: str, table: dict[str, Any]) -> bool:
        """Whether `name` may have an entry in `table`: the site's actors always, others while
        the table has room (a stray publisher must not grow memory without bound)."""
        return name in table or name in self.site.actors or len(table) < MAX_NAMES

    def journal_oldest(self, gseq: int, ts: float) -> None:
        self.router.oldest = (gseq, ts)

    # --- supervisord ----------------------------------------------------------------------

    def supervisor(self, label: str, infos: list[dict[str, Any]] | None, error: str | None,
                   wall: float) -> bool:
        """One supervisord's programs (None: it did not answer, `error` says why); True when
        a program changed state (caller holds `lock`)."""
        self.supervisors[label] = error
        if infos is None:
            return False
        changed = False
        for info in infos:
            name = str(info["name"])
            state = str(info["statename"])
            prog = self.programs.get(name)
            if prog is None:
                self.programs[name] = Program(info, label, _since(info, wall))
                changed = True
                continue
            before, old = str(prog.info["statename"]), prog.info
            # it ended and was started again between two polls: a later stop time, or (twice
            # in one second) another process
            missed = before not in NOT_RUNNING and state not in NOT_RUNNING and (
                int(info.get("stop") or 0) > int(old.get("stop") or 0)
                or 0 != old.get("pid") != info.get("pid") != 0)
            if missed:
                self._change(name, before, "EXITED", float(info.get("stop") or wall),
                             self._why(name, info))
                before = "EXITED"
            if state != before or missed:
                if state != before:
                    self._change(name, before, state, _since(info, wall),
                                 self._why(name, info) if state in NOT_RUNNING else "")
                prog.since = prog.changed = _since(info, wall)
                changed = True
            prog.info, prog.supervisor = info, label
        return changed

    def _change(self, name: str, before: str, after: str, at: float, why: str) -> None:
        self.changes.append({"ts": at, "program": name, "from": before.lower(),
                             "to": after.lower(), "why": why})

    def _why(self, name: str, info: dict[str, Any]) -> str:
        """Why it ended: supervisord's exit status when `info` is of the process that ended,
        else (it was started again) what the watchdog says, else nothing."""
        return exit_reason(info) or self._watchdog_reason(name)

    def _watchdog_reason(self, name: str) -> str:
        for _, view in self.watchdogs.values():
            reason = ((view.get("programs") or {}).get(name) or {}).get("last_reason")
            if reason:
                return str(reason)
        return ""

    # --- readers (hold `lock`) ------------------------------------------------------------

    def actor_names(self) -> list[str]:
        return sorted({*self.site.actors, *self.beats})

    def actor_up(self, name: str, wall: float) -> bool:
        """Running: a fresh heartbeat saying so and, where supervisord answers, a RUNNING
        process with that heartbeat's pid (a killed actor's last heartbeat is fresh for a
        few seconds more; its pid is not supervisord's any longer)."""
        beat = self.beats.get(name)
        if beat is None or not beat.fresh(wall) or beat.data.get("state") != "running":
            return False
        prog = self.programs.get(name)
        if prog is None or self.supervisors.get(prog.supervisor) is not None:
            return True
        return bool(prog.info["statename"] == "RUNNING"
                    and prog.info["pid"] == beat.data.get("pid"))

    def watchdog_programs(self, wall: float) -> dict[str, tuple[str, dict[str, Any]]]:
        """program -> (watchdog host, its entry) from every fresh watchdog view."""
        out: dict[str, tuple[str, dict[str, Any]]] = {}
        for host, (ts, view) in self.watchdogs.items():
            if wall - ts > WATCHDOG_FRESH:
                continue
            for name, entry in (view.get("programs") or {}).items():
                if isinstance(entry, dict):
                    out[name] = (host, entry)
        return out

    def router_up(self, wall: float) -> bool:
        return bool(self.router.data) and \
            wall - self.router.ts <= STALE_FACTOR * self.site.router.stats_interval

    def journal_span(self) -> float | None:
        """Seconds between the journal's oldest entry and the newest stats (None: unknown)."""
        data = self.router.data
        if not data or self.router.oldest is None:
            return None
        if int(data.get("first", 0)) > int(data.get("last", 0)):
            return 0.0  # empty journal
        gseq, ts = self.router.oldest
        return max(0.0, self.router.ts - ts) if gseq >= int(data.get("first", 0)) else None

    def latency_summary(self, mono: float) -> dict[str, Any]:
        while self.samples and self.samples[0][0] < mono - LATENCY_WINDOW:
            self.samples.popleft()
        values = sorted(s for _, s in self.samples)

        def at(q: float) -> float | None:
            if not values:
                return None
            return round(values[min(len(values) - 1, round(q * (len(values) - 1)))] * 1000, 2)

        return {"n": len(values), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": at(1.0),
                "window_s": LATENCY_WINDOW}

    # --- the status page ------------------------------------------------------------------

    def status(self, wall: float, mono: float) -> dict[str, Any]:
        """Everything the page shows, JSON-ready (caller holds `lock`)."""
        watched = self.watchdog_programs(wall)
        names = ["router", *sorted(self.site.services), *self.actor_names()]
        names += sorted(n for n in self.programs if n not in names)
        rows = [self._row(n, watched.get(n), wall) for n in names]
        return {
            "site": str(self.site.path), "time": wall, "router": self._router_summary(wall),
            "supervisors": [{"label": k, "error": v} for k, v in sorted(self.supervisors.items())],
            "watchdogs": {h: round(wall - ts, 1) for h, (ts, _) in self.watchdogs.items()},
            "programs": rows, "latency": self.latency_summary(mono),
            "alarms": [_plain(a) for a in reversed(self.alarms)],
            "changes": [{**c, "why": c["why"] or self._watchdog_reason(c["program"])}
                        if c["to"] == "exited" else c for c in reversed(self.changes)],
            # newest first; what was read back at start arrives among live messages
            "feed": [{"gseq": g, "ts": ts, "topic": t, "src": s, "text": _text(data)}
                     for g, ts, t, s, data in sorted(self.tail, key=lambda m: m[1],
                                                     reverse=True)],
        }

    def _router_summary(self, wall: float) -> dict[str, Any] | None:
        data = self.router.data
        if not data:
            return None
        counts = data.get("counts") or {}
        journal = data.get("journal") or {}
        return {"up": self.router_up(wall), "age": round(wall - self.router.ts, 1),
                "rates": data.get("rates") or {}, "subscribers": data.get("subscribers"),
                "first": data.get("first"), "last": data.get("last"),
                "journal_messages": journal.get("messages"), "journal_bytes": journal.get("bytes"),
                "journal_max_messages": journal.get("max_messages"),
                "journal_span_s": _round(self.journal_span()),
                "gaps_lost": counts.get("gaps_lost", 0), "gaps_open": counts.get("gaps_open", 0),
                "bad": (counts.get("bad") or {}).get("total", 0),
                "evicted": journal.get("evicted", 0),
                "egress_missed": counts.get("egress_missed", 0)}

    def _row(self, name: str, watched: tuple[str, dict[str, Any]] | None,
             wall: float) -> dict[str, Any]:
        prog = self.programs.get(name)
        info = prog.info if prog is not None else None
        beat = self.beats.get(name)
        actor = name in self.site.actors or (beat is not None and name not in self.programs)
        kind = self.site.actors[name].type if name in self.site.actors else \
            "service" if name in self.site.services else \
            name if name in SERVICE_KINDS else "actor" if actor else "program"
        sup_state = None if info is None else str(info["statename"])
        own_beat = beat is not None and (info is None or sup_state != "RUNNING"
                                         or info["pid"] == beat.data.get("pid"))
        state = self._state(sup_state, beat if own_beat else None, actor, wall)
        if name == "router" and sup_state is None:  # no supervisord answer: its stats tell
            state = "running" if self.router_up(wall) else "no stats"
        wd = watched[1] if watched is not None else {}
        counters = (beat.data.get("counters") or {}) if own_beat and beat else {}
        running = sup_state in (None, "RUNNING") and own_beat and beat is not None \
            and beat.fresh(wall)
        link = (beat.data.get("link") or {}) if running and beat else {}  # else: no link now
        last = self.last_event.get(name)
        return {
            "name": name, "type": kind, "state": state, "supervisor_state": sup_state,
            "host": self._host(name, beat),
            "pid": (info or {}).get("pid") or (beat.data.get("pid") if running and beat
                                                else None),
            "uptime": (round(info["now"] - info["start"]) if info and sup_state == "RUNNING"
                       else None),
            "since": prog.since if prog is not None else None,
            "changed": prog.changed if prog is not None else None,
            "heartbeat_age": round(wall - beat.ts, 1) if beat is not None else None,
            "link": link.get("state"), "link_text": link_text(link, wall) if link else "",
            "last_event_age": round(max(0.0, wall - last[0]), 1) if last else None,
            "last_event": last[1] if last else None,
            "events": counters.get("events"), "outbox": counters.get("outbox"),
            "drops": (sum(int(counters.get(k, 0)) for k in ("outbox_dropped", "lost"))
                      if counters else None),
            "restarts": wd.get("total_restarts"), "alarm": wd.get("alarm"),
            "note": wd.get("alarm") or (beat.data.get("error") if own_beat and beat else None)
                    or (link.get("last_error") if link.get("state") == "down" else None)
                    or (exit_reason(info) or None if info else None),
        }

    def _host(self, name: str, beat: Beat | None) -> str:
        """Where it runs: the host its heartbeat names, else its placement in the site."""
        if beat is not None and beat.data.get("host"):
            return str(beat.data["host"])
        table = self.site.actors.get(name) or self.site.services.get(name)
        return table.runs_on if table is not None else \
            self.site.router_runs_on if name == "router" else ""

    @staticmethod
    def _state(sup_state: str | None, beat: Beat | None, actor: bool, wall: float) -> str:
        """What the page calls the program's state: supervisord's when it is not running
        (whatever the last heartbeat said), else the actor's own from a fresh heartbeat."""
        if sup_state in NOT_RUNNING or sup_state in ("STARTING", "STOPPING"):
            return str(sup_state).lower()
        if not actor:
            return "running" if sup_state == "RUNNING" else "unknown"
        if beat is None:
            return "no heartbeat"
        if not beat.fresh(wall):
            return "silent"
        return str(beat.data.get("state") or "unknown")


def _since(info: dict[str, Any], wall: float) -> float:
    """Since when supervisord's state of a program holds, as near as its row tells: a stopped
    program's stop time, a starting one's start, else now (RUNNING comes `startsecs` after
    the start)."""
    state = info["statename"]
    at = info.get("stop") if state in NOT_RUNNING else \
        info.get("start") if state == "STARTING" else None
    return float(at) if at else wall


def exit_reason(info: dict[str, Any]) -> str:
    """Why supervisord's process ended, when `info` is of that process ("" when it is not:
    RUNNING, STARTING, or an operator's STOPPED)."""
    state = info["statename"]
    if state == "EXITED":
        code = info.get("exitstatus")
        return "killed by a signal" if code == -1 else f"exit status {code}"
    if state in FAILED:  # FATAL, BACKOFF: it could not be started
        return f"spawn error: {info.get('spawnerr') or 'exited too quickly'}"
    return ""


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _plain(alarm: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if isinstance(v, str | int | float | bool) or v is None else _text(v))
            for k, v in alarm.items()}


def _text(data: Any) -> str:
    """A message's data as one short line of JSON (binary as hex)."""
    text = dumps(data)
    return text if len(text) <= TAIL_TEXT else text[:TAIL_TEXT - 1] + "…"


def now() -> tuple[float, float]:
    """(wall, monotonic) time, read together."""
    return time.time(), time.monotonic()
