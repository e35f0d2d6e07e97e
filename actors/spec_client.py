"""`spec-client`: an actor that talks to a certif.com SPEC session in server mode.

Connection: ``host`` plus either ``port`` (connect there; the HELLO_REPLY may carry any name) or
``specname`` (probe ports 6510-6530, a few at a time, and keep the one whose HELLO_REPLY names
that session). Every probe is bounded by ``hello_timeout``, the whole attempt by the base's
``connect_timeout``; a failed scan says what each port answered. The link is up once HELLO is
answered.

Everything after HELLO is `actors.protocols.spec_session.Session`, a sans-IO state machine:
serial numbers, replies, barriers, moves, registrations (``watch`` and those added by the
``watch`` command, plus ``error`` and ``output/tty``) renewed on every (re)connect. This module
is the loop around it: commands become session requests, socket bytes go in, the bytes it
queues go out, its completions settle the commands' `Deferred` results, its timer runs on the
actor's loop. When the connection drops, every request still waiting fails at once
("connection to SPEC host:port lost while waiting for the reply to ..."), every move fails, and
the base reconnects with backoff. A ``cmd`` or ``func`` that times out sends SV_ABORT (^C), so
that SPEC does not go on running what nobody waits for any more.

Events: ``evt.<name>.chan {chan, value, deleted}`` for watched channels (and ``error``),
``evt.<name>.tty {text}`` for ``output/tty``, ``evt.<name>.link`` (base). Values are in the bus
form of `actors.protocols.spec_types.to_bus`: text that reads as a number is that number, tables
stay tables of strings, a data array is ``{"dtype", "shape", "data"}`` with its raw bytes. An
event too large for the router (``max_message_bytes``) is published without its value, with an
``error`` that says so.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from actors.core.actor import Actor, CommandError, Deferred, Param, Setting, command
from actors.core.link import UP
from actors.core.loop import TimerHandle
from actors.protocols.spec import NAME_SIZE, Cmd, Decoder
from actors.protocols.spec_session import ChannelEvent, Completed, Notice, Session, TtyText
from actors.protocols.spec_types import Value, from_plain, to_bus
from actors.transports.tcp import TcpClient
from broker.config import ActorConfig, positive
from broker.wire.errors import (
    ConfigError,
    EnvelopeError,
    LocalProtocolError,
    RemoteProtocolError,
)

log = logging.getLogger(__name__)

PORT_FIRST: Final = 6510
PORT_LAST: Final = 6530
SCAN_PARALLEL: Final = 7  # probes in flight during a specname scan
JSON_STARTS: Final = ("[", "{")  # a write value typed on the command line as JSON


def _channels(value: Any) -> None:
    for chan in value:
        _check_channel(chan)


def _check_channel(chan: Any) -> None:
    if not isinstance(chan, str) or not chan or "\0" in chan or \
            len(chan.encode("utf-8")) >= NAME_SIZE:
        raise ValueError(f"channel {chan!r} is not a SPEC property name (1-79 bytes, no NUL)")


def _port_or_zero(value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError("must be a TCP port 1-65535, or 0 to scan by specname")


@dataclass
class _Probe:
    port: int
    conn: TcpClient
    decoder: Decoder
    timer: TimerHandle | None = None


class SpecClientActor(Actor):
    """Client of a SPEC session in server mode: commands, channels, watches and motor moves."""

    type_name = "spec-client"
    settings = (
        Setting("host", str, "127.0.0.1", "address of the SPEC server"),
        Setting("port", int, 0, "SPEC server port (0: find the session by specname)",
                check=_port_or_zero),
        Setting("specname", str, "", "SPEC session name; scans ports 6510-6530 for it"),
        Setting("watch", list, [], "channels registered at every connect", check=_channels),
        Setting("timeout", float, 5.0, "seconds to wait for a reply", check=positive),
        Setting("move_timeout", float, 300.0, "seconds a move may take", check=positive),
        Setting("hello_timeout", float, 2.0, "seconds a port has to connect and answer HELLO",
                check=positive),
        Setting("max_message", int, 64 * 1024 * 1024, "largest data accepted from SPEC",
                check=positive),
    )

    @classmethod
    def cross_check(cls, values: dict[str, Any], actor: ActorConfig) -> Iterator[ConfigError]:
        yield from super().cross_check(values, actor)
        port, name = values["port"], values["specname"]
        if bool(port) == bool(name):
            yield ConfigError(f"{actor.path}.port", "set exactly one of port and specname "
                              f"(got {'both' if port else 'neither'})", actor.source)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        host, port, name = self.config["host"], self.config["port"], self.config["specname"]
        self.where = f"{host}:{port}" if port else f"{host}:{name} (ports {PORT_FIRST}-" \
                                                    f"{PORT_LAST})"
        self.server_name = ""
        self.session = Session(self.config["watch"], timeout=self.config["timeout"],
                               max_data=self.config["max_message"])
        self._conn: TcpClient | None = None
        self._probes: list[_Probe] = []
        self._ports: list[int] = []
        self._answers: list[str] = []  # what each scanned port said, for the failure message
        self._waiting: dict[int, tuple[Deferred, Callable[[Any], Any]]] = {}
        self._timer: TimerHandle | None = None
        self._timer_at: float | None = None
        self._too_large: set[str] = set()  # channels whose events exceed the router's bound

    # --- connecting ------------------------------------------------------------------------

    def open_link(self) -> None:
        port = self.config["port"]
        self._ports = [port] if port else list(range(PORT_FIRST, PORT_LAST + 1))
        self._answers = []
        while len(self._probes) < SCAN_PARALLEL and self._ports:
            self._start_probe(self._ports.pop(0))

    def _start_probe(self, port: int) -> None:
        holder: list[_Probe] = []
        conn = TcpClient(self, self.config["host"], port,
                         lambda: holder[0].conn.send(self.session.hello()),
                         lambda data: self._probe_data(holder[0], data),
                         lambda reason: self._probe_failed(holder[0], reason))
        probe = _Probe(port, conn, Decoder(self.config["max_message"]))
        holder.append(probe)
        self._probes.append(probe)
        probe.timer = self.call_later(self.config["hello_timeout"], self._probe_failed, probe,
                                      f"no HELLO_REPLY within {self.config['hello_timeout']:g} s")
        conn.connect()

    def _probe_data(self, probe: _Probe, data: bytes) -> None:
        try:
            probe.decoder.feed(data)
            replies = [m for m in probe.decoder.events() if m.cmd == Cmd.SV_HELLO_REPLY]
        except RemoteProtocolError as exc:
            self._probe_failed(probe, f"not SPEC ({exc})")
            return
        if not replies:
            return
        name = replies[0].name
        wanted = self.config["specname"]
        if wanted and name != wanted:
            self._probe_failed(probe, f"SPEC {name!r}")
            return
        self._adopt(probe, name, replies[0].vers)

    def _probe_failed(self, probe: _Probe, reason: str) -> None:
        if probe not in self._probes:
            return
        self._end_probe(probe)
        self._answers.append(f"{probe.port}: {reason}")
        if self._ports:
            self._start_probe(self._ports.pop(0))
        elif not self._probes:
            wanted = self.config["specname"]
            what = f"no SPEC session named {wanted!r} on {self.config['host']}" if wanted \
                else f"no SPEC server at {self.where}"
            self.link_down(f"{what} ({'; '.join(self._answers)[:400]})")

    def _end_probe(self, probe: _Probe, keep_conn: bool = False) -> None:
        self._probes.remove(probe)
        if probe.timer is not None:
            probe.timer.cancel()
        if not keep_conn:
            probe.conn.close()

    def _adopt(self, probe: _Probe, name: str, vers: int) -> None:
        """This probe found the server: it becomes the connection; the others end."""
        self._end_probe(probe, keep_conn=True)
        for other in list(self._probes):
            self._end_probe(other)
        self._ports = []
        self._conn = probe.conn
        self._conn.on_data, self._conn.on_closed = self._on_data, self._on_lost
        self.server_name = name
        self.where = f"{self.config['host']}:{probe.port}"
        self.session.connection_made(self.where, vers, probe.decoder)
        self.link_up(f"connected to SPEC {name!r} at {self.where} (header "
                     f"v{self.session.vers})")
        self._pump()

    def close_link(self) -> None:
        for probe in list(self._probes):
            self._end_probe(probe)
        self._ports = []
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        self.session.connection_lost(f"connection to SPEC {self.where} lost")
        self._pump()

    def _on_lost(self, reason: str) -> None:
        self.link_down(f"connection to SPEC {self.where} lost: {reason}")

    # --- the loop around the session --------------------------------------------------------

    def _on_data(self, data: bytes) -> None:
        try:
            self.session.receive_data(data)
        except RemoteProtocolError as exc:
            log.warning("actor %s: SPEC %s sent bytes that are not SPEC: %s (raw %s)",
                        self.name, self.where, exc, exc.raw[:64].hex())
            self._pump()
            self.link_down(f"SPEC {self.where} sent bytes that are not SPEC: {exc}")
            return
        self._pump()

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self.session.handle_timeout(time.monotonic())
        self._pump()

    def _pump(self) -> None:
        """Send what the session queued, act on its outputs, re-arm its timer."""
        data = self.session.data_to_send()
        if data and self._conn is not None:
            self._conn.send(data)
        for out in self.session.outputs():
            if isinstance(out, Completed):
                self._complete(out)
            elif isinstance(out, ChannelEvent):
                self._publish_chan(out)
            elif isinstance(out, TtyText):
                self.publish_event("tty", {"text": out.text})
            else:
                self._log_notice(out)
        deadline = self.session.next_deadline
        if deadline != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = None if deadline is None else self.call_later(
                max(0.0, deadline - time.monotonic()), self._on_timer)

    def _complete(self, out: Completed) -> None:
        entry = self._waiting.pop(out.token, None)
        if entry is None:
            return
        deferred, shape = entry
        if out.error is not None:
            deferred.fail(out.error)
        else:
            deferred.resolve(shape(out.result))

    def _publish_chan(self, out: ChannelEvent) -> None:
        if out.chan == "error":
            log.warning("actor %s: SPEC %s reports: %s", self.name, self.where, out.value)
        data = {"chan": out.chan, "deleted": out.deleted, "value": to_bus(out.value)}
        try:
            self.publish_event("chan", data)
        except EnvelopeError as exc:  # larger than the router takes: say so, keep going
            if out.chan not in self._too_large:  # once per channel, not once per frame
                self._too_large.add(out.chan)
                log.warning("actor %s: events of %s not published: %s (raise the router's "
                            "max_message_bytes)", self.name, out.chan, exc)
            self.publish_event("chan", {"chan": out.chan, "deleted": out.deleted,
                                        "error": f"value not published: {exc}"})

    def _log_notice(self, out: Notice) -> None:
        level = logging.WARNING if out.level == "warning" else logging.INFO
        log.log(level, "actor %s: %s", self.name, out.text)

    def _start(self, request: Callable[[], int], shape: Callable[[Any], Any] = to_bus,
               what: str = "SPEC") -> Deferred:
        """Run a session request; its completion settles the returned Deferred."""
        self._require_up()
        try:
            token = request()
        except LocalProtocolError as exc:
            raise CommandError(f"{what}: {exc}") from None
        deferred = Deferred()
        self._waiting[token] = (deferred, shape)
        self._pump()
        return deferred

    def _require_up(self) -> None:
        if self._conn is None or self.link_state != UP or not self.session.connected:
            since = datetime.fromtimestamp(self.link_since, UTC).isoformat(
                timespec="seconds") if self.link_since else "start"
            raise CommandError(f"SPEC link to {self.where} is {self.link_state} since {since}"
                               + (f": {self.link_reason}" if self.link_reason else ""))

    def _channel(self, chan: str) -> None:
        try:
            _check_channel(chan)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self._require_up()

    # --- commands --------------------------------------------------------------------------

    @command("cmd", Param("text", str, doc="SPEC command line"),
             Param("timeout", float, 0.0, "seconds to wait (0: the timeout setting); then "
                   "SV_ABORT stops the command"),
             doc="run a SPEC command and return its value (SV_CMD_WITH_RETURN)")
    def cmd_cmd(self, text: str, timeout: float) -> Deferred:
        return self._start(lambda: self.session.command(text, time.monotonic(), timeout),
                           what="cmd")

    @command("run", Param("text", str, doc="SPEC command line"),
             doc="send a SPEC command without waiting for it (SV_CMD; no result)")
    def cmd_run(self, text: str) -> dict[str, Any]:
        self._require_up()
        try:
            self.session.run(text)
        except LocalProtocolError as exc:
            raise CommandError(f"run: {exc}") from None
        self._pump()
        return {"sent": text}

    @command("func", Param("name", str, doc="SPEC function or macro function"),
             Param("args", object, [], "one argument, or a list; SPEC expressions (quote "
                   "strings), numbers as is"),
             Param("timeout", float, 0.0, "seconds to wait (0: the timeout setting); then "
                   "SV_ABORT stops the call"),
             doc="call a SPEC function and return its value (SV_FUNC_WITH_RETURN)")
    def cmd_func(self, name: str, args: Any, timeout: float) -> Deferred:
        if _positional_words(self.current_command, ("name", "args", "timeout")) > 2:
            # `sctl send S func f 1 2` would bind 2 as the timeout and call f(1) silently
            raise CommandError("func: as words give NAME and at most one argument; the "
                               "timeout only by name (timeout=5); several arguments: args "
                               "as a list (data.args of the command)")
        if not name.isidentifier():
            raise CommandError(f"func: {name!r} is not a SPEC function name")
        words = args if isinstance(args, list) else [args]
        if any(isinstance(w, bool) or not isinstance(w, str | int | float) for w in words):
            raise CommandError("func: arguments are SPEC expressions (text) or numbers")
        return self._start(lambda: self.session.call(name, words, time.monotonic(), timeout),
                           what=f"func {name}")

    @command("read", Param("chan", str, doc="property, e.g. var/x or motor/m0/position"),
             doc="read a property (SV_CHAN_READ)", record=False)
    def cmd_read(self, chan: str) -> Deferred:
        self._channel(chan)
        return self._start(lambda: self.session.read(chan, time.monotonic()), what="read")

    @command("write", Param("chan", str, doc="property"),
             Param("value", object, doc="text, number, table (assoc), list of numbers or rows "
                   "of numbers (an array), or an array {dtype, shape, data}; typed on the "
                   "command line, a value starting with [ or { is JSON"),
             doc="set a property (SV_CHAN_SEND); waits until SPEC processed it")
    def cmd_write(self, chan: str, value: Any) -> Deferred:
        self._channel(chan)
        if self._typed_as_json(value):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise CommandError(f"write: {value[:60]!r} starts like JSON but is not: "
                                   f"{exc}; a text starting with [ or {{ can only be written "
                                   "by name through the Python API") from None
        try:
            spec_value = from_plain(value)
        except LocalProtocolError as exc:
            raise CommandError(f"write {chan}: {exc}") from None
        return self._start(lambda: self.session.write(chan, spec_value, time.monotonic()),
                           lambda _: {"chan": chan, "written": True}, f"write {chan}")

    def _typed_as_json(self, value: Any) -> bool:
        """A value typed as a word of ``sctl send`` (not given by name in ``args``)."""
        env = self.current_command
        named = env is not None and isinstance(env.data, dict) and \
            isinstance(env.data.get("args"), dict) and "value" in env.data["args"]
        return isinstance(value, str) and not named and value.lstrip().startswith(JSON_STARTS)

    @command("watch", Param("chan", str, doc="property to watch"),
             doc="register a channel: evt.<name>.chan on every change, kept over reconnects")
    def cmd_watch(self, chan: str) -> Deferred:
        self._channel(chan)
        return self._start(lambda: self.session.watch(chan, time.monotonic()),
                           lambda _: {"chan": chan, "watching": True}, f"watch {chan}")

    @command("unwatch", Param("chan", str, doc="property to stop watching"),
             doc="unregister a channel")
    def cmd_unwatch(self, chan: str) -> dict[str, Any]:
        try:
            self.session.unwatch(chan)
        except LocalProtocolError as exc:
            raise CommandError(f"unwatch: {exc}") from None
        self._pump()
        return {"chan": chan, "watching": False}

    @command("watches", doc="the channels registered at every connect", record=False)
    def cmd_watches(self) -> list[str]:
        return list(self.session.watches)

    @command("abort", doc="^C on the SPEC server (SV_ABORT): stops moves and counting")
    def cmd_abort(self) -> dict[str, Any]:
        self._require_up()
        self.session.abort()
        self._pump()
        return {"aborted": True}

    @command("move", Param("motor", str, doc="motor mnemonic"),
             Param("position", float, doc="target, user units"),
             Param("timeout", float, 0.0, "seconds the move may take (0: move_timeout)"),
             doc="move a motor; the reply comes when move_done is back to 0")
    def cmd_move(self, motor: str, position: float, timeout: float) -> Deferred:
        self._channel(f"motor/{motor}/move_done")
        wait = timeout or self.config["move_timeout"]
        return self._start(
            lambda: self.session.move(motor, position, time.monotonic(), wait), _move_result,
            "move")


def _move_result(result: dict[str, Any]) -> dict[str, Any]:
    position: Value | None = result["position"]
    return {**result, "position": None if position is None else to_bus(position)}


def _positional_words(env: Any, names: tuple[str, ...]) -> int:
    """How many of a command's argv words fill parameters by position (a ``name=value`` word
    whose name is declared names its parameter instead, as `actors.core.params` binds them)."""
    argv = env.data.get("argv") if env is not None and isinstance(env.data, dict) else None
    if not isinstance(argv, list):
        return 0
    return sum(1 for w in argv if not (isinstance(w, str) and "=" in w
                                       and w.partition("=")[0] in names))
