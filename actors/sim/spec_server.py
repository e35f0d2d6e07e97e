"""`sctl sim spec-server`: a SPEC session in server mode, on a TCP port, for tests and demos.

It speaks the real wire protocol (`actors.protocols.spec`) to any number of clients at once, each
answered in the byte order and header version of its first packet. What it serves:

- HELLO → HELLO_REPLY with the spec name in the header ``name`` and in the data;
- properties (`actors.sim.spec_state`): ``var/NAME`` (strings, numbers, associative arrays,
  ``var/NAME[KEY]``, data arrays), ``motor/M/...`` (position, dial_position, move_done,
  offset, limits, search, sync_check, ...), ``motor/../prestart_all|start_all|abort_all``,
  ``motor/M/start_one``, ``scaler/C/value``, ``scaler/.all./count``,
  ``status/ready|simulate|shell|quit``, and the event-only ``output/tty`` and ``error``;
- CHAN_READ → REPLY (SV_ERROR naming the property when it does not exist); CHAN_SEND → no reply
  unless it fails: then an SV_ERROR with the request's sn (when it is not 0) and an ``error``
  event; REGISTER → an immediate EVENT with the current value (none for ``error`` and
  ``motor/M/sync_check``; the prompt for ``output/tty``);
- CMD / FUNC (with or without return; text with or without NUL, ``func\\0arg\\0arg``, or the
  command in the ``name`` field) run one at a time, in arrival order, by the evaluator
  `actors.sim.spec_eval` (SPEC's command queue): a command whose text waits (``sleep``,
  ``count``) holds the queue, ``status/ready`` reads 0 meanwhile, and its reply comes after
  the wait (after the final counter values, for a count). Printed text goes out as
  ``output/tty`` events before the reply;
- ABORT: motors stop, counting stops, the command running gets an SV_ERROR "aborted", and the
  commands this client still has queued are dropped with the same error.

Live data arrays: ``var/MCA`` (``ulong``, 1 x ``mca_channels``, ``mca_rate`` times a second)
and ``var/IMG`` (``ushort``, ``image_rows`` x ``image_cols``, ``image_rate`` times a second),
sent as SV_EVENT to the clients watching them (real SPEC does not send events for data
arrays; the simulator does, as a detector server would). With ``publish_updates`` each frame
sent is also announced as ``evt.<sim>.update {var, frame, t}`` (``t``: Unix time of the
update), for latency measurements.

Port: ``port`` if set, else the first free port in 6510-6530 (like ``fourc -S``). Once listening
it publishes ``evt.<sim>.listening {host, port, specname}``.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

from actors.core.actor import Actor, Deferred, Param, Setting, command
from actors.protocols.spec import LITTLE, Cmd, DataType, Decoder, Message, encode_message
from actors.protocols.spec_types import Value, decode_value, encode_value
from actors.sim.spec_arrays import LiveArray, LiveImage, LiveSpectrum
from actors.sim.spec_eval import EvalError, to_number
from actors.sim.spec_jobs import Job, Jobs
from actors.sim.spec_state import ALL_MOTORS, PropertyError, SpecState
from actors.transports.tcp import TcpListener, TcpStream
from broker.config import ActorConfig, non_negative, positive
from broker.wire.errors import ConfigError, LocalProtocolError, RemoteProtocolError

log = logging.getLogger(__name__)

PORT_FIRST: Final = 6510
PORT_LAST: Final = 6530
EVENT_ONLY: Final = ("error", "output/tty")
RUN_CMDS: Final = (Cmd.SV_CMD, Cmd.SV_CMD_WITH_RETURN, Cmd.SV_FUNC, Cmd.SV_FUNC_WITH_RETURN)
SEND_QUEUE: Final = 64 * 1024 * 1024  # bytes queued for a client before it counts as stuck


def _motors(value: Any) -> None:
    items = value.items() if isinstance(value, dict) else ((m, 0.0) for m in value)
    for mne, position in items:
        if not (isinstance(mne, str) and mne.isidentifier()):
            raise ValueError(f"motor name {mne!r} is not an identifier")
        if isinstance(position, bool) or not isinstance(position, int | float):
            raise ValueError(f"motor {mne}: position {position!r} is not a number")


def _names(value: Any) -> None:
    if not all(isinstance(n, str) and n.isidentifier() for n in value):
        raise ValueError("every name must be an identifier")


class _Client:
    """One connected SPEC client: its stream, decoder, byte order, version and watches."""

    def __init__(self, stream: TcpStream, max_data: int) -> None:
        self.stream = stream
        self.decoder = Decoder(max_data)
        self.order = LITTLE
        self.vers = 4
        self.watches: set[str] = set()
        self.prestart: dict[str, float] | None = None  # start_one buffer after prestart_all


class SpecServerSim(Actor):
    """Simulated SPEC server (certif.com server mode) with motors, counters and variables."""

    type_name = "sim-spec-server"
    listens = ("host", "port")
    settings = (
        Setting("host", str, "127.0.0.1", "address to listen on"),
        Setting("port", int, 0, "TCP port; 0 = the first free one in 6510-6530",
                check=non_negative),
        Setting("specname", str, "sim", "the SPEC process name (HELLO_REPLY, var/SPEC)"),
        Setting("motors", (list, dict), ["m0", "m1"],
                "motor mnemonics, or a table mnemonic = start position", check=_motors),
        Setting("counters", list, ["sec", "mon", "det"], "counter mnemonics", check=_names),
        Setting("speed", float, 10.0, "motor speed, user units per second", check=positive),
        Setting("update_interval", float, 0.05, "seconds between position events of a move",
                check=positive),
        Setting("deleted_flag", int, 0x0001, "SV_DELETED value sent (0x0001 or 0x1000)"),
        Setting("max_message", int, 16 * 1024 * 1024, "largest data accepted from a client",
                check=positive),
        Setting("mca_channels", int, 4096, "channels of the live spectrum var/MCA",
                check=positive),
        Setting("mca_rate", float, 10.0, "var/MCA frames per second (0: no MCA)",
                check=non_negative),
        Setting("image_rows", int, 1024, "rows of the live detector image var/IMG",
                check=positive),
        Setting("image_cols", int, 1024, "columns of var/IMG", check=positive),
        Setting("image_rate", float, 1.0, "var/IMG frames per second (0: no image)",
                check=non_negative),
        Setting("publish_updates", bool, False,
                "announce each live frame sent as evt.<sim>.update (for benchmarks)"),
    )

    @classmethod
    def cross_check(cls, values: dict[str, Any], actor: ActorConfig) -> Iterator[ConfigError]:
        yield from super().cross_check(values, actor)
        if values["deleted_flag"] not in (0x0001, 0x1000):
            yield ConfigError(f"{actor.path}.deleted_flag", "must be 1 (0x0001) or 4096 "
                              f"(0x1000), got {values['deleted_flag']}", actor.source)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        motors = self.config["motors"]
        table = motors if isinstance(motors, dict) else dict.fromkeys(motors, 0.0)
        self.spec = SpecState(self.config["specname"], {m: float(p) for m, p in table.items()},
                              list(self.config["counters"]), self.config["speed"], self._notify)
        self.clients: list[_Client] = []
        self.listener: TcpListener | None = None
        self.jobs = Jobs(self.call_later, self.spec, self._notify, self._job_done)

    # --- lifecycle -------------------------------------------------------------------------

    def on_start(self) -> None:
        host, port = self.config["host"], self.config["port"]
        ports = [port] if port else list(range(PORT_FIRST, PORT_LAST + 1))
        for candidate in ports:
            listener = TcpListener(self, host, candidate, self._accept)
            try:
                listener.start()
            except OSError as exc:
                if port or exc.errno != errno.EADDRINUSE:
                    raise RuntimeError(f"cannot listen on {host}:{candidate}: {exc}") from exc
                continue
            self.listener = listener
            break
        else:
            raise RuntimeError(f"no free port in {PORT_FIRST}-{PORT_LAST} on {host}")
        log.info("SPEC simulator %r listening on %s:%d", self.config["specname"], host,
                 listener.port)
        self.publish_event("listening", {"host": host, "port": listener.port,
                                         "specname": self.config["specname"]})
        self.link_up(f"listening on {host}:{listener.port}")  # a server's link: its socket
        self._start_live_arrays()
        self._tick()

    def on_stop(self) -> None:
        for client in list(self.clients):
            self._drop(client)
        if self.listener is not None:
            self.listener.close()

    def _tick(self) -> None:
        self.call_later(self.config["update_interval"], self._tick)
        if self.spec.moving() or self.spec.count_end is not None:
            self.spec.tick(time.monotonic())

    # --- live data arrays ------------------------------------------------------------------

    def _start_live_arrays(self) -> None:
        now, cfg = time.monotonic(), self.config
        arrays: list[LiveArray] = []
        if cfg["mca_rate"] > 0:
            arrays.append(LiveSpectrum("MCA", cfg["mca_channels"], cfg["mca_rate"], now))
        if cfg["image_rate"] > 0:
            arrays.append(LiveImage("IMG", cfg["image_rows"], cfg["image_cols"],
                                    cfg["image_rate"], now))
        for live in arrays:
            self.spec.live[live.name] = live
            self.call_later(1 / live.rate, self._live_tick, live)

    def _live_tick(self, live: LiveArray) -> None:
        """The next frame: to the clients watching it (rendered only if one does)."""
        live.frame += 1
        self.call_later(max(0.0, live.next_due() - time.monotonic()), self._live_tick, live)
        prop = f"var/{live.name}"
        if not any(prop in c.watches for c in self.clients):
            return
        stamp = time.time()
        self._notify(prop, live.render(live.frame), False)
        if self.config["publish_updates"]:
            self.publish_event("update", {"var": live.name, "frame": live.frame, "t": stamp})

    # --- connections -----------------------------------------------------------------------

    def _accept(self, sock: Any, addr: tuple[str, int]) -> None:
        peer = f"{addr[0]}:{addr[1]}"
        holder: list[_Client] = []
        stream = TcpStream(self, sock, peer, lambda data: self._on_data(holder[0], data),
                           lambda reason: self._on_closed(holder[0], reason),
                           max_pending=SEND_QUEUE)
        client = _Client(stream, self.config["max_message"])
        holder.append(client)
        self.clients.append(client)
        stream.start_reading()
        log.info("SPEC client %s connected", peer)

    def _on_closed(self, client: _Client, reason: str) -> None:
        log.info("SPEC client %s gone: %s", client.stream.peer, reason)
        self._drop(client)

    def _drop(self, client: _Client) -> None:
        client.stream.close()
        self.jobs.forget(client)
        if client in self.clients:
            self.clients.remove(client)

    def _on_data(self, client: _Client, data: bytes) -> None:
        try:
            client.decoder.feed(data)
            for msg in client.decoder.events():
                if client.decoder.order is not None:
                    client.order = client.decoder.order
                    client.vers = min(client.decoder.vers or 4, 4)
                self._handle(client, msg)
                if not client.stream.open:
                    return
        except RemoteProtocolError as exc:
            log.warning("SPEC client %s sent bad bytes, dropping it: %s (raw %s)",
                        client.stream.peer, exc, exc.raw[:64].hex())
            self._drop(client)

    # --- sending ---------------------------------------------------------------------------

    def _send(self, client: _Client, cmd: int, name: str, value: Value = "", *, sn: int = 0,
              type_: int | None = None, err: int = 0, flags: int = 0) -> None:
        try:
            kind, data, rows, cols = encode_value(value, client.order)
            now = time.time()
            msg = Message(cmd=cmd, name=name, data=data, type=kind if type_ is None else type_,
                          sn=sn, rows=rows, cols=cols, err=err, flags=flags, sec=int(now),
                          usec=int(now % 1 * 1e6), vers=client.vers, order=client.order)
            client.stream.send(encode_message(msg))
        except LocalProtocolError as exc:
            log.warning("cannot send %s to SPEC client %s: %s", Cmd(cmd).name,
                        client.stream.peer, exc)

    def _reply_error(self, client: _Client, msg: Message, reason: str,
                     event: bool = False) -> None:
        """SV_ERROR reply when the request has an sn; an ``error`` event to the clients
        watching ``error`` as well when `event` or when it has none (nobody would hear of
        it otherwise)."""
        if msg.sn:
            self._send(client, Cmd.SV_REPLY, msg.name, reason, sn=msg.sn,
                       type_=DataType.SV_ERROR, err=1)
        if event or not msg.sn:
            self._notify("error", reason, False)

    def _notify(self, prop: str, value: Value, deleted: bool) -> None:
        flags = self.config["deleted_flag"] if deleted else 0
        for client in self.clients:
            if prop in client.watches:
                self._send(client, Cmd.SV_EVENT, prop, value, flags=flags)

    def _tty(self, text: str) -> None:
        self._notify("output/tty", text, False)

    # --- requests --------------------------------------------------------------------------

    def _handle(self, client: _Client, msg: Message) -> None:
        handler: dict[int, Callable[[_Client, Message], None]] = {
            Cmd.SV_HELLO: self._hello, Cmd.SV_CLOSE: lambda c, m: self._drop(c),
            Cmd.SV_ABORT: self._abort, Cmd.SV_REGISTER: self._register,
            Cmd.SV_UNREGISTER: lambda c, m: c.watches.discard(m.name),
            Cmd.SV_CHAN_READ: self._chan_read, Cmd.SV_CHAN_SEND: self._chan_send,
            **dict.fromkeys(RUN_CMDS, self._run),
        }
        found = handler.get(msg.cmd)
        if found is None:
            log.warning("SPEC client %s sent unsupported %s", client.stream.peer,
                        msg.describe())
            self._reply_error(client, msg, f"unsupported command code {msg.cmd}")
            return
        try:
            found(client, msg)
        except RemoteProtocolError as exc:
            self._reply_error(client, msg, f"bad data in {msg.describe()}: {exc}")
        except Exception as exc:  # a simulator bug must not leave the client without a reply
            log.exception("SPEC simulator: handling %s from %s failed", msg.describe(),
                          client.stream.peer)
            self._reply_error(client, msg, f"simulator error in {msg.describe()}: "
                                           f"{type(exc).__name__}: {exc}")

    def _hello(self, client: _Client, msg: Message) -> None:
        name = self.config["specname"]
        self._send(client, Cmd.SV_HELLO_REPLY, name, name, sn=msg.sn)

    def _abort(self, client: _Client, msg: Message) -> None:
        self.spec.abort(time.monotonic())
        self.jobs.abort(client)

    def _register(self, client: _Client, msg: Message) -> None:
        if msg.name in EVENT_ONLY or msg.name.endswith("/sync_check"):
            client.watches.add(msg.name)
            if msg.name == "output/tty":  # the prompt SPEC shows, so a client sees a first event
                self._send(client, Cmd.SV_EVENT, msg.name, self.jobs.prompt())
            return
        try:
            value = self.spec.read(msg.name, time.monotonic())
        except PropertyError as exc:  # pycertifspec waits for an error event here
            self._reply_error(client, msg, f"{msg.name}: {exc}", event=True)
            return
        client.watches.add(msg.name)
        self._send(client, Cmd.SV_EVENT, msg.name, value)

    def _chan_read(self, client: _Client, msg: Message) -> None:
        try:
            value = self.spec.read(msg.name, time.monotonic())
        except PropertyError as exc:
            self._reply_error(client, msg, f"{msg.name}: {exc}")
            return
        self._send(client, Cmd.SV_REPLY, msg.name, value, sn=msg.sn)

    def _chan_send(self, client: _Client, msg: Message) -> None:
        now = time.monotonic()
        try:
            if msg.name.startswith(ALL_MOTORS + "/"):
                self._all_motors(client, msg.name[len(ALL_MOTORS) + 1:], now)
            elif msg.name.startswith("motor/") and msg.name.endswith("/start_one"):
                mne = msg.name[len("motor/"):-len("/start_one")]
                target = to_number(_scalar(decode_value(msg)))
                self.spec.motor(mne)
                if client.prestart is not None:
                    client.prestart[mne] = target
                else:
                    self.spec.start_moves({mne: target}, now)
            else:
                self.spec.write(msg.name, decode_value(msg), now)
        except (PropertyError, EvalError) as exc:  # SPEC prints the error: the error channel
            self._reply_error(client, msg, f"{msg.name}: {exc}", event=True)

    def _all_motors(self, client: _Client, what: str, now: float) -> None:
        if what == "prestart_all":
            client.prestart = {}
        elif what == "start_all":
            targets, client.prestart = client.prestart or {}, None
            self.spec.start_moves(targets, now)
        elif what == "abort_all":
            self.spec.abort(now)
        else:
            raise PropertyError(f"unknown all-motor property {what!r}")

    def _run(self, client: _Client, msg: Message) -> None:
        wants_reply = msg.cmd in (Cmd.SV_CMD_WITH_RETURN, Cmd.SV_FUNC_WITH_RETURN) and msg.sn
        self.jobs.submit(Job(_command_text(msg), client, msg.sn if wants_reply else 0,
                             msg.name))

    def _job_done(self, job: Job, value: Value | None, error: str | None) -> None:
        """A command finished: its reply (or error) to its client, or its bus command."""
        client = job.client
        if job.deferred is not None:
            if error is None:
                job.deferred.resolve(value)
            else:
                job.deferred.fail(error)
        if not isinstance(client, _Client) or client not in self.clients:
            return
        if error is not None:
            self._reply_error(client, Message(cmd=Cmd.SV_CMD, name=job.name, sn=job.sn), error,
                              event=not job.sn)
        elif job.sn:
            self._send(client, Cmd.SV_REPLY, job.name, "" if value is None else value,
                       sn=job.sn)

    # --- bus commands ----------------------------------------------------------------------

    @command("type", Param("text", str, doc="SPEC command text"),
             doc="run TEXT as if typed at the SPEC prompt (printed text and the next prompt "
                 "go to output/tty)")
    def cmd_type(self, text: str) -> Deferred:
        deferred = Deferred()
        self.jobs.submit(Job(text, None, 0, "", deferred=deferred, typed=True))
        return deferred

    @command("clients", doc="connected SPEC clients: peer, byte order, version, watches",
             record=False)
    def cmd_clients(self) -> list[dict[str, Any]]:
        return [{"peer": c.stream.peer, "order": "little" if c.order == LITTLE else "big",
                 "vers": c.vers, "watches": sorted(c.watches)} for c in self.clients]

    @command("drop", doc="close every client connection (clients see the server go away)")
    def cmd_drop(self) -> int:
        count = len(self.clients)
        for client in list(self.clients):
            self._drop(client)
        return count

    @command("motors", doc="each motor's user position and whether it moves", record=False)
    def cmd_motors(self) -> dict[str, dict[str, Any]]:
        now = time.monotonic()
        return {m.mne: {"position": m.user_at(now), "moving": m.target is not None}
                for m in self.spec.motors.values()}


def _command_text(msg: Message) -> str:
    """The command of a CMD/FUNC message in any of the forms clients send."""
    raw = msg.data[:-1] if msg.data.endswith(b"\0") else msg.data
    if not raw and msg.cmd in (Cmd.SV_FUNC, Cmd.SV_FUNC_WITH_RETURN):
        return msg.name  # pycertifspec's run(blocking=False) puts the command in the name
    text = raw.decode("utf-8", errors="replace")
    if "\0" in text:  # CSS pyspec's FUNC form: name\0arg\0arg
        func, *args = text.split("\0")
        return f"{func}({', '.join(args)})"
    return text


def _scalar(value: Value) -> str | float:
    if isinstance(value, str | float):
        return value
    raise PropertyError("expected a single value")
