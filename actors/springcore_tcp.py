"""`SpringCoreTcpActor` (type ``springcore-tcp``): a SpringCard SpringCore Smart Reader in
``$SCRDR`` over TCP mode (its TCP-specific behaviour: docs/protocols/springcore.md).

The reader is the TCP server (port 4000) and accepts ONE client at a time; we are that client.
The stream is decoded by `actors.protocols.springcore.ScrdrDecoder`; each tag becomes
``evt.<name>.tag`` (the shared schema of `actors.protocols.springcore_tag`), commands go out as
``$SCCMD`` lines, fire-and-forget (the reader never answers them).

Link handling, on top of the base's state machine and backoff:

- A connection is reported up only after it survived `SETTLE` seconds or delivered data. A
  reader already serving another client accepts the TCP connection and closes it at once (or
  refuses it): that is reported as link down with the reason "closed by the device right after
  connect — is another client connected? the reader accepts one", then retried with backoff,
  instead of an up/down flap that looks like a working link.
- Half-open connections (the reader lost power, a cable was pulled): TCP keepalive from
  `actors.transports.tcp.TcpClient`, plus the optional `idle_timeout` (the reader has no heartbeat
  over TCP, so "nothing for N s" can only mean something at sites where tags pass often).
- A device that vanishes mid-line: the partial line is reported (``evt.<name>.rejected`` and
  the log) and discarded; the next connection starts clean.

Nothing is dropped quietly: a line the codec rejects, an over-long line and a partial line at
disconnect each give a WARNING and ``evt.<name>.rejected`` ``{reason, raw}``; a bad checksum
still publishes the tag (``checksum: "bad"``) with a WARNING. Counters in the heartbeat: tags,
greetings, rejected, bad_checksum.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

from actors.core.actor import Actor, CommandError, Param, Setting, command
from actors.core.link import UP
from actors.core.loop import TimerHandle
from actors.protocols.springcore import (
    BAD,
    LINE_ENDINGS,
    SEQ_ACCEPT,
    SEQ_DENY,
    SEQ_WINK,
    Field,
    Greeting,
    Rejected,
    ScrdrDecoder,
    buzz_command,
    encode_command,
    leds_command,
    seq_command,
)
from actors.transports.tcp import TcpClient
from broker.config import non_negative, port_number
from broker.wire.errors import LocalProtocolError

log = logging.getLogger(__name__)

SETTLE: Final = 0.3  # seconds a new connection must survive before the link counts as up
BUSY: Final = ("closed by the device right after connect — is another client connected? "
               "the reader accepts one")


def _line_ending(value: Any) -> None:
    if value not in LINE_ENDINGS:
        raise ValueError('must be "\\r\\n", "\\n" or "" (empty: no terminator)')


class SpringCoreTcpActor(Actor):
    """A SpringCore Smart Reader over TCP ($SCRDR events, $SCCMD commands)."""

    type_name = "springcore-tcp"
    settings = (
        Setting("host", str, required=True, doc="address of the reader"),
        Setting("port", int, 4000, "TCP port of the reader's $SCRDR server", check=port_number),
        Setting("idle_timeout", float, 0.0,
                "reconnect when nothing arrives for this many seconds (0 = off; the reader "
                "has no heartbeat over TCP, so only for sites where tags pass often)",
                check=non_negative),
        Setting("line_ending", str, "\r\n",
                'terminator of the $SCCMD lines sent: "\\r\\n" (as documented), "\\n" or ""',
                check=_line_ending),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.address = f"{self.config['host']}:{self.config['port']}"
        self._client: TcpClient | None = None
        self._decoder = ScrdrDecoder()
        self._confirmed = False  # the connection survived SETTLE or sent data: link up
        self._settle_timer: TimerHandle | None = None
        self._idle_timer: TimerHandle | None = None
        self._established = False  # TCP connected (maybe not confirmed yet)
        self._last_rx = 0.0
        self._down_since = time.monotonic()  # never up yet: down since the start
        self._down_reason = "not connected yet"
        for key in ("tags", "greetings", "rejected", "bad_checksum"):
            self.counters[key] = 0

    # --- the link -----------------------------------------------------------------------------

    def link_down(self, reason: str) -> None:
        """Also remember when and why the link was lost, for the commands' error replies."""
        if self.link_state == UP:
            self._down_since = time.monotonic()
        self._down_reason = reason
        super().link_down(reason)

    def open_link(self) -> None:
        self._decoder = ScrdrDecoder()
        self._confirmed = self._established = False
        self._client = TcpClient(self, self.config["host"], self.config["port"],
                                 self._on_connected, self._on_data, self._on_closed)
        self._client.connect()

    def close_link(self) -> None:
        for timer in (self._settle_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._settle_timer = self._idle_timer = None
        if self._client is not None:
            self._client.close()
            self._client = None
        self._report_partial("connection ended")
        self._confirmed = self._established = False

    def _on_connected(self) -> None:
        self._established = True
        settle = min(SETTLE, self.config["connect_timeout"] / 2)
        self._settle_timer = self.call_later(settle, self._confirm, "connection held")

    def _confirm(self, why: str) -> None:
        self._settle_timer = None
        if self._confirmed or self._client is None:
            return
        self._confirmed = True
        self._last_rx = time.monotonic()
        self.link_up(f"connected to {self.address} ({why})")
        if self.config["idle_timeout"] > 0:
            self._idle_timer = self.call_later(self.config["idle_timeout"], self._check_idle)

    def _on_closed(self, reason: str) -> None:
        self._client = None
        if self._established and not self._confirmed:
            reason = f"{self.address}: {BUSY} ({reason})"
        self.link_down(reason)

    def _check_idle(self) -> None:
        idle = self.config["idle_timeout"]
        quiet = time.monotonic() - self._last_rx
        if quiet >= idle:
            self._idle_timer = None
            self.link_down(f"nothing received from {self.address} for {quiet:.1f} s "
                           f"(idle_timeout {idle:g} s)")
        else:
            self._idle_timer = self.call_later(idle - quiet, self._check_idle)

    # --- data from the reader -----------------------------------------------------------------

    def _on_data(self, chunk: bytes) -> None:
        self._last_rx = time.monotonic()
        if not self._confirmed:
            if self._settle_timer is not None:
                self._settle_timer.cancel()
            self._confirm("data received")
        self._decoder.feed(chunk)
        for event in self._decoder.events():
            if isinstance(event, Greeting):
                self.counters["greetings"] += 1
                log.info("reader %s: greeting %r (older firmware: connected, not a tag)",
                         self.address, event.raw)
            elif isinstance(event, Rejected):
                self._reject(event.reason, event.raw)
            else:
                self._tag(event)

    def _tag(self, tag: dict[str, Any]) -> None:
        self.counters["tags"] += 1
        if tag["checksum"] == BAD:
            self.counters["bad_checksum"] += 1
            log.warning("reader %s: checksum matches neither convention, tag %s published "
                        "with checksum 'bad': %r", self.address, tag["tag_id"], tag["raw"][:200])
        self.publish_event("tag", tag)

    def _reject(self, reason: str, raw: bytes) -> None:
        self.counters["rejected"] += 1
        log.warning("reader %s: line rejected: %s; starts with %s", self.address, reason,
                    raw.hex())
        self.publish_event("rejected", {"reason": reason, "raw": raw.decode("latin-1")})

    def _report_partial(self, why: str) -> None:
        partial = self._decoder.reset()
        if partial:
            self._reject(f"{why} in the middle of a line: {len(partial)} bytes discarded",
                         partial[:64])

    # --- commands -----------------------------------------------------------------------------

    def _send(self, fields: list[Field]) -> dict[str, Any]:
        client = self._client
        if self.link_state != UP or client is None or not self._confirmed:
            down = time.monotonic() - self._down_since
            raise CommandError(f"reader {self.address} not connected for {down:.1f} s (link "
                               f"{self.link_state}; last: {self._down_reason}); command not "
                               "sent")
        try:
            line = encode_command(fields, line_ending=self.config["line_ending"])
        except LocalProtocolError as exc:
            raise CommandError(str(exc)) from None
        if not client.send(line):
            raise CommandError(f"reader {self.address}: connection lost while sending; "
                               "command not sent")
        log.info("reader %s: sent %r", self.address, line)
        return {"sent": line.decode("ascii"), "to": self.address}

    @command("wink", doc="play the Wink sequence (SEQ=0E) to find the reader")
    def cmd_wink(self) -> dict[str, Any]:
        return self._send([seq_command(SEQ_WINK)])

    @command("accept", doc="play Access granted (SEQ=60)")
    def cmd_accept(self) -> dict[str, Any]:
        return self._send([seq_command(SEQ_ACCEPT)])

    @command("deny", doc="play Access denied (SEQ=61)")
    def cmd_deny(self) -> dict[str, Any]:
        return self._send([seq_command(SEQ_DENY)])

    @command("seq", Param("code", str, doc="sequence code, 1 byte hex: 0E, 60, 61, 05 ..."),
             doc="play UI sequence CODE (SEQ=hh)")
    def cmd_seq(self, code: str) -> dict[str, Any]:
        return self._send([seq_command(code)])

    @command("leds", Param("hex8", str, doc="4 bytes hex, byte n drives LED n+1"),
             doc="direct LED control (LEDS=hhhhhhhh)")
    def cmd_leds(self, hex8: str) -> dict[str, Any]:
        return self._send([leds_command(hex8)])

    @command("buzz", Param("ms", int, doc="duration, 0-65535 ms"), doc="beep (BUZZ=hhhh)")
    def cmd_buzz(self, ms: int) -> dict[str, Any]:
        return self._send([buzz_command(ms)])

    @command("raw", Param("fields", str, doc="Field=Value;Field=Value (e.g. "
                                             "LEDS=92929292;BUZZ=0064)"),
             doc="send any $SCCMD fields (sctl send R raw fields='LEDS=92929292;BUZZ=0064')")
    def cmd_raw(self, fields: str) -> dict[str, Any]:
        pairs: list[Field] = []
        for item in fields.split(";"):
            name, eq, value = item.partition("=")
            if not eq or not name:
                raise CommandError(f"raw: {item!r} is not Field=Value (give "
                                   "Field=Value;Field=Value, without $SCCMD)")
            pairs.append((name, value))
        return self._send(pairs)
