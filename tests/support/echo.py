"""A line-echo TCP device on 127.0.0.1 that a test can stop and restart on the same port."""

from __future__ import annotations

import selectors
import socket
import threading


class EchoServer:
    """Echoes every byte back to its sender. `stop()` closes the listener and every client
    (the actor sees EOF); `start()` again listens on the same port."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.accepted = 0
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()

    def start(self) -> EchoServer:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self.port = listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, args=(listener,), daemon=True,
                                        name=f"echo-{self.port}")
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
                        continue
                    data = sock.recv(65536)
                    if data:
                        sock.sendall(data)
                    else:
                        sel.unregister(sock)
                        clients.remove(sock)
                        sock.close()
        finally:
            for conn in clients:
                conn.close()
            listener.close()
            sel.close()
