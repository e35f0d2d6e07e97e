"""`MqttBridgeActor` (``mqtt-bridge``): chosen bus topics out to an MQTT broker as JSON, and,
if asked, commands in from MQTT for listed actors and commands.

For Node-RED, Telegraf's ``mqtt_consumer``, Home Assistant, ThingsBoard and the like: they
speak MQTT and JSON, not ZeroMQ and msgpack. The JSON shapes and topic templates are in
`actors.protocols.mqtt_json`; the settings in docs/actors.md.

Bus → MQTT. Each ``[[actors.NAME.publish]]`` rule (bus topic prefix, MQTT topic template, QoS,
retain, payload form, binary handling) is a gap-free Bus subscription: every matching message
is encoded once and published. Publishes at QoS 1 and 2 stay in paho's session until the broker
acknowledges them (paho resends them after a reconnect), at most ``max_inflight`` at a time.
What arrives while the broker is down, or while ``max_inflight`` are unacknowledged, waits in
a queue of at most ``queue_max`` messages, oldest first; beyond, the oldest is dropped and
counted (``dropped``, one WARNING per outage). So nothing is lost while the broker keeps up,
and an outage costs at most what does not fit in the queue, counted.

MQTT → bus (``command_topic`` set). The bridge subscribes to ``{command_topic}/+``; the last
level names the actor. A command runs only if ``allow`` lists that actor and command: anything
else (not JSON, unknown keys, not allowed, a retained command replayed by the broker at a
(re)subscription, more than ``max_commands`` in flight) gets an error reply on
``{reply_topic}/<actor>`` and a WARNING, and never reaches the bus; an empty message (how a
client deletes a retained one) is ignored. Allowed commands go out as bus commands
(`Bus.start_request`, retried until a reply or the timeout); the actor's reply is published on
the reply topic. A repeated ``id`` (an MQTT redelivery) is answered from the last
`RECENT_IDS` replies instead of running again. A command for an actor known to be down
(`actors.core.liveness`: no heartbeat for three of its intervals, or its last one said
``stopping``) gets its error reply at once, without going to the bus (``commands_target_down``,
one WARNING per episode); sent again once the actor is back, it runs. The session is clean
by default (``persistent_session = false``): commands sent while the bridge was down are not
run later, when they may no longer be wanted.

Threads and link. paho's I/O runs on the actor's loop (`MqttClient`: no network thread to
hand publishes and acknowledgements to and from: at high message rates the hand-over between
threads dominates the bridge's work); only the blocking connect runs on a short-lived thread. The
base's link state machine reconnects with jittered backoff; the link is up once the broker
accepted the connection (and the command subscription); a link that is down says why
(``cannot connect to broker HOST:PORT: TLS handshake failed: ...``). TLS with ``tls``, as for
``springcore-mqtt``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from paho.mqtt.enums import MQTTErrorCode

from actors.core import liveness
from actors.core.actor import STOPPING, Actor, Setting
from actors.core.link import UP
from actors.protocols import mqtt_json as mj
from actors.transports.mqtt import MqttClient, broker_port, broker_settings, check_qos, excerpt
from broker.client.bus import Delivery
from broker.client.requests import Request
from broker.config import ActorConfig, positive
from broker.wire import topics
from broker.wire.errors import ConfigError, EnvelopeError, RemoteProtocolError, TopicError

log = logging.getLogger(__name__)

RULE_KEYS: Final = frozenset({"topic", "mqtt", "qos", "retain", "payload", "binary"})
DRAIN_BATCH: Final = 500  # queued messages handed to paho per loop turn
RECENT_IDS: Final = 1000
TOPIC_CACHE: Final = 10_000


@dataclass(frozen=True)
class Rule:
    """One ``[[actors.NAME.publish]]`` table, checked."""

    topic: str  # bus topic prefix
    template: str
    qos: int | None  # None: the actor's qos
    retain: bool
    payload: str
    binary: str


@dataclass(frozen=True)
class _Out:
    topic: str
    payload: bytes
    qos: int
    retain: bool


def parse_rules(value: Any, path: str, source: str) -> tuple[Rule, ...]:
    """The ``publish`` list; ConfigError with the key path (``actors.mqtt.publish[1].qos``)."""
    rules = []
    for i, entry in enumerate(value):
        where = f"{path}[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(where, "expected a table with topic (and mqtt, qos, retain, "
                              "payload, binary)", source)
        for key in entry:
            if key not in RULE_KEYS:
                raise ConfigError(f"{where}.{key}", f"unknown key (known keys: "
                                  f"{', '.join(sorted(RULE_KEYS))})", source)
        rules.append(Rule(_rule_topic(entry, where, source),
                          _checked(entry, "mqtt", mj.DEFAULT_TEMPLATE, mj.check_template,
                                   where, source),
                          _checked(entry, "qos", None, check_qos, where, source),
                          _checked(entry, "retain", False, _boolean, where, source),
                          _checked(entry, "payload", mj.ENVELOPE, _choice(mj.PAYLOADS), where,
                                   source),
                          _checked(entry, "binary", mj.BASE64, _choice(mj.BINARY), where,
                                   source)))
    return tuple(rules)


def _rule_topic(entry: Mapping[str, Any], where: str, source: str) -> str:
    if "topic" not in entry:
        raise ConfigError(f"{where}.topic", "is required: the bus topic prefix to publish "
                          "(evt.reader1.tag, evt., sys.alarm)", source)
    try:
        return topics.check_prefix(entry["topic"])
    except (TopicError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{where}.topic", f"not a bus topic prefix: {exc}", source) from None


def _checked(entry: Mapping[str, Any], key: str, default: Any, check: Any, where: str,
             source: str) -> Any:
    if key not in entry:
        return default
    try:
        check(entry[key])
    except ValueError as exc:
        raise ConfigError(f"{where}.{key}", f"{exc} (got {entry[key]!r})", source) from None
    return entry[key]


def _boolean(value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")


def _choice(allowed: tuple[str, ...]) -> Any:
    def check(value: Any) -> None:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
    return check


def _mqtt_prefix(value: Any) -> None:
    """A plain MQTT topic (no placeholders, no wildcards) that levels are added to."""
    if not value:
        return
    if any(c in value for c in "+#{}") or value.startswith("$") or value.endswith("/"):
        raise ValueError("must be a plain MQTT topic such as sctl/cmd: no + # { }, not "
                         "starting with $ nor ending with /")


def _allow(value: Any) -> None:
    for actor, names in value.items():
        topics.check_name(actor, "actor")
        if not isinstance(names, list) or not names or not all(
                isinstance(n, str) and n for n in names):
            raise ValueError(f"{actor}: expected a non-empty list of command names")


class MqttBridgeActor(Actor):
    """Bus topics out to an MQTT broker as JSON; commands in from MQTT for listed actors."""

    type_name: ClassVar[str] = "mqtt-bridge"
    settings = (
        *broker_settings(),
        Setting("username", str, "", "broker user name ('' = anonymous)"),
        Setting("password", str, "", "broker password (never logged)"),
        Setting("client_id", str, "", "MQTT client id ('' = sctl-<name>)"),
        Setting("persistent_session", bool, False,
                "keep the MQTT session while the bridge is down (commands sent meanwhile "
                "would run when it is back)"),
        Setting("publish", list, (), "[[actors.NAME.publish]] rules: topic (bus prefix), "
                "mqtt (template), qos, retain, payload, binary"),
        Setting("queue_max", int, 10_000, "messages kept while the broker is down or slow; "
                "beyond, the oldest are dropped and counted", check=positive),
        Setting("max_inflight", int, 1000, "QoS 1/2 publishes the broker has not "
                "acknowledged yet; more wait in the queue", check=positive),
        Setting("command_topic", str, "", "MQTT topic prefix of commands, <prefix>/<actor> "
                "('' = no commands)", check=_mqtt_prefix),
        Setting("reply_topic", str, "sctl/reply", "replies go to <reply_topic>/<actor>",
                check=_mqtt_prefix),
        Setting("allow", dict, {}, "actor = [commands] that MQTT may send",
                check=_allow),
        Setting("command_timeout", float, 10.0, "seconds a command may take (the payload's "
                "timeout overrides)", check=positive),
        Setting("max_commands", int, 100, "commands from MQTT in flight at once",
                check=positive),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg = self.config
        self.address = f"{cfg['broker']}:{broker_port(cfg)}"
        self.rules = parse_rules(cfg["publish"], "publish", "")
        self.allow: dict[str, frozenset[str]] = {a: frozenset(c)
                                                 for a, c in cfg["allow"].items()}
        self._mqtt: MqttClient | None = None
        self._queue: deque[_Out] = deque()
        self._inflight: set[int] = set()
        self._overflowing = False
        self._draining = False
        self._requests: dict[str, Request] = {}  # bus request id -> request
        self._topics: dict[tuple[str, str], str] = {}
        # (actor, command, MQTT id) -> reply: ids are the clients', so two clients (or one whose
        # counter started over) reuse them; a cached reply must answer only the same command
        self._recent: OrderedDict[tuple[str, str, str], bytes | None] = OrderedDict()
        self._liveness: liveness.Liveness | None = None
        self.counters.update(published=0, acked=0, dropped=0, queued=0, inflight=0,
                             bad_messages=0, commands=0, commands_refused=0)

    @classmethod
    def cross_check(cls, values: dict[str, Any], actor: ActorConfig) -> Iterator[ConfigError]:
        yield from super().cross_check(values, actor)
        try:
            rules = parse_rules(values["publish"], f"{actor.path}.publish", actor.source)
        except ConfigError as exc:
            yield exc
            return
        if not rules and not values["command_topic"]:
            yield ConfigError(f"{actor.path}.publish", "the bridge has nothing to do: add "
                              "[[actors.NAME.publish]] rules or a command_topic", actor.source)
        if values["allow"] and not values["command_topic"]:
            yield ConfigError(f"{actor.path}.allow", "needs command_topic (the MQTT topic "
                              "commands arrive on)", actor.source)

    @classmethod
    def command_targets(cls, values: dict[str, Any]) -> list[tuple[str, str, str]]:
        # key paths: allow.ACTOR.COMMAND; an actor not in the site: allow.ACTOR.actor
        return [(f"allow.{target}.{name}", target, name)
                for target, names in values["allow"].items() for name in names]

    # --- link -----------------------------------------------------------------------------

    def on_start(self) -> None:
        for prefix in dict.fromkeys(rule.topic for rule in self.rules):
            # one subscription per prefix, its own rules only: overlapping prefixes
            # ("evt." and "evt.reader1.") each publish once
            self.subscribe(prefix, functools.partial(self._on_bus, prefix))
        if self.config["command_topic"]:  # commands for actors known to be down: error at once
            self._liveness = liveness.track(self)

    def open_link(self) -> None:
        """One connection attempt (the base calls it again after each loss, with backoff)."""
        cfg = self.config
        if self._mqtt is None:
            prefix = cfg["command_topic"]
            self._mqtt = MqttClient(self, cfg["client_id"] or f"sctl-{self.name}", self,
                                    self.address,
                                    subscriptions=[(f"{prefix}/+", cfg["qos"])] if prefix else [],
                                    clean_session=not cfg["persistent_session"],
                                    username=cfg["username"], password=cfg["password"],
                                    on_published=self.settle_publish)
        self._mqtt.connect(cfg["broker"], broker_port(cfg), cfg["keepalive"])

    def close_link(self) -> None:
        if self._mqtt is not None:
            if self.state == STOPPING:
                self._mqtt.stop("bridge stopping")  # a clean DISCONNECT
            else:
                self._mqtt.close()

    def on_stop(self) -> None:
        if self._mqtt is not None:  # the link may have been down: then close_link was not called
            self._mqtt.stop("bridge stopping")
        for request in self._requests.values():
            request.callback = None

    def mqtt_up(self, reason: str) -> None:
        self.link_up(reason)
        self._overflowing = False
        self._drain()

    def mqtt_down(self, reason: str) -> None:
        self.link_down(reason)

    # --- bus → MQTT -----------------------------------------------------------------------

    def _on_bus(self, prefix: str, d: Delivery) -> None:
        try:
            env = d.envelope
        except EnvelopeError as exc:
            self.counters["bad_messages"] += 1
            log.warning("actor %s: undecodable message on %s (gseq %d): %s", self.name,
                        d.topic, d.gseq, exc)
            return
        for rule in self.rules:
            if rule.topic != prefix:
                continue
            try:
                payload = mj.encode_message(rule.payload, rule.binary, topic=d.topic,
                                            gseq=d.gseq, src=env.src, ts=env.ts, kind=env.kind,
                                            data=env.data)
            except (TypeError, ValueError) as exc:
                self.counters["bad_messages"] += 1
                log.warning("actor %s: %s (gseq %d) cannot be JSON: %s", self.name, d.topic,
                            d.gseq, exc)
                continue
            qos = self.config["qos"] if rule.qos is None else rule.qos
            self._send(_Out(self._topic(rule.template, d.topic), payload, qos, rule.retain))

    def _topic(self, template: str, bus_topic: str) -> str:
        """The MQTT topic, remembered for the `TOPIC_CACHE` most recent pairs (a feed has few
        distinct topics; this runs once per message)."""
        key = (template, bus_topic)
        topic = self._topics.get(key)
        if topic is None:
            if len(self._topics) >= TOPIC_CACHE:
                self._topics.clear()
            topic = self._topics[key] = mj.mqtt_topic(template, bus_topic)
        return topic

    def _send(self, out: _Out) -> None:
        """Publish now when the broker is up and the window has room, else queue."""
        if self._queue or not self._can_publish():
            self._enqueue(out)
            return
        self._publish(out)

    def _can_publish(self) -> bool:
        return self.link_state == UP and self._mqtt is not None and \
            len(self._inflight) < self.config["max_inflight"]

    def _enqueue(self, out: _Out) -> None:
        if len(self._queue) >= self.config["queue_max"]:
            self._queue.popleft()
            self.counters["dropped"] += 1
            if not self._overflowing:
                self._overflowing = True
                log.warning("actor %s: queue full (%d messages; broker %s %s): dropping the "
                            "oldest", self.name, self.config["queue_max"], self.address,
                            "down" if self.link_state != UP else "slow to acknowledge")
        self._queue.append(out)
        self.counters["queued"] = len(self._queue)

    def _publish(self, out: _Out) -> bool:
        """Hand one message to paho; False when it could not take it (put back in front)."""
        assert self._mqtt is not None
        info = self._mqtt.client.publish(out.topic, out.payload, qos=out.qos,
                                         retain=out.retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and out.qos == 0:
            self._queue.appendleft(out)  # QoS 0 is not kept by paho: keep it ourselves
            return False
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            self.counters["dropped"] += 1
            log.warning("actor %s: paho refused a publish to %s: %s", self.name, out.topic,
                        info.rc)
            return True
        self.counters["published"] += 1
        if out.qos > 0:  # NO_CONN at QoS > 0: paho keeps it and sends it after the reconnect
            self._inflight.add(info.mid)
            self.counters["inflight"] = len(self._inflight)
        return True

    def _drain(self) -> None:
        """Hand queued messages to paho, `DRAIN_BATCH` per loop turn, while there is room."""
        self._draining = False
        sent = 0
        while self._queue and self._can_publish() and sent < DRAIN_BATCH:
            if not self._publish(self._queue.popleft()):
                break
            sent += 1
        self.counters["queued"] = len(self._queue)
        if self._queue and self._can_publish() and not self._draining:
            self._draining = True
            self.call_later(0.0, self._drain)

    def settle_publish(self, mid: int, error: str | None) -> bool:
        """The broker acknowledged (or refused, `error`) publish `mid`; loop thread. False
        when `mid` is not one of the bridge's publishes."""
        if mid not in self._inflight:
            return False
        self._inflight.discard(mid)
        if error is None:
            self.counters["acked"] += 1
        else:
            self.counters["dropped"] += 1
            log.warning("actor %s: %s", self.name, error)
        self.counters["inflight"] = len(self._inflight)
        if self._queue and not self._draining:
            self._drain()
        return True

    # --- MQTT → bus -----------------------------------------------------------------------

    def mqtt_message(self, topic: str, payload: bytes, retained: bool) -> None:
        prefix = self.config["command_topic"]
        if not prefix or not topic.startswith(prefix + "/"):
            log.debug("actor %s: ignoring message on %s", self.name, topic)
            return
        actor = topic[len(prefix) + 1:]
        if not payload:  # how MQTT clients delete a retained message: no command, no answer
            log.debug("actor %s: empty message on %s ignored", self.name, topic)
            return
        try:
            cmd = mj.decode_command(actor, payload)
        except RemoteProtocolError as exc:
            self._refuse(actor, mj.command_id(payload), None, str(exc), payload)
            return
        if retained:
            self._refuse(actor, cmd.id, cmd.command, "a retained command is refused (it "
                         "would run again at every connection): publish with retain false",
                         payload)
            return
        allowed = self.allow.get(actor)
        if allowed is None or cmd.command not in allowed:
            what = f"{actor!r}" if allowed is None else f"{cmd.command!r} on {actor!r}"
            self._refuse(actor, cmd.id, cmd.command, f"{what} is not allowed over MQTT "
                         f"(allow: {self._allowed_text()})", payload)
            return
        if cmd.id is not None and (cmd.actor, cmd.command, cmd.id) in self._recent:
            reply = self._recent[(cmd.actor, cmd.command, cmd.id)]
            if reply is not None:  # done: answer again; else the reply is still to come
                self._reply(actor, reply)
            return
        if len(self._requests) >= self.config["max_commands"]:
            self._refuse(actor, cmd.id, cmd.command, f"{len(self._requests)} commands in "
                         "flight: try again later", payload)
            return
        down = self._liveness.refusal(actor, time.monotonic()) \
            if self._liveness is not None else None
        if down is not None:  # counted and logged once per episode by the tracker; a retry
            # with the same id runs once the actor is back (nothing remembered)
            self._reply(actor, mj.encode_reply(id=cmd.id, actor=actor, command=cmd.command,
                                               status="error", error=down))
            return
        self._run(cmd)

    def _run(self, cmd: mj.MqttCommand) -> None:
        self.counters["commands"] += 1
        if cmd.id is not None:
            self._remember((cmd.actor, cmd.command, cmd.id), None)

        def done(request: Request) -> None:
            self._requests.pop(request.id, None)
            if request.reply is not None:
                data = request.reply.data
                reply = mj.encode_reply(id=cmd.id, actor=cmd.actor, command=cmd.command,
                                        status=str(data.get("status", "error")),
                                        result=data.get("result"),
                                        error=str(data.get("error") or ""))
            else:
                reply = mj.encode_reply(id=cmd.id, actor=cmd.actor, command=cmd.command,
                                        status="error", error=f"no reply from {cmd.actor} "
                                        f"within {timeout:g} s: {request.error or ''}")
            if cmd.id is not None:
                self._remember((cmd.actor, cmd.command, cmd.id), reply)
            self._reply(cmd.actor, reply)

        timeout = cmd.timeout or self.config["command_timeout"]
        request = self.bus.start_request(cmd.actor, cmd.command, cmd.args, timeout,
                                         callback=done, argv=cmd.argv or None)
        if not request.done:
            self._requests[request.id] = request

    def _refuse(self, actor: str, ident: str | None, command: str | None, reason: str,
                payload: bytes) -> None:
        self.counters["commands_refused"] += 1
        log.warning("actor %s: MQTT command for %s refused: %s; payload %s", self.name, actor,
                    reason, excerpt(payload))
        self._reply(actor, mj.encode_reply(id=ident, actor=actor, command=command,
                                           status="error", error=reason))

    def _reply(self, actor: str, body: bytes) -> None:
        name = actor if _segment_ok(actor) else "_"
        self._send(_Out(f"{self.config['reply_topic']}/{name}", body, self.config["qos"],
                        False))

    def _remember(self, ident: tuple[str, str, str], reply: bytes | None) -> None:
        self._recent[ident] = reply
        self._recent.move_to_end(ident)
        while len(self._recent) > RECENT_IDS:
            self._recent.popitem(last=False)

    def _allowed_text(self) -> str:
        return "; ".join(f"{a}: {', '.join(sorted(c))}" for a, c in sorted(self.allow.items())) \
            or "nothing"


def _segment_ok(level: str) -> bool:
    return bool(level) and not any(c in level for c in "+#/") and len(level) <= 64

