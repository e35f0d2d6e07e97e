"""``sctl status``: one view of a site from every source that can answer, and its verdict.

- the site file: every program (router, services, actors), its type and host (`runs_on`);
- each host's supervisord (`cli.ops.supervisor_rpc`: the local unix socket, or a remote
  host's authenticated inet_http_server): state, pid, uptime, and for a program that failed,
  the last error line of its log;
- the watchdogs (their ``sys.watchdog.*`` views, else their state files): restarts, alarms;
- the router: its state, each actor's newest heartbeat (state, link and its outage, counters),
  newest event (age), and the instance that holds its name (``holder``: host, pid, since; a
  fenced duplicate's heartbeats never pass the router).

Any source may be down; the report says which and shows what the others know, so it still
helps when the router or a supervisord is the thing that failed.

The verdict (``problems``, ``ok``): the site is well when every program is RUNNING, every
actor sends heartbeats with its link up (or has no link), no alarm is raised, the router and
every supervisord answer and each host's watchdog runs. Each exception is one line in
``problems``; `sctl status` exits 0 only when there is none.
"""

from __future__ import annotations

import time
from typing import Any

from broker.client.bus import Bus, client_name
from broker.config import SiteConfig
from broker.wire import protocol, topics
from broker.wire.errors import BusError, EnvelopeError
from cli.ops.heartbeats import Heartbeat, age_text, heartbeats, link_ok, link_text
from cli.ops.supervisor_rpc import FAILED, Supervisor, SupervisorError, endpoints
from cli.ops.watchdog import exit_reason, read_state

SERVICE_KINDS = ("router", "service", "alerts")  # programs without heartbeats


class _Host:
    """One supervisord as seen by this report: its client and its programs (None: it did not
    answer)."""

    def __init__(self, client: Supervisor, infos: dict[str, dict[str, Any]] | None) -> None:
        self.client = client
        self.infos = infos


def site_status(site: SiteConfig, timeout: float = 2.0,
                host: str | None = None) -> dict[str, Any]:
    """The report of the whole site, or of the programs placed on `host`."""
    sup = site.supervision()
    report: dict[str, Any] = {"site": str(site.path), "router": None, "router_error": None,
                              "supervisor": str(sup.socket), "supervisor_error": None,
                              "supervisors": [], "watchdog": None, "alarms": [],
                              "programs": {}, "actors": {}, "problems": [], "ok": False}
    hosts = _supervisors(site, timeout, report, host)
    beats: dict[str, Heartbeat] = {}
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
    if site.alerts:  # `sctl alerts` (cli.ops.alerts), rendered when [alerts] exists
        rows.append(("alerts", "alerts", str(site.alerts.get("runs_on") or site.router_runs_on)))
    rows += [(n, a.type, a.runs_on) for n, a in sorted(site.actors.items())]
    rows = [r for r in rows if host is None or r[2] == host]
    for name, kind, host in rows:
        row: dict[str, Any] = {"type": kind, "host": host or "-"}
        _supervisor_row(row, name, hosts.get(host))
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
                       dropped=sum(int(counters.get(k, 0)) for k in ("outbox_dropped", "lost")),
                       error=hb.data.get("error"))
            running = row.get("pid")
            if running and hb.data.get("pid") not in (None, running):
                # the newest heartbeat is a previous process's (killed a moment ago): the one
                # supervisord runs now has not spoken yet
                row.update(alive=False, state="starting", link=None)
            row.setdefault("pid", hb.data.get("pid"))
        holder = ((report["router"] or {}).get("leases") or {}).get(name)
        if holder is not None:  # the instance the router lets run: its heartbeats alone pass
            row["holder"] = {k: holder.get(k) for k in ("host", "pid", "since", "epoch",
                                                        "generation")}
        elif kind not in SERVICE_KINDS:
            row.update(alive=False, heartbeat_age=None)
        if name in last_events:
            row["last_event_age"] = round(max(0.0, now - last_events[name]), 1)
        report["programs"][name] = row
    report["actors"] = {n: report["programs"][n] for n in sorted(site.actors)
                        if n in report["programs"]}
    placed = {name: host for name, _, host in rows}
    report["problems"] = problems(report, {n: hosts.get(h) for n, h in placed.items()},
                                  sup.watchdog, now)
    report["ok"] = not report["problems"]
    return report


def _supervisors(site: SiteConfig, timeout: float, report: dict[str, Any],
                 host: str | None) -> dict[str, _Host]:
    """Every supervisord of the site (or `host`'s), asked once; keyed by each host it serves."""
    by_host: dict[str, _Host] = {}
    errors = []
    for ep in endpoints(site, host):
        client = Supervisor(ep, timeout)
        entry: dict[str, Any] = {"hosts": list(ep.hosts), "url": ep.url, "error": None,
                                 "watchdog": None}
        infos: dict[str, dict[str, Any]] | None
        try:
            infos = {i["name"]: i for i in client.processes()}
        except SupervisorError as exc:
            infos = None
            entry["error"] = str(exc)
            errors.append(str(exc))
        else:
            wd = infos.get("watchdog")
            entry["watchdog"] = wd["statename"] if wd is not None else None
        report["supervisors"].append(entry)
        for h in ep.hosts:
            by_host[h] = _Host(client, infos)
    report["supervisor_error"] = "; ".join(errors) or None
    return by_host


def _supervisor_row(row: dict[str, Any], name: str, host: _Host | None) -> None:
    info = None if host is None or host.infos is None else host.infos.get(name)
    if info is None:
        return
    state = info["statename"]
    row.update(supervisor_state=state, pid=info["pid"] or None,
               uptime=round(info["now"] - info["start"]) if state == "RUNNING" else None,
               exit=None)
    if state in FAILED and host is not None:
        row["exit"] = exit_reason(info, host.client.failure_reason(info))


def problems(report: dict[str, Any], hosts: dict[str, _Host | None], watchdog: bool,
             now: float) -> list[str]:
    """Every reason the site is not well, one line each (see the module docstring); `hosts`
    gives each program's supervisord."""
    out: list[str] = []
    if report["router"] is None:
        out.append(f"router: not reachable: {report['router_error']}")
    elif (journal := report["router"].get("journal") or {}).get("blocked"):
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(journal.get("since") or 0))
        out.append(f"router journal blocked: {journal.get('reason')} "
                   f"({journal.get('free_bytes')} bytes free) since {since}")
    for entry in report["supervisors"]:
        if entry["error"]:
            out.append(entry["error"])
        elif watchdog and entry["watchdog"] != "RUNNING":
            where = ", ".join(h for h in entry["hosts"] if h) or "this host"
            out.append(f"watchdog on {where}: {entry['watchdog'] or 'not in supervisord'}")
    for name, row in report["programs"].items():
        out += _row_problems(name, row, hosts.get(name), report["router"] is not None, now)
    return out


def _row_problems(name: str, row: dict[str, Any], host: _Host | None, bus_known: bool,
                  now: float) -> list[str]:
    out = []
    state = row.get("supervisor_state")
    if state is None:
        if host is not None and host.infos is not None:
            out.append(f"{name}: not in supervisord's programs (sctl reload?)")
    elif state != "RUNNING":
        reason = row.get("exit") or row.get("error")
        out.append(f"{name}: {state}" + (f": {reason}" if reason else ""))
    elif row["type"] not in SERVICE_KINDS and bus_known:
        if not row.get("alive"):
            age = row.get("heartbeat_age")
            out.append(f"{name}: RUNNING but no heartbeat" +
                       (f" for {age_text(age)}" if age is not None else ""))
        elif row.get("state") != "running":
            out.append(f"{name}: {row.get('state')}")
        elif not link_ok(row.get("link")):
            out.append(f"{name}: link {link_text(row.get('link'), now)}")
    if row.get("alarm"):
        out.append(f"{name}: ALARM {row['alarm']}")
    return out


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
