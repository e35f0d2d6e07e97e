"""What every `sctl` command shares: the exit codes, failing with one `sctl: ...` line, logging
to stderr, the site file of the invocation, a connected Bus, and JSON output.

Exit codes: 0 ok; 1 the actor answered with an error; 2 bad usage or a bad site file; 3 nothing
came back in time (the message says why: actor unknown, not running, or silent).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from typing import Any, Final, NoReturn

import click

from broker.config import SiteConfig, load_site
from broker.wire.errors import BusError, ConfigError

EXIT_ERROR_REPLY: Final = 1
EXIT_USAGE: Final = 2
EXIT_NO_REPLY: Final = 3


def setup_logging(verbose: int, default: int = logging.WARNING) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else default
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"sctl: {message}", err=True)
    sys.exit(code)


def site_of(ctx: click.Context) -> SiteConfig:
    try:
        return load_site(ctx.obj["config"])
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)


def connect_bus(site: SiteConfig, wait: float,
                subscribe: Sequence[tuple[str, int | None]] = ()) -> Any:
    """A connected client Bus, or exit 3 saying the router does not answer. Subscriptions are
    made before connecting, so the sync handshake fixes where they start."""
    from broker.client.bus import Bus, client_name

    try:
        bus = Bus(site.router, client_name())
    except BusError as exc:  # CURVE on and no key for the chosen identity
        fail(str(exc), EXIT_USAGE)
    for prefix, since in subscribe:
        bus.subscribe(prefix, since=since)
    if not bus.connect(wait=wait):
        bus.close()
        fail(f"the router at {site.router.connect_url('ingress')} did not answer within "
             f"{wait:g} s — is it running? (sctl status)", EXIT_NO_REPLY)
    return bus


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.hex()
    return repr(obj)


def dumps(obj: Any) -> str:
    """JSON for the terminal: bytes as hex, anything else unknown as its repr."""
    return json.dumps(obj, default=_json_default, ensure_ascii=False)
