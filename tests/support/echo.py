"""TCP device stand-ins on one thread each: `EchoServer` (a line-echo device a test can stop
and restart on the same port) and `Recorder` (an instrument that records every line), both on
`TcpPeer`."""

from __future__ import annotations

import selectors
import socket
import threading
from pathlib import Path
from typing import Self


class TcpPeer:
    """A TCP server for any number of clients, served by one thread; a subclass says what to
    do with what a client sends (`received`). `stop()` closes the listener and every client
    (an actor sees EOF); `start()` again listens on the same port."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self.port, self.host = port, host
        self.accepted = 0
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()

    def start(self) -> Self:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen()
        self.port = listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, args=(listener,), daemon=True,
                                        name=f"{type(self).__name__}-{self.port}")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._wake_w.send(b"x")
        self._thread.join(5)
        self._thread = None

    def close(self) -> None:
        self.stop()
        self._wake_r.close()
        self._wake_w.close()

    def join(self) -> None:
        """Serve until the process ends (a helper process that its test kills)."""
        if self._thread is not None:
            self._thread.join()

    def connected(self, conn: socket.socket, number: int) -> None:
        """Client `number` (1, 2, ...) connected."""

    def received(self, conn: socket.socket, data: bytes) -> None:
        raise NotImplementedError

    def closed(self, conn: socket.socket) -> None:
        """The client closed its end (or the server stops)."""

    def _serve(self, listener: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(listener, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        clients: list[socket.socket] = []
        try:
            while True:
                for key, _ in sel.select():
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._wake_r:
                        self._wake_r.recv(16)
                        return
                    if sock is listener:
                        conn, _ = listener.accept()
                        self.accepted += 1
                        clients.append(conn)
                        sel.register(conn, selectors.EVENT_READ)
                        self.connected(conn, self.accepted)
                        continue
                    data = sock.recv(65536)
                    if data:
                        self.received(sock, data)
                    else:
                        sel.unregister(sock)
                        clients.remove(sock)
                        self.closed(sock)
                        sock.close()
        finally:
            for conn in clients:
                self.closed(conn)
                conn.close()
            listener.close()
            sel.close()


class EchoServer(TcpPeer):
    """Echoes every byte back to its sender."""

    def received(self, conn: socket.socket, data: bytes) -> None:
        conn.sendall(data)


class Recorder(TcpPeer):
    """A line-oriented instrument that takes any number of clients and records every line
    with the number of the connection it came on (and appends it to `out`, one line each, if
    given); answers nothing (a ``write`` needs no answer). Listens from construction on."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, out: Path | None = None) -> None:
        super().__init__(port, host)
        self.lines: list[tuple[int, str]] = []
        self.out = out
        self._lock = threading.Lock()
        self._partial: dict[socket.socket, tuple[int, bytes]] = {}
        self.start()

    def writes(self) -> list[str]:
        with self._lock:
            return [line for _, line in self.lines]

    def connected(self, conn: socket.socket, number: int) -> None:
        self._partial[conn] = (number, b"")

    def received(self, conn: socket.socket, data: bytes) -> None:
        number, buf = self._partial[conn]
        *done, rest = (buf + data).split(b"\n")
        self._partial[conn] = (number, rest)
        got = [(number, d.decode(errors="replace")) for d in done]
        with self._lock:
            self.lines += got
        if self.out is not None and got:
            with self.out.open("a", encoding="utf-8") as fh:
                fh.writelines(f"{n} {line}\n" for n, line in got)

    def closed(self, conn: socket.socket) -> None:
        self._partial.pop(conn, None)
