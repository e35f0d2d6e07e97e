"""What every `sctl` command shares: the exit codes, failing with one message, ``--json``,
logging to stderr with timezone-aware times, the site file of the invocation and a connected Bus.

Exit codes: 0 ok; 1 the actor answered with an error (or supervisord refused an action); 2 bad
usage or a bad site file; 3 nothing came back in time (the message says why: actor unknown, not
running, or silent), or for ``sctl status``: something is not well.

``--json`` (`json_option`) makes a command print JSON on stdout, its errors included: `fail`
then prints ``{"error": MESSAGE, "code": EXIT_CODE}`` on stdout and exits with that code. The
process commands (router, actor, sim, watchdog) take it to log one JSON object per line.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Final, NoReturn, TypeVar

import click

from broker.config import SiteConfig, load_site
from broker.wire.errors import BusError, ConfigError

EXIT_OK: Final = 0
EXIT_ERROR_REPLY: Final = 1
EXIT_USAGE: Final = 2
EXIT_NO_REPLY: Final = 3
EXIT_NOT_WELL: Final = 3  # `sctl status`, like supervisorctl's
JSON_META: Final = "sctl.json"  # click's ctx.meta is shared by every context of one invocation

F = TypeVar("F", bound=Callable[..., Any])


def _remember_json(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta[JSON_META] = True
    return value


def json_option(f: F) -> F:
    """``--json``: output as JSON, errors included (exposed to the command as `as_json`)."""
    return click.option("--json", "as_json", is_flag=True, is_eager=True,
                        callback=_remember_json,
                        help='JSON output; errors too, as {"error", "code"} on stdout')(f)


def json_wanted() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.meta.get(JSON_META))


def local_time(ts: float) -> str:
    """An ISO 8601 time with this host's UTC offset, to the millisecond."""
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="milliseconds")


class _TextFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return local_time(record.created)


def setup_logging(verbose: int, default: int = logging.WARNING, as_json: bool = False) -> None:
    """Log to stderr: ``TIME LEVEL logger: message`` with TIME in ISO 8601 with the UTC
    offset (``2026-05-09T14:02:11.532+02:00``), or, with `as_json` or ``sctl --log-format
    json``, one JSON object a line (`cli.logfmt`)."""
    from cli import logfmt

    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else default
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logfmt.JsonLogFormatter() if logfmt.json_selected(as_json) else
                         _TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


def fail(message: str, code: int) -> NoReturn:
    """End the command: ``sctl: MESSAGE`` on stderr, or with ``--json`` ``{"error", "code"}``
    on stdout; exit `code`."""
    if json_wanted():
        click.echo(dumps({"error": message, "code": code}))
    else:
        click.echo(f"sctl: {message}", err=True)
    sys.exit(code)


def site_of(ctx: click.Context) -> SiteConfig:
    try:
        return load_site(ctx.obj["config"])
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)


def check_host(site: SiteConfig, host: str | None) -> None:
    """A ``--host`` that names no host of the site is a usage error (exit 2)."""
    if host is not None and host not in site.hosts():
        fail(f"--host {host!r}: no program of {site.path} runs on it (hosts: "
             f"{', '.join(repr(h) for h in site.hosts())})", EXIT_USAGE)


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
