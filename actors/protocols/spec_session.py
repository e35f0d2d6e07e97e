"""The client side of a SPEC server-mode session, sans-IO: serial numbers, requests waiting for
their reply, barriers, motor moves and the registrations kept over reconnects, as one state
machine. The owner does the I/O and the clock::

    session.connection_made(peer, vers, decoder)  HELLO answered: queues the registrations
    token = session.read("var/x", now)             a request; its `Completed` comes out later
    session.receive_data(chunk)                    bytes the socket read
    sock.send(session.data_to_send())              bytes to write
    for out in session.outputs(): ...              `Completed`, `ChannelEvent`, `TtyText`, `Notice`
    session.handle_timeout(now)                    at `session.next_deadline`
    session.connection_lost(why)                   every request still waiting fails at once

Requests and how they complete (every one completes exactly once; requests raise
`LocalProtocolError` before sending anything when they cannot be sent):

=======  =========================  ========================================  ==============
request  sent                       completes when                            on its timeout
=======  =========================  ========================================  ==============
read     CHAN_READ                  its REPLY (SV_ERROR: an error)            error
command  CMD_WITH_RETURN            its REPLY                                 error, ABORT
call     FUNC_WITH_RETURN f(a, b)   its REPLY                                 error, ABORT
write    CHAN_SEND, barrier         the barrier's REPLY; an error if an       error
                                    SV_ERROR with the CHAN_SEND's sn, or
                                    else an ``error`` event, came before it
watch    REGISTER, barrier          as write; a refused channel is not kept   error
move     [REGISTER move_done],      ``move_done`` seen non-zero (an event or  error
         CHAN_SEND start_one,       the barrier's value), then 0; then the
         barrier: CHAN_READ         REPLY of CHAN_READ ``position`` (the
         move_done                  result)
run      CMD (sn 0)                 no completion: SPEC sends no reply        -
unwatch  UNREGISTER (sn 0)          no completion                             -
abort    ABORT (sn 0)               no completion; every move fails           -
=======  =========================  ========================================  ==============

A *barrier* is an SV_CHAN_READ sent after requests that SPEC answers only when they fail
(CHAN_SEND, REGISTER): SPEC handles a client's messages in order, so its REPLY proves the
requests before it were processed. SPEC may report such a failure only as an ``error`` event
(its error channel), so an ``error`` event arriving while a write or watch waits for its
barrier fails that request too. Events carry ``sn`` 0 and may come between replies; replies are
matched by ``sn`` only. After `connection_made` the session registers ``error``, ``output/tty``,
the watched channels and the ``move_done`` channels of moves in flight, on every (re)connect.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from actors.protocols.spec import Cmd, DataType, Decoder, Message, encode_message, is_deleted
from actors.protocols.spec_types import (
    Value,
    decode_value,
    encode_value,
    error_text,
    format_number,
    is_error,
    parse_text,
)
from broker.wire.errors import LocalProtocolError, RemoteProtocolError

SERVICE_CHANNELS: Final = ("error", "output/tty")
BARRIER: Final = "status/ready"  # a property every SPEC has: what the barrier reads
U32: Final = 0xFFFFFFFF
Done = Callable[[Message | None, str | None], None]  # (reply, error text)


@dataclass(frozen=True, slots=True)
class Completed:
    """A request finished: `result` (a decoded `Value`, a move's dict, or None) or `error`."""

    token: int
    result: Any = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ChannelEvent:
    """An EVENT of a watched channel, or of ``error``."""

    chan: str
    value: Value
    deleted: bool


@dataclass(frozen=True, slots=True)
class TtyText:
    """Text SPEC wrote to its screen (an ``output/tty`` event)."""

    text: str


@dataclass(frozen=True, slots=True)
class Notice:
    """Something the owner should log: `level` is "info" or "warning"."""

    level: str
    text: str


Output = Completed | ChannelEvent | TtyText | Notice


@dataclass(eq=False)
class _Wait:
    """A request waiting for the REPLY with its serial number."""

    what: str
    done: Done
    deadline: float | None
    seconds: float = 0.0  # the timeout, for the message
    abort: bool = False  # send SV_ABORT when it times out (a command SPEC would go on running)


@dataclass(eq=False)
class _Group:
    """Requests that get a reply only when they fail, closed by one barrier."""

    refused: list[str] = field(default_factory=list)  # SV_ERROR replies with their sn
    reported: list[str] = field(default_factory=list)  # `error` events before the barrier

    def errors(self) -> list[str]:
        return self.refused or self.reported


@dataclass(eq=False)
class _Move:
    token: int
    motor: str
    target: float
    deadline: float
    seconds: float
    busy: bool = False  # move_done was seen non-zero since the start


class Session:
    """One SPEC client session (see the module docstring); `watches` are kept over reconnects."""

    def __init__(self, watches: Iterable[str] = (), *, timeout: float = 5.0,
                 max_data: int = 64 * 1024 * 1024) -> None:
        self.watches: dict[str, None] = dict.fromkeys(watches)
        self.timeout = timeout
        self.max_data = max_data
        self.peer: str | None = None  # "host:port" while connected
        self.vers = 4
        self._decoder = Decoder(max_data)
        self._sn = 0
        self._token = 0
        self._out = bytearray()
        self._outputs: list[Output] = []
        self._waits: dict[int, _Wait] = {}
        self._silent: dict[int, tuple[str, _Group]] = {}  # sn → (channel, its group)
        self._open: list[_Group] = []  # groups whose barrier has not answered yet
        self._moves: list[_Move] = []
        self._internal: dict[str, int] = {}  # move_done channels registered for moves

    # --- connection --------------------------------------------------------------------------

    def hello(self) -> bytes:
        """A HELLO (for a probe of a port; its HELLO_REPLY goes to `connection_made`)."""
        return encode_message(Message(cmd=Cmd.SV_HELLO, name="sctl", sn=self._next_sn()))

    def connection_made(self, peer: str, vers: int, decoder: Decoder | None = None) -> None:
        """The server answered HELLO in header version `vers`; `decoder` holds what the
        connection read after the HELLO_REPLY. Queues the registrations of every channel."""
        self.peer, self.vers = peer, min(max(vers, 2), 4)
        self._decoder = decoder or Decoder(self.max_data)
        channels = [*SERVICE_CHANNELS, *self.watches, *self._internal]
        group = _Group()
        for chan in channels:
            self._send_silent(Cmd.SV_REGISTER, chan, None, group)

        def after(_: Message | None, error: str | None) -> None:
            for problem in ([error] if error else []) + group.errors():
                self._outputs.append(Notice("warning", f"registering channels on SPEC "
                                                       f"{peer}: {problem}"))
        self._barrier(group, after, f"registering {len(channels)} channels", None)

    def connection_lost(self, why: str) -> None:
        """Fail every request and move still waiting with `why` ("connection to ... lost")."""
        self.peer = None
        self._out.clear()
        for move in list(self._moves):
            self._end_move(move, f"{why} while motor {move.motor} was moving to "
                                 f"{format_number(move.target)}")
        waits, self._waits = self._waits, {}
        self._silent.clear()
        self._open.clear()
        for wait in waits.values():
            wait.done(None, f"{why} while waiting for the reply to {wait.what}")

    @property
    def connected(self) -> bool:
        return self.peer is not None

    # --- I/O for the owner -------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the server. RemoteProtocolError when they are not SPEC: the framing is
        lost, the owner drops the connection (then calls `connection_lost`)."""
        self._decoder.feed(data)
        for msg in self._decoder.events():
            if msg.cmd == Cmd.SV_EVENT:
                self._on_event(msg)
            elif msg.cmd == Cmd.SV_REPLY:
                self._on_reply(msg)
            else:
                self._outputs.append(Notice("info", f"ignoring unexpected {msg.describe()} "
                                                    f"from SPEC {self.peer}"))
            if self.peer is None:
                return

    def data_to_send(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    def outputs(self) -> list[Output]:
        out, self._outputs = self._outputs, []
        return out

    @property
    def next_deadline(self) -> float | None:
        times = [w.deadline for w in self._waits.values() if w.deadline is not None]
        times += [m.deadline for m in self._moves]
        return min(times, default=None)

    def handle_timeout(self, now: float) -> None:
        """Expire the requests and moves whose deadline is at or before `now`."""
        for sn, wait in list(self._waits.items()):
            if wait.deadline is not None and wait.deadline <= now and sn in self._waits:
                del self._waits[sn]
                self._timed_out(wait)
        for move in [m for m in self._moves if m.deadline <= now]:
            self._end_move(move, f"motor {move.motor} did not finish its move to "
                                 f"{format_number(move.target)} within {move.seconds:g} s")

    def _timed_out(self, wait: _Wait) -> None:
        text = f"no reply from SPEC {self.peer} to {wait.what} within {wait.seconds:g} s"
        if wait.abort and self.peer is not None:
            self._queue(Cmd.SV_ABORT, "", None, 0)
            text += "; sent SV_ABORT (^C) so that SPEC stops it"
            for move in list(self._moves):
                self._end_move(move, f"move of {move.motor} aborted: {wait.what} timed out")
        wait.done(None, text)

    # --- requests ----------------------------------------------------------------------------

    def read(self, chan: str, now: float, timeout: float | None = None) -> int:
        return self._ask(Cmd.SV_CHAN_READ, chan, None, f"read {chan}", now, timeout)

    def command(self, text: str, now: float, timeout: float | None = None) -> int:
        return self._ask(Cmd.SV_CMD_WITH_RETURN, "", text, f"cmd {text[:60]!r}", now, timeout,
                         abort=True)

    def call(self, func: str, args: Sequence[Any], now: float,
             timeout: float | None = None) -> int:
        """``func(arg, ...)``: string arguments are SPEC expressions (quote SPEC strings),
        numbers are formatted as SPEC formats them."""
        words = [a if isinstance(a, str) else format_number(a) for a in args]
        return self._ask(Cmd.SV_FUNC_WITH_RETURN, "", f"{func}({', '.join(words)})",
                         f"func {func}", now, timeout, abort=True)

    def run(self, text: str) -> None:
        self._queue(Cmd.SV_CMD, "", text, 0)

    def write(self, chan: str, value: Any, now: float) -> int:
        return self._checked([(Cmd.SV_CHAN_SEND, chan, value)], f"write {chan}", now)

    def watch(self, chan: str, now: float) -> int:
        self._check_up()
        self._encode_all([(Cmd.SV_REGISTER, chan, None)])
        new = chan not in self.watches
        self.watches[chan] = None
        token = self._checked([(Cmd.SV_REGISTER, chan, None)], f"watch {chan}", now,
                              on_error=lambda: self.watches.pop(chan, None) if new else None)
        return token

    def unwatch(self, chan: str) -> None:
        if chan not in self.watches:
            raise LocalProtocolError(f"{chan!r} is not watched (watched: "
                                     f"{', '.join(self.watches) or 'none'})")
        del self.watches[chan]
        if self.peer is not None and chan not in self._internal:
            self._queue(Cmd.SV_UNREGISTER, chan, None, 0)

    def abort(self) -> None:
        self._check_up()
        self._queue(Cmd.SV_ABORT, "", None, 0)
        for move in list(self._moves):
            self._end_move(move, f"move of {move.motor} aborted by the abort command")

    def move(self, motor: str, position: float, now: float, timeout: float) -> int:
        self._check_up()
        if any(m.motor == motor for m in self._moves):
            raise LocalProtocolError(f"motor {motor} is already moving (by this client)")
        done_chan = f"motor/{motor}/move_done"
        steps: list[tuple[Cmd, str, Any]] = [(Cmd.SV_CHAN_SEND, f"motor/{motor}/start_one",
                                              format_number(position))]
        if done_chan not in self._internal and done_chan not in self.watches:
            steps.insert(0, (Cmd.SV_REGISTER, done_chan, None))
        self._encode_all(steps)
        group = _Group()
        for cmd, name, value in steps:
            self._send_silent(cmd, name, value, group)
        self._internal[done_chan] = self._internal.get(done_chan, 0) + 1
        move = _Move(self._new_token(), motor, position, now + timeout, timeout)
        self._moves.append(move)

        def started(msg: Message | None, error: str | None) -> None:
            if move not in self._moves:
                return
            problem = "; ".join(group.errors()) or error or \
                (f"SPEC error for {done_chan}: {error_text(msg)}" if is_error(msg) else None)
            if problem:
                self._end_move(move, problem)
            elif msg is not None and _nonzero(msg):
                move.busy = True
        self._barrier(group, started, f"move {motor}", now, chan=done_chan)
        return move.token

    # --- receiving ---------------------------------------------------------------------------

    def _on_reply(self, msg: Message) -> None:
        wait = self._waits.pop(msg.sn, None)
        if wait is not None:
            wait.done(msg, None)
            return
        silent = self._silent.pop(msg.sn, None)
        if silent is not None:
            if is_error(msg):
                silent[1].refused.append(f"SPEC refused {silent[0]}: {error_text(msg)}")
            return
        self._outputs.append(Notice("info", f"late or unknown reply {msg.describe()} from SPEC "
                                            f"{self.peer} (its request had timed out)"))

    def _on_event(self, msg: Message) -> None:
        try:
            value = decode_value(msg)
        except RemoteProtocolError as exc:
            self._outputs.append(Notice("warning", f"SPEC {self.peer} sent a malformed "
                                                   f"{msg.describe()}: {exc} (raw "
                                                   f"{exc.raw[:64].hex()})"))
            return
        if msg.name == "output/tty":
            self._outputs.append(TtyText(value if isinstance(value, str) else str(value)))
            return
        if msg.name.endswith("/move_done") and msg.name.startswith("motor/"):
            self._move_progress(msg.name[len("motor/"):-len("/move_done")], value)
        if msg.name == "error":
            for group in self._open:
                group.reported.append(f"SPEC reported an error: {value}")
        if msg.name in self.watches or msg.name == "error":
            self._outputs.append(ChannelEvent(msg.name, value, is_deleted(msg.flags)))

    def _move_progress(self, motor: str, value: Value) -> None:
        for move in [m for m in self._moves if m.motor == motor]:
            if parse_text(str(value)) not in (0, 0.0):
                move.busy = True
            elif move.busy:
                self._finish_move(move)

    def _finish_move(self, move: _Move) -> None:
        self._end_move(move, None)
        chan = f"motor/{move.motor}/position"

        def done(msg: Message | None, error: str | None) -> None:
            position: Value | None = None
            if msg is not None and not is_error(msg):
                try:
                    position = decode_value(msg)
                except RemoteProtocolError as exc:
                    self._outputs.append(Notice("warning", f"malformed position of "
                                                           f"{move.motor}: {exc}"))
            self._complete(move.token, {"motor": move.motor, "target": move.target,
                                        "position": position})
        if self.peer is None:
            done(None, "link down")
            return
        sn = self._queue(Cmd.SV_CHAN_READ, chan, None, self._next_sn())
        # bounded like every request: a SPEC that never answers fails the move, never hangs it
        self._waits[sn] = _Wait(f"read {chan}", done, move.deadline + self.timeout,
                                self.timeout)

    def _end_move(self, move: _Move, error: str | None) -> None:
        if move not in self._moves:
            return
        self._moves.remove(move)
        chan = f"motor/{move.motor}/move_done"
        self._internal[chan] -= 1
        if not self._internal[chan]:
            del self._internal[chan]
            if chan not in self.watches and self.peer is not None:
                self._queue(Cmd.SV_UNREGISTER, chan, None, 0)
        if error is not None:
            self._complete(move.token, error=error)

    # --- sending -----------------------------------------------------------------------------

    def _check_up(self) -> None:
        if self.peer is None:
            raise LocalProtocolError("not connected to SPEC")

    def _next_sn(self) -> int:
        while True:
            self._sn = self._sn % U32 + 1
            if self._sn not in self._waits and self._sn not in self._silent:
                return self._sn

    def _new_token(self) -> int:
        self._token += 1
        return self._token

    def _encode(self, cmd: Cmd, name: str, value: Any, sn: int) -> bytes:
        kind: int = DataType.SV_STRING
        rows = cols = 0
        data = b""
        if value is not None:
            kind, data, rows, cols = encode_value(value)
        return encode_message(Message(cmd=cmd, name=name, data=data, type=kind, sn=sn,
                                      rows=rows, cols=cols, vers=self.vers))

    def _encode_all(self, steps: list[tuple[Cmd, str, Any]]) -> None:
        """Raise LocalProtocolError for any step that cannot be sent, before one is sent."""
        for cmd, name, value in steps:
            self._encode(cmd, name, value, 1)

    def _queue(self, cmd: Cmd, name: str, value: Any, sn: int) -> int:
        self._out += self._encode(cmd, name, value, sn)
        return sn

    def _complete(self, token: int, result: Any = None, error: str | None = None) -> None:
        self._outputs.append(Completed(token, result, error))

    def _ask(self, cmd: Cmd, name: str, value: Any, what: str, now: float,
             timeout: float | None, abort: bool = False) -> int:
        """A request whose REPLY is its result (an SV_ERROR reply its error)."""
        self._check_up()
        token = self._new_token()

        def done(msg: Message | None, error: str | None) -> None:
            if error is not None or msg is None:
                self._complete(token, error=error or "no reply")
            elif is_error(msg):
                self._complete(token, error=f"SPEC error for {what}: {error_text(msg)}")
            else:
                try:
                    self._complete(token, decode_value(msg))
                except RemoteProtocolError as exc:
                    self._complete(token, error=f"SPEC sent a malformed reply to {what}: "
                                                f"{exc}")
        sn = self._next_sn()
        raw = self._encode(cmd, name, value, sn)
        self._out += raw
        wait = timeout or self.timeout
        self._waits[sn] = _Wait(what, done, now + wait, wait, abort)
        return token

    def _send_silent(self, cmd: Cmd, name: str, value: Any, group: _Group) -> None:
        sn = self._queue(cmd, name, value, self._next_sn())
        self._silent[sn] = (name, group)

    def _barrier(self, group: _Group, done: Done, what: str, now: float | None,
                 chan: str = BARRIER) -> None:
        """Read `chan`; its reply proves every request of `group` was processed."""
        silent = [sn for sn, (_, g) in self._silent.items() if g is group]
        self._open.append(group)

        def after(msg: Message | None, error: str | None) -> None:
            for sn in silent:
                self._silent.pop(sn, None)
            if group in self._open:
                self._open.remove(group)
            done(msg, error)
        sn = self._queue(Cmd.SV_CHAN_READ, chan, None, self._next_sn())
        deadline = None if now is None else now + self.timeout
        self._waits[sn] = _Wait(what, after, deadline, self.timeout)

    def _checked(self, steps: list[tuple[Cmd, str, Any]], what: str, now: float,
                 on_error: Callable[[], object] | None = None) -> int:
        """Silent requests then a barrier: completes with None, or with SPEC's error."""
        self._check_up()
        self._encode_all(steps)
        token = self._new_token()
        group = _Group()
        for cmd, name, value in steps:
            self._send_silent(cmd, name, value, group)

        def done(_: Message | None, error: str | None) -> None:
            problems = group.errors() or ([error] if error else [])
            if problems:
                if on_error is not None:
                    on_error()
                self._complete(token, error="; ".join(problems))
            else:
                self._complete(token)
        self._barrier(group, done, what, now)
        return token


def _nonzero(msg: Message) -> bool:
    try:
        value = decode_value(msg)
    except RemoteProtocolError:
        return False
    return parse_text(str(value)) not in (0, 0.0)
