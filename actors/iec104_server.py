"""``iec104-server``: the actor *is* an IEC 60870-5-104 server (c104) for SCADA masters.

Bus messages feed monitoring points and 104 commands become bus commands, as the site file's
``[[actors.NAME.point]]`` / ``[[actors.NAME.command]]`` tables say (`actors.protocols.iec104_map`,
which checks them before anything starts).

Threads. c104 runs its callbacks on its own threads and *fails open*: a callback that raises is
removed for good and c104 then accepts every connection and confirms every command. So every
callback here wraps its whole body in try/except and returns the safe answer on any error
(refuse the connection, negative confirmation); state is touched only on the loop thread, the
callbacks hand work over with `call_soon_threadsafe`. c104 checks callback signatures as
strings, so this module must NOT use ``from __future__ import annotations``.

Command confirmation. A 104 command is confirmed positively only when the target actor replied
ok in time. c104 2.2.1 can defer a confirmation (return ``ResponseState.NONE`` and later
``point.transmit(ACTIVATION_CON)``), but ``transmit`` takes only a cause: its Python API has no
way to make that ACT_CON negative. So the
``on_receive`` callback answers synchronously: it hands the bus request to the loop and waits
on a `threading.Event`, bounded by the route's timeout plus `WAIT_MARGIN`. Only that master's
connection waits (each connection has its own c104 thread); the loop never blocks. The bus
request carries the same deadline, so a target that is down or late never runs the command
after the master was told "negative".
A target known to be down (`actors.core.liveness`: no heartbeat for three of its intervals, or
its last heartbeat said ``stopping``) is not asked at all: the master gets its negative ACT_CON
at once, the ``evt.<name>.command`` event says why, ``commands_target_down`` counts it and one
WARNING per episode says so.

Connections. ``on_connect`` gets the master's IP and enforces ``allow`` (addresses or networks).
c104 2.2.1 reports no disconnect, so a loop timer (``poll_connections``) compares the connections
accepted with c104's open count, and names the IPs from the established peers of our port in
/proc/net/tcp{,6} (Linux) or the accepted IPs (`_poll_connections`).
"""

import contextlib
import datetime
import ipaddress
import logging
import os
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any, ClassVar, Final

import c104
import zmq

from actors.core import liveness
from actors.core.actor import Actor, CommandError, Param, Setting, command
from actors.protocols.iec104_map import (
    BusCall,
    CommandRoute,
    Mapping104,
    MappingError,
    PointState,
    PointTable,
    parse_mapping,
)
from actors.transports.c104 import c104_type, from_c104, to_c104
from broker.client.bus import Delivery
from broker.client.requests import Request
from broker.config import ActorConfig, RouterConfig, non_negative, port_number, positive
from broker.wire.errors import ConfigError, EnvelopeError

log = logging.getLogger(__name__)

WAIT_MARGIN: Final = 1.0  # seconds a c104 thread waits beyond the bus request's timeout
POLL_CONNECTIONS: Final = 0.5  # seconds between connection-count checks (disconnect events)
MIN_TICK_MS: Final = 50  # c104 refuses less
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# --- settings checks ---------------------------------------------------------------------------


def _tick(value: Any) -> None:
    if value < MIN_TICK_MS:
        raise ValueError(f"must be at least {MIN_TICK_MS} (c104's lower bound)")


def _common_address(value: Any) -> None:
    if not 1 <= value <= 65534:
        raise ValueError("must be 1..65534 (65535 is the broadcast address)")


def _max_connections(value: Any) -> None:
    if not 0 <= value <= 255:
        raise ValueError("must be 0 (no limit) .. 255")


def parse_allow(entries: Any) -> tuple[Network, ...]:
    """``allow`` entries (addresses or networks) as networks; raises ValueError."""
    if not isinstance(entries, list) or not entries:
        raise ValueError('must list the masters allowed to connect, e.g. ["10.0.0.5", '
                         '"192.168.1.0/24"] ("0.0.0.0/0" allows any IPv4 master)')
    out = []
    for entry in entries:
        if not isinstance(entry, str):
            raise ValueError(f"{entry!r} is not a string")
        try:
            out.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"{entry!r}: {exc}") from None
    return tuple(out)


def _check_allow(value: Any) -> None:
    parse_allow(value)


def allowed(ip: str, networks: tuple[Network, ...]) -> bool:
    """Whether `ip` (as c104 reports it, maybe with ``:port``) is in `networks`."""
    address = ipaddress.ip_address(_host_of(ip))
    return any(address in net for net in networks)


def _host_of(peer: str) -> str:
    """``"1.2.3.4:5"`` → ``"1.2.3.4"``, ``"[::1]:5"`` → ``"::1"``; a bare address is returned
    as is (on_connect gets ``ip``, on_clock_sync ``ip:port``)."""
    if peer.startswith("["):
        return peer[1:].split("]", 1)[0]
    if peer.count(":") == 1:
        return peer.rsplit(":", 1)[0]
    return peer


def _existing_file(value: Any) -> None:
    if value and not os.path.isfile(value):
        raise ValueError("no such file")


def _file_list(value: Any) -> None:
    for path in value:
        if not isinstance(path, str) or not os.path.isfile(path):
            raise ValueError(f"{path!r}: no such file")


class _Waiter:
    """One 104 command waiting on a c104 thread for the target actor's reply."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.lock = threading.Lock()
        self.ok = False
        self.expired = False

    def settle(self, ok: bool) -> bool:
        """Record the outcome; False if the c104 thread gave up first (the master already
        got a negative confirmation)."""
        with self.lock:
            if self.expired:
                return False
            self.ok = ok
            self.event.set()
            return True

    def wait(self, timeout: float) -> bool:
        """Block the c104 thread; the outcome, False when nothing came in time."""
        self.event.wait(timeout)
        with self.lock:
            if not self.event.is_set():
                self.expired = True
            return self.ok


class Iec104ServerActor(Actor):
    """IEC 60870-5-104 server: bus messages feed points, 104 commands become bus commands."""

    type_name = "iec104-server"
    listens = ("ip", "port")
    settings = (
        Setting("ip", str, "0.0.0.0", "address the 104 server listens on"),
        Setting("port", int, 2404, "TCP port of the 104 server", check=port_number),
        Setting("common_address", int, 1, "common address (CA) of the station",
                check=_common_address),
        Setting("tick_rate_ms", int, 100, "c104 server tick; report_ms must be a multiple",
                check=_tick),
        Setting("max_connections", int, 0, "masters connected at once (0 = no limit)",
                check=_max_connections),
        Setting("allow", list, required=True, check=_check_allow,
                doc="IP addresses or networks of masters allowed to connect; others are refused"),
        Setting("command_timeout", float, 5.0, "seconds a target actor has to reply ok to a "
                "104 command before the master gets a negative confirmation", check=positive),
        Setting("cert", str, "", "TLS: server certificate file (PEM); '' = plain TCP",
                check=_existing_file, path=True),
        Setting("key", str, "", "TLS: private key file of cert", check=_existing_file,
                path=True),
        Setting("ca", str, "", "TLS: CA certificate that signs master certificates (validates "
                "them)", check=_existing_file, path=True),
        Setting("allowed_certs", list, [], "TLS: master certificates accepted (only these)",
                check=_file_list, path=True),
        Setting("point", list, [], "monitoring points ([[actors.NAME.point]] tables)"),
        Setting("command", list, [], "command points ([[actors.NAME.command]] tables)"),
        Setting("poll_connections", float, POLL_CONNECTIONS,
                "seconds between checks for closed master connections", check=non_negative),
    )

    mapping: Mapping104
    _TLS_NEEDS_CERT: ClassVar[tuple[str, ...]] = ("key", "ca", "allowed_certs")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        path = f"actors.{self.name}"
        self.mapping = parse_mapping(self.config["point"], self.config["command"], path,
                                     self.config["tick_rate_ms"])
        self._check_tls(self.config, path)
        self._networks = parse_allow(self.config["allow"])
        self.table = PointTable(self.mapping.points)
        self._routes = {r.ioa: r for r in self.mapping.commands}
        self._last_command: dict[int, dict[str, Any]] = {}
        self._server: c104.Server | None = None
        self._points: dict[int, c104.Point] = {}
        self._waiters: set[_Waiter] = set()
        self._waiters_lock = threading.Lock()
        self._stopping = False
        self._live = 0  # connections accepted and not yet seen closed
        self._live_ips: Counter[str] = Counter()
        self._missing = 0
        self._peers: set[str] = set()
        self._liveness: liveness.Liveness | None = None
        for key in ("mapping_errors", "transmitted", "clients", "refused", "commands_104",
                    "commands_104_ok", "unexpected"):
            self.counters[key] = 0

    @classmethod
    def from_config(cls, actor: ActorConfig, router: RouterConfig,
                    *, context: zmq.Context[Any] | None = None) -> Actor:
        """The mapping is checked in __init__; its errors get the site file's name here."""
        try:
            return super().from_config(actor, router, context=context)
        except ConfigError as exc:
            if exc.source:
                raise
            raise ConfigError(exc.path, exc.reason, actor.source) from None

    @classmethod
    def cross_check(cls, values: dict[str, Any], actor: ActorConfig) -> Iterator[ConfigError]:
        yield from super().cross_check(values, actor)
        try:
            parse_mapping(values["point"], values["command"], actor.path, values["tick_rate_ms"],
                          actor.source)
        except ConfigError as exc:
            yield exc
        try:
            cls._check_tls(values, actor.path)
        except ConfigError as exc:
            yield exc

    @classmethod
    def command_targets(cls, values: dict[str, Any]) -> list[tuple[str, str, str]]:
        mapping = parse_mapping(values["point"], values["command"], "", values["tick_rate_ms"])
        return [(f"command[{i}].{key}", route.actor, getattr(route, key))
                for i, route in enumerate(mapping.commands)
                for key in ("command", "on", "off") if getattr(route, key)]

    @classmethod
    def _check_tls(cls, cfg: dict[str, Any], path: str) -> None:
        """The TLS files must load: c104 2.2.1 only prints an mbedtls error for a bad file and
        carries on without it, so they are loaded here first (with Python's ssl)."""
        if cfg["cert"] and not cfg["key"]:
            raise ConfigError(f"{path}.key", "is required with cert")
        if not cfg["cert"]:
            for key in cls._TLS_NEEDS_CERT:
                if cfg[key]:
                    raise ConfigError(f"{path}.{key}", "needs cert (TLS is off without it)")
            return
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(cfg["cert"], cfg["key"])
        except (ssl.SSLError, OSError) as exc:
            reason = (f"{cfg['cert']} with key {cfg['key']} is not a PEM certificate and its "
                      f"private key: {exc}")
            raise ConfigError(f"{path}.cert", reason) from None
        checks = [("ca", cfg["ca"])] if cfg["ca"] else []
        checks += [(f"allowed_certs[{i}]", f) for i, f in enumerate(cfg["allowed_certs"])]
        for key, file in checks:
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=file)
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(f"{path}.{key}", f"{file} is not a PEM certificate: {exc}") \
                    from None

    def _transport_security(self) -> c104.TransportSecurity | None:
        """TLS as configured: ``ca`` turns chain validation of master certificates on,
        ``allowed_certs`` restricts masters to exactly those certificates."""
        if not self.config["cert"]:
            return None
        tls = c104.TransportSecurity(validate=bool(self.config["ca"]),
                                     only_known=bool(self.config["allowed_certs"]))
        tls.set_certificate(cert=self.config["cert"], key=self.config["key"])
        if self.config["ca"]:
            tls.set_ca_certificate(cert=self.config["ca"])
        for cert in self.config["allowed_certs"]:
            tls.add_allowed_remote_certificate(cert=cert)
        return tls

    # --- lifecycle (loop thread) -----------------------------------------------------------

    def on_start(self) -> None:
        cfg = self.config
        server = c104.Server(ip=cfg["ip"], port=cfg["port"], tick_rate_ms=cfg["tick_rate_ms"],
                             max_connections=cfg["max_connections"],
                             transport_security=self._transport_security())
        station = server.add_station(common_address=cfg["common_address"])
        if station is None:
            raise RuntimeError(f"c104 refused station {cfg['common_address']}")
        for spec in self.mapping.points:
            point = station.add_point(io_address=spec.ioa, type=c104_type(spec.type),
                                      report_ms=spec.report_ms)
            if point is None:
                raise RuntimeError(f"c104 refused point IOA {spec.ioa}")
            point.quality = (c104.BinaryCounterQuality.Invalid if spec.kind == "counter"
                             else c104.Quality.Invalid)  # until the first value arrives
            self._points[spec.ioa] = point
        for route in self.mapping.commands:
            mode = (c104.CommandMode.SELECT_AND_EXECUTE if route.select
                    else c104.CommandMode.DIRECT)
            point = station.add_point(io_address=route.ioa, type=c104_type(route.type),
                                      command_mode=mode)
            if point is None:
                raise RuntimeError(f"c104 refused command point IOA {route.ioa}")
            point.on_receive(callable=self._on_receive)
            self._points[route.ioa] = point
        server.on_connect(callable=self._on_connect)
        server.on_clock_sync(callable=self._on_clock_sync)
        server.on_unexpected_message(callable=self._on_unexpected_message)
        self._server = server  # c104 stops a server whose last reference is dropped
        server.start()
        log.info("iec104 server %s listening on %s:%d (CA %d, %d points, %d commands)",
                 self.name, cfg["ip"], cfg["port"], cfg["common_address"],
                 len(self.mapping.points), len(self.mapping.commands))
        self.link_up(f"listening on {cfg['ip']}:{cfg['port']}")  # a server's link: its socket
        for prefix in self.mapping.prefixes():
            self.subscribe(prefix, self._on_feed)
        if self.mapping.commands:  # targets known to be down get a negative ACT_CON at once
            self._liveness = liveness.track(self)
        if cfg["poll_connections"]:
            self.call_later(cfg["poll_connections"], self._poll_connections)

    def on_stop(self) -> None:
        self._stopping = True
        with self._waiters_lock:
            waiters, self._waiters = self._waiters, set()
        for waiter in waiters:  # let blocked c104 threads answer before stop() joins them
            waiter.settle(False)
        if self._server is not None:
            self._server.stop()
            self._server = None

    # --- the feed: bus messages -> points (loop thread) -------------------------------------

    def _on_feed(self, delivery: Delivery) -> None:
        try:
            env = delivery.envelope
        except EnvelopeError as exc:
            self.counters["mapping_errors"] += 1
            log.warning("iec104 %s: undecodable message on %s (gseq %d): %s", self.name,
                        delivery.topic, delivery.gseq, exc)
            return
        updated, errors = self.table.on_message(delivery.topic, env.data, env.ts)
        for spec, reason in errors:
            self.counters["mapping_errors"] += 1
            log.warning("iec104 %s: point IOA %d (%s) not updated from %s (id %s from %s): %s",
                        self.name, spec.ioa, spec.type, delivery.topic, env.id, env.src,
                        reason)
        for state in updated:
            self._transmit(state)

    def _transmit(self, state: PointState) -> bool:
        """Put the value into the c104 point and send it spontaneously; False when no master
        is active (not an error: it goes out with the next interrogation)."""
        point = self._points[state.spec.ioa]
        point.value = to_c104(state.spec.kind, state.value)
        point.quality = (c104.BinaryCounterQuality() if state.spec.kind == "counter"
                         else c104.Quality())
        sent = point.transmit(cause=c104.Cot.SPONTANEOUS)
        if sent:
            self.counters["transmitted"] += 1
        return sent

    # --- operator commands ------------------------------------------------------------------

    @command("set", Param("ioa", int, doc="IOA of a monitoring point"),
             Param("value", object, doc="new value (on/off, a number, ON/OFF for double)"),
             doc="set a monitoring point and transmit it spontaneously")
    def cmd_set(self, ioa: int, value: Any) -> dict[str, Any]:
        src = self.current_command.src if self.current_command is not None else "?"
        try:
            state = self.table.set(ioa, value, time.time(), f"set by {src}")
        except MappingError as exc:
            raise CommandError(f"set: IOA {ioa}: {exc}") from None
        return {"ioa": ioa, "type": state.spec.type, "value": state.value,
                "transmitted": self._transmit(state)}

    @command("points", doc="every point: IOA, type, value, quality, last update", record=False)
    def cmd_points(self) -> list[dict[str, Any]]:
        rows = self.table.rows()
        for route in self.mapping.commands:
            last = self._last_command.get(route.ioa, {})
            rows.append({"ioa": route.ioa, "type": route.type, "name": route.name,
                         "value": last.get("value"), "quality": last.get("outcome", ""),
                         "updated": last.get("at"), "source": f"command -> {route.actor}"})
        return sorted(rows, key=lambda r: int(r["ioa"]))

    # --- c104 callbacks (c104 threads: hand over, never raise) ------------------------------

    def _on_connect(self, server: c104.Server, ip: str) -> bool:
        try:
            ok = allowed(ip, self._networks)
            self.call_soon_threadsafe(self._client_event, "connect" if ok else "refuse", ip,
                                      "" if ok else "not in allow")
            return ok
        except Exception as exc:
            with contextlib.suppress(Exception):  # the answer below is what matters
                self.call_soon_threadsafe(self._client_event, "refuse", str(ip),
                                          f"error in the allow check: {exc!r}")
            return False

    def _on_clock_sync(self, server: c104.Server, ip: str,
                       date_time: datetime.datetime) -> c104.ResponseState:
        try:
            self.call_soon_threadsafe(self._publish, "clock", {
                "ip": _host_of(ip), "peer": ip, "time": date_time.isoformat(),
                "note": "confirmed; the host clock is not changed"})
            return c104.ResponseState.SUCCESS
        except Exception:
            return c104.ResponseState.FAILURE

    def _on_unexpected_message(self, server: c104.Server, message: c104.IncomingMessage,
                               cause: c104.Umc) -> None:
        try:
            info = {"type": message.type.name, "ioa": message.io_address,
                    "common_address": message.common_address, "cot": message.cot.name,
                    "cause": cause.name}
            self.call_soon_threadsafe(self._unexpected, info)
        except Exception:
            pass  # c104 answers unexpected messages negatively by itself

    def _on_receive(self, point: c104.Point, previous_info: c104.Information,
                    message: c104.IncomingMessage) -> c104.ResponseState:
        try:
            ioa = point.io_address
            value = from_c104(point.value)
            route = self._routes[ioa]
            timeout = route.timeout or self.config["command_timeout"]
            waiter = _Waiter()
            with self._waiters_lock:
                if self._stopping:
                    return c104.ResponseState.FAILURE
                self._waiters.add(waiter)
            self.call_soon_threadsafe(self._start_command, waiter, route, value, timeout)
            ok = waiter.wait(timeout + WAIT_MARGIN)
            with self._waiters_lock:
                self._waiters.discard(waiter)
            if waiter.expired:  # the loop is stalled; its late outcome event will say so
                log.warning("iec104 %s: command IOA %d: no outcome within %g s; negative",
                            self.name, ioa, timeout + WAIT_MARGIN)
            return c104.ResponseState.SUCCESS if ok else c104.ResponseState.FAILURE
        except Exception:
            return c104.ResponseState.FAILURE

    # --- handed-over work (loop thread) -----------------------------------------------------

    def _publish(self, event: str, data: dict[str, Any]) -> None:
        self.publish_event(event, data)

    def _client_event(self, event: str, ip: str, reason: str) -> None:
        if event == "connect":
            self._live += 1
            self._live_ips[ip] += 1
        self.counters["clients" if event == "connect" else "refused"] += 1
        level = logging.INFO if event == "connect" else logging.WARNING
        log.log(level, "iec104 %s: master %s %s%s", self.name, ip, event,
                f": {reason}" if reason else "")
        self.publish_event("client", {"event": event, "ip": ip, "reason": reason})

    def _unexpected(self, info: dict[str, Any]) -> None:
        self.counters["unexpected"] += 1
        log.warning("iec104 %s: unexpected message %s", self.name, info)
        if info["type"].startswith("C_"):
            self.publish_event("command", {**info, "outcome": "rejected",
                                           "error": f"rejected by the server: {info['cause']}"})

    def _start_command(self, waiter: _Waiter, route: CommandRoute, value: Any,
                       timeout: float) -> None:
        self.counters["commands_104"] += 1
        try:
            call = route.call(value)
            down = self._liveness.refusal(call.actor, time.monotonic()) \
                if self._liveness is not None else None
            if down is not None:  # negative at once, not after the timeout; logged per episode
                waiter.settle(False)
                self._command_event(route, value, call, False, down, quiet=True)
                return
            self.bus.start_request(call.actor, call.command, call.args, timeout=timeout,
                                   callback=lambda req: self._command_done(waiter, route,
                                                                           value, call, req))
        except Exception as exc:
            log.warning("iec104 %s: command IOA %d value %r not sent: %s", self.name,
                        route.ioa, value, exc)
            waiter.settle(False)
            self._command_event(route, value, None, False, str(exc))

    def _command_done(self, waiter: _Waiter, route: CommandRoute, value: Any, call: BusCall,
                      req: Request) -> None:
        reply = req.reply.data if req.reply is not None else {}
        ok = reply.get("status") == "ok"
        error = req.error or str(reply.get("error") or "")
        if not waiter.settle(ok):
            ok, error = False, "the master was answered negatively before the reply came"
        self._command_event(route, value, call, ok, error)

    def _command_event(self, route: CommandRoute, value: Any, call: BusCall | None, ok: bool,
                       error: str, quiet: bool = False) -> None:
        if ok:
            self.counters["commands_104_ok"] += 1
        outcome = "confirmed" if ok else "negative"
        self._last_command[route.ioa] = {"value": value, "outcome": outcome, "at": time.time()}
        data = {"ioa": route.ioa, "type": route.type, "value": value, "outcome": outcome,
                "error": error, "actor": route.actor,
                "command": call.command if call is not None else None,
                "args": call.args if call is not None else None}
        if not ok and not quiet:
            log.warning("iec104 %s: command IOA %d value %r negative: %s", self.name,
                        route.ioa, value, error)
        self.publish_event("command", data)

    def _poll_connections(self) -> None:
        """Publish disconnects, which c104 2.2.1 has no callback for: connections accepted
        (counted in `_client_event`) minus c104's open count are the closed ones. A deficit
        must show in two polls in a row (a just-accepted connection may not be counted by
        c104 yet). Their IPs come from the peers that left /proc/net/tcp, else from the
        accepted IPs when those are all the same, else "unknown"."""
        if self._server is None or self._stopping:
            return
        self.call_later(self.config["poll_connections"], self._poll_connections)
        missing_now = self._live - self._server.open_connection_count
        missing, self._missing = min(missing_now, self._missing), max(missing_now, 0)
        peers = _established_peers(self.config["port"])
        left = [_host_of(p) for p in sorted(self._peers - peers)]
        self._peers = peers
        for _ in range(max(missing, 0)):
            ip = left.pop(0) if left else self._only_ip()
            self._live -= 1
            self._missing -= 1
            self._live_ips[ip] -= 1
            self.publish_event("client", {"event": "disconnect", "ip": ip,
                                          "reason": "connection closed",
                                          "open_connections": self._live})

    def _only_ip(self) -> str:
        live = [ip for ip, n in self._live_ips.items() if n > 0]
        return live[0] if len(live) == 1 else "unknown"


def _established_peers(port: int) -> set[str]:
    """Remote ``ip:port`` of established TCP connections to local `port` (Linux /proc; an
    empty set elsewhere, the disconnect events then say ``ip = "unknown"``)."""
    peers: set[str] = set()
    for name, family in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 6)):
        try:
            with open(name, encoding="ascii") as fh:
                lines = fh.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or fields[3] != "01":  # 01 = ESTABLISHED
                continue
            local, remote = fields[1], fields[2]
            if int(local.rsplit(":", 1)[1], 16) == port:
                peers.add(_decode_proc_address(remote, family))
    return peers


def _decode_proc_address(text: str, family: int) -> str:
    """``0100007F:1F90`` (little-endian words, as the kernel prints them) → ``127.0.0.1:8080``."""
    hex_ip, hex_port = text.rsplit(":", 1)
    raw = bytes.fromhex(hex_ip)
    packed = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    address: ipaddress.IPv4Address | ipaddress.IPv6Address = (
        ipaddress.IPv4Address(packed) if family == 4 else ipaddress.IPv6Address(packed))
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    port = int(hex_port, 16)
    return f"{address}:{port}" if address.version == 4 else f"[{address}]:{port}"

