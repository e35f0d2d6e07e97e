"""sctl: the operator's command line. Thin: every command calls into broker/ or actors/.

This module holds the root group `app` with the global options (site file, verbosity, CURVE
identity) and `main`, the `sctl` entry point; the commands live in `cli.commands`, one module
per family, and are registered here. Exit codes are in `cli.common`.
"""

from __future__ import annotations

from typing import Any

import click

from cli.commands.bench import bench
from cli.commands.health import status, top
from cli.commands.keys import keys
from cli.commands.messages import describe, ping, pub, send, sub
from cli.commands.processes import actor, router, sim, watchdog
from cli.commands.site import deploy


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config", default=None, metavar="SITE.toml",
              help="site file (default $SCTL_CONFIG, then deploy/site.toml)")
@click.option("-v", "--verbose", count=True, help="more log output (-vv for debug)")
@click.option("--as", "identity", default=None, metavar="NAME",
              help="with [router.security]: the CURVE key to act as (default $SCTL_AS, then "
              "operator)")
@click.pass_context
def app(ctx: click.Context, config: str | None, verbose: int, identity: str | None) -> None:
    """sctl: run and talk to the actors of a site."""
    import os

    from broker.security import IDENTITY_ENV

    if identity:
        os.environ[IDENTITY_ENV] = identity  # every Bus this command opens acts as it
    ctx.obj = {"config": config, "verbose": verbose}


for _command in (router, actor, sim, watchdog, deploy, keys, send, describe, ping, sub, pub,
                 status, top, bench):
    app.add_command(_command)


def main(argv: Any = None) -> None:
    app.main(args=argv, prog_name="sctl")
