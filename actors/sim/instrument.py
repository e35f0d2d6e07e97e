"""`InstrumentSim` (``sctl sim instrument``): a TCP instrument for the ``bus-link`` actor.

It listens on ``host:port`` (port 0 picks a free one) and publishes ``evt.<sim>.listening``
``{"host", "port"}`` once it does, so tests and operators learn the real port. Any number of
clients may connect. Two modes (setting or command ``mode``):

- ``scpi``: line-based, lines end with LF (a CR before it is ignored). ``*IDN?`` answers the
  ``idn`` setting; ``MEAS:VOLT?`` the set voltage plus a bounded random drift (``%.6f``);
  ``VOLT <v>`` sets it (no answer, as SCPI setters do), ``VOLT?`` reads it back; ``ECHO <text>``
  answers the text; ``SYST:ERR?`` pops the error queue (``0,"No error"`` when empty). An unknown
  header answers nothing and queues ``-113,"Undefined header"``. Answers end with LF. Every
  received line is published as ``evt.<sim>.received`` ``{"peer", "line"}``.
- ``raw``: nothing is parsed; every received chunk is published as ``evt.<sim>.received``
  ``{"peer", "hex"}``. The ``greeting`` bytes (hex) are played back to each new connection, and
  the ``play`` command sends bytes to every connected client.

Faults (setting or command ``fault``), applied to every answer: ``none``; ``slow`` (answer after
``delay`` seconds); ``silent`` (never answer); ``close_mid`` (send the first half of the answer,
then close the connection); ``noise`` (NUL and CR bytes around and inside the answer, which text
reads strip); ``flood`` (instead of the answer, stream bytes without any LF until the client
closes or the fault changes).

Everything a client sent is kept (the last `MAX_RECORD` bytes) for the ``received`` command, so
a test can check what reached the wire byte for byte.
"""

from __future__ import annotations

import logging
import random
import socket
from dataclasses import dataclass, field
from typing import Any, Final

from actors.core.actor import Actor, CommandError, Param, Setting, command
from actors.transports.tcp import TcpListener, TcpStream
from broker.config import non_negative

log = logging.getLogger(__name__)

MODES: Final = ("scpi", "raw")
FAULTS: Final = ("none", "slow", "silent", "close_mid", "noise", "flood")
MAX_LINE: Final = 65536  # bytes of a line without LF before the sim drops it
MAX_RECORD: Final = 1 << 20  # bytes of received data kept for the `received` command
FLOOD_CHUNK: Final = b"X" * 16384
FLOOD_EVERY: Final = 0.005  # seconds between flood chunks
NO_ERROR: Final = '0,"No error"'


def _one_of(choices: tuple[str, ...]) -> Any:
    def check(value: Any) -> None:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
    return check


def _port_or_zero(value: Any) -> None:
    if not 0 <= value <= 65535:
        raise ValueError("must be 0 (a free port) or a TCP port 1-65535")


def _hex(value: Any) -> None:
    bytes.fromhex(value)  # ValueError says where the bad digit is


@dataclass(eq=False)
class Client:
    stream: TcpStream
    line: bytearray = field(default_factory=bytearray)
    flooding: bool = False


class InstrumentSim(Actor):
    """A line-based SCPI-like (or raw playback) TCP instrument with fault injection."""

    type_name = "sim-instrument"
    listens = ("host", "port")
    settings = (
        Setting("host", str, "127.0.0.1", "address to listen on"),
        Setting("port", int, 0, "TCP port; 0 picks a free one (see evt.<sim>.listening)",
                check=_port_or_zero),
        Setting("mode", str, "scpi", "scpi (line commands) or raw (playback)",
                check=_one_of(MODES)),
        Setting("fault", str, "none", f"answer behaviour: {', '.join(FAULTS)}",
                check=_one_of(FAULTS)),
        Setting("delay", float, 1.0, "seconds a slow answer waits", check=non_negative),
        Setting("greeting", str, "", "hex bytes sent to every new connection",
                check=_hex),
        Setting("idn", str, "SCTL,INSTRUMENT-SIM,0,1.0", "answer to *IDN?"),
        Setting("volt", float, 1.0, "initial voltage setpoint"),
        Setting("drift", float, 0.001, "largest drift of MEAS:VOLT? around the setpoint"),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mode: str = self.config["mode"]
        self.fault: str = self.config["fault"]
        self.delay: float = self.config["delay"]
        self.volt: float = self.config["volt"]
        self._offset = 0.0
        self._errors: list[str] = []
        self._clients: list[Client] = []
        self._record = bytearray()
        self._listener: TcpListener | None = None
        self._greeting = bytes.fromhex(self.config["greeting"])

    # --- server ----------------------------------------------------------------------------

    def on_start(self) -> None:
        self._listener = TcpListener(self, self.config["host"], self.config["port"],
                                     self._on_accept)
        port = self._listener.start()
        log.info("instrument sim %s listening on %s:%d", self.name, self.config["host"], port)
        self.publish_event("listening", {"host": self.config["host"], "port": port})
        self.link_up(f"listening on {self.config['host']}:{port}")  # a server's link: its socket

    def on_stop(self) -> None:
        for client in list(self._clients):
            self._close(client)
        if self._listener is not None:
            self._listener.close()

    def _on_accept(self, sock: socket.socket, addr: tuple[str, int]) -> None:
        peer = f"{addr[0]}:{addr[1]}"
        client = Client(TcpStream(self, sock, peer, lambda _: None, lambda _: None))
        client.stream.on_data = lambda data: self._on_data(client, data)
        client.stream.on_closed = lambda reason: self._on_closed(client, reason)
        self._clients.append(client)
        client.stream.start_reading()
        log.info("instrument sim %s: client %s connected", self.name, peer)
        if self._greeting:
            client.stream.send(self._greeting)

    def _on_closed(self, client: Client, reason: str) -> None:
        log.info("instrument sim %s: %s", self.name, reason)
        self._close(client)

    def _close(self, client: Client) -> None:
        client.flooding = False
        client.stream.close()
        if client in self._clients:
            self._clients.remove(client)

    def _on_data(self, client: Client, data: bytes) -> None:
        self._record += data
        del self._record[:max(0, len(self._record) - MAX_RECORD)]
        peer = client.stream.peer
        if self.mode == "raw":
            self.publish_event("received", {"peer": peer, "hex": data.hex()})
            return
        client.line += data
        while (end := client.line.find(b"\n")) >= 0:
            line = bytes(client.line[:end]).rstrip(b"\r").decode("utf-8", "replace")
            del client.line[:end + 1]
            self.publish_event("received", {"peer": peer, "line": line})
            answer = self._answer(line)
            if answer is not None and client in self._clients:
                self._respond(client, answer.encode() + b"\n")
        if len(client.line) > MAX_LINE:
            log.warning("instrument sim %s: %d bytes without LF from %s; dropped", self.name,
                        len(client.line), peer)
            client.line.clear()

    # --- the instrument --------------------------------------------------------------------

    def _answer(self, line: str) -> str | None:
        header, _, arg = line.strip().partition(" ")
        header = header.upper()
        if header == "*IDN?":
            return str(self.config["idn"])
        if header in ("MEAS:VOLT?", "MEASURE:VOLTAGE?"):
            drift = self.config["drift"]
            self._offset = max(-drift, min(drift, self._offset + random.uniform(-drift, drift)
                                           / 4))
            return f"{self.volt + self._offset:.6f}"
        if header in ("VOLT", "VOLTAGE"):
            try:
                self.volt = float(arg)
            except ValueError:
                self._errors.append('-224,"Illegal parameter value"')
            return None
        if header in ("VOLT?", "VOLTAGE?"):
            return f"{self.volt:.6f}"
        if header == "ECHO":
            return arg
        if header in ("SYST:ERR?", "SYSTEM:ERROR?"):
            return self._errors.pop(0) if self._errors else NO_ERROR
        self._errors.append('-113,"Undefined header"')
        return None

    def _respond(self, client: Client, payload: bytes) -> None:
        fault = self.fault
        if fault == "none":
            client.stream.send(payload)
        elif fault == "slow":
            self.call_later(self.delay, client.stream.send, payload)
        elif fault == "close_mid":
            client.stream.send(payload[:max(1, len(payload) // 2)])
            self._close(client)
        elif fault == "noise":
            body = payload[:-1]
            client.stream.send(b"\0\r" + body[:1] + b"\0" + body[1:] + b"\r\0\n")
        elif fault == "flood" and not client.flooding:
            client.flooding = True
            self._flood(client)

    def _flood(self, client: Client) -> None:
        if not client.flooding or self.fault != "flood" or not client.stream.open:
            client.flooding = False
            return
        client.stream.send(FLOOD_CHUNK)
        self.call_later(FLOOD_EVERY, self._flood, client)

    # --- commands --------------------------------------------------------------------------

    @command("fault", Param("name", str, doc=", ".join(FAULTS)),
             Param("delay", float, -1.0, "seconds for slow (default: unchanged)"))
    def cmd_fault(self, name: str, delay: float) -> dict[str, Any]:
        """Set how answers are given from now on."""
        if name not in FAULTS:
            raise CommandError(f"fault must be one of {', '.join(FAULTS)}, not {name!r}")
        self.fault = name
        if delay >= 0:
            self.delay = delay
        return self.cmd_state()

    @command("mode", Param("name", str, doc="scpi or raw"))
    def cmd_mode(self, name: str) -> dict[str, Any]:
        """Switch between line commands (scpi) and raw playback."""
        if name not in MODES:
            raise CommandError(f"mode must be one of {', '.join(MODES)}, not {name!r}")
        self.mode = name
        return self.cmd_state()

    @command("play", Param("data", bytes, doc="hex bytes"))
    def cmd_play(self, data: bytes) -> int:
        """Send bytes to every connected client now; replies how many got them."""
        for client in self._clients:
            client.stream.send(data)
        return len(self._clients)

    @command("received", record=False)
    def cmd_received(self) -> dict[str, Any]:
        """Everything clients sent since start or the last clear (hex)."""
        return {"hex": self._record.hex(), "bytes": len(self._record)}

    @command("clear")
    def cmd_clear(self) -> None:
        """Forget what clients sent (for `received`)."""
        self._record.clear()

    @command("disconnect")
    def cmd_disconnect(self) -> int:
        """Close every client connection; replies how many there were."""
        count = len(self._clients)
        for client in list(self._clients):
            self._close(client)
        return count

    @command("state", record=False)
    def cmd_state(self) -> dict[str, Any]:
        """Mode, fault, delay, voltage setpoint, port and connected clients."""
        port = self._listener.port if self._listener is not None else self.config["port"]
        return {"mode": self.mode, "fault": self.fault, "delay": self.delay, "volt": self.volt,
                "host": self.config["host"], "port": port,
                "clients": [c.stream.peer for c in self._clients]}
