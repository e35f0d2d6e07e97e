"""`sctl metrics`: Prometheus metrics (``/metrics``) and the live status page (``/``) of the
site, served over HTTP as ``[metrics]`` of the site file says (`cli.ops.metrics`). supervisord
runs it when the table exists (``sctl deploy render``), one per site.

It refuses to start (exit 2) when it would listen on an address that is not loopback without a
token, or when ``[metrics]`` has a problem; it exits 1 when the address cannot be bound."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from broker.wire.errors import BusError
from cli.common import EXIT_USAGE, fail, json_option, setup_logging, site_of


@click.command()
@click.option("--listen", default=None, metavar="ADDRESS:PORT",
              help="serve here instead of [metrics] listen (port 0: any free port, named in "
              "the log)")
@click.option("--token-file", default=None, metavar="FILE",
              help="instead of [metrics] token_file: clients must send the token on its "
              "first line (Bearer, or as the basic-auth password)")
@json_option
@click.pass_context
def metrics(ctx: click.Context, listen: str | None, token_file: str | None,
            as_json: bool) -> None:
    """Serve the site's Prometheus metrics on /metrics and its live status page on /
    (read-only; a token is required unless it listens on loopback)."""
    import dataclasses
    import signal
    import threading

    from cli.ops.metrics import serve
    from cli.ops.metrics_config import check_metrics, parse_metrics, read_token, split_listen

    setup_logging(ctx.obj["verbose"], logging.INFO, as_json)
    site = site_of(ctx)
    overrides = {"listen": listen} if listen is not None else {}
    if token_file is not None:  # relative to the working directory, not to the site file
        overrides["token_file"] = str(Path(token_file).absolute())
    site = dataclasses.replace(site, metrics={**(site.metrics or {}), **overrides})
    problems = check_metrics(site)
    if problems:
        fail("metrics not started: " + "; ".join(f"{p.path}: {p.reason}" for p in problems),
             EXIT_USAGE)
    cfg = parse_metrics(site)
    token = None
    if cfg.token_file is not None:
        try:
            token = read_token(cfg.token_file)
        except ValueError as exc:
            fail(f"metrics not started: {exc}", EXIT_USAGE)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        code = serve(site, split_listen(cfg.listen), token, cfg.poll_interval,
                     stopping.is_set)
    except BusError as exc:  # CURVE on and no key for this program's identity
        fail(f"metrics not started: {exc}", EXIT_USAGE)
    sys.exit(code)
