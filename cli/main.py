"""sctl: the operator's command line (DESIGN §7). Thin: every command calls into broker/ or actors/."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from broker.config import SiteConfig, load_site
from broker.errors import ConfigError


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@click.group()
@click.option("-c", "--config", "config", default=None, metavar="SITE.toml",
              help="site file (default $SCTL_CONFIG, then deploy/site.toml)")
@click.option("-v", "--verbose", count=True, help="more log output (-vv for debug)")
@click.pass_context
def app(ctx: click.Context, config: str | None, verbose: int) -> None:
    """sctl: run and talk to the actors of a site."""
    ctx.obj = {"config": config, "verbose": verbose}


def site_of(ctx: click.Context) -> SiteConfig:
    try:
        return load_site(ctx.obj["config"])
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@app.command()
@click.pass_context
def router(ctx: click.Context) -> None:
    """Run the router of the site (binds ingress, egress, query)."""
    from broker.router import serve

    _setup_logging(max(1, ctx.obj["verbose"]))
    sys.exit(serve(site_of(ctx).router))


def main(argv: Any = None) -> None:
    app.main(args=argv, prog_name="sctl")
