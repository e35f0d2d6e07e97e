"""Non-blocking TCP for actors: a client connection, an accepted peer and a listener, all driven
by the actor's loop (`Actor.add_reader` / `add_writer`), so a slow device never blocks the bus.

`TcpStream` is one connected socket: `send` queues bytes (bounded: `max_pending`, beyond which
the stream closes with a reason instead of growing without limit), received bytes go to
`on_data`, and the first failure or peer close calls `on_closed(reason)` exactly once; `close()`
by the owner does not call it. `TcpClient` adds a non-blocking connect (`on_connected`, or
`on_closed` with the reason) and TCP keepalive so a half-open connection is noticed.
`TcpListener` accepts connections and hands each one to `on_accept(sock, (host, port))`.

Every callback runs on the actor's loop thread; nothing here raises into the loop. Readers go
through the owner's `add_reader`, so an actor that pauses its device (a congested bus,
docs/backpressure.md) stops every stream's reads at once and TCP pushes back on the peer.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any, Final, Protocol

log = logging.getLogger(__name__)

RECV_SIZE: Final = 65536
# Chunks read per readiness: the loop gets a turn at least every READS_PER_TURN * RECV_SIZE
# bytes of a fast device, so heartbeats, commands and a pause (a congested bus stops polling
# the device, docs/backpressure.md) are not held up behind a flood.
READS_PER_TURN: Final = 16
MAX_PENDING: Final = 1 << 20  # bytes queued for sending before the stream gives up


class LoopOwner(Protocol):
    """What the streams need from an Actor (any object with these methods will do)."""

    def add_reader(self, fd: Any, callback: Callable[[], object]) -> None: ...
    def remove_reader(self, fd: Any) -> None: ...
    def add_writer(self, fd: Any, callback: Callable[[], object]) -> None: ...
    def remove_writer(self, fd: Any) -> None: ...
    def call_soon_threadsafe(self, fn: Callable[..., object], *args: Any) -> None: ...


def set_keepalive(sock: socket.socket, idle: float = 10.0, interval: float = 5.0,
                  count: int = 3) -> None:
    """Probe an idle connection after `idle` s, every `interval` s, give up after `count`
    unanswered probes: a half-open peer is detected in about idle + interval * count seconds."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval),
                       ("TCP_KEEPCNT", count)):
        if hasattr(socket, opt):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), max(1, int(value)))


def describe_error(err: int) -> str:
    return f"{os.strerror(err)} ({errno.errorcode.get(err, err)})"


class TcpStream:
    """One connected, non-blocking socket on an actor's loop."""

    def __init__(self, owner: LoopOwner, sock: socket.socket | None, peer: str,
                 on_data: Callable[[bytes], object], on_closed: Callable[[str], object],
                 *, max_pending: int = MAX_PENDING) -> None:
        self.owner = owner
        self.sock: socket.socket | None = sock
        self.peer = peer
        self.on_data = on_data
        self.on_closed = on_closed
        self.max_pending = max_pending
        self._out = bytearray()
        self._writing = False
        self._reading = False
        self.bytes_in = 0
        self.bytes_out = 0

    @property
    def open(self) -> bool:
        return self.sock is not None

    def start_reading(self) -> None:
        if self.sock is not None and not self._reading:
            self._reading = True
            self.owner.add_reader(self.sock, self._on_readable)

    def send(self, data: bytes) -> bool:
        """Queue `data`; False (and nothing queued) if the stream is closed."""
        if self.sock is None:
            return False
        if len(self._out) + len(data) > self.max_pending:
            self._fail(f"more than {self.max_pending} bytes waiting to be sent to {self.peer} "
                       "(the peer does not read)")
            return False
        self._out += data
        if not self._writing:
            self._flush()
        return self.sock is not None

    def close(self) -> None:
        """Close without calling `on_closed` (the owner decided). Idempotent."""
        sock, self.sock = self.sock, None
        if sock is None:
            return
        if self._reading:
            self.owner.remove_reader(sock)
            self._reading = False
        if self._writing:
            self.owner.remove_writer(sock)
            self._writing = False
        self._out.clear()
        with contextlib.suppress(OSError):
            sock.close()

    def _fail(self, reason: str) -> None:
        if self.sock is None:
            return
        self.close()
        self.on_closed(reason)

    def _on_readable(self) -> None:
        for _ in range(READS_PER_TURN):  # level-triggered: the next turn reads the rest
            if self.sock is None:
                return
            try:
                chunk = self.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._fail(f"connection to {self.peer} failed: "
                           f"{describe_error(exc.errno or 0)}")
                return
            if not chunk:
                self._fail(f"connection closed by peer {self.peer}")
                return
            self.bytes_in += len(chunk)
            self.on_data(chunk)
            if len(chunk) < RECV_SIZE:
                return

    def _flush(self) -> None:
        while self._out and self.sock is not None:
            try:
                n = self.sock.send(self._out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._fail(f"sending to {self.peer} failed: {describe_error(exc.errno or 0)}")
                return
            self.bytes_out += n
            del self._out[:n]
        if self.sock is None:
            return
        if self._out and not self._writing:
            self._writing = True
            self.owner.add_writer(self.sock, self._flush)
        elif not self._out and self._writing:
            self._writing = False
            self.owner.remove_writer(self.sock)


class TcpClient(TcpStream):
    """A stream that starts with a non-blocking connect to host:port.

    `connect()` returns at once; `on_connected()` follows when the connection is established, or
    `on_closed(reason)` when it is refused or fails. Keepalive is on (see `set_keepalive`). The
    caller's connect timeout (the Actor base's `connect_timeout`) covers a silent network.
    """

    def __init__(self, owner: LoopOwner, host: str, port: int,
                 on_connected: Callable[[], object], on_data: Callable[[bytes], object],
                 on_closed: Callable[[str], object], *, keepalive: tuple[float, float, int] |
                 None = (10.0, 5.0, 3), max_pending: int = MAX_PENDING) -> None:
        super().__init__(owner, None, f"{host}:{port}", on_data, on_closed,
                         max_pending=max_pending)
        self.host = host
        self.port = port
        self.on_connected = on_connected
        self.keepalive = keepalive
        self.connected = False
        self._attempt = 0  # numbers connect() calls, so a late DNS answer is recognised

    def connect(self) -> None:
        """Start connecting. An IP address is used at once; a host name is resolved on a
        short-lived thread (a slow DNS server must not stall the actor's loop), and the
        result comes back through the owner's `call_soon_threadsafe`."""
        self.close()
        self.connected = False
        self._attempt += 1
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_NUMERICHOST)
        except socket.gaierror:
            attempt = self._attempt
            threading.Thread(target=self._resolve, args=(attempt,), daemon=True,
                             name=f"resolve {self.peer}").start()
            return
        self._dial(infos[0])

    def _resolve(self, attempt: int) -> None:  # resolver thread: only hands the result over
        try:
            infos: Any = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            infos = exc
        self.owner.call_soon_threadsafe(self._resolved, attempt, infos)

    def _resolved(self, attempt: int, infos: Any) -> None:
        if attempt != self._attempt or self.sock is not None:
            return  # closed or restarted meanwhile: a stale answer
        if isinstance(infos, OSError):
            self.on_closed(f"cannot resolve {self.peer}: {infos}")
        else:
            self._dial(infos[0])

    def _dial(self, info: tuple[Any, ...]) -> None:
        family, kind, proto, _, address = info
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.keepalive is not None:
            set_keepalive(sock, *self.keepalive)
        self.sock = sock
        err = sock.connect_ex(address)
        if err == 0:
            self._established()
        elif err in (errno.EINPROGRESS, errno.EWOULDBLOCK):
            self._writing = True
            self.owner.add_writer(sock, self._on_connect_done)
        else:
            self._fail(f"connect to {self.peer}: {describe_error(err)}")

    def _on_connect_done(self) -> None:
        sock = self.sock
        if sock is None:
            return
        self.owner.remove_writer(sock)
        self._writing = False
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._fail(f"connect to {self.peer}: {describe_error(err)}")
            return
        self._established()

    def _established(self) -> None:
        self.connected = True
        self.start_reading()
        self.on_connected()
        if self.sock is not None and self._out:
            self._flush()

    def send(self, data: bytes) -> bool:
        if not self.connected:
            return False
        return super().send(data)

    def close(self) -> None:
        self.connected = False
        self._attempt += 1  # a resolution still running belongs to no attempt now
        super().close()


class TcpListener:
    """A listening socket; each accepted connection goes to `on_accept(sock, (host, port))`
    already non-blocking. `port = 0` picks a free port (see `.port` after `start`)."""

    def __init__(self, owner: LoopOwner, host: str, port: int,
                 on_accept: Callable[[socket.socket, tuple[str, int]], object],
                 *, backlog: int = 8) -> None:
        self.owner = owner
        self.host = host
        self.port = port
        self.on_accept = on_accept
        self.backlog = backlog
        self.sock: socket.socket | None = None

    def start(self) -> int:
        """Bind and listen; raises OSError (address in use, ...) for the caller to report."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(self.backlog)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.owner.add_reader(sock, self._on_readable)
        return self.port

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            self.owner.remove_reader(sock)
            sock.close()

    def _on_readable(self) -> None:
        while self.sock is not None:
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("accept on %s:%d failed: %s", self.host, self.port, exc)
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.on_accept(conn, (addr[0], addr[1]))
