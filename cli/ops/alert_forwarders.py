"""The receivers of ``sctl alerts``: a webhook (JSON POST), e-mail (SMTP) and syslog (RFC 5424).

Each `Forwarder` owns one worker thread and one bounded queue. `offer` is all the alerts loop
ever calls: it appends under a lock held only for the append (never during I/O) and returns, so
a receiver that is down, slow or answering errors cannot slow the loop, the bus or the other
receivers. When the queue is full the oldest alert is dropped and counted (``dropped``).

The worker takes the oldest alert and delivers it. A failure that may pass (no connection, a
timeout, HTTP 5xx/408/429, SMTP 4xx, a syslog socket error) is retried, the same alert first,
after a delay that doubles from `RETRY_FIRST` up to ``retry_max`` with jitter; so alerts queue
while the receiver is down and go out in order, once each, when it is back. A failure that will
not pass for this alert (HTTP 4xx, SMTP 5xx such as a refused login or recipient) is logged at
ERROR, counted (``failed``) and the alert is dropped, so one bad alert cannot block the rest.

Payloads:

- webhook: ``POST`` of `alert_json` with ``Content-Type: application/json`` and
  ``Idempotency-Key: <id>/<state>`` (the same on every retry: a receiver that got a POST whose
  answer was lost can drop the repeat);
- e-mail: subject ``<subject_prefix> <STATE> <title>``, a plain text body; the resolved mail
  answers the open one (``In-Reply-To``), so mail clients thread an episode;
- syslog: one RFC 5424 message, ``<PRI>1 TIME HOST APP-NAME PID MSGID [sctl@32473 ...] TITLE``
  (MSGID the alert kind; 32473 is the private enterprise number RFC 5612 sets aside for
  examples and documentation); UDP: one datagram of at most `UDP_MAX` bytes (no delivery
  check: UDP has none); TCP: octet-counted frames (RFC 6587); a unix path: one datagram.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import smtplib
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any, Final

from broker.wire.errors import ConfigError
from cli.ops.alert_config import FACILITIES, ForwarderConfig, syslog_target
from cli.ops.alert_model import Alert, alert_json

log = logging.getLogger(__name__)

RETRY_FIRST: Final = 1.0  # seconds before the first retry; doubles up to retry_max
UDP_MAX: Final = 2048  # bytes of one syslog datagram (RFC 5426: receivers take at least this)
SD_ID: Final = "sctl@32473"
SEVERITY: Final = {"critical": 2, "error": 3, "warning": 4, "notice": 5, "info": 6}
BODY_MAX: Final = 65536  # bytes of a webhook answer read (and ignored)


class DeliveryError(Exception):
    """An attempt failed; `permanent`: retrying this alert would fail the same way."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Forwarder:
    """One receiver: a bounded queue and the worker thread that empties it (module doc)."""

    def __init__(self, cfg: ForwarderConfig, site: str, host: str) -> None:
        self.name = cfg.name
        self.cfg = cfg.values
        self.site, self.host = site, host
        self.queue_max: int = self.cfg["queue_max"]
        self.retry_max: float = self.cfg["retry_max"]
        self.timeout: float = self.cfg["timeout"]
        self.counters = dict.fromkeys(("sent", "failed", "dropped", "retries"), 0)
        self.last_error = ""
        self._queue: deque[Alert] = deque()
        self._busy = False  # an alert is out of the queue, being delivered
        self._cond = threading.Condition()
        self._stopping = False
        self._overflowing = False
        self._thread = threading.Thread(target=self._run, name=f"alerts-{self.name}",
                                        daemon=True)

    # --- the alerts loop's side (any thread) -------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def offer(self, alert: Alert) -> None:
        """Queue `alert`; never waits for the receiver."""
        with self._cond:
            if len(self._queue) >= self.queue_max:
                self._queue.popleft()
                self.counters["dropped"] += 1
                if not self._overflowing:
                    self._overflowing = True
                    log.warning("alerts: %s queue full (%d alerts; receiver down or slow: %s): "
                                "dropping the oldest", self.name, self.queue_max,
                                self.last_error or "no answer yet", extra={"receiver": self.name})
            self._queue.append(alert)
            self._cond.notify()

    def status(self) -> dict[str, Any]:
        with self._cond:
            queued = len(self._queue) + self._busy
        return {**self.counters, "queued": queued, "last_error": self.last_error or None}

    def idle(self) -> bool:
        with self._cond:
            return not self._queue and not self._busy

    def stop(self, grace: float) -> int:
        """Let the worker deliver what it can for `grace` seconds, then stop it; returns the
        number of alerts left undelivered."""
        deadline = time.monotonic() + grace
        while not self.idle() and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.02)
        with self._cond:
            self._stopping = True
            left = len(self._queue) + self._busy
            self._cond.notify()
        self._thread.join(timeout=max(0.1, deadline - time.monotonic()))
        return left

    # --- the worker thread -------------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        alert: Alert | None = None
        while True:
            with self._cond:
                if alert is None:
                    while not self._queue and not self._stopping:
                        self._cond.wait()
                    if self._stopping:
                        break
                    alert, self._busy = self._queue.popleft(), True
            try:
                self.deliver(alert)
            except DeliveryError as exc:
                failed = self._failed(alert, exc, attempt)
            except Exception as exc:  # a bug here must not end the worker
                log.exception("alerts: %s: delivering %s failed", self.name, alert.key)
                failed = self._failed(alert, DeliveryError(str(exc), permanent=True), attempt)
            else:
                failed = False
                self.counters["sent"] += 1
                if attempt:
                    log.info("alerts: %s delivers again (after %d retries)", self.name, attempt,
                             extra={"receiver": self.name})
                self.last_error = ""
            if failed:
                attempt += 1
                delay = min(self.retry_max, RETRY_FIRST * 2 ** (attempt - 1))
                with self._cond:
                    if not self._stopping:
                        self._cond.wait(delay * random.uniform(0.5, 1.0))
                    if self._stopping:
                        break
                continue
            attempt = 0
            with self._cond:
                alert, self._busy = None, False
                self._overflowing = False
        with contextlib.suppress(Exception):
            self.close()

    def _failed(self, alert: Alert, exc: DeliveryError, attempt: int) -> bool:
        """Count and log a failed attempt; True when the alert is to be tried again."""
        self.last_error = str(exc)
        if exc.permanent:
            self.counters["failed"] += 1
            log.error("alerts: %s refused %s %s (dropped, not retried): %s", self.name,
                      alert.state, alert.key, exc, extra={"receiver": self.name})
            return False
        self.counters["retries"] += 1
        if attempt == 0:  # one line per outage; the recovery says how long it took
            log.warning("alerts: %s: %s; retrying (%d queued)", self.name, exc,
                        len(self._queue) + 1, extra={"receiver": self.name})
        return True

    def deliver(self, alert: Alert) -> None:
        """Send one alert or raise DeliveryError. Worker thread."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections at the end. Worker thread."""


class WebhookForwarder(Forwarder):
    def __init__(self, cfg: ForwarderConfig, site: str, host: str) -> None:
        super().__init__(cfg, site, host)
        self.url: str = self.cfg["url"]
        self.headers: Mapping[str, str] = self.cfg["headers"]
        self.context = ssl.create_default_context(cafile=self.cfg["ca"] or None) \
            if self.url.startswith("https:") else None

    def deliver(self, alert: Alert) -> None:
        body = json.dumps(alert_json(alert, self.site, self.host)).encode()
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "sctl-alerts",
            "Idempotency-Key": f"{alert.id}/{alert.state}", **self.headers})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout,
                                        context=self.context) as answer:
                answer.read(BODY_MAX)
        except urllib.error.HTTPError as exc:
            passing = exc.code in (408, 425, 429) or exc.code >= 500
            raise DeliveryError(f"POST {self.url}: HTTP {exc.code} {exc.reason}",
                                permanent=not passing) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DeliveryError(f"POST {self.url}: {reason}") from None


class EmailForwarder(Forwarder):
    def __init__(self, cfg: ForwarderConfig, site: str, host: str) -> None:
        super().__init__(cfg, site, host)
        self.security: str = self.cfg["security"]
        self.server: str = self.cfg["host"]
        self.port: int = self.cfg["port"] or {"starttls": 587, "tls": 465}.get(self.security, 25)
        self.context = ssl.create_default_context(cafile=self.cfg["ca"] or None)
        self.credentials = read_credentials(self.cfg["credentials_file"])

    def deliver(self, alert: Alert) -> None:
        where = f"SMTP {self.server}:{self.port}"
        try:
            smtp = smtplib.SMTP_SSL(self.server, self.port, timeout=self.timeout,
                                    context=self.context) if self.security == "tls" else \
                smtplib.SMTP(self.server, self.port, timeout=self.timeout)
            with smtp:
                if self.security == "starttls":
                    smtp.starttls(context=self.context)
                if self.credentials is not None:
                    smtp.login(*self.credentials)
                smtp.send_message(self.message(alert))
        except smtplib.SMTPNotSupportedError as exc:
            raise DeliveryError(f"{where}: {exc} (STARTTLS not offered? security = "
                                f"\"{self.security}\")", permanent=True) from None
        except smtplib.SMTPRecipientsRefused as exc:
            raise DeliveryError(f"{where}: recipients refused: {exc.recipients}",
                                permanent=True) from None
        except smtplib.SMTPResponseException as exc:
            text = exc.smtp_error.decode(errors="replace") if isinstance(
                exc.smtp_error, bytes) else str(exc.smtp_error)
            raise DeliveryError(f"{where}: {exc.smtp_code} {text}",
                                permanent=exc.smtp_code >= 500) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"{where}: {exc or type(exc).__name__}") from None

    def message(self, alert: Alert) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = f"{self.cfg['subject_prefix']} {alert.state.upper()} {alert.title}"[:250]
        msg["From"] = self.cfg["from"]
        msg["To"] = ", ".join(self.cfg["to"])
        msg["Date"] = formatdate(alert.time, localtime=False)
        msg["Message-ID"] = _message_id(alert, alert.state)
        if alert.state == "resolved":
            msg["In-Reply-To"] = msg["References"] = _message_id(alert, "open")
        msg.set_content(_mail_text(alert, self.site, self.host))
        return msg


def _message_id(alert: Alert, state: str) -> str:
    digest = hashlib.sha256(f"{alert.id}/{state}".encode()).hexdigest()[:32]
    return f"<{digest}@sctl-alerts>"


def _mail_text(alert: Alert, site: str, host: str) -> str:
    doc = alert_json(alert, site, host)
    lines = [alert.title, ""]
    lines += [f"{k:>9}: {doc[k]}" for k in ("state", "kind", "source", "key", "severity",
                                            "opened", "time", "count", "site", "host")]
    lines += ["", json.dumps(doc["data"], indent=2, ensure_ascii=False, default=str)]
    return "\n".join(lines) + "\n"


def read_credentials(path: str) -> tuple[str, str] | None:
    """(user, password) from a file: line 1 the user name, line 2 the password; None for no
    file; ConfigError when it cannot be read so. A file others may read gets a warning."""
    if not path:
        return None
    file = Path(path)
    key = "alerts.email.credentials_file"
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(key, f"cannot read {path}: {exc}") from None
    if len(lines) < 2 or not lines[0].strip():
        raise ConfigError(key, f"{path}: expected the user name on line 1 and the password "
                               "on line 2")
    if file.stat().st_mode & 0o077:
        log.warning("alerts: %s can be read by other users (chmod 600 it)", path)
    return lines[0].strip(), lines[1]


class SyslogForwarder(Forwarder):
    def __init__(self, cfg: ForwarderConfig, site: str, host: str) -> None:
        super().__init__(cfg, site, host)
        self.transport, self.target = syslog_target(self.cfg["address"])
        self.facility = FACILITIES[self.cfg["facility"]]
        self.hostname = _header_text(socket.gethostname(), 255)
        self._sock: socket.socket | None = None

    def deliver(self, alert: Alert) -> None:
        message = format_5424(alert, self.facility, self.cfg["app_name"], self.hostname)
        try:
            if self.transport == "tcp":
                self._tcp().sendall(f"{len(message)} ".encode() + message)
            elif self.transport == "udp":
                assert isinstance(self.target, tuple)
                host, port = self.target
                family, kind, proto, _, address = socket.getaddrinfo(
                    host, port, type=socket.SOCK_DGRAM)[0]
                with socket.socket(family, kind, proto) as sock:
                    sock.sendto(message[:UDP_MAX], address)
            else:
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                    sock.settimeout(self.timeout)
                    sock.sendto(message, str(self.target))
        except OSError as exc:
            self.close()
            raise DeliveryError(f"syslog {self.cfg['address']}: {exc}") from None

    def _tcp(self) -> socket.socket:
        if self._sock is None:
            assert isinstance(self.target, tuple)
            self._sock = socket.create_connection(self.target, timeout=self.timeout)
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


def _header_text(text: str, size: int) -> str:
    """A header field of RFC 5424: printable US-ASCII without spaces, or the nil value."""
    kept = "".join(c for c in text if "!" <= c <= "~")[:size]
    return kept or "-"


def _sd_value(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def format_5424(alert: Alert, facility: int, app_name: str, hostname: str) -> bytes:
    """One RFC 5424 message for `alert` (module doc)."""
    pri = facility * 8 + SEVERITY.get(alert.severity, 5)
    stamp = datetime.fromtimestamp(alert.time, UTC).isoformat(
        timespec="microseconds").replace("+00:00", "Z")
    params = {"id": alert.id, "key": alert.key, "state": alert.state, "source": alert.source,
              "count": alert.count}
    sd = f"[{SD_ID} " + " ".join(f'{k}="{_sd_value(v)}"' for k, v in params.items()) + "]"
    header = (f"<{pri}>1 {stamp} {hostname} {_header_text(app_name, 48)} "
              f"{_header_text(str(os.getpid()), 128)} {_header_text(alert.kind, 32)} {sd} ")
    return header.encode() + alert.title.encode("utf-8", "replace")


KINDS: Final[dict[str, type[Forwarder]]] = {"webhook": WebhookForwarder,
                                           "email": EmailForwarder,
                                           "syslog": SyslogForwarder}


def make_forwarder(cfg: ForwarderConfig, site: str, host: str) -> Forwarder:
    return KINDS[cfg.name](cfg, site, host)
