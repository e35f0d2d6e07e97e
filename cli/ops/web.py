"""The metrics program's HTTP side: ``/metrics`` for Prometheus, ``/`` the live status page.

=================  =========================================================================
path               what it serves
=================  =========================================================================
``/``              the status page: one static HTML file with its script (package data,
                   ``cli/ops/static/status.html``), no build step, nothing from elsewhere
``/events``        the page's live feed: server-sent events, one ``status`` event (the JSON of
                   `SiteMonitor.status`) at once and then on every change, at most every
                   half second; a comment line every `KEEPALIVE` seconds while nothing changes
``/api/status``    the same JSON once (scripts, tests)
``/metrics``       Prometheus text format 0.0.4 (`cli.ops.exposition`)
=================  =========================================================================

Anything else is 404, a method other than GET or HEAD 405 (501 for one HTTP does not know).
Without a token, a request whose ``Host`` is not a loopback name is 403 (`_loopback_name`).
With a token (``[metrics] token_file``) every path needs ``Authorization: Bearer TOKEN`` or
basic auth with the token as password (any user name); otherwise 401 with a basic-auth
challenge, so that a browser asks. Without a token the program only listens on loopback
(`broker.config.metrics_listen` refuses anything else).

Slow clients. Each connection has a thread of its own (at most `MAX_CLIENTS`; more get 503)
and a deadline on every read and write (`CLIENT_TIMEOUT`). The bus thread never writes to a
client: it hands the newest state to the `Hub`, and each ``/events`` client takes the newest
one when it is ready for it, skipping any it was too slow for. A client that does not read is
dropped when a write has waited `CLIENT_TIMEOUT`; its send buffer is bounded (`SSE_SNDBUF`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import re
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Final
from urllib.parse import urlsplit

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from cli.ops import exposition
from cli.ops.metrics_config import is_loopback
from cli.ops.monitor import SiteMonitor, now

log = logging.getLogger(__name__)

MAX_CLIENTS: Final = 64
CLIENT_TIMEOUT: Final = 5.0  # seconds a read or a write to a client may wait
KEEPALIVE: Final = 15.0
SSE_SNDBUF: Final = 32 * 1024
PAGE: Final = "static/status.html"
REALM: Final = 'Basic realm="sctl", charset="UTF-8"'
_INLINE: Final = re.compile(rb"<(script|style)>(.*?)</\1>", re.S)


class Auth:
    """The token check: Bearer TOKEN, or basic auth whose password is TOKEN. None: open."""

    def __init__(self, token: str | None) -> None:
        self.token = None if token is None else token.encode("utf-8")

    def allows(self, header: str | None) -> bool:
        if self.token is None:
            return True
        scheme, _, value = (header or "").strip().partition(" ")
        given: bytes
        if scheme.lower() == "bearer":
            given = value.strip().encode("utf-8")
        elif scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True)
            except (binascii.Error, ValueError):
                return False
            _, sep, given = decoded.partition(b":")
            if not sep:
                return False
        else:
            return False
        return hmac.compare_digest(given, self.token)


class Hub:
    """The newest page state; ``/events`` clients wait here for a newer one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._data = b""
        self.version = 0
        self.clients = 0
        self.skipped = 0  # states a client was too slow for (it got a newer one instead)
        self.dropped = 0  # clients dropped because a write to them waited too long
        self.closed = False

    def publish(self, data: bytes) -> None:
        with self._cond:
            self._data = data
            self.version += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> tuple[int, bytes | None]:
        """(version, state) once there is a state newer than `seen`, else (seen, None) after
        `timeout` or when the hub closes."""
        with self._cond:
            self._cond.wait_for(lambda: self.version != seen or self.closed, timeout)
            if self.version == seen or self.closed:
                return seen, None
            if self.version - seen > 1 and seen:
                self.skipped += self.version - seen - 1
            return self.version, self._data

    def drop(self) -> None:
        with self._cond:
            self.dropped += 1

    @contextlib.contextmanager
    def joined(self) -> Iterator[None]:
        with self._cond:
            self.clients += 1
        try:
            yield
        finally:
            with self._cond:
                self.clients -= 1

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class WebCollector(Collector):
    """The web side's own figures, beside the site's on /metrics."""

    def __init__(self, server: WebServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        hub = self.server.hub
        yield GaugeMetricFamily("sctl_metrics_web_clients", "status page clients connected "
                                "to /events", value=hub.clients)
        yield CounterMetricFamily("sctl_metrics_web_skipped", "page states not sent to a "
                                  "client that was not ready (it got a newer one)",
                                  value=hub.skipped)
        yield CounterMetricFamily("sctl_metrics_web_dropped", "clients dropped because a "
                                  "write to them waited too long", value=hub.dropped)
        responses = CounterMetricFamily("sctl_metrics_web_responses", "HTTP responses by "
                                        "status code", labels=("code",))
        for code, count in sorted(self.server.responses.items()):
            responses.add_metric((str(code),), count)
        yield responses


def page() -> tuple[bytes, str]:
    """The status page and the Content-Security-Policy that allows exactly its own inline
    script and style (by hash) and connections to this server, nothing else."""
    body = resources.files("cli.ops").joinpath(PAGE).read_bytes()
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for m in _INLINE.finditer(body):
        digest = base64.b64encode(hashlib.sha256(m.group(2)).digest()).decode("ascii")
        hashes[m.group(1).decode()].append(f"'sha256-{digest}'")
    csp = (f"default-src 'none'; script-src {' '.join(hashes['script'])}; style-src "
           f"{' '.join(hashes['style'])}; connect-src 'self'; img-src 'self' data:; "
           f"base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return body, csp


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = MAX_CLIENTS

    def __init__(self, address: tuple[str, int], family: int, app: WebServer) -> None:
        self.address_family = family
        self.app = app
        self.active = 0
        self._count = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._count:
            full = self.active >= MAX_CLIENTS
            if not full:
                self.active += 1
        if full:  # answered here, without a thread
            with contextlib.suppress(OSError):
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                b"Connection: close\r\n\r\n")
            self.app.count(503)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._count:
                self.active -= 1


class WebServer:
    """The bound HTTP server; `start` serves on a thread, `stop` ends it and every client."""

    def __init__(self, host: str, port: int, token: str | None, monitor: SiteMonitor,
                 registry: CollectorRegistry) -> None:
        self.monitor = monitor
        self.registry = registry
        self.auth = Auth(token)
        self.hub = Hub()
        self.responses: Counter[int] = Counter()
        self.page, self.csp = page()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.httpd = _HTTPServer((host, port), family, self)  # OSError: cannot bind
        self.address = (str(self.httpd.server_address[0]), int(self.httpd.server_address[1]))
        registry.register(WebCollector(self))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.25,),
                                        name="http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.hub.close()
        if self._thread is not None:
            self.httpd.shutdown()
        self.httpd.server_close()

    def status_json(self) -> bytes:
        wall, mono = now()
        with self.monitor.lock:
            state = self.monitor.status(wall, mono)
        return json.dumps(state, separators=(",", ":"), ensure_ascii=False,
                          default=str).encode("utf-8")

    def count(self, code: int) -> None:
        self.responses[code] += 1


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "sctl-metrics"
    sys_version = ""
    timeout = CLIENT_TIMEOUT

    def do_GET(self) -> None:
        self._route(head=False)

    def do_HEAD(self) -> None:
        self._route(head=True)

    def _refuse_method(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"only GET and HEAD\n", "text/plain",
                   {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method

    def _route(self, head: bool) -> None:
        app = self.server.app
        if not app.auth.allows(self.headers.get("Authorization")):
            self._send(HTTPStatus.UNAUTHORIZED, b"a token is required: Authorization: Bearer "
                       b"TOKEN, or basic auth with the token as password\n", "text/plain",
                       {"WWW-Authenticate": REALM}, head=head)
            return
        if app.auth.token is None and not _loopback_name(self.headers.get("Host")):
            self._send(HTTPStatus.FORBIDDEN, b"without a token this server answers only to "
                       b"loopback host names (127.0.0.1, localhost, [::1])\n", "text/plain",
                       head=head)
            return
        path = urlsplit(self.path).path
        if path == "/":
            self._send(HTTPStatus.OK, app.page, "text/html; charset=utf-8",
                       {"Content-Security-Policy": app.csp}, head=head)
        elif path == "/metrics":
            self._send(HTTPStatus.OK, exposition.write(app.registry.collect()),
                       exposition.CONTENT_TYPE, head=head)
        elif path == "/api/status":
            self._send(HTTPStatus.OK, app.status_json(), "application/json", head=head)
        elif path == "/events":
            self._events(app, head)
        else:
            self._send(HTTPStatus.NOT_FOUND, f"no such page: {path[:200]} (the status page "
                       f"is /, Prometheus metrics /metrics)\n".encode(), "text/plain", head=head)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str,
              headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self._common_headers()
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _common_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")

    def _events(self, app: WebServer, head: bool) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self._common_headers()
        self.close_connection = True  # the stream ends when the connection does
        self.end_headers()
        if head:
            return
        hub = app.hub
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SSE_SNDBUF)
        seen = hub.version
        try:
            with hub.joined():
                self.wfile.write(b"retry: 1000\n" + _event(app.status_json()))
                while True:
                    seen, data = hub.wait(seen, KEEPALIVE)
                    if hub.closed:
                        return
                    self.wfile.write(b": keep-alive\n\n" if data is None else _event(data))
        except TimeoutError:
            hub.drop()
            log.info("status page client %s dropped: it read nothing for %g s",
                     self.address_string(), CLIENT_TIMEOUT)
        except OSError:  # the client went away
            pass

    def send_response(self, code: int, message: str | None = None) -> None:
        self.server.app.count(int(code))
        super().send_response(code, message)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def _loopback_name(host: str | None) -> bool:
    """Whether a request's Host header names this host's loopback (or there is none). A web
    page elsewhere can point a name of its own at 127.0.0.1 (DNS rebinding) to read what a
    browser on this host reaches; its requests then carry that name, and are refused."""
    if not host:
        return True
    try:
        name = urlsplit(f"//{host}").hostname
    except ValueError:
        return False
    return name is not None and is_loopback(name)


def _event(data: bytes) -> bytes:
    return b"event: status\ndata: " + data + b"\n\n"
