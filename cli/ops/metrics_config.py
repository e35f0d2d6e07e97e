"""``[metrics]`` of the site file: where ``sctl metrics`` serves /metrics and the status page.

::

    [metrics]
    listen = "127.0.0.1:9570"   # ADDRESS:PORT ("[::1]:9570" for IPv6)
    token_file = ""             # the token clients must send; required unless listen is loopback
    runs_on = ""                # the host whose supervisord runs it ("" = the router's)
    poll_interval = 0.5         # seconds between two polls of every supervisord

With the table, ``sctl deploy render`` adds the ``metrics`` program, one per site. Without a
token it may only listen on a loopback address: anyone reaching another address would read the
site's state. A loopback address is an IPv4 ``127.x.x.x``, ``::1`` or ``localhost``; any other
name counts as not loopback (a name can resolve anywhere). The token file's first line is the
token: clients send ``Authorization: Bearer TOKEN`` (Prometheus' ``credentials_file``) or basic
auth with the token as password (a browser asks for it).

`check_metrics` lists every problem with its key path (``sctl check`` and ``sctl deploy
render`` call it through `cli.ops.validate`), `parse_metrics` returns the checked
`MetricsConfig` (the defaults when the site has no table), and `metrics_listen` checks what
the program is about to bind, with the command line's overrides.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from broker.config import Setting, SiteConfig, check_settings, positive
from broker.wire import topics
from broker.wire.errors import ConfigError

PROGRAM: Final = "metrics"  # the supervisord program that `sctl deploy render` adds
DEFAULT_LISTEN: Final = "127.0.0.1:9570"


def split_listen(text: str) -> tuple[str, int]:
    """``ADDRESS:PORT`` (``[IPv6]:PORT``) as (address, port); ValueError says what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError('must be "ADDRESS:PORT", such as "127.0.0.1:9570"')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError('an IPv6 address goes in brackets: "[::1]:9570"')
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen(value: Any) -> None:
    split_listen(value)


def _host_name(value: Any) -> None:
    if value:
        topics.check_name(value, "host name")


METRICS_SETTINGS: Final = (
    Setting("listen", str, DEFAULT_LISTEN, "ADDRESS:PORT of /metrics and the status page",
            check=_listen),
    Setting("token_file", str, "", "file whose first line is the token clients send (Bearer, "
            "or the basic-auth password); required unless listen is a loopback address",
            path=True),
    Setting("runs_on", str, "", "host whose supervisord runs the program ('' = the router's)",
            check=_host_name),
    Setting("poll_interval", float, 0.5, "seconds between two polls of every supervisord",
            check=positive),
)


@dataclass(frozen=True)
class MetricsConfig:
    listen: str
    token_file: Path | None
    runs_on: str
    poll_interval: float


def check_metrics(site: SiteConfig) -> list[ConfigError]:
    return _check(site)[1]


def parse_metrics(site: SiteConfig) -> MetricsConfig:
    """The checked ``[metrics]`` (its defaults when the site has none); raises the first
    problem."""
    cfg, problems = _check(site)
    if problems:
        raise problems[0]
    return cfg


def _check(site: SiteConfig) -> tuple[MetricsConfig, list[ConfigError]]:
    source = str(site.path)
    values, problems = check_settings(site.metrics or {}, METRICS_SETTINGS, "metrics", source,
                                      base=site.folder)
    token = Path(values["token_file"]) if values["token_file"] else None
    cfg = MetricsConfig(values["listen"], token, values["runs_on"] or site.router_runs_on,
                        values["poll_interval"])
    if not problems:
        problem = metrics_listen(cfg.listen, token is not None)[1]
        if problem:
            problems.append(ConfigError("metrics.token_file", problem, source))
    return cfg, problems


def metrics_listen(listen: str, token: bool) -> tuple[tuple[str, int], str | None]:
    """(address, port) to bind and, when it must not be bound, why (`token`: a token is set)."""
    try:
        host, port = split_listen(listen)
    except ValueError as exc:
        return ("", 0), f"listen {listen!r}: {exc}"
    if token or is_loopback(host):
        return (host, port), None
    return (host, port), (
        f"is required to listen on {listen} (not a loopback address): without a token anyone "
        f"who reaches it reads the site's state. Name a file holding a token ([metrics] "
        f"token_file, or --token-file FILE; clients send it as a Bearer token or the basic-auth "
        f"password), or listen on 127.0.0.1")


def read_token(path: Path) -> str:
    """The token: the file's first line. ValueError when the file is unreadable or empty."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the token file {path}: {exc}") from None
    if not lines or not lines[0].strip():
        raise ValueError(f"the token file {path} is empty: its first line is the token")
    return lines[0].strip()


def runs_here(site: SiteConfig, host: str | None) -> bool:
    """Whether the rendering for `host` (None: every host) holds the metrics program."""
    if site.metrics is None:
        return False
    runs_on = site.metrics.get("runs_on") or site.router_runs_on
    return host is None or runs_on == host
