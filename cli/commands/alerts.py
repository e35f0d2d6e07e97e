"""`sctl alerts`: forward the site's alarms, long link outages and restarts to a webhook, e-mail
and syslog, as ``[alerts]`` of the site file says (`cli.ops.alerts`). supervisord runs it when
the table exists (``sctl deploy render``); ``--test`` sends one test alert to every receiver and
says which got it."""

from __future__ import annotations

import logging
import sys

import click

from broker.wire.errors import BusError, ConfigError
from cli.common import (
    EXIT_ERROR_REPLY,
    EXIT_USAGE,
    dumps,
    fail,
    json_option,
    setup_logging,
    site_of,
)


@click.command()
@click.option("--test", "test", is_flag=True,
              help="send one test alert to every receiver, print the outcome and exit (0: all "
              "got it, 1: not all)")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=15.0, show_default=True,
              help="with --test: seconds to wait for the receivers")
@json_option
@click.pass_context
def alerts(ctx: click.Context, test: bool, timeout: float, as_json: bool) -> None:
    """Run the alerts program: sys.alarm, device links down too long and actor restarts, once
    per episode with a "resolved" at its end, to the receivers of [alerts] (webhook, e-mail,
    syslog). A problem in [alerts] is refused with its key path (exit 2)."""
    import signal
    import threading

    from cli.commands.site import refuse
    from cli.ops import alerts as engine
    from cli.ops.alert_config import check_alerts, parse_alerts

    setup_logging(ctx.obj["verbose"], logging.WARNING if test else logging.INFO,
                  as_json and not test)
    site = site_of(ctx)
    problems = check_alerts(site)
    if problems:
        refuse(problems, "sctl alerts not started")
    cfg = parse_alerts(site)
    if cfg is None:
        fail(f"{site.path} has no [alerts] table: nothing to forward (see the README, \"Alarms "
             "by e-mail, webhook, syslog\")", EXIT_USAGE)
    if test:
        try:
            outcome = engine.send_test(site, cfg, timeout)
        except ConfigError as exc:  # a credentials file that cannot be read
            refuse([exc], "no test alert sent")
        if as_json:
            click.echo(dumps({name: {"ok": not why, "error": why or None}
                              for name, why in outcome.items()}))
        else:
            for name, why in outcome.items():
                click.echo(f"{name}: {'delivered' if not why else 'FAILED: ' + why}")
        sys.exit(EXIT_ERROR_REPLY if any(outcome.values()) else 0)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        code = engine.run(site, cfg, stopping.is_set)
    except ConfigError as exc:  # a credentials file that cannot be read
        refuse([exc], "sctl alerts not started")
    except BusError as exc:  # CURVE on and no key for this program's identity
        fail(f"alerts not started: {exc}", EXIT_USAGE)
    sys.exit(code)
