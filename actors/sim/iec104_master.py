"""``sim-iec104-master``: a SCADA master (a `c104.Client`) as an actor, to drive an
``iec104-server`` end to end: ``sctl sim iec104-master --set port=2404``.

It connects to ``host:port``, runs a general interrogation when the connection opens
(``interrogate_on_connect``), publishes every point value it receives as ``evt.<sim>.point``
(``ioa``, ``type``, ``value``, ``quality``, ``cot``), and sends commands on request:
``sctl send <sim> command IOA VALUE [TYPE]`` replies ok only on a positive ACT_CON.

The connection is the actor's device link: OPEN is link up; a closed connection is link down,
after which the base opens a fresh client with its backoff. c104 callbacks run on c104 threads,
never raise (c104 would drop them) and only hand over to the loop. Blocking c104 calls
(interrogation, command transmit, unmute) run on one worker thread so the loop keeps serving.

Known c104 2.2.1 client bugs handled here (see "Pitfalls" in protocols/c104.md): the STARTDT race
(a connection stuck OPEN_MUTED is unmuted after `UNMUTE_AFTER`), and the lost-wakeup race (a
command may be reported unconfirmed although the server confirmed it; the reply then says so).
"""

import concurrent.futures
import functools
import logging
import time
from typing import Any, Final

import c104

from actors.core.actor import Actor, CommandError, Deferred, Param, Setting, command
from actors.core.link import UP
from actors.protocols.iec104_map import COMMAND_TYPES, MappingError, coerce
from actors.transports.c104 import c104_type, from_c104, to_c104
from broker.config import port_number, positive

log = logging.getLogger(__name__)

UNMUTE_AFTER: Final = 0.3  # seconds in OPEN_MUTED before the STARTDT race workaround
_CLOSED: Final = frozenset({"CLOSED", "CLOSED_AWAIT_RECONNECT"})


class Iec104MasterSim(Actor):
    """A SCADA master (c104 client): interrogates, publishes received points, sends commands."""

    type_name = "sim-iec104-master"
    settings = (
        Setting("host", str, "127.0.0.1", "address of the 104 server"),
        Setting("port", int, 2404, "TCP port of the 104 server", check=port_number),
        Setting("common_address", int, 1, "common address (CA) of the station",
                check=positive),
        Setting("interrogate_on_connect", bool, True, "general interrogation on every connect"),
        Setting("tick_rate_ms", int, 100, "c104 client tick", check=positive),
        Setting("command_timeout_ms", int, 5000, "how long a command waits for its ACT_CON",
                check=positive),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client: c104.Client | None = None
        self._con: c104.Connection | None = None
        self._station: c104.Station | None = None
        self._generation = 0  # states of an older client arriving late are ignored
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None
        self.values: dict[int, dict[str, Any]] = {}
        self.counters.update(points=0, commands_sent=0, commands_confirmed=0)

    def on_start(self) -> None:
        self._worker = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"{self.name}-c104")

    def on_stop(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=True)
            self._worker = None

    # --- the link: one c104 client and connection ------------------------------------------

    def open_link(self) -> None:
        cfg = self.config
        self._generation += 1
        client = c104.Client(tick_rate_ms=cfg["tick_rate_ms"],
                             command_timeout_ms=cfg["command_timeout_ms"])
        con = client.add_connection(ip=cfg["host"], port=cfg["port"], init=c104.Init.NONE)
        if con is None:
            raise RuntimeError(f"c104 refused a connection to {cfg['host']}:{cfg['port']}")
        station = con.add_station(common_address=cfg["common_address"])
        con.on_state_change(callable=functools.partial(self._on_state_change,
                                                       generation=self._generation))
        client.on_new_point(callable=self._on_new_point)
        self._client, self._con, self._station = client, con, station
        client.start()

    def close_link(self) -> None:
        client, self._client, self._con, self._station = self._client, None, None, None
        if client is not None:
            client.stop()

    def _state(self, generation: int, state: str) -> None:
        if generation != self._generation or self._con is None:
            return
        where = f"{self.config['host']}:{self.config['port']}"
        if state == "OPEN":
            self.link_up(f"connected to {where}")
            if self.config["interrogate_on_connect"]:
                self._submit(self._interrogate, None)
        elif state == "OPEN_MUTED":
            self.call_later(UNMUTE_AFTER, self._unmute_if_stuck, generation)
        elif state in _CLOSED and self.link_state in ("connecting", UP):
            self.link_down(f"connection to {where} {state.lower().replace('_', ' ')}")

    def _unmute_if_stuck(self, generation: int) -> None:
        con = self._con
        if (generation == self._generation and con is not None
                and con.state == c104.ConnectionState.OPEN_MUTED):
            log.info("%s: connection stuck muted (c104 STARTDT race); unmuting", self.name)
            self._submit(con.unmute, None)

    # --- c104 callbacks (c104 threads: hand over, never raise) ------------------------------

    def _on_state_change(self, connection: c104.Connection, state: c104.ConnectionState,
                         generation: int = 0) -> None:
        try:
            self.call_soon_threadsafe(self._state, generation, state.name)
        except Exception:
            log.debug("state change not handed over", exc_info=True)

    def _on_new_point(self, client: c104.Client, station: c104.Station, io_address: int,
                      point_type: c104.Type) -> None:
        try:
            point = station.add_point(io_address=io_address, type=point_type)
            if point is not None:
                point.on_receive(callable=self._on_point)
        except Exception:
            log.debug("new point %s not added", io_address, exc_info=True)

    def _on_point(self, point: c104.Point, previous_info: c104.Information,
                  message: c104.IncomingMessage) -> c104.ResponseState:
        try:
            quality = point.quality
            data = {"ioa": point.io_address, "type": point.type.name,
                    "value": from_c104(point.value),
                    "quality": "good" if quality is None or quality.is_good() else str(quality),
                    "cot": message.cot.name}
            self.call_soon_threadsafe(self._received, data)
        except Exception:
            log.debug("received point not handed over", exc_info=True)
        return c104.ResponseState.SUCCESS

    def _received(self, data: dict[str, Any]) -> None:
        self.counters["points"] += 1
        self.values[data["ioa"]] = {**data, "at": time.time()}
        self.publish_event("point", data)

    # --- blocking c104 calls on the worker thread -------------------------------------------

    def _submit(self, fn: Any, deferred: Deferred | None, *args: Any) -> None:
        if self._worker is None:
            raise CommandError("simulator is stopping")
        future = self._worker.submit(fn, *args)
        future.add_done_callback(lambda f: self.call_soon_threadsafe(self._done, f, deferred))

    def _done(self, future: "concurrent.futures.Future[Any]", deferred: Deferred | None) -> None:
        try:
            result = future.result()
        except Exception as exc:  # a c104 error in a blocking call: the caller learns it
            log.warning("%s: c104 call failed: %s", self.name, exc)
            if deferred is not None:
                deferred.fail(f"c104 call failed: {type(exc).__name__}: {exc}")
            return
        if deferred is not None:
            if isinstance(result, dict) and result.get("error"):
                deferred.fail(str(result["error"]))
            else:
                deferred.resolve(result)

    def _interrogate(self) -> dict[str, Any]:
        con = self._con
        ok = con is not None and con.interrogation(common_address=self.config["common_address"])
        self.call_soon_threadsafe(self.publish_event, "interrogation", {"ok": ok})
        return {"ok": ok} if ok else {"error": "general interrogation not confirmed"}

    def _transmit(self, point: c104.Point, data: dict[str, Any]) -> dict[str, Any]:
        confirmed = point.transmit(cause=c104.Cot.ACTIVATION)
        result = {**data, "confirmed": confirmed}
        self.call_soon_threadsafe(self._sent, result)
        if not confirmed:
            return {"error": f"command IOA {data['ioa']} value {data['value']!r}: negative or "
                             "no ACT_CON within command_timeout_ms (the c104 2.2.1 client can "
                             "also miss a positive one: check the server's evt.<name>.command)"}
        return result

    def _sent(self, result: dict[str, Any]) -> None:
        self.counters["commands_sent"] += 1
        self.counters["commands_confirmed"] += int(result["confirmed"])
        self.publish_event("command", result)

    # --- commands ---------------------------------------------------------------------------

    def _station_ready(self, what: str) -> c104.Station:
        if self.link_state != UP or self._station is None:
            raise CommandError(f"{what}: not connected (link {self.link_state})")
        return self._station

    @command("command", Param("ioa", int, doc="IOA of the command point"),
             Param("value", object, doc="on/off, ON/OFF/INTERMEDIATE for double, a number"),
             Param("type", str, default="C_SC_NA_1", doc="104 command type"))
    def cmd_command(self, ioa: int, value: Any, type: str) -> Deferred:
        """Send a 104 command; ok once the server confirmed it positively."""
        station = self._station_ready("command")
        if type not in COMMAND_TYPES:
            raise CommandError(f"command: unknown type {type!r} (known: "
                               f"{', '.join(COMMAND_TYPES)})")
        try:
            neutral = coerce(COMMAND_TYPES[type], value)
        except MappingError as exc:
            raise CommandError(f"command: value: {exc}") from None
        point = station.get_point(io_address=ioa) or station.add_point(
            io_address=ioa, type=c104_type(type))
        if point is None or point.type.name != type:
            have = point.type.name if point is not None else "none"
            raise CommandError(f"command: IOA {ioa} is a {have} point here, not {type}")
        point.value = to_c104(COMMAND_TYPES[type], neutral)
        deferred = Deferred()
        self._submit(self._transmit, deferred, point,
                     {"ioa": ioa, "type": type, "value": neutral})
        return deferred

    @command("interrogate", doc="run a general interrogation now")
    def cmd_interrogate(self) -> Deferred:
        self._station_ready("interrogate")
        deferred = Deferred()
        self._submit(self._interrogate, deferred)
        return deferred

    @command("points", doc="the last value received per IOA", record=False)
    def cmd_points(self) -> list[dict[str, Any]]:
        return [self.values[ioa] for ioa in sorted(self.values)]
