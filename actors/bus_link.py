"""`BusLinkActor` (``type = "bus-link"``): one TCP instrument link with Pyrame ``cmd_tcp``
semantics (see ``actors.protocols.cmd_tcp`` for the encodings and wordings).

Transactions. Every data command (``write`` … ``expect``), ``config``, ``inval`` and every poll
is a transaction in one FIFO queue per link. Exactly one runs at a time and its write and read
are one unit, so commands from several clients never interleave on the wire. A transaction gets
one deadline when it starts running: its ``timeout`` (``undef`` = the ``timeout`` setting),
shortened to end just before the command's own bus deadline, so the wire is always released
before the caller gives up. The deadline covers everything: waiting for the link, connecting
(on demand), the write and the read. A transaction whose caller already gave up while it was
queued is skipped.

Errors. Every failure is an error reply prefixed ``tcp: ``, as the original's were. A timeout
discards what the read had taken (bytes still to come are left for the next read, as the
original left them in the socket). A peer that closes fails the running transaction at once
(``tcp: connection closed by peer …``). A peer that floods more than ``max_buffer`` bytes without
completing the read loses its connection (framing is lost). In every case the next transaction
gets a fresh chance: it reconnects as the ``connect`` mode says.

Link modes (setting ``connect``):

- ``on_start``: the base's link state machine opens the link at start and reconnects with
  backoff after any loss (``evt.<name>.link`` reports each change). A transaction that finds the
  link down waits for it, within its deadline. ``inval`` closes the link and holds it closed
  (no reconnects; transactions fail with ``not configured``) until ``config`` reopens it.
- ``on_demand``: nothing is opened at start (link state ``idle``). ``config`` or the first
  transaction that needs the wire opens it, within that transaction's deadline; ``evt.<name>.link``
  reports ``up`` then, and ``down`` on ``inval``, a peer close or an error. Nothing reconnects by
  itself: the next transaction opens it again.

Polls (``[[actors.NAME.poll]]`` with ``every``, ``command``, ``args``, ``event``) queue a
transaction every ``every`` seconds and publish ``evt.<name>.<event>`` with ``{"status": "ok",
"result": …}`` or ``{"status": "error", "error": …}``. A poll whose previous run is still queued
or running is skipped for that period (counted in ``polls_skipped``) so a slow device never
makes the queue grow.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import zmq

from actors.core.actor import Actor, CommandError, Deferred, Param, Setting, command
from actors.core.link import UP
from actors.core.loop import TimerHandle
from actors.protocols.cmd_tcp import (
    DEFAULT_TIMEOUT,
    FUNCTIONS,
    MAX_BUFFER,
    UNDEF,
    Call,
    Receiver,
    plan_call,
)
from actors.transports.tcp import TcpClient
from broker.config import ActorConfig, RouterConfig, port_number, positive
from broker.wire import topics
from broker.wire.errors import ConfigError, LocalProtocolError, RemoteProtocolError, TopicError

log = logging.getLogger(__name__)

ON_START: Final = "on_start"
ON_DEMAND: Final = "on_demand"
DEADLINE_MARGIN: Final = 0.1  # seconds a transaction ends before its command's bus deadline
RESERVED_EVENTS: Final = frozenset({"link", "run"})  # published by the Actor base
POLL_KEYS: Final = frozenset({"every", "command", "args", "event"})


def _connect_mode(value: Any) -> None:
    if value not in (ON_START, ON_DEMAND):
        raise ValueError(f"must be {ON_START!r} or {ON_DEMAND!r}")


@dataclass(frozen=True, slots=True)
class Poll:
    """One ``[[actors.NAME.poll]]`` table, checked."""

    every: float
    command: str
    args: tuple[str, ...]
    event: str


@dataclass(eq=False)
class Transaction:
    """One queued unit of work; `kind` is a data function name, "config" or "inval"."""

    kind: str
    call: Call | None = None
    deferred: Deferred | None = None
    poll: int | None = None  # index of the poll that queued it
    bus_deadline: float | None = None  # wall clock, from the command envelope
    budget: float = 0.0  # seconds it may run, set when it starts
    timer: TimerHandle | None = None
    dialing: bool = False  # this transaction asked for the connection being made
    sent: bool = False


def parse_polls(value: Any, path: str, source: str, default_timeout: float,
                limit: int) -> tuple[Poll, ...]:
    """Check the ``poll`` list; raises ConfigError with the key path (``actors.psu1.poll[0]
    .every``). Each poll's call is planned once here, so bad hex or a bad eot is refused before
    the actor starts rather than at every period."""
    polls: list[Poll] = []
    for i, entry in enumerate(value):
        where = f"{path}[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(where, "expected a table with every, command, args, event", source)
        for key in entry:
            if key not in POLL_KEYS:
                raise ConfigError(f"{where}.{key}", f"unknown key (known keys: "
                                  f"{', '.join(sorted(POLL_KEYS))})", source)
        for key in ("every", "command", "event"):
            if key not in entry:
                raise ConfigError(f"{where}.{key}", "is required", source)
        every = entry["every"]
        if isinstance(every, bool) or not isinstance(every, int | float) or every <= 0:
            raise ConfigError(f"{where}.every", f"expected seconds greater than 0, got "
                              f"{every!r}", source)
        name = entry["command"]
        if name not in FUNCTIONS:
            raise ConfigError(f"{where}.command", f"{name!r} is not a data command (one of "
                              f"{', '.join(FUNCTIONS)})", source)
        args = entry.get("args", [])
        if not isinstance(args, list) or not all(isinstance(a, str | int | float)
                                                 and not isinstance(a, bool) for a in args):
            raise ConfigError(f"{where}.args", "expected a list of strings or numbers", source)
        try:
            plan_call(name, args, default_timeout, limit)
        except LocalProtocolError as exc:
            raise ConfigError(f"{where}.args", str(exc), source) from None
        event = entry["event"]
        try:
            topics.check_name(event, "event name")
        except TopicError as exc:
            raise ConfigError(f"{where}.event", str(exc), source) from None
        if event in RESERVED_EVENTS:
            raise ConfigError(f"{where}.event", f"{event!r} is published by every actor; "
                              "choose another name", source)
        polls.append(Poll(float(every), name, tuple(str(a) for a in args), event))
    return tuple(polls)


def _timeout_param() -> Param:
    return Param("timeout", object, UNDEF, "seconds for the whole call; 'undef' = the link's "
                 "timeout setting")


class BusLinkActor(Actor):
    """A TCP instrument link with Pyrame cmd_tcp semantics: escaped and hex writes, exact,
    until-eot and expect reads, one transaction at a time."""

    type_name = "bus-link"
    settings = (
        Setting("host", str, required=True, doc="instrument address (name or IP)"),
        Setting("port", int, required=True, doc="instrument TCP port", check=port_number),
        Setting("timeout", float, DEFAULT_TIMEOUT, "seconds a call may take when it gives no "
                "timeout (or 'undef')", check=positive),
        Setting("connect", str, ON_START, "on_start: open at start, reconnect with backoff; "
                "on_demand: open on config or the first command, never by itself",
                check=_connect_mode),
        Setting("max_buffer", int, MAX_BUFFER, "bytes held from the instrument before a read "
                "without its eot counts as a flood and the connection is dropped",
                check=positive),
        Setting("poll", list, (), "[[actors.NAME.poll]] tables: every (s), command, args "
                "(list), event (published as evt.<name>.<event>)"),
    )

    def __init__(self, name: str, config: dict[str, Any], router: RouterConfig,
                 *, context: zmq.Context[Any] | None = None) -> None:
        super().__init__(name, config, router, context=context)
        self.polls: tuple[Poll, ...] = ()
        self._queue: deque[Transaction] = deque()
        self._current: Transaction | None = None
        self._pumping = False
        self._client: TcpClient | None = None
        self._rx = Receiver(config["max_buffer"])
        self._peer = f"{config['host']}:{config['port']}"  # ip:port once connected
        self._canonical = ""  # "ip,port" of the open connection (config's result)
        self._down_reason = "not connected yet"
        self._held = False  # on_start link closed by inval until the next config
        self._poll_busy: set[int] = set()
        self._poll_failing: set[int] = set()
        self.counters.update(transactions=0, polls_skipped=0, floods=0)

    @classmethod
    def cross_check(cls, values: dict[str, Any], actor: ActorConfig) -> Iterator[ConfigError]:
        yield from super().cross_check(values, actor)
        try:
            parse_polls(values["poll"], f"{actor.path}.poll", actor.source, values["timeout"],
                        values["max_buffer"])
        except ConfigError as exc:
            yield exc

    @classmethod
    def from_config(cls, actor: ActorConfig, router: RouterConfig,
                    *, context: zmq.Context[Any] | None = None) -> Actor:
        self = super().from_config(actor, router, context=context)
        assert isinstance(self, BusLinkActor)
        self.polls = parse_polls(self.config["poll"], f"{actor.path}.poll", actor.source,
                                 self.config["timeout"], self.config["max_buffer"])
        return self

    # --- commands --------------------------------------------------------------------------

    @command("write", Param("data", str, doc="escaped text: \\n \\r \\t \\xNN \\NNN ..."))
    def cmd_write(self, data: str) -> Deferred:
        """Write escaped text; replies ok."""
        return self._data_call("write", data)

    @command("write_bin", Param("data", str, doc="hex, two digits per byte"))
    def cmd_write_bin(self, data: str) -> Deferred:
        """Write bytes given as hex; replies ok."""
        return self._data_call("write_bin", data)

    @command("read", Param("bytes_to_read", int), _timeout_param())
    def cmd_read(self, bytes_to_read: int, timeout: Any) -> Deferred:
        """Read exactly bytes_to_read bytes; NUL, CR and LF removed from the text."""
        return self._data_call("read", bytes_to_read, timeout)

    @command("read_bin", Param("bytes_to_read", int), _timeout_param())
    def cmd_read_bin(self, bytes_to_read: int, timeout: Any) -> Deferred:
        """Read exactly bytes_to_read bytes, as hex."""
        return self._data_call("read_bin", bytes_to_read, timeout)

    @command("read_until", Param("eot", str, doc="comma-separated escaped eot list"),
             _timeout_param())
    def cmd_read_until(self, eot: str, timeout: Any) -> Deferred:
        """Read up to the first eot (removed); NUL, CR and LF removed from the text."""
        return self._data_call("read_until", eot, timeout)

    @command("read_bin_until", Param("eot", str, doc="comma-separated escaped eot list"),
             _timeout_param())
    def cmd_read_bin_until(self, eot: str, timeout: Any) -> Deferred:
        """Read up to the first eot (removed), as hex."""
        return self._data_call("read_bin_until", eot, timeout)

    @command("wrnrd", Param("data", str), Param("bytes_to_read", int), _timeout_param())
    def cmd_wrnrd(self, data: str, bytes_to_read: int, timeout: Any) -> Deferred:
        """Write escaped text, then read exactly bytes_to_read bytes as text."""
        return self._data_call("wrnrd", data, bytes_to_read, timeout)

    @command("wrnrd_bin", Param("data", str), Param("bytes_to_read", int), _timeout_param())
    def cmd_wrnrd_bin(self, data: str, bytes_to_read: int, timeout: Any) -> Deferred:
        """Write hex, then read exactly bytes_to_read bytes as hex."""
        return self._data_call("wrnrd_bin", data, bytes_to_read, timeout)

    @command("wrnrd_until", Param("data", str), Param("eot", str), _timeout_param())
    def cmd_wrnrd_until(self, data: str, eot: str, timeout: Any) -> Deferred:
        """Write escaped text, then read up to the first eot as text."""
        return self._data_call("wrnrd_until", data, eot, timeout)

    @command("wrnrd_bin_until", Param("data", str), Param("eot", str), _timeout_param())
    def cmd_wrnrd_bin_until(self, data: str, eot: str, timeout: Any) -> Deferred:
        """Write hex, then read up to the first eot as hex."""
        return self._data_call("wrnrd_bin_until", data, eot, timeout)

    @command("expect", Param("pattern", str, doc="escaped bytes, not a regex"), _timeout_param())
    def cmd_expect(self, pattern: str, timeout: Any) -> Deferred:
        """Read until the pattern has gone by (NULs skipped); replies 'Pattern found'."""
        return self._data_call("expect", pattern, timeout)

    @command("config")
    def cmd_config(self) -> Deferred:
        """Open the link (if it is not open); replies 'ip,port' of the instrument."""
        return self._submit(Transaction("config"))

    @command("inval")
    def cmd_inval(self) -> Deferred:
        """Close the link; replies ok, or 'not configured' if it was not open."""
        return self._submit(Transaction("inval"))

    def _data_call(self, function: str, *args: Any) -> Deferred:
        try:
            call = plan_call(function, args, self.config["timeout"], self.config["max_buffer"])
        except LocalProtocolError as exc:
            raise CommandError(f"tcp: {exc}") from None
        return self._submit(Transaction(function, call))

    def _submit(self, txn: Transaction) -> Deferred:
        env = self.current_command
        txn.bus_deadline = env.deadline if env is not None else None
        txn.deferred = Deferred()
        self._queue.append(txn)
        self._pump()
        return txn.deferred

    # --- polls -----------------------------------------------------------------------------

    def on_start(self) -> None:
        for i in range(len(self.polls)):
            self._poll(i, time.monotonic())

    def _poll(self, i: int, due: float) -> None:
        poll = self.polls[i]
        now = time.monotonic()
        if i in self._poll_busy:
            self.counters["polls_skipped"] += 1
        else:
            call = plan_call(poll.command, poll.args, self.config["timeout"],
                             self.config["max_buffer"])  # checked at config time
            self._poll_busy.add(i)
            self._queue.append(Transaction(poll.command, call, poll=i))
            self._pump()
        due += poll.every * max(1, int((now - due) // poll.every) + 1)  # skip missed periods
        self.call_later(max(0.0, due - now), self._poll, i, due)

    def _poll_done(self, i: int, result: str | None, error: str) -> None:
        self._poll_busy.discard(i)
        poll = self.polls[i]
        if result is not None:
            self._poll_failing.discard(i)
            self.publish_event(poll.event, {"status": "ok", "result": result})
            return
        if i not in self._poll_failing:  # once per failure streak, not every period
            log.warning("bus-link %s: poll %s (%s) failed: %s", self.name, poll.event,
                        poll.command, error)
        self._poll_failing.add(i)
        self.publish_event(poll.event, {"status": "error", "error": error})

    # --- the transaction queue -------------------------------------------------------------

    def _pump(self) -> None:
        """Start the next transaction if none runs. Re-entrant calls (a transaction that
        finishes at once) return; the outer loop carries on."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._current is None and self._queue:
                txn = self._queue.popleft()
                if txn.deferred is not None and txn.deferred.done:
                    continue  # its caller's deadline passed while it was queued
                self._start(txn)
        finally:
            self._pumping = False

    def _start(self, txn: Transaction) -> None:
        self._current = txn
        self.counters["transactions"] += 1
        timeout = txn.call.timeout if txn.call is not None else self.config["timeout"]
        if txn.bus_deadline is not None:
            timeout = min(timeout, txn.bus_deadline - time.time() - DEADLINE_MARGIN)
        txn.budget = max(0.0, timeout)
        txn.timer = self.call_later(txn.budget, self._timed_out, txn)
        if txn.kind == "inval":
            self._inval(txn)
        elif self._connected():
            self._on_wire(txn)
        elif self.config["connect"] == ON_START and not self._held:
            pass  # the base reconnects; _on_connected resumes this transaction
        elif txn.kind == "config" or self.config["connect"] == ON_DEMAND:
            if self._client is None:
                txn.dialing = True
                self._dial()
        else:
            self._finish(txn, error="not configured (closed by inval; send config to reopen)")

    def _on_wire(self, txn: Transaction) -> None:
        """The link is up: run the transaction's write and read."""
        if txn.kind == "config":
            self._held = False
            self._finish(txn, result=self._canonical)
            return
        call = txn.call
        assert call is not None and self._client is not None
        if call.write and not txn.sent:
            txn.sent = True
            if not self._client.send(call.write):
                if self._current is txn:  # refused without a close callback
                    self._drop("the connection refused the write")
                    self._finish(txn, error=f"connection to {self._peer} lost while sending")
                return  # else the stream closed and _on_closed has failed this transaction
        if call.read is None:
            self._finish(txn, result=call.result(None))
            return
        try:
            raw = self._rx.begin(call.read)
        except RemoteProtocolError as exc:
            self._flood(exc)
            return
        if raw is not None:
            self._finish(txn, result=call.result(raw))

    def _inval(self, txn: Transaction) -> None:
        """Close the link; in on_start mode also stop reconnecting until config, even if it
        was down already (the operator wants the instrument left alone)."""
        self._held = self.config["connect"] == ON_START
        if self._client is None:
            self._finish(txn, result="not configured")
            return
        self._drop("closed by inval")
        self._finish(txn, result="ok")

    def _timed_out(self, txn: Transaction) -> None:
        txn.timer = None
        if self._current is not txn:
            return
        if self._connected():
            call = txn.call
            reason = (call.read.timeout_reason(self._rx.seen, self._peer)
                      if call is not None and call.read is not None else "timed out")
            self._rx.abort()
        elif txn.dialing:
            reason = f"Error connecting to {self._peer} <- timed out"
            self._drop(f"no connection within {txn.budget:g} s")
        else:
            reason = (f"TCP link at {self._peer} is {self.link_state} "
                      f"({self._down_reason}) <- timed out")
        self._finish(txn, error=reason)

    def _finish(self, txn: Transaction, result: str | None = None, error: str = "") -> None:
        if self._current is txn:
            self._current = None
        if txn.timer is not None:
            txn.timer.cancel()
            txn.timer = None
        if self._rx.read is not None:  # finished early (error): its partial read goes too
            self._rx.abort()
        if txn.deferred is not None:
            if result is not None:
                txn.deferred.resolve(result)
            else:
                txn.deferred.fail(f"tcp: {error}")
        elif txn.poll is not None:
            self._poll_done(txn.poll, result, f"tcp: {error}")
        self._pump()

    # --- the connection --------------------------------------------------------------------

    def wants_link(self) -> bool:
        """The base opens the link at start and reconnects after a loss only in on_start mode,
        and not while inval holds it closed."""
        return self.config["connect"] == ON_START and not self._held

    def open_link(self) -> None:
        """The base's (re)connect attempt, on_start mode."""
        if self._held:
            self.link_down("closed by inval; send config to reopen")
            return
        self._dial()

    def close_link(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._rx.reset()
        self._canonical = ""

    def _dial(self) -> None:
        host, port = self.config["host"], self.config["port"]
        self._client = TcpClient(self, host, port, self._on_connected, self._on_data,
                                 self._on_closed)
        self._client.connect()

    def _connected(self) -> bool:
        return self._client is not None and self._client.connected and self.link_state == UP

    def _on_connected(self) -> None:
        client = self._client
        assert client is not None and client.sock is not None
        try:
            ip, port = client.sock.getpeername()[:2]
        except OSError:  # reset already: the reader callback reports it next
            ip, port = self.config["host"], self.config["port"]
        self._peer, self._canonical = f"{ip}:{port}", f"{ip},{port}"
        self._rx.reset()
        self.link_up(f"connected to {self._peer}")
        txn = self._current
        if txn is not None:
            txn.dialing = False
            self._on_wire(txn)

    def _on_data(self, data: bytes) -> None:
        try:
            raw = self._rx.feed(data)
        except RemoteProtocolError as exc:
            self._flood(exc)
            return
        txn = self._current
        if raw is not None and txn is not None and txn.call is not None:
            self._finish(txn, result=txn.call.result(raw))

    def _on_closed(self, reason: str) -> None:
        """The TcpClient failed to connect, or the connection failed or was closed by the
        peer: the running transaction fails now (never a spin), the link goes down."""
        txn = self._current
        # the stream marks itself unconnected before it reports any close, so only the
        # transaction knows whether this was its own connect failing or an established link
        connecting = txn is not None and txn.dialing
        failed = txn is not None and (txn.dialing or txn.sent or self._rx.read is not None)
        self._client = None
        self._drop(reason)
        if failed and txn is not None:
            self._finish(txn, error=f"Error connecting to {self._peer} <- {reason}"
                         if connecting else reason)

    def _flood(self, exc: RemoteProtocolError) -> None:
        self.counters["floods"] += 1
        log.warning("bus-link %s: %s from %s (first bytes %s); dropping the connection",
                    self.name, exc, self._peer, exc.raw.hex())
        txn = self._current
        reading = self._rx.read is not None
        self._drop(f"framing lost: {exc}")
        if txn is not None and reading:
            self._finish(txn, error=f"{exc}; connection dropped")

    def _drop(self, reason: str) -> None:
        """Close the connection and report the link down (the base reconnects in on_start
        mode unless inval holds it closed)."""
        self._down_reason = reason
        self.close_link()
        self.link_down(reason)
