"""``sctl status``: one view of a site from every source that can answer.

- the site file: every program (router, services, actors), its type and host (`runs_on`);
- supervisord (XML-RPC on the unix socket of ``[supervisor]``): state, pid, uptime, exit reason;
- the watchdog (its ``sys.watchdog.*`` view, else its state file): restarts and alarms;
- the router: its state, each actor's newest heartbeat (link state and since when, counters)
  and newest event (age).

Any source may be down; the report says which and shows what the others know, so it still
helps when the router or supervisord is the thing that failed.
"""

from __future__ import annotations

import time
import xmlrpc.client
from typing import Any

from broker.client.bus import Bus, client_name
from broker.config import SiteConfig
from broker.wire import protocol, topics
from broker.wire.errors import BusError, EnvelopeError
from cli.ops.heartbeats import heartbeats
from cli.ops.watchdog import read_state, supervisor_proxy


def site_status(site: SiteConfig, timeout: float = 2.0) -> dict[str, Any]:
    sup = site.supervision()
    report: dict[str, Any] = {"site": str(site.path), "router": None, "router_error": None,
                              "supervisor": str(sup.socket), "supervisor_error": None,
                              "watchdog": None, "alarms": [], "programs": {}, "actors": {}}
    infos = _supervisor(sup.socket, report)
    beats: dict[str, Any] = {}
    last_events: dict[str, float] = {}
    watchdog_views: list[dict[str, Any]] = []
    bus: Bus | None = None
    try:
        bus = Bus(site.router, client_name())  # BusError: no key for this identity (CURVE)
        report["router"] = bus.state(timeout)
        beats = heartbeats(bus, timeout)
        last_events = _last_events(bus, list(site.actors), timeout)
        watchdog_views = _watchdog_views(bus, timeout)
    except BusError as exc:
        report["router_error"] = str(exc)
    finally:
        if bus is not None:
            bus.close()
    if not watchdog_views:  # router down: what the watchdogs wrote to disk
        watchdog_views = [v for h in site.hosts() if (v := read_state(sup, h)) is not None]
    programs: dict[str, Any] = {}
    for view in watchdog_views:
        programs.update(view.get("programs") or {})
    report["watchdog"] = [{k: v.get(k) for k in ("host", "pid", "time", "supervisor_error")}
                          for v in watchdog_views]
    now = time.time()
    rows = [("router", "router", site.router_runs_on)]
    rows += [(n, "service", s.runs_on) for n, s in sorted(site.services.items())]
    rows += [(n, a.type, a.runs_on) for n, a in sorted(site.actors.items())]
    for name, kind, host in rows:
        row: dict[str, Any] = {"type": kind, "host": host or "-"}
        info = infos.get(name)
        if info is not None:
            row.update(supervisor_state=info["statename"], pid=info["pid"] or None,
                       uptime=round(info["now"] - info["start"]) if info["statename"] ==
                       "RUNNING" else None,
                       exit=info.get("spawnerr") or info.get("description") or None)
        wd = programs.get(name) or {}
        row["restarts"] = wd.get("total_restarts", 0)
        row["alarm"] = wd.get("alarm")
        if wd.get("alarm"):
            report["alarms"].append({"program": name, "reason": wd["alarm"]})
        hb = beats.get(name)
        if hb is not None:
            link = hb.data.get("link") or {}
            counters = hb.data.get("counters") or {}
            row.update(alive=hb.alive, heartbeat_age=round(hb.age, 1),
                       state=hb.data.get("state"), link=link or None, counters=counters,
                       # messages this actor lost: its outbox overflowed, or the journal no
                       # longer had what its subscriptions missed
                       dropped=sum(int(counters.get(k, 0)) for k in ("outbox_dropped", "lost")))
            row.setdefault("pid", hb.data.get("pid"))
        elif kind not in ("router", "service"):
            row.update(alive=False, heartbeat_age=None)
        if name in last_events:
            row["last_event_age"] = round(max(0.0, now - last_events[name]), 1)
        report["programs"][name] = row
    # "actors": the actor rows alone (the shape `sctl status --json` had before services)
    report["actors"] = {n: report["programs"][n] for n in sorted(site.actors)}
    return report


def _supervisor(socket_path: Any, report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    if not socket_path.exists():
        report["supervisor_error"] = f"no supervisord control socket at {socket_path} " \
                                     "(supervisord not running?)"
        return {}
    try:
        infos = supervisor_proxy(socket_path, timeout=2.0).supervisor.getAllProcessInfo()
    except (OSError, xmlrpc.client.Error) as exc:
        report["supervisor_error"] = f"supervisord at {socket_path} does not answer: {exc}"
        return {}
    return {i["name"]: i for i in infos}


def _last_events(bus: Bus, actors: list[str], timeout: float) -> dict[str, float]:
    if not actors:
        return {}
    _, items = bus.query({"op": protocol.OP_LAST,
                          "prefixes": [f"{topics.EVENT}.{a}." for a in actors]}, timeout)
    out: dict[str, float] = {}
    for d in items:
        parts = d.topic.split(".")
        if len(parts) < 3 or parts[2] == "run":  # command records are not device events
            continue
        try:
            ts = d.envelope.ts
        except EnvelopeError:
            continue
        out[parts[1]] = max(out.get(parts[1], 0.0), ts)
    return out


def _watchdog_views(bus: Bus, timeout: float) -> list[dict[str, Any]]:
    _, items = bus.query({"op": protocol.OP_LAST, "prefixes": [f"{topics.SYSTEM}.watchdog."]},
                         timeout)
    views = []
    for d in items:
        try:
            data = d.envelope.data
        except EnvelopeError:
            continue
        if time.time() - float(data.get("time", 0)) < 10.0:  # older: that watchdog is gone
            views.append(data)
    return views
