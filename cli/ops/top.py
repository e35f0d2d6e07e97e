"""``sctl top``: what an operator watches during an incident, computed from the live feed.

`TopView` is fed every delivery (no I/O here; the CLI owns the Bus and the screen) and keeps,
over a sliding `window` of seconds:

- per program: supervisord's state (from every host's supervisord, handed in by the CLI with
  `TopView.supervisor`), which wins over the heartbeats: a program supervisord has STOPPED,
  EXITED, FATAL or in BACKOFF is shown so, whatever its last heartbeat said;
- per actor: its newest heartbeat (state, link and its outage: first failure, attempts, last
  reason; counters: events published, messages dropped by its outbox or its subscriber, log
  records suppressed), its event rate; an actor of the site never heard from is shown too;
- per topic: message rate (the busiest first);
- latency: publish → arrival here (envelope ``ts`` against this host's clock: across hosts,
  keep clocks in sync) of events, p50 / p99 / max;
- the router: its rates and every loss counter of ``sys.router.stats`` (ingress gaps declared
  lost, bad input, journal evictions, subscribers' missed replays);
- the watchdog's restarts and alarms (``sys.watchdog.*``) and the latest ``sys.alarm``\\ s.

Memory is bounded: per-topic counts are per-second buckets inside the window, latency samples
are a bounded reservoir, alarms keep the last `MAX_ALARMS`.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Iterable
from typing import Any, Final

from broker.wire import topics
from broker.wire.errors import EnvelopeError
from cli.ops.heartbeats import DEFAULT_INTERVAL, STALE_FACTOR, clock_text, link_text
from cli.ops.supervisor_rpc import NOT_RUNNING
from cli.tables import Column, wrap
from cli.tables import render as render_table

MAX_ALARMS: Final = 8
MAX_SAMPLES: Final = 20_000
MAX_TOPICS: Final = 5_000  # distinct topics tracked; beyond that, counted under "(other)"


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


ACTOR_COLUMNS: Final = (
    Column("PROGRAM", keep=True), Column("STATE", keep=True),
    Column("LINK", 3, min_width=24), Column("HB", 2, right=True),
    Column("EVT/S", 3, right=True), Column("DROPS", 4, right=True),
    Column("RESTARTS", 4, right=True), Column("ALARM / REASON", 1, min_width=10),
)


class TopView:
    def __init__(self, window: float = 10.0, expected: Iterable[str] = ()) -> None:
        self.window = window
        self.expected = list(expected)  # the site's actors: shown even if never heard from
        self.programs: dict[str, dict[str, Any]] = {}  # supervisord's process infos by name
        self.supervisor_errors: list[str] = []
        self.started = time.monotonic()
        self.buckets: dict[str, deque[list[float]]] = defaultdict(deque)  # [second, count]
        self.latency: deque[tuple[float, float]] = deque(maxlen=MAX_SAMPLES)  # (at, seconds)
        self.heartbeats: dict[str, tuple[float, dict[str, Any]]] = {}
        self.router: dict[str, Any] | None = None
        self.router_at = 0.0
        self.watchdogs: dict[str, dict[str, Any]] = {}
        self.alarms: deque[dict[str, Any]] = deque(maxlen=MAX_ALARMS)
        self.undecodable = 0

    def feed(self, topic: str, body_envelope: Any, now: float, wall: float) -> None:
        """One delivery: `body_envelope` is a callable returning the Envelope (decoded only
        for the topics that need it)."""
        self._count(topic, now)
        kind = topic.split(".", 1)[0]
        if kind not in (topics.EVENT, topics.HEARTBEAT, topics.SYSTEM):
            return
        try:
            env = body_envelope()
        except EnvelopeError:
            self.undecodable += 1
            return
        if kind == topics.EVENT:
            self.latency.append((now, max(0.0, wall - env.ts)))
        elif kind == topics.HEARTBEAT:
            self.heartbeats[topic.split(".", 1)[1]] = (now, env.data)
        elif topic == topics.ROUTER_STATS:
            self.router, self.router_at = env.data, now
        elif topic.startswith(f"{topics.SYSTEM}.watchdog."):
            self.watchdogs[topic.rsplit(".", 1)[1]] = env.data
        elif topic == topics.ALARM:
            self.alarms.append({"ts": env.ts, "src": env.src, **env.data})

    def supervisor(self, infos: Iterable[dict[str, Any]], errors: Iterable[str] = ()) -> None:
        """supervisord's current view (``getAllProcessInfo`` rows of every host), and the
        supervisords that did not answer."""
        self.programs = {i["name"]: i for i in infos}
        self.supervisor_errors = list(errors)

    def _count(self, topic: str, now: float) -> None:
        if topic not in self.buckets and len(self.buckets) >= MAX_TOPICS:
            topic = "(other)"
        buckets = self.buckets[topic]
        second = float(int(now))
        if buckets and buckets[-1][0] == second:
            buckets[-1][1] += 1
        else:
            buckets.append([second, 1])
        while buckets and buckets[0][0] < now - self.window:
            buckets.popleft()

    def rate(self, topic: str, now: float) -> float:
        span = min(self.window, max(1.0, now - self.started))
        return sum(c for s, c in self.buckets.get(topic, ()) if s >= now - self.window) / span

    def snapshot(self, now: float, wall: float, top_topics: int = 10) -> dict[str, Any]:
        rates = {t: self.rate(t, now) for t in self.buckets}
        busiest = sorted(((r, t) for t, r in rates.items() if r > 0), reverse=True)[:top_topics]
        lat = sorted(s for at, s in self.latency if at >= now - self.window)
        restarts: dict[str, Any] = {}
        for view in self.watchdogs.values():
            restarts.update(view.get("programs") or {})
        names = sorted({*self.programs, *self.heartbeats, *self.expected})
        actors = {name: self._row(name, rates, restarts.get(name) or {}, now, wall)
                  for name in names}
        router = None
        if self.router is not None:
            c = self.router.get("counts") or {}
            j = self.router.get("journal") or {}
            router = {"age": round(now - self.router_at, 1),
                      "rates": self.router.get("rates") or {},
                      "subscribers": self.router.get("subscribers"),
                      "gaps_lost": c.get("gaps_lost", 0), "gaps_open": c.get("gaps_open", 0),
                      "bad": (c.get("bad") or {}).get("total", 0),
                      "evicted": j.get("evicted", 0), "egress_missed": c.get("egress_missed", 0)}
        return {
            "actors": actors, "router": router,
            "topics": [{"topic": t, "per_s": round(r, 1)} for r, t in busiest],
            "latency_ms": {"n": len(lat), **{k: None if v is None else round(v * 1000, 2)
                                             for k, v in (("p50", percentile(lat, 0.5)),
                                                          ("p99", percentile(lat, 0.99)),
                                                          ("max", lat[-1] if lat else None))}},
            "alarms": list(self.alarms), "undecodable": self.undecodable,
            "supervisor_errors": self.supervisor_errors,
        }

    def _row(self, name: str, rates: dict[str, float], wd: dict[str, Any], now: float,
             wall: float) -> dict[str, Any]:
        info = self.programs.get(name)
        sup_state = None if info is None else str(info["statename"])
        at, hb = self.heartbeats.get(name, (None, {}))
        hb_age = None if at is None else round(now - at, 1)
        interval = hb.get("interval", DEFAULT_INTERVAL)
        if not isinstance(interval, int | float) or interval <= 0:
            interval = DEFAULT_INTERVAL
        if sup_state in NOT_RUNNING:  # whatever the last heartbeat said
            state: str | None = sup_state
        elif hb_age is None:
            actor = name in self.expected or name not in self.programs
            state = "no heartbeat" if actor else sup_state or "?"
        elif hb_age > STALE_FACTOR * interval:
            state = "silent"
        else:
            state = hb.get("state")
        running = sup_state not in NOT_RUNNING and hb_age is not None
        link = (hb.get("link") or {}) if running else {}
        counters = hb.get("counters") or {}
        return {
            "state": state, "supervisor_state": sup_state, "hb_age": hb_age,
            "link": link.get("state"), "link_for": None if not link.get("since")
            else round(wall - link["since"]), "link_reason": link.get("reason"),
            "down_since": link.get("down_since"), "attempts": link.get("attempts"),
            "link_text": link_text(link, wall) if link else "-",
            "events_per_s": round(sum(r for t, r in rates.items()
                                      if t.startswith(f"{topics.EVENT}.{name}.")), 1),
            "dropped": sum(int(counters.get(k, 0)) for k in ("outbox_dropped", "held_dropped")),
            "log_suppressed": int(counters.get("log_suppressed", 0)),
            "restarts": wd.get("total_restarts", 0), "alarm": wd.get("alarm"),
            "error": hb.get("error"),
        }


def render(snap: dict[str, Any], width: int | None = 100) -> str:
    """The snapshot as the text screen of ``sctl top``, fitted to `width` (None: no limit)."""
    out: list[str] = []
    r = snap["router"]
    if r is None:
        out.append("router: no stats heard (down, or not yet)")
    else:
        stale = f"  (stats {r['age']} s old!)" if r["age"] > 3 else ""
        out += wrap(f"router: in {r['rates'].get('in', 0)}/s out {r['rates'].get('out', 0)}/s, "
                    f"{r['subscribers']} subscribers | LOST gaps {r['gaps_lost']} "
                    f"(open {r['gaps_open']}), bad {r['bad']}, evicted {r['evicted']}, "
                    f"missed replays {r['egress_missed']}{stale}", width)
    for error in snap.get("supervisor_errors") or []:
        out += wrap(f"supervisord: {error}", width)
    lat = snap["latency_ms"]
    out.append(f"event latency (ms, n={lat['n']}): p50 {lat['p50']}  p99 {lat['p99']}  "
               f"max {lat['max']}")
    out.append("")
    rows = []
    for name, a in snap["actors"].items():
        link = a.get("link_text") or a["link"] or "-"
        if link == "-" and a["link"] is not None:
            link = f"{a['link']} {a['link_for']}s" if a["link_for"] is not None else a["link"]
        note = a["alarm"] or a.get("error") or ""  # the link's reason is in its column
        rows.append([name, str(a["state"] or "-"), link,
                     "-" if a["hb_age"] is None else str(a["hb_age"]), str(a["events_per_s"]),
                     str(a["dropped"]), str(a["restarts"]), str(note)])
    out += render_table(ACTOR_COLUMNS, rows, width)
    out.append("")
    out += wrap("busiest topics (msg/s): " + ", ".join(
        f"{t['topic']} {t['per_s']}" for t in snap["topics"]), width)
    for alarm in snap["alarms"]:
        out += wrap(f"ALARM {clock_text(alarm['ts'], time.time())} "
                    f"{alarm.get('program') or alarm['src']}: "
                    f"{alarm.get('reason') or alarm.get('message') or alarm}", width)
    out.append("q quits")
    return "\n".join(out)
