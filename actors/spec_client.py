"""`spec-client`: an actor that talks to a certif.com SPEC session in server mode.

Connection: ``host`` plus either ``port`` (connect there; the HELLO_REPLY may carry any name) or
``specname`` (probe ports 6510-6530, a few at a time, and keep the one whose HELLO_REPLY names
that session). Every probe is bounded by ``hello_timeout``, the whole attempt by the base's
``connect_timeout``; a failed scan says what each port answered. The link is up once HELLO is
answered; then the watched channels (``watch`` plus those added by the ``watch`` command) and
the service channels ``error`` and ``output/tty`` are registered, on every (re)connect.

Requests carry a serial number (sn) and their reply is matched by it; events (sn 0) may arrive
in between. SV_CHAN_SEND and SV_REGISTER get no reply when they succeed, so they are followed by
a *barrier* (an SV_CHAN_READ): its reply proves the server processed them, and an SV_ERROR
reply with their sn that arrives before it is their failure. When the connection drops, every
request still waiting fails at once ("connection to SPEC host:port lost while waiting for the
reply to ..."), every move fails, and the base reconnects with backoff.

Events: ``evt.<name>.chan {chan, value, deleted[, shape]}`` for watched channels (and
``error``), ``evt.<name>.tty {text}`` for ``output/tty``, ``evt.<name>.link`` (base). SPEC sends
numbers as text; values that read as numbers become numbers, arrays become nested lists with
``shape = [rows, cols]``, associative arrays stay tables of strings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import zmq

from actors.core.actor import Actor, CommandError, Deferred, Param, Setting, command
from actors.core.link import UP
from actors.core.loop import TimerHandle
from actors.protocols.spec import (
    NAME_SIZE,
    Cmd,
    DataType,
    Decoder,
    Message,
    encode_message,
    is_deleted,
)
from actors.protocols.spec_types import (
    SpecArray,
    Value,
    decode_value,
    encode_string,
    encode_value,
    format_number,
    parse_text,
    to_plain,
)
from actors.transports.tcp import TcpClient
from broker.config import ActorConfig, RouterConfig, positive
from broker.wire.errors import ConfigError, LocalProtocolError, RemoteProtocolError

log = logging.getLogger(__name__)

PORT_FIRST: Final = 6510
PORT_LAST: Final = 6530
SCAN_PARALLEL: Final = 7  # probes in flight during a specname scan
SERVICE_CHANNELS: Final = ("error", "output/tty")
BARRIER: Final = "status/ready"
Done = Callable[[Message | None, str | None], None]  # (reply, error text)


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
class _Pending:
    what: str
    done: Done
    timer: TimerHandle | None


@dataclass
class _Probe:
    port: int
    conn: TcpClient
    decoder: Decoder
    timer: TimerHandle | None = None


@dataclass
class _Move:
    motor: str
    target: float
    deferred: Deferred
    timer: TimerHandle
    busy: bool = False  # move_done was seen non-zero since the start


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
    def from_config(cls, actor: ActorConfig, router: RouterConfig,
                    *, context: zmq.Context[Any] | None = None) -> Actor:
        client = super().from_config(actor, router, context=context)
        port, name = client.config["port"], client.config["specname"]
        if bool(port) == bool(name):
            raise ConfigError(f"{actor.path}.port", "set exactly one of port and specname "
                              f"(got {'both' if port else 'neither'})", actor.source)
        return client

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        host, port, name = self.config["host"], self.config["port"], self.config["specname"]
        self.where = f"{host}:{port}" if port else f"{host}:{name} (ports {PORT_FIRST}-" \
                                                    f"{PORT_LAST})"
        self.server_name = ""
        self.watches: dict[str, None] = dict.fromkeys(self.config["watch"])
        self._conn: TcpClient | None = None
        self._decoder = Decoder(self.config["max_message"])
        self._vers = 4
        self._sn = 0
        self._pending: dict[int, _Pending] = {}
        self._silent: dict[int, Callable[[str], None]] = {}  # sn → on SV_ERROR reply
        self._probes: list[_Probe] = []
        self._ports: list[int] = []
        self._answers: list[str] = []  # what each scanned port said, for the failure message
        self._moves: list[_Move] = []
        self._internal: dict[str, int] = {}  # move_done channels registered for moves

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
                         lambda: self._probe_send_hello(holder[0]),
                         lambda data: self._probe_data(holder[0], data),
                         lambda reason: self._probe_failed(holder[0], reason))
        probe = _Probe(port, conn, Decoder(self.config["max_message"]))
        holder.append(probe)
        self._probes.append(probe)
        probe.timer = self.call_later(self.config["hello_timeout"], self._probe_failed, probe,
                                      f"no HELLO_REPLY within {self.config['hello_timeout']:g} s")
        conn.connect()

    def _probe_send_hello(self, probe: _Probe) -> None:
        probe.conn.send(encode_message(Message(cmd=Cmd.SV_HELLO, name="sctl", data=b"",
                                               sn=self._next_sn(), vers=4)))

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
        self._adopt(probe, replies[0])

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

    def _adopt(self, probe: _Probe, hello: Message) -> None:
        """This probe found the server: it becomes the connection; the others end."""
        self._end_probe(probe, keep_conn=True)
        for other in list(self._probes):
            self._end_probe(other)
        self._ports = []
        self._conn, self._decoder = probe.conn, probe.decoder
        self._conn.on_data, self._conn.on_closed = self._on_data, self._on_lost
        self._vers = min(max(hello.vers, 2), 4)
        self.server_name = hello.name
        self.where = f"{self.config['host']}:{probe.port}"
        self.link_up(f"connected to SPEC {hello.name!r} at {self.where} (header v{self._vers})")
        self._register_all()

    def _register_all(self) -> None:
        channels = [*SERVICE_CHANNELS, *self.watches, *self._internal]
        errors: list[str] = []
        for chan in channels:
            self._send_silent(Cmd.SV_REGISTER, chan, None, errors.append)

        def after(_: Message | None, error: str | None) -> None:
            for problem in ([error] if error else []) + errors:
                log.warning("actor %s: registering channels on SPEC %s: %s", self.name,
                            self.where, problem)
        self._barrier(after, f"registering {len(channels)} channels")

    def close_link(self) -> None:
        for probe in list(self._probes):
            self._end_probe(probe)
        self._ports = []
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        self._fail_all(f"connection to SPEC {self.where} lost")

    def _on_lost(self, reason: str) -> None:
        self.link_down(f"connection to SPEC {self.where} lost: {reason}")

    def _fail_all(self, why: str) -> None:
        pending, self._pending = self._pending, {}
        self._silent.clear()
        for entry in pending.values():
            if entry.timer is not None:
                entry.timer.cancel()
            entry.done(None, f"{why} while waiting for the reply to {entry.what}")
        for move in list(self._moves):
            self._end_move(move, f"{why} while motor {move.motor} was moving to "
                                 f"{format_number(move.target)}")

    # --- receiving -------------------------------------------------------------------------

    def _on_data(self, data: bytes) -> None:
        try:
            self._decoder.feed(data)
            for msg in self._decoder.events():
                self._dispatch(msg)
                if self._conn is None:
                    return
        except RemoteProtocolError as exc:
            log.warning("actor %s: SPEC %s sent bytes that are not SPEC: %s (raw %s)",
                        self.name, self.where, exc, exc.raw.hex())
            self.link_down(f"SPEC {self.where} sent bytes that are not SPEC: {exc}")

    def _dispatch(self, msg: Message) -> None:
        if msg.cmd == Cmd.SV_EVENT:
            self._on_event(msg)
        elif msg.cmd == Cmd.SV_REPLY:
            self._on_reply(msg)
        else:
            log.info("actor %s: ignoring unexpected %s from SPEC %s", self.name,
                     msg.describe(), self.where)

    def _on_reply(self, msg: Message) -> None:
        entry = self._pending.pop(msg.sn, None)
        if entry is not None:
            if entry.timer is not None:
                entry.timer.cancel()
            entry.done(msg, None)
            return
        on_error = self._silent.pop(msg.sn, None)
        if on_error is not None:
            if _is_error(msg):
                on_error(_error_text(msg))
            return
        log.info("actor %s: late or unknown reply %s from SPEC %s (its request had timed "
                 "out)", self.name, msg.describe(), self.where)

    def _on_event(self, msg: Message) -> None:
        try:
            value = decode_value(msg)
        except RemoteProtocolError as exc:
            log.warning("actor %s: SPEC %s sent a malformed %s: %s (raw %s)", self.name,
                        self.where, msg.describe(), exc, exc.raw.hex())
            return
        if msg.name == "output/tty":
            self.publish_event("tty", {"text": value if isinstance(value, str) else
                                       str(to_plain(value)[0])})
            return
        if msg.name.endswith("/move_done"):
            self._move_progress(msg.name, value)
        if msg.name in self.watches or msg.name == "error":
            if msg.name == "error":
                log.warning("actor %s: SPEC %s reports: %s", self.name, self.where, value)
            data = {"chan": msg.name, "deleted": is_deleted(msg.flags)}
            data.update(_plain(value))
            self.publish_event("chan", data)

    # --- sending ---------------------------------------------------------------------------

    def _next_sn(self) -> int:
        while True:
            self._sn = self._sn % 0xFFFFFFFF + 1
            if self._sn not in self._pending and self._sn not in self._silent:
                return self._sn

    def _send(self, cmd: Cmd, name: str, value: Any, sn: int) -> None:
        if self._conn is None or self.link_state != UP:
            raise CommandError(self._down_text())
        try:
            kind: int = DataType.SV_STRING
            rows = cols = 0
            if isinstance(value, bytes) or value is None:
                data = value or b""
            else:
                kind, data, rows, cols = encode_value(value)
            raw = encode_message(Message(cmd=cmd, name=name, data=data, type=kind, sn=sn,
                                         rows=rows, cols=cols, vers=self._vers))
        except LocalProtocolError as exc:
            raise CommandError(f"cannot send to SPEC: {exc}") from None
        if not self._conn.send(raw):
            raise CommandError(f"connection to SPEC {self.where} is closed")

    def _request(self, cmd: Cmd, name: str, value: Any, what: str, done: Done,
                 timeout: float | None = None) -> int:
        sn = self._next_sn()
        self._send(cmd, name, value, sn)
        wait = timeout or self.config["timeout"]
        timer = self.call_later(wait, self._timed_out, sn, wait)
        self._pending[sn] = _Pending(what, done, timer)
        return sn

    def _timed_out(self, sn: int, wait: float) -> None:
        entry = self._pending.pop(sn, None)
        if entry is not None:
            entry.done(None, f"no reply from SPEC {self.where} to {entry.what} within "
                             f"{wait:g} s")

    def _send_silent(self, cmd: Cmd, name: str, value: Any,
                     on_error: Callable[[str], None]) -> int:
        """A request that gets a reply only when it fails (CHAN_SEND, REGISTER)."""
        sn = self._next_sn()
        self._send(cmd, name, value, sn)
        self._silent[sn] = lambda text: on_error(f"SPEC refused {name}: {text}")
        return sn

    def _barrier(self, done: Done, what: str, chan: str = BARRIER) -> None:
        """Read `chan`; its reply proves every silent request sent before it was processed."""
        before = list(self._silent)

        def after(msg: Message | None, error: str | None) -> None:
            for sn in before:
                self._silent.pop(sn, None)
            done(msg, error)
        self._request(Cmd.SV_CHAN_READ, chan, None, what, after)

    def _down_text(self) -> str:
        since = datetime.fromtimestamp(self.link_since, UTC).isoformat(timespec="seconds") \
            if self.link_since else "start"
        return f"SPEC link to {self.where} is {self.link_state} since {since}" + \
            (f": {self.link_reason}" if self.link_reason else "")

    def _ask(self, cmd: Cmd, name: str, value: Any, what: str,
             timeout: float | None = None) -> Deferred:
        """A request whose reply is the command's result (its SV_ERROR the error reply)."""
        deferred = Deferred()

        def done(msg: Message | None, error: str | None) -> None:
            if error is not None or msg is None:
                deferred.fail(error or "no reply")
            elif _is_error(msg):
                deferred.fail(f"SPEC error for {what}: {_error_text(msg)}")
            else:
                try:
                    deferred.resolve(_result(msg))
                except RemoteProtocolError as exc:
                    deferred.fail(f"SPEC sent a malformed reply to {what}: {exc}")
        self._request(cmd, name, value, what, done, timeout)
        return deferred

    def _checked(self, steps: list[tuple[Cmd, str, Any]], what: str, result: Any,
                 on_error: Callable[[], object] | None = None) -> Deferred:
        """Silent requests then a barrier; resolves with `result` or fails with SPEC's error."""
        deferred = Deferred()
        errors: list[str] = []
        for cmd, name, value in steps:
            self._send_silent(cmd, name, value, errors.append)

        def done(_: Message | None, error: str | None) -> None:
            if errors or error:
                if on_error is not None:
                    on_error()
                deferred.fail("; ".join(errors) or str(error))
            else:
                deferred.resolve(result)
        self._barrier(done, what)
        return deferred

    # --- commands --------------------------------------------------------------------------

    @command("cmd", Param("text", str, doc="SPEC command line"),
             Param("timeout", float, 0.0, "seconds to wait (0: the timeout setting)"),
             doc="run a SPEC command and return its value (SV_CMD_WITH_RETURN)")
    def cmd_cmd(self, text: str, timeout: float) -> Deferred:
        return self._ask(Cmd.SV_CMD_WITH_RETURN, "", text, f"cmd {text[:60]!r}", timeout)

    @command("run", Param("text", str, doc="SPEC command line"),
             doc="send a SPEC command without waiting for it (SV_CMD; no result)")
    def cmd_run(self, text: str) -> dict[str, Any]:
        self._send(Cmd.SV_CMD, "", text, 0)
        return {"sent": text}

    @command("func", Param("name", str, doc="SPEC function or macro function"),
             Param("args", object, [], "one argument, or a list; SPEC expressions (quote "
                   "strings), numbers as is"),
             Param("timeout", float, 0.0, "seconds to wait (0: the timeout setting)"),
             doc="call a SPEC function and return its value (SV_FUNC_WITH_RETURN)")
    def cmd_func(self, name: str, args: Any, timeout: float) -> Deferred:
        if _positional_words(self.current_command, ("name", "args", "timeout")) > 2:
            # `sctl send S func f 1 2` would bind 2 as the timeout and call f(1) silently
            raise CommandError("func: as words give NAME and at most one argument; the "
                               "timeout only by name (timeout=5); several arguments: args "
                               "as a list (data.args of the command)")
        words = [name, *(args if isinstance(args, list) else [args])]
        try:
            data = b"".join(encode_string(w) for w in words)
        except LocalProtocolError as exc:
            raise CommandError(f"func {name}: {exc}") from None
        return self._ask(Cmd.SV_FUNC_WITH_RETURN, "", data, f"func {name}", timeout)

    @command("read", Param("chan", str, doc="property, e.g. var/x or motor/m0/position"),
             doc="read a property (SV_CHAN_READ)", record=False)
    def cmd_read(self, chan: str) -> Deferred:
        self._channel(chan)
        return self._ask(Cmd.SV_CHAN_READ, chan, None, f"read {chan}")

    @command("write", Param("chan", str, doc="property"),
             Param("value", object, doc="text, number, table (assoc) or list of numbers"),
             doc="set a property (SV_CHAN_SEND); waits until SPEC processed it")
    def cmd_write(self, chan: str, value: Any) -> Deferred:
        self._channel(chan)
        if isinstance(value, list):
            try:
                value = SpecArray(DataType.SV_ARR_DOUBLE, 1, len(value),
                                  tuple(float(v) for v in value))
            except (TypeError, ValueError, LocalProtocolError):
                raise CommandError("write: a list must hold numbers only") from None
        return self._checked([(Cmd.SV_CHAN_SEND, chan, value)], f"write {chan}",
                             {"chan": chan, "written": True})

    @command("watch", Param("chan", str, doc="property to watch"),
             doc="register a channel: evt.<name>.chan on every change, kept over reconnects")
    def cmd_watch(self, chan: str) -> Deferred:
        self._channel(chan)
        deferred = self._checked([(Cmd.SV_REGISTER, chan, None)], f"watch {chan}",
                                 {"chan": chan, "watching": True},
                                 on_error=lambda: self.watches.pop(chan, None))
        self.watches[chan] = None
        return deferred

    @command("unwatch", Param("chan", str, doc="property to stop watching"),
             doc="unregister a channel")
    def cmd_unwatch(self, chan: str) -> dict[str, Any]:
        if chan not in self.watches:
            raise CommandError(f"unwatch: {chan!r} is not watched (watched: "
                               f"{', '.join(self.watches) or 'none'})")
        del self.watches[chan]
        if self.link_state == UP and chan not in self._internal:
            self._send(Cmd.SV_UNREGISTER, chan, None, 0)
        return {"chan": chan, "watching": False}

    @command("watches", doc="the channels registered at every connect", record=False)
    def cmd_watches(self) -> list[str]:
        return list(self.watches)

    @command("abort", doc="^C on the SPEC server (SV_ABORT): stops moves and counting")
    def cmd_abort(self) -> dict[str, Any]:
        self._send(Cmd.SV_ABORT, "", None, 0)
        for move in list(self._moves):
            self._end_move(move, f"move of {move.motor} aborted by the abort command")
        return {"aborted": True}

    @command("move", Param("motor", str, doc="motor mnemonic"),
             Param("position", float, doc="target, user units"),
             Param("timeout", float, 0.0, "seconds the move may take (0: move_timeout)"),
             doc="move a motor; the reply comes when move_done is back to 0")
    def cmd_move(self, motor: str, position: float, timeout: float) -> Deferred:
        done_chan = f"motor/{motor}/move_done"
        self._channel(done_chan)
        if any(m.motor == motor for m in self._moves):
            raise CommandError(f"move: motor {motor} is already moving (by this actor)")
        wait = timeout or self.config["move_timeout"]
        deferred = Deferred()
        steps: list[tuple[Cmd, str, Any]] = [(Cmd.SV_CHAN_SEND, f"motor/{motor}/start_one",
                                              format_number(position))]
        if done_chan not in self._internal and done_chan not in self.watches:
            steps.insert(0, (Cmd.SV_REGISTER, done_chan, None))
        errors: list[str] = []
        for cmd, name, value in steps:
            self._send_silent(cmd, name, value, errors.append)
        self._internal[done_chan] = self._internal.get(done_chan, 0) + 1
        move = _Move(motor, position, deferred,
                     self.call_later(wait, self._move_timed_out, motor, wait))
        self._moves.append(move)

        def started(msg: Message | None, error: str | None) -> None:
            if errors or error:
                self._end_move(move, "; ".join(errors) or str(error))
            elif msg is not None and _is_error(msg):
                self._end_move(move, f"SPEC error for {done_chan}: {_error_text(msg)}")
        self._barrier(started, f"move {motor}", chan=done_chan)
        return deferred

    def _move_progress(self, chan: str, value: Value) -> None:
        motor = chan[len("motor/"):-len("/move_done")]
        for move in [m for m in self._moves if m.motor == motor]:
            if parse_text(str(value)) not in (0, 0.0):
                move.busy = True
            elif move.busy:
                self._finish_move(move)

    def _finish_move(self, move: _Move) -> None:
        def done(msg: Message | None, error: str | None) -> None:
            position = None
            if msg is not None and not _is_error(msg):
                try:
                    position = _result(msg)
                except RemoteProtocolError as exc:
                    log.warning("actor %s: malformed position of %s: %s", self.name,
                                move.motor, exc)
            move.deferred.resolve({"motor": move.motor, "target": move.target,
                                   "position": position})
        self._end_move(move, None)
        try:
            self._request(Cmd.SV_CHAN_READ, f"motor/{move.motor}/position", None,
                          f"read motor/{move.motor}/position", done)
        except CommandError:
            done(None, "link down")

    def _move_timed_out(self, motor: str, wait: float) -> None:
        for move in [m for m in self._moves if m.motor == motor]:
            self._end_move(move, f"motor {motor} did not finish its move to "
                                 f"{format_number(move.target)} within {wait:g} s")

    def _end_move(self, move: _Move, error: str | None) -> None:
        if move not in self._moves:
            return
        self._moves.remove(move)
        move.timer.cancel()
        chan = f"motor/{move.motor}/move_done"
        self._internal[chan] -= 1
        if not self._internal[chan]:
            del self._internal[chan]
            if chan not in self.watches and self.link_state == UP and self._conn is not None:
                self._send(Cmd.SV_UNREGISTER, chan, None, 0)
        if error is not None:
            move.deferred.fail(error)

    def _channel(self, chan: str) -> None:
        try:
            _check_channel(chan)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if self.link_state != UP:
            raise CommandError(self._down_text())


def _positional_words(env: Any, names: tuple[str, ...]) -> int:
    """How many of a command's argv words fill parameters by position (a ``name=value`` word
    whose name is declared names its parameter instead, as `actors.core.params` binds them)."""
    argv = env.data.get("argv") if env is not None and isinstance(env.data, dict) else None
    if not isinstance(argv, list):
        return 0
    return sum(1 for w in argv if not (isinstance(w, str) and "=" in w
                                       and w.partition("=")[0] in names))


def _is_error(msg: Message) -> bool:
    return msg.type == DataType.SV_ERROR or msg.err != 0


def _error_text(msg: Message) -> str:
    try:
        value = decode_value(msg)
    except RemoteProtocolError:
        value = msg.data[:80].decode("utf-8", errors="replace")
    return (value if isinstance(value, str) else str(value)) or f"error code {msg.err}"


def _plain(value: Value) -> dict[str, Any]:
    plain, shape = to_plain(value)
    if isinstance(plain, str):
        plain = parse_text(plain)
    return {"value": plain} if shape is None else {"value": plain, "shape": shape}


def _result(msg: Message) -> Any:
    out = _plain(decode_value(msg))
    return out if "shape" in out else out["value"]
