"""How the site is doing: `sctl status` (one report and its verdict, from supervisord, the
router and the heartbeats, built by `cli.ops.status`) and `sctl top` (a live view fed by the
bus and each host's supervisord, computed by `cli.ops.top`). This module fetches and prints;
tables fit the terminal (`cli.tables`).

`sctl status` exits 0 only when every program is RUNNING with its link up and no alarm is
raised, else 3 (`EXIT_NOT_WELL`), so that it serves as a monitoring check.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import click

from cli.common import (
    EXIT_NOT_WELL,
    check_host,
    connect_bus,
    dumps,
    json_option,
    setup_logging,
    site_of,
)
from cli.tables import Column, render, terminal_width, wrap

STATUS_COLUMNS = (
    Column("PROGRAM", keep=True), Column("TYPE", 1, min_width=8), Column("HOST", 2),
    Column("STATE", keep=True), Column("PID", 2, right=True), Column("UP", 3, right=True),
    Column("LINK", 3, min_width=24), Column("LAST EVT", 1, right=True),
    Column("EVENTS", 3, right=True), Column("DROPS", 5, right=True),
    Column("RESTARTS", 5, right=True), Column("NOTE", 0, min_width=10),
)


@click.command()
@json_option
@click.option("--timeout", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="seconds to wait for the router and each supervisord")
@click.option("--host", default=None, metavar="HOST", help="only the programs placed on this "
              "host (runs_on) and its supervisord")
@click.pass_context
def status(ctx: click.Context, as_json: bool, timeout: float, host: str | None) -> None:
    """Every program of the site: supervisord state, pid, uptime, link, last event, counts,
    restarts and alarms, and whether all is well. Works with the router or a supervisord
    down (says so). Exit 0: every program RUNNING, links up, no alarm; else 3."""
    from cli.ops.status import site_status

    setup_logging(ctx.obj["verbose"])
    site = site_of(ctx)
    check_host(site, host)
    report = site_status(site, timeout, host)
    if as_json:
        click.echo(dumps(report))
    else:
        _print_status(report, terminal_width())
    if not report["ok"]:
        sys.exit(EXIT_NOT_WELL)


def _print_status(report: dict[str, Any], width: int | None) -> None:

    out: list[str] = []
    r = report["router"]
    if r is None:
        out += wrap(f"router: DOWN — {report.get('router_error')}", width)
    else:
        c = r.get("counts") or {}
        out += wrap(f"router: up, epoch {r.get('router_epoch')}, gseq {r.get('first')}.."
                    f"{r.get('last')}, journal {'file' if r.get('persistent') else 'memory'}; "
                    f"lost: ingress gaps {c.get('gaps_lost', 0)}, evicted before a subscriber "
                    f"got them {c.get('egress_missed', 0)}, bad input "
                    f"{(c.get('bad') or {}).get('total', 0)}", width)
    for entry in report.get("supervisors") or []:
        if entry.get("error"):
            out += wrap(f"supervisord: {entry['error']}", width)
    if not report.get("watchdog"):
        out.append("watchdog: no recent view (not running?)")
    now = time.time()
    rows = [_status_cells(name, a, report["router"] is not None, now)
            for name, a in report["programs"].items()]
    out += render(STATUS_COLUMNS, rows, width)
    for alarm in report["alarms"]:
        out += wrap(f"ALARM {alarm['program']}: {alarm['reason']}", width)
    problems = report.get("problems") or []
    if problems:
        out.append(f"NOT OK: {len(problems)} problem{'s' if len(problems) != 1 else ''}")
        for p in problems:
            out += wrap(f"- {p}", width)
    else:
        out.append("OK: every program running, links up, no alarm")
    click.echo("\n".join(out))


def _status_cells(name: str, a: dict[str, Any], bus_known: bool, now: float) -> list[str]:
    from cli.ops.heartbeats import age_text, link_text

    actor = a["type"] not in ("router", "service")
    if a.get("supervisor_state") not in (None, "RUNNING"):
        link = "-"  # what its last heartbeat said is over
    elif a.get("link"):
        link = link_text(a["link"], now) if a.get("alive") else "NO HEARTBEAT"
    else:
        link = "NO HEARTBEAT" if actor and bus_known and a.get("alive") is False else "-"
    events = (a.get("counters") or {}).get("events", "-")
    note = a.get("alarm") or a.get("exit") or a.get("error") or ""
    return [name, a["type"], a["host"], a.get("supervisor_state") or "?",
            str(a.get("pid") or "-"), age_text(a.get("uptime")), link,
            age_text(a.get("last_event_age")), str(events), str(a.get("dropped", "-")),
            str(a.get("restarts", 0)), str(note)]


class _Keys:
    """Single key presses from a terminal on stdin (cbreak mode, restored by `close`)."""

    def __init__(self) -> None:
        import termios
        import tty

        self.fd = sys.stdin.fileno()
        self.saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)

    def quit(self) -> bool:
        """Whether q was pressed since the last call."""
        import select

        while select.select([self.fd], [], [], 0)[0]:
            key = os.read(self.fd, 1)
            if not key:
                return False
            if key in (b"q", b"Q"):
                return True
        return False

    def close(self) -> None:
        import termios

        termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)


@click.command()
@click.option("--interval", type=click.FloatRange(min=0.2), default=1.0, show_default=True,
              help="seconds between refreshes")
@click.option("--window", type=click.FloatRange(min=1.0), default=10.0, show_default=True,
              help="seconds over which rates and latencies are computed")
@click.option("--once", is_flag=True, help="print one screen after INTERVAL and exit")
@json_option
@click.pass_context
def top(ctx: click.Context, interval: float, window: float, once: bool, as_json: bool) -> None:
    """Live view of the site: programs (supervisord's state merged with the heartbeats),
    links and their outages, per-topic rates, event latency, drops, restarts, alarms.
    q (or Ctrl-C) quits."""
    from cli.ops.supervisor_rpc import Supervisor, SupervisorError, endpoints
    from cli.ops.top import TopView
    from cli.ops.top import render as render_top

    setup_logging(ctx.obj["verbose"])
    site = site_of(ctx)
    bus = connect_bus(site, 5.0)
    for prefix in ("evt.", "hb.", "sys.", "log."):
        bus.subscribe(prefix, gapless=False)  # a view: best effort, no journal replays
    view = TopView(window, expected=sorted(site.actors))
    supervisors = [Supervisor(ep, min(2.0, max(0.5, interval))) for ep in endpoints(site)]
    keys = _Keys() if sys.stdin.isatty() and not once else None
    clear = sys.stdout.isatty() and not once and not as_json
    try:
        while True:
            end = time.monotonic() + interval
            while (left := end - time.monotonic()) > 0:
                for d in bus.poll(min(left, 0.1)):
                    view.feed(d.topic, lambda d=d: d.envelope, time.monotonic(), time.time())
                if keys is not None and keys.quit():
                    return
            infos, errors = [], []
            for s in supervisors:
                try:
                    infos += s.processes()
                except SupervisorError as exc:
                    errors.append(str(exc))
            view.supervisor(infos, errors)
            snap = view.snapshot(time.monotonic(), time.time())
            if as_json:
                click.echo(dumps(snap))
            else:
                click.echo(("\x1b[H\x1b[2J" if clear else "") +
                           render_top(snap, terminal_width()))
            if once:
                return
    except KeyboardInterrupt:
        pass
    finally:
        if keys is not None:
            keys.close()
        bus.close()
