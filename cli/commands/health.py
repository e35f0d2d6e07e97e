"""How the site is doing: `sctl status` (one report, from supervisord, the router and the
heartbeats, built by `cli.ops.status`) and `sctl top` (a live view fed by the bus, computed by
`cli.ops.top`). This module only fetches and prints."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from cli.common import connect_bus, dumps, setup_logging, site_of


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--timeout", default=2.0, show_default=True)
@click.pass_context
def status(ctx: click.Context, as_json: bool, timeout: float) -> None:
    """Every program of the site: supervisord state, pid, uptime, link, last event, counts,
    restarts and alarms. Works with the router or supervisord down (says so)."""
    from cli.ops.status import site_status

    setup_logging(ctx.obj["verbose"])
    report = site_status(site_of(ctx), timeout)
    if as_json:
        click.echo(dumps(report))
    else:
        _print_status(report)


def _age(seconds: Any) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"


def _print_status(report: dict[str, Any]) -> None:
    r = report["router"]
    if r is None:
        click.echo(f"router: DOWN — {report.get('router_error')}")
    else:
        c = r.get("counts") or {}
        click.echo(f"router: up, epoch {r.get('router_epoch')}, gseq {r.get('first')}.."
                   f"{r.get('last')}, journal {'file' if r.get('persistent') else 'memory'}; "
                   f"lost: ingress gaps {c.get('gaps_lost', 0)}, evicted before a subscriber "
                   f"got them {c.get('egress_missed', 0)}, bad input "
                   f"{(c.get('bad') or {}).get('total', 0)}")
    if report.get("supervisor_error"):
        click.echo(f"supervisord: {report['supervisor_error']}")
    if not report.get("watchdog"):
        click.echo("watchdog: no recent view (not running?)")
    now = time.time()
    head = (f"{'PROGRAM':<16}{'TYPE':<20}{'HOST':<8}{'SUPERVISOR':<11}{'PID':<8}{'UP':<6}"
            f"{'LINK':<16}{'LAST EVT':<9}{'EVENTS':<8}{'DROPS':<6}{'RESTARTS':<9}ALARM")
    click.echo(head)
    for name, a in report["programs"].items():
        link = a.get("link") or {}
        if link:
            since = link.get("since")
            link_text = f"{link.get('state')} {_age(now - since) if since else ''}".strip()
        else:
            link_text = "-" if a.get("alive") is None else "NO HEARTBEAT" \
                if not a.get("alive") else "-"
        events = (a.get("counters") or {}).get("events", "-")
        click.echo(f"{name[:15]:<16}{a['type'][:19]:<20}{a['host'][:7]:<8}"
                   f"{a.get('supervisor_state') or '?':<11}{a.get('pid') or '-'!s:<8}"
                   f"{_age(a.get('uptime')):<6}{link_text:<16}{_age(a.get('last_event_age')):<9}"
                   f"{events!s:<8}{a.get('dropped', '-')!s:<6}{a.get('restarts', 0)!s:<9}"
                   f"{a.get('alarm') or ''}")
    for alarm in report["alarms"]:
        click.echo(f"ALARM {alarm['program']}: {alarm['reason']}")


@click.command()
@click.option("--interval", type=click.FloatRange(min=0.2), default=1.0, show_default=True,
              help="seconds between refreshes")
@click.option("--window", type=click.FloatRange(min=1.0), default=10.0, show_default=True,
              help="seconds over which rates and latencies are computed")
@click.option("--once", is_flag=True, help="print one screen after INTERVAL and exit")
@click.option("--json", "as_json", is_flag=True, help="with --once: the figures as JSON")
@click.pass_context
def top(ctx: click.Context, interval: float, window: float, once: bool, as_json: bool) -> None:
    """Live view of the site: actors, links, per-topic rates, event latency, drops, restarts,
    alarms (Ctrl-C to quit)."""
    from cli.ops.top import TopView, render

    setup_logging(ctx.obj["verbose"])
    bus = connect_bus(site_of(ctx), 5.0)
    for prefix in ("evt.", "hb.", "sys.", "log."):
        bus.subscribe(prefix, gapless=False)  # a view: best effort, no journal replays
    view = TopView(window)
    clear = sys.stdout.isatty() and not once
    try:
        while True:
            end = time.monotonic() + interval
            while (left := end - time.monotonic()) > 0:
                for d in bus.poll(left):
                    view.feed(d.topic, lambda d=d: d.envelope, time.monotonic(), time.time())
            snap = view.snapshot(time.monotonic(), time.time())
            if as_json:
                click.echo(dumps(snap))
            else:
                click.echo(("\x1b[H\x1b[2J" if clear else "") + render(snap))
            if once:
                return
    except KeyboardInterrupt:
        pass
    finally:
        bus.close()
