"""``[alerts]`` of the site file: which alerts ``sctl alerts`` raises and where it sends them.

::

    [alerts]
    link_down_after = 30.0     # a device link down this long is an alert (0 = off)
    restarts = true            # every restart of an actor by the watchdog is an alert
    [alerts.webhook]
    url = "https://hooks.example.org/sctl"
    [alerts.email]
    host = "smtp.example.org"
    from = "sctl@example.org"
    to = ["ops@example.org"]
    credentials_file = "smtp-credentials"   # line 1 user, line 2 password
    [alerts.syslog]
    address = "udp://192.0.2.5:514"         # or "tcp://HOST:PORT", or "/dev/log" (default)

The declarations below are the schema: `check_alerts` lists every problem with its key path
(``sctl check`` and ``sctl deploy render`` call it through `cli.ops.validate`; ``sctl alerts``
refuses to start on any), `parse_alerts` returns the checked `AlertsConfig`. Relative file
paths are taken from the site file's folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from broker.config import (
    Setting,
    SiteConfig,
    check_settings,
    non_negative,
    port_number,
    positive,
)
from broker.wire import topics
from broker.wire.errors import ConfigError

PROGRAM: Final = "alerts"  # the supervisord program that `sctl deploy render` adds
ALARM: Final = "alarm"
LINK_DOWN: Final = "link_down"
RESTART: Final = "restart"
KINDS: Final = (ALARM, LINK_DOWN, RESTART)
FORWARDERS: Final = ("webhook", "email", "syslog")
EMAIL_SECURITY: Final = ("starttls", "tls", "none")
# RFC 5424 facility names and codes
FACILITIES: Final = {"kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5,
                     "lpr": 6, "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
                     **{f"local{i}": 16 + i for i in range(8)}}
APP_NAME: Final = re.compile(r"[!-~]{1,48}")  # RFC 5424 APP-NAME: printable US-ASCII


def _kinds(value: Any) -> None:
    unknown = [v for v in value if v not in KINDS]
    if unknown or not value:
        raise ValueError(f"must be a non-empty list of {', '.join(KINDS)}")


def _http_url(value: Any) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")


def _headers(value: Any) -> None:
    for name, text in value.items():
        if not re.fullmatch(r"[A-Za-z0-9-]+", name) or not isinstance(text, str) \
                or "\n" in text or "\r" in text:
            raise ValueError(f"header {name!r}: names are letters, digits and '-'; values "
                             "one-line strings")


def _address(value: Any) -> None:
    if "@" not in value or value.startswith("@") or value.endswith("@") or " " in value:
        raise ValueError("must be an e-mail address such as ops@example.org")


def _addresses(value: Any) -> None:
    if not value or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a non-empty list of e-mail addresses")
    for v in value:
        _address(v)


def _readable_file(value: Any) -> None:
    if value and not os.access(value, os.R_OK):
        raise ValueError(f"{value} is not a readable file")


def _security(value: Any) -> None:
    if value not in EMAIL_SECURITY:
        raise ValueError(f"must be one of {', '.join(EMAIL_SECURITY)}")


def syslog_target(value: str) -> tuple[str, str | tuple[str, int]]:
    """``("unix", path)``, ``("udp", (host, port))`` or ``("tcp", (host, port))``; ValueError
    for anything else."""
    if value.startswith("/"):
        return "unix", value
    scheme, sep, rest = value.partition("://")
    host, colon, port = rest.rpartition(":")
    host = host.strip("[]")
    if not sep or scheme not in ("udp", "tcp") or not colon or not host \
            or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("must be udp://HOST:PORT, tcp://HOST:PORT or a unix socket path "
                         "such as /dev/log")
    return scheme, (host, int(port))


def _syslog_address(value: Any) -> None:
    syslog_target(value)


def _facility(value: Any) -> None:
    if value not in FACILITIES:
        raise ValueError(f"must be one of {', '.join(FACILITIES)}")


def _app_name(value: Any) -> None:
    if not APP_NAME.fullmatch(value):
        raise ValueError("must be 1-48 printable ASCII characters without spaces")


def _common(queue_max: int, retry_max: float) -> tuple[Setting, ...]:
    return (
        Setting("kinds", list, list(KINDS), "which alerts go here: alarm, link_down, restart",
                check=_kinds),
        Setting("max_per_minute", int, None, "rate limit of new alerts to this receiver "
                "(default: [alerts] max_per_minute)", check=positive),
        Setting("queue_max", int, queue_max, "alerts kept while the receiver is down or "
                "slow; beyond, the oldest are dropped and counted", check=positive),
        Setting("retry_max", float, retry_max, "longest delay between two attempts, seconds "
                "(the delay doubles from 1 s)", check=positive),
        Setting("timeout", float, 10.0, "seconds one attempt may take", check=positive),
    )


ALERTS_SETTINGS: Final = (
    Setting("runs_on", str, "", "host of the `sctl alerts` program ('' = the router's host)"),
    Setting("alarms", bool, True, "forward every sys.alarm"),
    Setting("link_down_after", float, 0.0, "seconds a device link must stay down before it "
            "is an alert (0 = link alerts off)", check=non_negative),
    Setting("restarts", bool, False, "an actor restarted by the watchdog is an alert"),
    Setting("resolve_after", float, 300.0, "seconds without a repeat that end an episode of "
            "an alarm that has no end of its own (outbox_overflow, ingress_lost, ...) or of "
            "restarts", check=positive),
    Setting("max_per_minute", int, 20, "new alerts per minute and receiver; beyond, they are "
            "counted and summed up in one notice", check=positive),
    Setting("webhook", dict, None, "JSON POST of every alert ([alerts.webhook])"),
    Setting("email", dict, None, "e-mail over SMTP ([alerts.email])"),
    Setting("syslog", dict, None, "RFC 5424 syslog ([alerts.syslog])"),
)

WEBHOOK_SETTINGS: Final = (
    Setting("url", str, required=True, doc="where alerts are POSTed as JSON", check=_http_url),
    Setting("headers", dict, {}, "extra HTTP headers (Authorization = \"Bearer ...\")",
            check=_headers),
    Setting("ca", str, "", "CA file for an https URL ('' = the system CAs)", path=True,
            check=_readable_file),
    *_common(1000, 300.0),
)

EMAIL_SETTINGS: Final = (
    Setting("host", str, required=True, doc="SMTP server"),
    Setting("port", int, None, "SMTP port (default 587, 465 with security = \"tls\", 25 "
            "with \"none\")", check=port_number),
    Setting("security", str, "starttls", "starttls (STARTTLS required), tls (TLS from the "
            "start) or none", check=_security),
    Setting("ca", str, "", "CA file that signed the server's certificate ('' = the system "
            "CAs)", path=True, check=_readable_file),
    Setting("credentials_file", str, "", "file: line 1 the user name, line 2 the password "
            "('' = no login)", path=True, check=_readable_file),
    Setting("from", str, required=True, doc="sender address", check=_address),
    Setting("to", list, required=True, doc="recipient addresses", check=_addresses),
    Setting("subject_prefix", str, "[sctl]", "start of every subject"),
    *_common(100, 600.0),
)

SYSLOG_SETTINGS: Final = (
    Setting("address", str, "/dev/log", "udp://HOST:PORT, tcp://HOST:PORT (octet-counted "
            "frames, RFC 6587) or a local unix socket", check=_syslog_address),
    Setting("facility", str, "daemon", "syslog facility (daemon, local0 ... local7, ...)",
            check=_facility),
    Setting("app_name", str, "sctl", "APP-NAME of every message", check=_app_name),
    *_common(1000, 60.0),
)

_TABLES: Final = {"webhook": WEBHOOK_SETTINGS, "email": EMAIL_SETTINGS,
                  "syslog": SYSLOG_SETTINGS}


@dataclass(frozen=True)
class ForwarderConfig:
    """One receiver table (``[alerts.webhook]`` ...) with every declared key: `values`."""

    name: str
    values: Mapping[str, Any]

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.values["kinds"])


@dataclass(frozen=True)
class AlertsConfig:
    runs_on: str
    alarms: bool
    link_down_after: float
    restarts: bool
    resolve_after: float
    forwarders: tuple[ForwarderConfig, ...]


def check_alerts(site: SiteConfig) -> list[ConfigError]:
    """Every problem of ``[alerts]`` (none when the table is absent), each with its key
    path. The hook `cli.ops.validate.validate_site` calls."""
    return _read(site)[1]


def parse_alerts(site: SiteConfig) -> AlertsConfig | None:
    """The checked ``[alerts]``, None when the site has none; raises the first problem."""
    config, problems = _read(site)
    if problems:
        raise problems[0]
    return config


def _read(site: SiteConfig) -> tuple[AlertsConfig | None, list[ConfigError]]:
    table = site.alerts
    if not table:
        return None, []
    source = str(site.path)
    values, problems = check_settings(table, ALERTS_SETTINGS, "alerts", source)
    if values["runs_on"]:
        try:
            topics.check_name(values["runs_on"], "host name")
        except ValueError as exc:
            problems.append(ConfigError("alerts.runs_on", str(exc), source))
    forwarders = []
    for name, declared in _TABLES.items():
        sub = values[name]
        if sub is None:
            continue
        found_values, found = check_settings(sub, declared, f"alerts.{name}", source,
                                             base=site.folder)
        problems += found
        if found_values["max_per_minute"] is None:
            found_values["max_per_minute"] = values["max_per_minute"]
        forwarders.append(ForwarderConfig(name, found_values))
    if not forwarders and not any(p.path.startswith("alerts.") and p.path.count(".") > 1
                                  for p in problems):
        problems.append(ConfigError("alerts", "names no receiver: add [alerts.webhook], "
                                              "[alerts.email] or [alerts.syslog]", source))
    if not (values["alarms"] or values["link_down_after"] or values["restarts"]):
        problems.append(ConfigError("alerts.alarms", "every alert is off (alarms = false, "
                                                     "link_down_after = 0, restarts = false)",
                                    source))
    for kind, tables in (("actor", site.actors), ("service", site.services)):
        if PROGRAM in tables:
            problems.append(ConfigError(f"{kind}s.{PROGRAM}", f"{PROGRAM!r} is the name of "
                                        "the `sctl alerts` program while [alerts] exists: "
                                        f"rename the {kind}", source))
    config = AlertsConfig(values["runs_on"], values["alarms"], values["link_down_after"],
                          values["restarts"], values["resolve_after"], tuple(forwarders))
    return config, problems
