"""`SpringCoreMqttSim` (``sim-springcore-mqtt``): virtual SpringCore readers on an MQTT broker.

``sctl sim springcore-mqtt --set broker=127.0.0.1 --set port=1883 --set 'devices=["DA1275B0"]'``

Each id of `devices` is one virtual reader with its own MQTT connection (client id
``sim-<name>-<id>``), as a real reader has, so each has its own Last Will: a STATUS
``{"State":"offline,dead"}`` the broker publishes when the connection drops without a goodbye.
On every (re)connect a reader subscribes to its ``{prefix}/{id}/rdr/cmd``, publishes META, then
STATUS ``online,ready``; STATUS is repeated every `status_interval` seconds with its Uptime, and
``offline`` is sent when the simulator stops cleanly. META, STATUS and the Last Will are retained
(`retain`, the device's register 0289 default), so a host that subscribes later learns each
reader's state at once. With ``tls = {ca, cert, key}`` the readers connect over TLS with that
client certificate, as the actor does (same setting, same checks).

Commands (through the bus like any actor):

- ``present TAG [device=ID] [format=json|scrdr] [variant=current|old] [move=...]``: the reader
  publishes a READER EVENT on ``{prefix}/{id}/rdr/evt`` (JSON in the current or the older
  firmware's field names, or a $SCRDR line); the reply, and ``evt.<sim>.sent``, come once the
  broker acknowledged it.
- ``status STATE [device=ID]``: publish a STATUS now (``offline``, ``online,busy`` ...).

Every command a reader receives is published as ``evt.<sim>.received``: ``{device, topic,
payload (text), format (json|scrdr|None), decoded (the JSON object or the $SCCMD fields), error}``
— a payload the reader cannot decode is reported there (and logged), not dropped. The link is up
while every virtual reader is connected; a reader lost or refused takes it down, and the base's
backoff reconnects the readers not connected (the others keep their connection). paho's I/O runs
on the simulator's loop (`MqttClient`), as in the actor.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar

from actors.core.actor import STOPPING, Actor, CommandError, Deferred, Param, Setting, command
from actors.protocols import springcore
from actors.protocols import springcore_json as sj
from actors.transports.mqtt import MqttClient, broker_port, broker_settings
from broker.config import positive
from broker.wire.errors import LocalProtocolError, RemoteProtocolError

log = logging.getLogger(__name__)

VARIANTS = ("current", "old")
META_TEMPLATE: dict[str, Any] = {
    "VendorName": "SpringCard", "ProductName": "SpringPark", "ProductVariant": "sctl-sim",
    "Version": "1.23", "Firmware": "springCore/e518/springpark", "Revision": "1.23-sim",
    "Hardware": "EAN201234", "Open": True, "IpAddress": "127.0.0.1", "Protocol": "RDR/JSON",
    "Interfaces": "13.56",
}


def check_variant(value: Any) -> None:
    if value not in VARIANTS:
        raise ValueError(f"must be one of {', '.join(VARIANTS)}")


class VirtualReader:
    """One simulated reader: its MQTT connection and its event counter (older firmware)."""

    def __init__(self, sim: SpringCoreMqttSim, device: str) -> None:
        self.sim = sim
        self.device = device
        self.connected = False
        self.counter = 0
        prefix = sim.config["prefix"]
        self.status_topic = sj.topic(prefix, device, sj.STATUS_TOPIC)
        cmd = sj.topic(prefix, device, sj.CMD_TOPIC)
        self.mqtt = MqttClient(sim, f"sim-{sim.name}-{device}"[:64], self, sim.address,
                               subscriptions=[(cmd, sim.config["qos"])])
        self.mqtt.client.will_set(self.status_topic, sj.encode_status(sj.DEAD_STATE),
                                  qos=sim.config["qos"], retain=sim.config["retain"])

    def publish(self, kind: str, payload: bytes, result: dict[str, Any],
                on_acked: Callable[[dict[str, Any]], object] | None = None) -> Deferred:
        if not self.connected:
            raise CommandError(f"reader {self.device} is not connected to broker "
                               f"{self.sim.address}")
        topic = sj.topic(self.sim.config["prefix"], self.device, kind)
        retain = self.sim.config["retain"] and kind in (sj.META_TOPIC, sj.STATUS_TOPIC)
        return self.mqtt.publish(topic, payload, dict(result, topic=topic),
                                   self.sim.config["publish_timeout"], on_acked, retain=retain)

    def publish_status(self, state: str) -> Deferred:
        payload = sj.encode_status(state, uptime=self.sim.uptime())
        return self.publish(sj.STATUS_TOPIC, payload, {"device": self.device, "state": state})

    # --- MqttHandler (loop thread) ------------------------------------------------------------

    def mqtt_up(self, reason: str) -> None:
        self.connected = True
        meta = dict(META_TEMPLATE, SerialNumber=self.device, UniqueId=self.device)
        self.publish(sj.META_TOPIC, sj.encode_meta(meta), {"device": self.device})
        self.publish_status("online,ready")
        self.sim.reader_changed(f"reader {self.device} {reason}", False)

    def mqtt_down(self, reason: str) -> None:
        self.connected = False
        self.sim.reader_changed(f"reader {self.device}: {reason}", True)

    def mqtt_message(self, topic: str, payload: bytes, retained: bool) -> None:
        self.sim.received(self.device, topic, payload)


class SpringCoreMqttSim(Actor):
    """Virtual SpringCore readers on an MQTT broker (META, STATUS, Last Will, tags, commands)."""

    type_name: ClassVar[str] = "sim-springcore-mqtt"
    settings = (
        *broker_settings(Setting("prefix", str, sj.DEFAULT_PREFIX,
                                 "topic prefix of the readers (register 028E)",
                                 check=sj.check_prefix)),
        Setting("devices", list, ["DA1275B0"], "ids of the virtual readers",
                check=sj.check_devices),
        Setting("status_interval", float, 30.0, "seconds between STATUS messages",
                check=positive),
        Setting("format", str, sj.JSON, "default event format: json or scrdr",
                check=sj.check_format),
        Setting("variant", str, "current", "default JSON field names: current or old",
                check=check_variant),
        Setting("publish_timeout", float, 5.0, "seconds to wait for the broker's PUBACK",
                check=positive),
        Setting("retain", bool, True, "publish META, STATUS and the Last Will retained (a "
                "host that starts later learns each reader's state at once)"),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.address = f"{self.config['broker']}:{broker_port(self.config)}"
        self.readers: dict[str, VirtualReader] = {}
        self.counters.update(sent=0, received=0)

    def uptime(self) -> str:
        """The device's ``CCC:SSS.MMM``: startup counter (1) and seconds since start."""
        return f"1:{time.monotonic() - self._started:.3f}"

    def open_link(self) -> None:
        """Connect every reader that is not connected (the base calls it again after a loss,
        with backoff); each reader has its own MQTT connection."""
        if not self.readers:
            for device in self.config["devices"]:
                self.readers[device] = VirtualReader(self, device)
            self.call_later(self.config["status_interval"], self._status_tick)
        for reader in self.readers.values():
            if not reader.connected:
                reader.mqtt.connect(self.config["broker"], broker_port(self.config),
                                    self.config["keepalive"])

    def close_link(self) -> None:
        """Drop the readers that are not connected (their attempt failed or timed out); at
        stop, every reader says goodbye."""
        if self.state == STOPPING:
            self._goodbye()
            return
        for reader in self.readers.values():
            if not reader.connected:
                reader.mqtt.close()

    def on_stop(self) -> None:
        self._goodbye()  # the link may have been down: then close_link was not called

    def _goodbye(self) -> None:
        """A clean goodbye, as a reader that is switched off properly: STATUS ``offline``
        (queued before the DISCONNECT, so it replaces a retained ``online``), then disconnect."""
        for reader in self.readers.values():
            if reader.connected:
                reader.publish_status(sj.OFFLINE)
                reader.connected = False
            reader.mqtt.stop("simulator stopping")

    def reader_changed(self, reason: str, lost: bool) -> None:
        """Link up once every reader is connected; down when one is lost or refused."""
        if all(r.connected for r in self.readers.values()):
            self.link_up(reason)
        elif lost and self.state != STOPPING:
            self.link_down(reason)

    def _status_tick(self) -> None:
        self.call_later(self.config["status_interval"], self._status_tick)
        for reader in self.readers.values():
            if reader.connected:
                reader.publish_status("online,ready")

    def _reader(self, device: str) -> VirtualReader:
        if not device:
            if len(self.readers) != 1:
                raise CommandError(f"device=ID is required: readers {', '.join(self.readers)}")
            device = next(iter(self.readers))
        reader = self.readers.get(device)
        if reader is None:
            raise CommandError(f"no virtual reader {device!r} (readers: "
                               f"{', '.join(self.readers)})")
        return reader

    def received(self, device: str, topic: str, payload: bytes) -> None:
        self.counters["received"] += 1
        data: dict[str, Any] = {"device": device, "topic": topic,
                                "payload": payload.decode("utf-8", "replace"),
                                "format": None, "decoded": None, "error": None}
        try:
            cmd = sj.decode_command(payload)
        except RemoteProtocolError as exc:
            log.warning("sim reader %s: undecodable command on %s: %s", device, topic, exc)
            data["error"] = str(exc)
        else:
            data.update(format=cmd.format, decoded=cmd.fields)
        self.publish_event("received", data)

    @command("present", Param("tag", str, doc="TagId, hex"),
             Param("device", str, "", "reader id (required with several readers)"),
             Param("format", str, "", "json or scrdr (default: the format setting)"),
             Param("variant", str, "", "current or old JSON names (default: setting)"),
             Param("move", str, "", "insert, remove or insert,remove ('' = none)"),
             doc="present a tag to a reader: it publishes a READER EVENT")
    def present(self, tag: str, device: str, format: str, variant: str,
                move: str) -> Deferred:
        reader = self._reader(device)
        fmt = format or self.config["format"]
        variant = variant or self.config["variant"]
        if fmt not in sj.FORMATS or variant not in VARIANTS:
            raise CommandError(f"format must be json or scrdr, variant current or old; got "
                               f"{fmt!r}, {variant!r}")
        try:
            if fmt == sj.SCRDR:
                payload = springcore.encode_tag_line(tag, move=move or None, tag_data=tag)
            else:
                reader.counter += 1
                payload = sj.encode_json_event(
                    tag, variant=variant, move=move or None, tag_data=tag,
                    uptime=self.uptime(), counter=reader.counter,
                    date_time=time.strftime("%Y-%m-%d %H:%M:%S"))
        except LocalProtocolError as exc:
            raise CommandError(f"present: {exc}") from None
        result = {"device": reader.device, "format": fmt, "variant": variant,
                  "payload": payload.decode("ascii", "replace")}
        return reader.publish(sj.EVT_TOPIC, payload, result, self._sent)

    def _sent(self, result: dict[str, Any]) -> None:
        self.counters["sent"] += 1
        self.publish_event("sent", result)

    @command("status", Param("state", str, "online,ready", "the STATUS State to publish"),
             Param("device", str, "", "reader id (required with several readers)"),
             doc="publish a STATUS now")
    def status(self, state: str, device: str) -> Deferred:
        return self._reader(device).publish_status(state)

    @command("readers", doc="the virtual readers and whether each is connected", record=False)
    def cmd_readers(self) -> dict[str, Any]:
        return {d: {"connected": r.connected, "events": r.counter}
                for d, r in self.readers.items()}
