"""sctl: the operator's command line. Thin: every command calls into broker/ or actors/.

This module holds the root group `app` with the global options (site file, verbosity, CURVE
identity) and `main`, the `sctl` entry point; the commands live in `cli.commands`, one module
per family, and are registered here. Exit codes are in `cli.common`.

`main` turns every command-line mistake click finds (unknown option, missing or malformed
argument) into one line naming the argument, exit 2, before anything runs; with ``--json``
that line is ``{"error", "code"}`` on stdout.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from cli.commands.alerts import alerts
from cli.commands.bench import bench
from cli.commands.control import logs, pid, reload, restart, signal_cmd, start, stop
from cli.commands.health import status, top
from cli.commands.init import init
from cli.commands.keys import keys
from cli.commands.messages import describe, ping, pub, send, sub
from cli.commands.metrics import metrics
from cli.commands.processes import actor, router, sim, watchdog
from cli.commands.site import check, deploy


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(None, "--version", package_name="sctl", prog_name="sctl",
                      message="%(prog)s %(version)s")
@click.option("-c", "--config", "config", default=None, metavar="SITE.toml",
              help="site file (default $SCTL_CONFIG, then ./site.toml, then deploy/site.toml)")
@click.option("-v", "--verbose", count=True, help="more log output (-vv for debug)")
@click.option("--log-format", "log_format", type=click.Choice(["text", "json"]), default="text",
              help="log lines as text, or one JSON object a line (Loki, Vector, Fluent Bit)")
@click.option("--as", "identity", default=None, metavar="NAME",
              help="with [router.security]: the CURVE key to act as (default $SCTL_AS, then "
              "operator)")
@click.pass_context
def app(ctx: click.Context, config: str | None, verbose: int, log_format: str,
        identity: str | None) -> None:
    """sctl: run and talk to the actors of a site."""
    import os

    from broker.security import IDENTITY_ENV
    from cli import logfmt

    logfmt.select(log_format)

    if identity:
        os.environ[IDENTITY_ENV] = identity  # every Bus this command opens acts as it
    ctx.obj = {"config": config, "verbose": verbose}


for _command in (router, actor, sim, watchdog, deploy, keys, send, describe, ping, sub, pub,
                 status, top, start, stop, restart, signal_cmd, pid, logs, reload, check, init,
                 bench, alerts, metrics):
    app.add_command(_command)


def main(argv: Any = None) -> None:
    from cli.common import EXIT_USAGE, dumps

    args = list(sys.argv[1:] if argv is None else argv)
    options = args[:args.index("--")] if "--" in args else args
    try:
        code = app.main(args=args, prog_name="sctl", standalone_mode=False)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "sctl"
        message = f"{where}: {exc.format_message()}"
        if "--json" in options:
            click.echo(dumps({"error": message, "code": EXIT_USAGE}))
        else:
            click.echo(f"{message} (see {where} --help)", err=True)
        sys.exit(EXIT_USAGE)
    except click.ClickException as exc:
        if "--json" in options:
            click.echo(dumps({"error": f"sctl: {exc.format_message()}", "code": exc.exit_code}))
        else:
            click.echo(f"sctl: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:  # Ctrl-C that no command handled
        click.echo("Aborted!", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
