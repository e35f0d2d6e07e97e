"""`EchoActor`: a small but real actor for tests, and an example of what a device actor writes.

Its device is a line-echo TCP server (`tests.support.echo.EchoServer`) at ``host:port`` from its
settings. The connection is non-blocking (``add_writer`` for the connect, ``add_reader`` for the
data), so the loop never waits on the device. Commands:

- ``echo text`` sends ``text + "\\n"`` to the device and replies with the line that comes back
  (a Deferred resolved by the reader callback);
- ``add a [b]``, ``fail`` (CommandError), ``crash`` (plain exception), ``warn text`` (a WARNING
  record, for the bus log handler);
- ``slow seconds`` (Deferred resolved by a loop timer), ``slow_thread seconds`` (resolved from
  another thread);
- ``runs``: how many times each command id ran, to prove exactly-once execution.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
from collections import Counter, deque
from typing import Any

from actors.core.actor import Actor, CommandError, Deferred, Param, Setting, command
from actors.core.link import UP
from broker.config import port_number

log = logging.getLogger(__name__)

MAX_LINE = 4096


class EchoActor(Actor):
    """Talks to a line-echo TCP device (test actor)."""

    type_name = "test-echo"
    settings = (
        Setting("host", str, "127.0.0.1", "address of the echo device"),
        Setting("port", int, required=True, doc="TCP port of the echo device",
                check=port_number),
        Setting("fail_on_start", bool, False, "raise in on_start (tests the exit code)"),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runs: Counter[str] = Counter()
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._waiting: deque[Deferred] = deque()

    def on_start(self) -> None:
        if self.config["fail_on_start"]:
            raise RuntimeError("fail_on_start is set")

    # --- the device link -------------------------------------------------------------------

    def open_link(self) -> None:
        address = (self.config["host"], self.config["port"])
        self._sock = sock = socket.socket()
        sock.setblocking(False)
        err = sock.connect_ex(address)
        if err not in (0, errno.EINPROGRESS):
            self.link_down(f"connect to {address[0]}:{address[1]}: {os.strerror(err)}")
            return
        self.add_writer(sock, self._on_connected)

    def _on_connected(self) -> None:
        sock = self._sock
        if sock is None:
            return
        self.remove_writer(sock)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.link_down(f"connect to {self.config['host']}:{self.config['port']}: "
                           f"{os.strerror(err)}")
            return
        self.add_reader(sock, self._on_readable)
        self.link_up(f"connected to {self.config['host']}:{self.config['port']}")

    def _on_readable(self) -> None:
        assert self._sock is not None
        try:
            data = self._sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            self.link_down(f"read failed: {exc}")
            return
        if not data:
            self.link_down("device closed the connection")
            return
        self._buf += data
        while b"\n" in self._buf:
            line, _, rest = bytes(self._buf).partition(b"\n")
            self._buf = bytearray(rest)
            if self._waiting:
                self._waiting.popleft().resolve(line.decode(errors="replace"))
        if len(self._buf) > MAX_LINE:
            log.warning("echo device sent %d bytes without a newline: %s", len(self._buf),
                        bytes(self._buf[:32]).hex())
            self.link_down("framing lost (line too long)")

    def close_link(self) -> None:
        if self._sock is not None:
            self.remove_reader(self._sock)
            self.remove_writer(self._sock)
            self._sock.close()
            self._sock = None
        self._buf.clear()
        while self._waiting:
            self._waiting.popleft().fail("link went down before the echo came back")

    # --- commands --------------------------------------------------------------------------

    def _ran(self) -> None:
        assert self.current_command is not None
        self.runs[self.current_command.id] += 1

    @command("echo", Param("text", str, doc="one line of text"))
    def echo(self, text: str) -> Deferred:
        """Send a line to the device; the reply is the line it sends back."""
        self._ran()
        if self.link_state != UP or self._sock is None:
            raise CommandError(f"echo: device link is {self.link_state}; try again when up")
        self._sock.send(text.encode() + b"\n")  # a short line fits any socket buffer
        deferred = Deferred()
        self._waiting.append(deferred)
        return deferred

    @command("add", Param("a", int), Param("b", int, default=1), doc="a + b")
    def add(self, a: int, b: int) -> int:
        self._ran()
        return a + b

    @command("runs", doc="how many times each command id ran")
    def cmd_runs(self) -> dict[str, int]:
        return dict(self.runs)

    @command("slow", Param("seconds", float), doc="reply after `seconds` (a loop timer)")
    def slow(self, seconds: float) -> Deferred:
        self._ran()
        deferred = Deferred()
        self.call_later(seconds, deferred.resolve, {"slept": seconds})
        return deferred

    @command("slow_thread", Param("seconds", float), doc="reply after `seconds` from a thread")
    def slow_thread(self, seconds: float) -> Deferred:
        self._ran()
        deferred = Deferred()
        timer = threading.Timer(seconds, deferred.resolve, args=({"slept": seconds},))
        timer.daemon = True
        timer.start()
        return deferred

    @command("fail", doc="error reply (CommandError)")
    def fail(self) -> None:
        self._ran()
        raise CommandError("failed on purpose")

    @command("crash", doc="a bug in a handler: error reply, the actor keeps running")
    def crash(self) -> None:
        self._ran()
        raise RuntimeError("crash on purpose")

    @command("warn", Param("text", str), doc="log a WARNING (goes to log.<name>)")
    def warn(self, text: str) -> None:
        log.warning("warn command: %s", text)
