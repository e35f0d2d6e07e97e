"""`SpringCoreTcpSim` (type ``sim-springcore-tcp``): a SpringCore Smart Reader in ``$SCRDR`` over
TCP mode, for tests and commissioning without hardware. ``sctl sim springcore-tcp``.

It behaves like the device (docs/protocols/springcore.md: TCP behaviour, $SCCMD): a TCP server
serving ONE client at a time (a second client is accepted and closed at once, like a busy reader),
which emits ``$SCRDR`` lines with CR LF and a checksum and takes ``$SCCMD`` commands with or
without checksum and terminator (the official sample sends ``$SCCMD;SEQ=0E`` bare: a command
without LF is framed by the next ``$`` or by `QUIET` seconds of silence). It never answers a
command. `legacy` = older firmware: the empty ``$SCRDR;;;;;;;;*hh`` greeting on every connect.

Every outcome is an event, so a test or an operator can account for each tag:

=========================== ==========================================================
``evt.<sim>.listening``     ``{host, port}`` once listening (port 0 → the port picked)
``evt.<sim>.client``        ``{peer, state: "connected" | "disconnected", reason}``
``evt.<sim>.refused``       ``{peer, reason}``: a second client, closed at once
``evt.<sim>.sent``          ``{tag_id, line, peer}``: a $SCRDR line written to the client
``evt.<sim>.lost``          ``{tag_id, line, reason}``: a ``present`` with no client to take it
``evt.<sim>.received``      ``{line, fields, checksum, error}``: every $SCCMD received
=========================== ==========================================================
"""

from __future__ import annotations

import logging
import socket
from typing import Any, Final

from actors.core.actor import Actor, CommandError, Param, Setting, command
from actors.core.loop import TimerHandle
from actors.protocols.springcore import (
    CHECKSUM_MODES,
    MAX_COMMAND,
    decode_command,
    encode_tag_line,
    greeting_line,
)
from actors.transports.tcp import TcpListener, TcpStream
from broker.config import non_negative
from broker.wire.errors import LocalProtocolError, RemoteProtocolError

log = logging.getLogger(__name__)

QUIET: Final = 0.2  # seconds after which an unterminated $SCCMD counts as complete
DEFAULT_TAG: Final = "04A1B2C3D4E5F6"


def _port_or_zero(value: Any) -> None:
    if not 0 <= value <= 65535:
        raise ValueError("must be a TCP port 1-65535, or 0 to pick a free one")


def _hex_tag(value: Any) -> None:
    if not value or any(c not in "0123456789abcdefABCDEF" for c in value):
        raise ValueError("must be a TagId in hex, e.g. 04A1B2C3D4E5F6")


class SpringCoreTcpSim(Actor):
    """Simulated SpringCore Smart Reader: $SCRDR over TCP, one client at a time."""

    type_name = "sim-springcore-tcp"
    listens = ("host", "port")
    settings = (
        Setting("host", str, "127.0.0.1", "address to listen on"),
        Setting("port", int, 4000, "TCP port to listen on (0 = pick a free one, see "
                "evt.<sim>.listening)", check=_port_or_zero),
        Setting("legacy", bool, False, "older firmware: send the empty $SCRDR greeting on "
                "every connect"),
        Setting("rate", float, 0.0, "tags per second emitted while a client is connected "
                "(0 = only on `present`)", check=non_negative),
        Setting("tag", str, DEFAULT_TAG, "the TagId emitted at `rate`", check=_hex_tag),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listener = TcpListener(self, self.config["host"], self.config["port"],
                                     self._on_accept)
        self._client: TcpStream | None = None
        self._inbox = bytearray()
        self._quiet_timer: TimerHandle | None = None
        self._rate_timer: TimerHandle | None = None
        for key in ("sent", "lost", "refused", "received"):
            self.counters[key] = 0

    def on_start(self) -> None:
        try:
            port = self._listener.start()
        except OSError as exc:
            raise RuntimeError(f"cannot listen on {self.config['host']}:{self.config['port']}: "
                               f"{exc}") from exc
        log.info("simulated SpringCore reader listening on %s:%d", self.config["host"], port)
        self.publish_event("listening", {"host": self.config["host"], "port": port})
        self.link_up(f"listening on {self.config['host']}:{port}")  # a server's link: its socket
        if self.config["rate"] > 0:
            self._rate_timer = self.call_later(1 / self.config["rate"], self._emit_at_rate)

    def on_stop(self) -> None:
        for timer in (self._quiet_timer, self._rate_timer):
            if timer is not None:
                timer.cancel()
        if self._client is not None:
            self._drop_client("simulator stopping")
        self._listener.close()

    # --- connections --------------------------------------------------------------------------

    def _on_accept(self, sock: socket.socket, addr: tuple[str, int]) -> None:
        peer = f"{addr[0]}:{addr[1]}"
        if self._client is not None:
            sock.close()
            self.counters["refused"] += 1
            reason = f"one client at a time: {self._client.peer} is connected"
            log.warning("refused %s: %s", peer, reason)
            self.publish_event("refused", {"peer": peer, "reason": reason})
            return
        self._client = TcpStream(self, sock, peer, self._on_data, self._on_closed)
        self._client.start_reading()
        log.info("client %s connected", peer)
        self.publish_event("client", {"peer": peer, "state": "connected", "reason": ""})
        if self.config["legacy"]:
            self._client.send(greeting_line())

    def _on_closed(self, reason: str) -> None:
        client, self._client = self._client, None
        self._end_client(client.peer if client is not None else "?", reason)

    def _drop_client(self, reason: str) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
            self._end_client(client.peer, reason)

    def _end_client(self, peer: str, reason: str) -> None:
        self._take_command(bytes(self._inbox))  # what the client sent before leaving counts
        self._inbox.clear()
        log.info("client %s disconnected: %s", peer, reason)
        self.publish_event("client", {"peer": peer, "state": "disconnected", "reason": reason})

    # --- commands from the client -------------------------------------------------------------

    def _on_data(self, chunk: bytes) -> None:
        self._inbox += chunk
        if self._quiet_timer is not None:
            self._quiet_timer.cancel()
            self._quiet_timer = None
        while True:
            # a command ends at LF, or where the next "$" begins one without a terminator
            ends = [i for i in (self._inbox.find(b"\n"), self._inbox.find(b"$", 1)) if i >= 0]
            if not ends:
                break
            end = min(ends)
            line = bytes(self._inbox[:end])
            del self._inbox[:end + 1 if self._inbox[end:end + 1] == b"\n" else end]
            self._take_command(line)
        if len(self._inbox) > MAX_COMMAND + 1:
            self._take_command(bytes(self._inbox))  # recorded as too long, like a reader
            self._inbox.clear()
        elif self._inbox:
            self._quiet_timer = self.call_later(QUIET, self._on_quiet)

    def _on_quiet(self) -> None:
        self._quiet_timer = None
        self._take_command(bytes(self._inbox))
        self._inbox.clear()

    def _take_command(self, line: bytes) -> None:
        line = line.rstrip(b"\r\n")
        if not line:
            return
        self.counters["received"] += 1
        text = line.decode("latin-1")
        try:
            cmd = decode_command(line)
        except RemoteProtocolError as exc:
            log.warning("received an invalid $SCCMD %r: %s", text[:80], exc)
            self.publish_event("received", {"line": text, "fields": None, "checksum": None,
                                            "error": str(exc)})
            return
        log.info("received %r", text)
        self.publish_event("received", {"line": text, "fields": dict(cmd.fields),
                                        "checksum": cmd.checksum, "error": None})

    # --- tags to the client -------------------------------------------------------------------

    def _emit(self, tag_id: str, line: bytes) -> dict[str, Any]:
        text = line.decode("ascii")
        client = self._client
        if client is None or not client.send(line):
            self.counters["lost"] += 1
            reason = "no client connected" if client is None else "connection failed"
            log.warning("tag %s not delivered: %s", tag_id, reason)
            self.publish_event("lost", {"tag_id": tag_id, "line": text, "reason": reason})
            raise CommandError(f"tag {tag_id} not delivered: {reason} (published as "
                               f"evt.{self.name}.lost)")
        self.counters["sent"] += 1
        self.publish_event("sent", {"tag_id": tag_id, "line": text, "peer": client.peer})
        return {"sent": text, "to": client.peer}

    def _emit_at_rate(self) -> None:
        self._rate_timer = self.call_later(1 / self.config["rate"], self._emit_at_rate)
        if self._client is not None:
            tag = self.config["tag"].upper()
            try:
                self._emit(tag, encode_tag_line(tag))
            except CommandError as exc:  # the client went away while sending: already an event
                log.debug("rate tag: %s", exc)

    @command("present",
             Param("tag", str, doc="TagId, hex"),
             Param("interface", str, "13", "Interface code, 2 hex digits or empty"),
             Param("protocol", str, "01", "Protocol code, 2 hex digits or empty"),
             Param("template", int, 1, "template index 0-255, or -1 for empty"),
             Param("rssi", int, -1, "RSSI 0-255, or -1 for empty (BLE/UHF only)"),
             Param("move", str, "", "empty, I, R or IR"),
             Param("data", str, "", "TagData"),
             Param("checksum", str, "incl", f"one of {', '.join(CHECKSUM_MODES)}"),
             doc="emit one $SCRDR line to the connected client (error + evt.<sim>.lost if "
                 "there is none)")
    def cmd_present(self, tag: str, interface: str, protocol: str, template: int, rssi: int,
                    move: str, data: str, checksum: str) -> dict[str, Any]:
        try:
            line = encode_tag_line(tag, interface=interface, protocol=protocol,
                                   template=None if template < 0 else template,
                                   rssi=None if rssi < 0 else rssi, move=move or None,
                                   tag_data=data, checksum=checksum)
        except LocalProtocolError as exc:
            raise CommandError(f"present: {exc}") from None
        return self._emit(tag.upper(), line)

    @command("emit", Param("text", str, doc="bytes to send, as text (latin-1)"),
             Param("ending", str, "\r\n", "appended line ending"),
             doc="write TEXT as is to the client (malformed lines for tests)")
    def cmd_emit(self, text: str, ending: str) -> dict[str, Any]:
        try:
            line = (text + ending).encode("latin-1")
        except UnicodeEncodeError as exc:
            raise CommandError(f"emit: text is not latin-1: {exc}") from None
        client = self._client
        if client is None or not client.send(line):
            raise CommandError("emit: no client connected; nothing sent")
        return {"bytes": len(line), "to": client.peer}

    @command("kick", doc="close the client's connection (the reader dropping its host)")
    def cmd_kick(self) -> dict[str, Any]:
        if self._client is None:
            raise CommandError("kick: no client connected")
        peer = self._client.peer
        self._drop_client("kicked by command")
        return {"closed": peer}
