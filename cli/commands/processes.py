"""The long-running processes of a site: `sctl router`, `sctl actor NAME`, `sctl sim KIND` and
`sctl watchdog`, as supervisord starts them. Each logs at INFO unless -v asks for more (with
--json, one JSON object a line), runs in the foreground and exits with the code its loop
returns."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from broker.wire.errors import ConfigError
from cli.common import EXIT_USAGE, fail, json_option, setup_logging, site_of


@click.command()
@json_option
@click.pass_context
def router(ctx: click.Context, as_json: bool) -> None:
    """Run the router of the site (binds ingress, egress, query)."""
    from broker.router.server import serve

    setup_logging(ctx.obj["verbose"], logging.INFO, as_json)
    sys.exit(serve(site_of(ctx).router))


@click.command()
@click.argument("name")
@json_option
@click.pass_context
def actor(ctx: click.Context, name: str, as_json: bool) -> None:
    """Run actor NAME from the site file (any registered type)."""
    from cli.runner import run_actor

    setup_logging(ctx.obj["verbose"], logging.INFO, as_json)
    site = site_of(ctx)
    try:
        site.actor(name)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    sys.exit(run_actor(site, name))


def _setting_value(text: str) -> Any:
    """``--set key=VALUE``: VALUE as a TOML value (``4001``, ``true``, ``["a", "b"]``,
    ``"text"``), else the plain string."""
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


@click.command(context_settings={"ignore_unknown_options": False})
@click.argument("kind")
@click.option("--name", default=None, help="actor name of the simulator on the bus "
              "(default sim-KIND); if the site file has [actors.NAME], its settings are used")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="a setting, VALUE in TOML syntax (repeatable): --set port=4001")
@json_option
@click.pass_context
def sim(ctx: click.Context, kind: str, name: str | None, sets: tuple[str, ...],
        as_json: bool) -> None:
    """Run the device simulator KIND as an actor (springcore-tcp, springcore-mqtt,
    spec-server, instrument, iec104-master). `sctl describe NAME` lists its commands."""
    from actors.registry import sim_config
    from cli.runner import run_actor

    setup_logging(ctx.obj["verbose"], logging.INFO, as_json)
    site = site_of(ctx)
    overrides: dict[str, Any] = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--set {item!r}: expected KEY=VALUE", EXIT_USAGE)
        overrides[key] = _setting_value(value)
    try:
        cfg = sim_config(site, kind, name, overrides)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    sys.exit(run_actor(site, cfg.name, cfg=cfg))


@click.command()
@click.option("--host", default=None, help="watch only the programs placed on this host "
              "(runs_on); default: every program of the site")
@json_option
@click.pass_context
def watchdog(ctx: click.Context, host: str | None, as_json: bool) -> None:
    """Run the watchdog: restart hung and dead actors with growing delays, stop a program
    that restarts too often and raise sys.alarm (started by supervisord, see deploy render)."""
    import signal
    import threading

    from cli.ops import watchdog as wd

    setup_logging(ctx.obj["verbose"], logging.INFO, as_json)
    site = site_of(ctx)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    sys.exit(wd.run(site, host, stopping.is_set))
