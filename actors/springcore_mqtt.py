"""`SpringCoreMqttActor` (``springcore-mqtt``): SpringCore Smart Readers through an MQTT broker.

One actor serves one or many readers on one broker: it subscribes to ``{prefix}/{id}/rdr/evt``,
``/status`` and ``/meta`` of each configured id (or of ``+``) and publishes

- ``evt.<name>.tag``: the tag schema of `actors.protocols.springcore_tag` (same keys as the TCP
  reader), ``device`` = the reader's id taken from the topic;
- ``evt.<name>.device``: ``{device, state: online|offline, status: raw State or None, uptime,
  device_time, retained, source: status|tag|meta}`` when a reader's state changes (STATUS, its
  ``offline,dead`` Last Will, or a first tag/META from a reader not seen yet);
- ``evt.<name>.meta``: ``{device, meta: {VendorName, SerialNumber, ...}}``;
- ``evt.<name>.link``: the broker connection (published by the base).

Threads and link: paho's I/O runs on the actor's loop (`MqttClient`: no network thread; only the
blocking connect runs on a short-lived thread); the base's link state machine reconnects with
jittered backoff. Subscriptions are made again after every (re)connect; the link is reported up
once the broker granted them. The session is persistent by default (``persistent_session``):
while the actor restarts, the broker keeps its subscriptions and queues the readers' QoS 1
events for it, so a ``kill -9`` and restart loses none (a broker restart without persistence
still does: then a reader's event counter, where it has one, reports the gap). While the Bus is
congested the actor stops reading the broker's socket and the readers' events wait at the broker
(docs/backpressure.md).

Commands (wink, accept, deny, seq, leds, buzz, raw; each with ``device=ID``) are published on
``{prefix}/{id}/rdr/cmd``, QoS `qos`, never retained (a retained command would replay at every
reader reconnect). The reply comes only when the broker acknowledged the publish (PUBACK, paho's
``on_publish``); without it within `command_timeout` the command is withdrawn from paho's queue,
so a door never opens minutes later when the broker comes back, and the reply is an error.
Payloads that cannot be decoded are counted (``bad_payloads``) and logged at WARNING (which the
runner forwards to ``log.<name>``), never a crash.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from actors.core.actor import STOPPING, Actor, CommandError, Deferred, Param, Setting, command
from actors.core.link import UP
from actors.protocols import springcore
from actors.protocols import springcore_json as sj
from actors.protocols.springcore import Field
from actors.transports.mqtt import EXCERPT, MqttClient, broker_port, broker_settings, excerpt
from broker.config import positive
from broker.wire import topics
from broker.wire.errors import LocalProtocolError, RemoteProtocolError

log = logging.getLogger(__name__)

# --- the actor ----------------------------------------------------------------------------------

@dataclass
class _Reader:
    online: bool
    status: str | None


class SpringCoreMqttActor(Actor):
    """SpringCore Smart Readers through an MQTT broker: tags, reader states, META, commands."""

    type_name: ClassVar[str] = "springcore-mqtt"
    settings = (
        *broker_settings(Setting("prefix", str, sj.DEFAULT_PREFIX,
                                 "topic prefix of the readers (register 028E)",
                                 check=sj.check_prefix)),
        Setting("username", str, "", "broker user name ('' = anonymous)"),
        Setting("password", str, "", "broker password (never logged)"),
        Setting("client_id", str, "", "MQTT client id ('' = sctl-<name>)"),
        Setting("persistent_session", bool, True,
                "keep the MQTT session at the broker while the actor is down (clean_session "
                "false): reader events published meanwhile wait at the broker (QoS 1; "
                "mosquitto bounds them with max_queued_messages) instead of being lost"),
        Setting("devices", (list, str), sj.ALL_DEVICES,
                'reader ids to serve, or "+" for every reader on the broker',
                check=sj.check_devices),
        Setting("command_format", str, sj.JSON, "json ({\"Sequence\":\"60\"}) or scrdr "
                "($SCCMD;SEQ=60)", check=sj.check_format),
        Setting("command_timeout", float, 5.0,
                "seconds to wait for the broker's PUBACK of a command", check=positive),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg = self.config
        self.address = f"{cfg['broker']}:{broker_port(cfg)}"
        self.readers: dict[str, _Reader] = {}
        self._last_seq: dict[str, int] = {}  # per reader: its last event counter ("Sequence")
        self._mqtt: MqttClient | None = None
        self._down_since = time.monotonic()
        self._down_reason = "not connected yet"
        self.counters.update(tags=0, bad_payloads=0, commands_sent=0)

    # --- link ---------------------------------------------------------------------------------

    def open_link(self) -> None:
        """One connection attempt (the base calls it again after each loss, with backoff)."""
        cfg = self.config
        if self._mqtt is None:
            subscriptions = sj.subscriptions(cfg["prefix"], cfg["devices"])
            self._mqtt = MqttClient(self, cfg["client_id"] or f"sctl-{self.name}", self,
                                    self.address, subscriptions=[(t, cfg["qos"])
                                                                 for t in subscriptions],
                                    clean_session=not cfg["persistent_session"],
                                    username=cfg["username"], password=cfg["password"])
        self._mqtt.connect(cfg["broker"], broker_port(cfg), cfg["keepalive"])

    def close_link(self) -> None:
        if self._mqtt is None:
            return
        if self.state == STOPPING:  # a clean DISCONNECT
            self._mqtt.stop("actor stopping before the broker acknowledged the command")
        else:
            self._mqtt.close()

    def on_stop(self) -> None:
        if self._mqtt is not None:  # the link may have been down: then close_link was not called
            self._mqtt.stop("actor stopping before the broker acknowledged the command")

    def mqtt_up(self, reason: str) -> None:
        self.link_up(f"{reason}, subscribed to {self.config['prefix']}/{self._devices_text()}")

    def mqtt_down(self, reason: str) -> None:
        if self.link_state == UP:
            self._down_since = time.monotonic()
        self._down_reason = reason
        self.link_down(reason)

    def _devices_text(self) -> str:
        devices = self.config["devices"]
        return "+" if devices == sj.ALL_DEVICES else "{" + ",".join(devices) + "}"

    # --- readers → bus ------------------------------------------------------------------------

    def mqtt_message(self, topic: str, payload: bytes, retained: bool) -> None:
        parsed = sj.parse_topic(self.config["prefix"], topic)
        devices = self.config["devices"]
        # a persistent session may still hold the subscriptions of an earlier configuration
        if parsed is None or parsed.kind == sj.CMD_TOPIC or (
                devices != sj.ALL_DEVICES and parsed.device not in devices):
            log.debug("actor %s: ignoring message on %s", self.name, topic)
            return
        try:
            if parsed.kind == sj.EVT_TOPIC:
                self._on_event(parsed.device, payload)
            elif parsed.kind == sj.STATUS_TOPIC:
                status = sj.decode_status(payload)
                self._reader_state(parsed.device, status.online, status.state, "status",
                                   retained, uptime=status.uptime, device_time=status.date_time)
            else:
                meta = sj.decode_meta(payload)
                self._reader_state(parsed.device, True, None, "meta", retained)
                self.publish_event("meta", {"device": parsed.device, "meta": meta})
        except RemoteProtocolError as exc:
            self.counters["bad_payloads"] += 1
            log.warning("actor %s: bad payload from reader %s on %s (dropped): %s; payload %s",
                        self.name, parsed.device, topic, exc, excerpt(payload))

    def _on_event(self, device: str, payload: bytes) -> None:
        tag = sj.decode_event(payload, device)
        if tag is None:
            log.info("actor %s: reader %s sent the empty $SCRDR greeting", self.name, device)
            return
        if tag["checksum"] == springcore.BAD:
            log.warning("actor %s: $SCRDR from reader %s has a bad checksum (tag kept): %s",
                        self.name, device, tag["raw"][:EXCERPT])
        self._reader_state(device, True, None, "tag", False)
        self._check_sequence(device, tag["seq"])
        self.counters["tags"] += 1
        self.publish_event("tag", tag)

    def _check_sequence(self, device: str, seq: int | None) -> None:
        """Readers that number their events (older firmware's "Sequence") tell us what they
        could not deliver: a jump means events lost on the way (the reader does not buffer
        through an outage). Reported on evt.<name>.lost and sys.alarm, counted in device_lost.
        A counter that goes back means the reader restarted: counting starts over."""
        if seq is None:
            return
        last = self._last_seq.get(device)
        self._last_seq[device] = seq
        if last is None or seq <= last + 1:
            return
        missed = seq - last - 1
        self.counters["device_lost"] = self.counters.get("device_lost", 0) + missed
        lost = {"device": device, "missed": missed, "first_seq": last + 1, "last_seq": seq - 1,
                "reason": "the reader's event counter jumped: events it sent were lost "
                          "(broker or link outage; the reader does not buffer)"}
        log.warning("actor %s: reader %s: %d event(s) lost (Sequence %d..%d)", self.name,
                    device, missed, last + 1, seq - 1)
        self.publish_event("lost", lost)
        self.bus.publish(topics.ALARM, "system", {"alarm": "device_lost", "source": self.name,
                                                  **lost})

    def _reader_state(self, device: str, online: bool, status: str | None, source: str,
                      retained: bool, **extra: Any) -> None:
        """Track a reader; publish evt.<name>.device when its state or STATUS changes. A tag or
        META only marks a reader online that has no known state yet (STATUS stays in charge)."""
        reader = self.readers.get(device)
        if source != "status" and reader is not None:
            return
        if reader is not None and reader.online == online and reader.status == status:
            return
        self.readers[device] = _Reader(online, status)
        data = {"device": device, "state": sj.ONLINE if online else sj.OFFLINE,
                "status": status, "retained": retained, "source": source,
                "uptime": None, "device_time": None}
        data.update(extra)
        self.publish_event("device", data)

    # --- commands -----------------------------------------------------------------------------

    def _target(self, device: str) -> str:
        """The reader a command goes to; CommandError when the broker is down, the device is
        missing while several are served, or it is not known online."""
        if self.link_state != UP or self._mqtt is None:
            down = time.monotonic() - self._down_since
            raise CommandError(f"broker {self.address} is not connected (down for {down:.0f} "
                               f"s: {self._down_reason}); command not sent")
        configured = self.config["devices"]
        online = sorted(d for d, r in self.readers.items() if r.online)
        if not device:
            candidates = online if configured == sj.ALL_DEVICES else configured
            if len(candidates) != 1:
                raise CommandError(f"device=ID is required: this actor serves "
                                   f"{self._known_text()}")
            device = candidates[0]
        if configured != sj.ALL_DEVICES and device not in configured:
            raise CommandError(f"reader {device!r} is not served by this actor (devices = "
                               f"{', '.join(configured)})")
        if device not in online:
            state = "offline" if device in self.readers else "never seen"
            raise CommandError(f"reader {device!r} is {state}; known readers: "
                               f"{self._known_text()}")
        return device

    def _known_text(self) -> str:
        if not self.readers:
            return "none seen yet"
        return ", ".join(f"{d} ({'online' if r.online else 'offline'})"
                         for d, r in sorted(self.readers.items()))

    def _send(self, device: str, payload_of: Callable[[], bytes], fmt: str) -> Deferred:
        target = self._target(device)
        try:
            payload = payload_of()
        except LocalProtocolError as exc:
            raise CommandError(str(exc)) from None
        assert self._mqtt is not None
        topic = sj.topic(self.config["prefix"], target, sj.CMD_TOPIC)
        result = {"device": target, "topic": topic, "format": fmt,
                  "payload": payload.decode("ascii", "replace")}
        deferred = self._mqtt.publish(topic, payload, result, self.config["command_timeout"])
        self.counters["commands_sent"] += 1
        return deferred

    def _fields(self, device: str, *fields: Field) -> Deferred:
        fmt = self.config["command_format"]
        return self._send(device, lambda: sj.encode_command(fmt, fields), fmt)

    DEVICE: ClassVar[Param] = Param("device", str, "",
                                    "reader id (required when several readers are served)")

    @command("wink", DEVICE, doc="play the Wink sequence (0E) to find the reader")
    def wink(self, device: str) -> Deferred:
        return self._fields(device, springcore.seq_command(springcore.SEQ_WINK))

    @command("accept", DEVICE, doc="play Access granted (sequence 60)")
    def accept(self, device: str) -> Deferred:
        return self._fields(device, springcore.seq_command(springcore.SEQ_ACCEPT))

    @command("deny", DEVICE, doc="play Access denied (sequence 61)")
    def deny(self, device: str) -> Deferred:
        return self._fields(device, springcore.seq_command(springcore.SEQ_DENY))

    @command("seq", Param("code", str, doc="UI sequence code, one byte in HEX (60, 0E)"),
             DEVICE, doc="play a UI sequence by its hex code")
    def seq(self, code: str, device: str) -> Deferred:
        return self._fields(device, springcore.seq_command(code))

    @command("leds", Param("hex8", str, doc="4 bytes in hex, one per LED (92929292)"), DEVICE,
             doc="set the 4 LEDs directly")
    def leds(self, hex8: str, device: str) -> Deferred:
        return self._fields(device, springcore.leds_command(hex8))

    @command("buzz", Param("ms", int, doc="beep duration, milliseconds (0-65535)"), DEVICE,
             doc="beep")
    def buzz(self, ms: int, device: str) -> Deferred:
        return self._fields(device, springcore.buzz_command(ms))

    @command("raw", Param("fields", str, doc="a JSON object, or $SCCMD fields SEQ=60;BUZZ=0064"),
             DEVICE, doc="send a raw command (JSON or $SCCMD, whatever command_format)")
    def raw(self, fields: str, device: str) -> Deferred:
        fmt = sj.JSON if fields.strip().startswith("{") else sj.SCRDR
        return self._send(device, lambda: sj.encode_raw_command(fields), fmt)

    @command("readers", doc="the readers seen and their last state", record=False)
    def cmd_readers(self) -> dict[str, Any]:
        return {d: {"state": sj.ONLINE if r.online else sj.OFFLINE, "status": r.status}
                for d, r in sorted(self.readers.items())}
