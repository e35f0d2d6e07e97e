"""Hostile network peers for fault-injection tests.

`FaultProxy` sits between an actor and its real device simulator on loopback and turns the link
bad on demand, one fault at a time, while the simulator keeps speaking the true wire format:

- ``refuse()``: the listening socket and every connection are closed, so the actor's reconnects
  get "connection refused" until ``accept_again()``;
- ``arm_reset()``: the next chunk from the device is cut in half, the first half forwarded, then
  the actor's connection is reset (RST, ``SO_LINGER`` 0): a reset in the middle of a frame;
- ``mode = "silent"``: a half-open peer, as seen from the actor: the connection stays up, but
  nothing is forwarded either way (what the actor writes is read and discarded, so its send
  buffer never fills and the connection looks healthy to the kernel);
- ``mode = "slow"``: slowloris, device bytes reach the actor one at a time, `byte_delay` apart;
- ``inject(data)``: bytes written to the actor as if the device sent them (garbage, or valid
  frames at a rate the real device would not produce).

One thread runs a selector over every socket; the test thread only sets attributes and queues
bytes under a lock, then wakes the selector through a socket pair.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Final

CHUNK: Final = 65536
TICK: Final = 0.05  # selector timeout: how late a mode change or a slow byte may be handled


@dataclass
class _Pair:
    actor: socket.socket
    device: socket.socket
    to_actor: bytearray = field(default_factory=bytearray)
    to_device: bytearray = field(default_factory=bytearray)
    next_byte: float = 0.0


class FaultProxy:
    """A fault-injecting TCP proxy from 127.0.0.1:`port` (0 = a free one) to `target_port`."""

    def __init__(self, target_port: int, port: int = 0) -> None:
        self.target_port = target_port
        self.mode = "pass"  # pass | silent | slow
        self.byte_delay = 0.005
        self._reset_armed = False
        self._lock = threading.Lock()
        self._pairs: list[_Pair] = []
        self._pending: list[str] = []  # listener changes for the proxy thread
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self._listener: socket.socket | None = None
        self.port = port
        self._listen()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ test thread

    def refuse(self) -> None:
        """Close the listener and every connection: reconnects are refused."""
        with self._lock:
            self._call_in_thread("refuse")

    def accept_again(self) -> None:
        with self._lock:
            self._call_in_thread("listen")

    def arm_reset(self) -> None:
        with self._lock:
            self._reset_armed = True

    @property
    def reset_done(self) -> bool:
        return not self._reset_armed

    def inject(self, data: bytes) -> None:
        """Queue `data` to every connected actor as if the device had sent it."""
        with self._lock:
            for pair in self._pairs:
                pair.to_actor += data
        self._wake()

    def queued_to_actor(self) -> int:
        with self._lock:
            return sum(len(p.to_actor) for p in self._pairs)

    def connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def close(self) -> None:
        self._stop = True
        self._wake()
        self._thread.join(timeout=5)
        self._drop_all()
        if self._listener is not None:
            self._listener.close()
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    # ------------------------------------------------------------------ proxy thread

    def _call_in_thread(self, what: str) -> None:
        self._pending.append(what)
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _listen(self) -> None:
        if self._listener is not None:
            return
        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", self.port))
        lst.listen(8)
        lst.setblocking(False)
        self.port = lst.getsockname()[1]
        self._listener = lst
        self._sel.register(lst, selectors.EVENT_READ)

    def _refuse(self) -> None:
        if self._listener is not None:
            self._sel.unregister(self._listener)
            self._listener.close()
            self._listener = None
        self._drop_all()

    def _drop_all(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            self._close_pair(pair)

    def _close_pair(self, pair: _Pair, reset: bool = False) -> None:
        for s in (pair.actor, pair.device):
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._sel.unregister(s)
        if reset:
            pair.actor.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        pair.actor.close()
        pair.device.close()

    def _run(self) -> None:
        while not self._stop:
            for key, _ in self._sel.select(self._timeout()):
                if key.fileobj is self._wake_r:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                elif key.fileobj is self._listener:
                    self._accept()
                else:
                    self._readable(key.fileobj)  # type: ignore[arg-type]
            with self._lock:
                pending, self._pending = self._pending, []
            for what in pending:
                self._refuse() if what == "refuse" else self._listen()
            self._write_all()

    def _timeout(self) -> float:
        with self._lock:
            if any(p.to_device for p in self._pairs):
                return 0.001
            if any(p.to_actor for p in self._pairs):
                return self.byte_delay if self.mode == "slow" else 0.001
        return TICK

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            actor, _ = self._listener.accept()
        except BlockingIOError:
            return
        try:
            device = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            actor.close()  # the simulator is down: the actor sees its connection closed
            return
        actor.setblocking(False)
        device.setblocking(False)
        pair = _Pair(actor, device)
        with self._lock:
            self._pairs.append(pair)
        self._sel.register(actor, selectors.EVENT_READ, pair)
        self._sel.register(device, selectors.EVENT_READ, pair)

    def _pair_of(self, sock: socket.socket) -> _Pair | None:
        with self._lock:
            return next((p for p in self._pairs if sock in (p.actor, p.device)), None)

    def _readable(self, sock: socket.socket) -> None:
        pair = self._pair_of(sock)
        if pair is None:
            return
        try:
            data = sock.recv(CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if sock is pair.device:  # what the device wrote before closing still arrives
                with contextlib.suppress(OSError):
                    pair.actor.setblocking(True)
                    pair.actor.settimeout(2.0)
                    pair.actor.sendall(bytes(pair.to_actor))
            self._forget(pair)
            return
        if self.mode == "silent":
            return  # the black hole: read, never forwarded
        with self._lock:
            if sock is pair.actor:
                pair.to_device += data
                return
            if self._reset_armed and len(data) >= 2:
                self._reset_armed = False
                cut = True
            else:
                pair.to_actor += data
                cut = False
        if cut:
            with contextlib.suppress(OSError):
                pair.actor.setblocking(True)
                pair.actor.sendall(data[: len(data) // 2])
            time.sleep(0.1)  # let the actor read the half frame before the reset
            self._forget(pair, reset=True)

    def _forget(self, pair: _Pair, reset: bool = False) -> None:
        with self._lock:
            if pair in self._pairs:
                self._pairs.remove(pair)
        self._close_pair(pair, reset)

    def _write_all(self) -> None:
        now = time.monotonic()
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            with self._lock:
                if self.mode == "slow":
                    if now < pair.next_byte or not pair.to_actor:
                        out = b""
                    else:
                        out = bytes(pair.to_actor[:1])
                        pair.next_byte = now + self.byte_delay
                else:
                    out = bytes(pair.to_actor[:CHUNK])
                to_device = bytes(pair.to_device[:CHUNK])
            try:
                sent = pair.actor.send(out) if out else 0
                sent_dev = pair.device.send(to_device) if to_device else 0
            except BlockingIOError:
                continue
            except OSError:
                self._forget(pair)
                continue
            with self._lock:
                del pair.to_actor[:sent]
                del pair.to_device[:sent_dev]


def _i_frame(ns: int, nr: int, asdu: bytes) -> bytes:
    return bytes([0x68, 4 + len(asdu)]) + struct.pack("<HH", ns << 1, nr << 1) + asdu


class Raw104Master:
    """A bare IEC 60870-5-104 master on a plain socket (no c104): STARTDT, one single command
    (C_SC_NA_1, direct execute; COT and common address 2 bytes, IOA 3 bytes), and the ASDUs the
    server sends back. It can vanish at any point, which a well-behaved master never does."""

    STARTDT_ACT: Final = bytes([0x68, 4, 0x07, 0, 0, 0])
    STARTDT_CON: Final = bytes([0x68, 4, 0x0B, 0, 0, 0])

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._buf = b""
        self._ns = 0

    def start(self) -> None:
        self.sock.sendall(self.STARTDT_ACT)
        while True:
            apdu = self.read_apdu()
            if apdu[:6] == self.STARTDT_CON:
                return

    def single_command(self, ca: int, ioa: int, on: bool) -> None:
        asdu = bytes([45, 0x01]) + struct.pack("<BBH", 6, 0, ca) + ioa.to_bytes(3, "little") \
            + bytes([1 if on else 0])
        self.sock.sendall(_i_frame(self._ns, 0, asdu))
        self._ns += 1

    def read_apdu(self) -> bytes:
        """The next whole APDU (start byte, length, control fields, ASDU)."""
        while True:
            if len(self._buf) >= 2 and len(self._buf) >= 2 + self._buf[1]:
                n = 2 + self._buf[1]
                apdu, self._buf = self._buf[:n], self._buf[n:]
                return apdu
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("104 server closed the connection")
            self._buf += chunk

    def wait_act_con(self, type_id: int, ioa: int) -> bool:
        """Wait for the activation confirmation of a command; True if positive."""
        while True:
            apdu = self.read_apdu()
            if len(apdu) < 15 or apdu[2] & 0x01:  # S- or U-frame
                continue
            asdu = apdu[6:]
            cot = asdu[2]
            if asdu[0] == type_id and cot & 0x3F == 7 \
                    and int.from_bytes(asdu[6:9], "little") == ioa:
                return not cot & 0x40

    def vanish(self) -> None:
        """Reset the connection (RST): the master is gone without a goodbye."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()
