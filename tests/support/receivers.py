"""Real receivers for ``sctl alerts`` on loopback, each in threads of the test process:

- `SmtpReceiver`: aiosmtpd with STARTTLS required before AUTH and the mail (certificate from
  `tests.support.certs`), one user; keeps every message with whether it came over TLS and
  which user sent it;
- `WebhookReceiver`: stdlib ``http.server``; ``mode`` ``ok`` (200), ``error`` (500) or
  ``hang`` (answers only once `release` is called); `stop` and `start` again on the same port
  (a receiver that is down for a while);
- `SyslogReceiver`: a UDP socket keeping every datagram.

Each records what it got in a list guarded by a lock; tests read it with `wait_for`.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from tests.support.certs import Pair

HANG_MAX: Final = 20.0  # seconds a hanging webhook holds a request at most


class SmtpReceiver:
    def __init__(self, port: int, server: Pair, user: str, password: str) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        self.port = port
        self.mails: list[tuple[Message, bool, str]] = []  # message, over TLS, user
        self._lock = threading.Lock()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(server.cert), str(server.key))

        def authenticate(smtp: Any, session: Any, envelope: Any, mechanism: str,
                         data: Any) -> AuthResult:
            ok = isinstance(data, LoginPassword) and data.login.decode() == user and \
                data.password.decode() == password
            return AuthResult(success=ok, auth_data=user if ok else None)

        receiver = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                with receiver._lock:
                    receiver.mails.append((message_from_bytes(envelope.content),
                                           session.ssl is not None,
                                           str(session.auth_data or "")))
                return "250 OK"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=port,
                                     tls_context=context, require_starttls=True,
                                     authenticator=authenticate, auth_required=True)

    def start(self) -> SmtpReceiver:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def got(self) -> list[tuple[Message, bool, str]]:
        with self._lock:
            return list(self.mails)


class WebhookReceiver:
    def __init__(self, port: int) -> None:
        self.port = port
        self.mode = "ok"
        self.posts: list[tuple[dict[str, str], Any]] = []  # headers, JSON body (answered ones)
        self.attempts = 0
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.attempts += 1
                if receiver.mode == "hang":
                    receiver._release.wait(HANG_MAX)
                code = 500 if receiver.mode == "error" else 200
                if code == 200:
                    with receiver._lock:
                        receiver.posts.append((dict(self.headers), json.loads(body)))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True,
                         name=f"webhook-{self.port}").start()
        return self

    def release(self) -> None:
        """Hanging requests answer now; later ones answer at once."""
        self.mode = "ok"
        self._release.set()

    def stop(self) -> None:
        if self._server is not None:
            self._release.set()
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def got(self) -> list[tuple[dict[str, str], Any]]:
        with self._lock:
            return list(self.posts)


class SyslogReceiver:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.sock.settimeout(0.1)
        self.datagrams: list[bytes] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"syslog-{self.port}")
        self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.datagrams.append(data)

    def got(self) -> list[bytes]:
        with self._lock:
            return list(self.datagrams)

    def close(self) -> None:
        self._closed = True
        self._thread.join(timeout=2)
        self.sock.close()
