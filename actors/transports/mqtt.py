"""The paho-mqtt bridge: an MQTT client whose callbacks hand over to the actor loop.

paho runs its own network thread (``loop_start``) and reconnects by itself with backoff. Every
callback of a `PahoBridge` only hands its arguments to the actor loop with
`Actor.call_soon_threadsafe`; the handler (`MqttHandler`) runs on the loop thread, where all
actor state lives. Publishes at QoS 1 resolve a `Deferred` when the broker acknowledges them and
are withdrawn from paho's queue when they time out, so nothing is delivered late after a
reconnect.

Also here: the settings of a broker connection (`broker_settings`) and their checks, shared by
every device type and simulator that talks MQTT.
"""

from __future__ import annotations

import logging
import os
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from actors.core.actor import Actor
from actors.core.commands import CommandError, Deferred
from actors.core.loop import TimerHandle
from broker.config import Setting, port_number, positive

PLAIN_PORT: Final = 1883
TLS_PORT: Final = 8883
TLS_KEYS: Final = ("ca", "cert", "key")
EXCERPT: Final = 64  # payload bytes shown in a warning


# --- settings checks (ValueError -> ConfigError naming actors.NAME.<key>) ------------------------

def check_tls(value: Any) -> None:
    """A table with optional ``ca``, ``cert``, ``key`` paths that must exist (relative ones are
    taken from the site file's folder before this check); ``cert`` and ``key`` go together."""
    unknown = set(value) - set(TLS_KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))} (known: ca, cert, key)")
    for key in TLS_KEYS:
        path = value.get(key)
        if path is None:
            continue
        if not isinstance(path, str) or not path:
            raise ValueError(f"{key} must be a file path")
        if not os.path.isfile(path):
            raise ValueError(f"{key} file {path!r} does not exist")
    if ("cert" in value) != ("key" in value):
        raise ValueError("cert and key go together (the client certificate and its key)")


def check_qos(value: Any) -> None:
    if value not in (0, 1, 2):
        raise ValueError("must be 0, 1 or 2")


def broker_settings(*topic_settings: Setting) -> tuple[Setting, ...]:
    """The settings of an MQTT broker connection, with a device type's topic settings (its
    topic prefix, say) placed after ``keepalive``."""
    return (
        Setting("broker", str, "127.0.0.1", "MQTT broker host name or address"),
        Setting("port", int, None, f"broker port (default {PLAIN_PORT}, {TLS_PORT} with tls)",
                check=port_number),
        Setting("keepalive", int, 30, "MQTT keepalive, seconds", check=positive),
        *topic_settings,
        Setting("qos", int, 1, "QoS of subscriptions and publishes", check=check_qos),
        Setting("tls", dict, None, "TLS: a table with ca, cert, key file paths ({} = system "
                "CAs)", check=check_tls, path=True),
    )


def broker_port(config: dict[str, Any]) -> int:
    if config["port"] is not None:
        return int(config["port"])
    return TLS_PORT if config.get("tls") is not None else PLAIN_PORT


def reason_text(rc: ReasonCode | MQTTErrorCode | int) -> str:
    if isinstance(rc, ReasonCode):
        return rc.getName()
    return mqtt.error_string(rc)


def connect_error_text(exc: BaseException | None) -> str:
    """Why a connection attempt failed, as an operator needs it: a TLS failure says so (an
    untrusted broker certificate reads "TLS handshake failed: [SSL: CERTIFICATE_VERIFY_FAILED]
    certificate verify failed: unable to get local issuer certificate ...")."""
    if exc is None:
        return "no reason given by paho"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc}"
    return str(exc) or type(exc).__name__


# --- paho's thread → the actor loop -------------------------------------------------------------

class _RetryNoise(logging.Filter):
    """paho logs every failed reconnect attempt at ERROR ("Client is not connected ..."); the
    link events (``evt.<name>.link``, one WARNING when it goes down) already say it, so these
    go to DEBUG instead of flooding ``log.<name>`` during a broker outage. Everything else
    paho reports (an exception in a callback, say) keeps its level."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING and \
                record.getMessage().startswith("Client is not connected"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return PAHO_LOG.isEnabledFor(logging.DEBUG)
        return True


PAHO_LOG: Final = logging.getLogger(f"{__name__}.paho")
PAHO_LOG.addFilter(_RetryNoise())


class MqttHandler(Protocol):
    """What a `PahoBridge` calls, on the actor loop thread."""

    def mqtt_connected(self, failed: bool, reason: str) -> None: ...

    def mqtt_connect_failed(self, reason: str) -> None: ...

    def mqtt_disconnected(self, reason: str) -> None: ...

    def mqtt_message(self, topic: str, payload: bytes, retained: bool) -> None: ...

    def mqtt_subscribed(self, mid: int, refused: list[str]) -> None: ...


@dataclass
class _Pending:
    deferred: Deferred
    timer: TimerHandle
    result: dict[str, Any]
    on_acked: Callable[[dict[str, Any]], object] | None


class PahoBridge:
    """A paho client (API version 2) whose callbacks, on paho's network thread, only hand their
    arguments to `handler` on the actor loop (`Actor.call_soon_threadsafe`); and the publishes
    of that client still waiting for their acknowledgement (PUBACK for QoS 1). Message ids are
    per client, so each bridge keeps its own table. Everything but the callbacks runs on the
    loop thread."""

    def __init__(self, actor: Actor, client_id: str, handler: MqttHandler,
                 address: str, *, clean_session: bool = True) -> None:
        self.actor = actor
        self.handler = handler
        self.address = address
        self._pending: dict[int, _Pending] = {}
        self.client = client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                           clean_session=clean_session)
        client.enable_logger(PAHO_LOG)
        # A callback that raises would end paho's thread; ours only hand over, but be sure.
        client.suppress_exceptions = True
        client.max_inflight_messages_set(0)  # commands are few; see `_withdraw`
        cfg = actor.config
        client.reconnect_delay_set(max(1, round(cfg["backoff_min"])),
                                   max(1, round(cfg["backoff_max"])))
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe

    def start(self, host: str, port: int, keepalive: int) -> None:
        """Connect in paho's thread, which retries until it works (never blocks the loop);
        over TLS when the actor's ``tls`` setting is a table (paho checks the broker's
        certificate and its name, `host`, against ``ca`` or the system CAs)."""
        tls = self.actor.config.get("tls")
        if tls is not None:
            self.client.tls_set(ca_certs=tls.get("ca"), certfile=tls.get("cert"),
                                keyfile=tls.get("key"))
        self.client.connect_async(host, port, keepalive)
        self.client.loop_start()

    def stop(self, reason: str) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        for mid in list(self._pending):
            self.settle(mid, reason)

    def publish(self, topic: str, payload: bytes, result: dict[str, Any], timeout: float,
                on_acked: Callable[[dict[str, Any]], object] | None = None, *,
                retain: bool = False) -> Deferred:
        """Publish at the actor's `qos`; the Deferred resolves to `result` once the broker
        acknowledged it, or fails after `timeout` seconds, when the message is withdrawn so
        that paho does not deliver it late after a reconnect."""
        info = self.client.publish(topic, payload, qos=self.actor.config["qos"], retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._withdraw(info.mid)
            raise CommandError(f"publish to broker {self.address} failed: "
                               f"{reason_text(info.rc)}")
        deferred = Deferred()
        timer = self.actor.call_later(
            timeout, self.settle, info.mid,
            f"broker {self.address} did not acknowledge within {timeout:g} s (withdrawn: it "
            "will not be sent later)")
        self._pending[info.mid] = _Pending(deferred, timer, result, on_acked)
        return deferred

    def settle(self, mid: int, error: str | None) -> None:
        """The publish `mid` was acknowledged (`error` None) or failed."""
        pending = self._pending.pop(mid, None)
        if pending is None:
            return
        pending.timer.cancel()
        if error is not None:
            self._withdraw(mid)
            pending.deferred.fail(error)
            return
        if pending.on_acked is not None:
            pending.on_acked(pending.result)
        pending.deferred.resolve(pending.result)

    def _withdraw(self, mid: int) -> None:
        """Forget an unacknowledged publish, so paho does not resend it after a reconnect.

        paho has no public call for this; it keeps QoS 1 messages in ``_out_messages`` (under
        ``_out_message_mutex``) and resends them on reconnect. With max_inflight 0 (unlimited)
        removing one leaves no in-flight count to fix up.
        """
        with self.client._out_message_mutex:
            self.client._out_messages.pop(mid, None)

    def _handover(self, fn: Callable[..., object], *args: Any) -> None:
        self.actor.call_soon_threadsafe(fn, *args)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode,
                    props: Any) -> None:
        self._handover(self.handler.mqtt_connected, rc.is_failure, reason_text(rc))

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this from inside its ``except OSError`` around the connect attempt and
        # passes no error: the exception being handled is the only account of why (a refused
        # port, an unreachable host, a TLS certificate the broker or we did not accept).
        self._handover(self.handler.mqtt_connect_failed, connect_error_text(sys.exc_info()[1]))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode,
                       props: Any) -> None:
        self._handover(self.handler.mqtt_disconnected, reason_text(rc))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._handover(self.handler.mqtt_message, msg.topic, bytes(msg.payload), msg.retain)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: ReasonCode,
                    props: Any) -> None:
        self._handover(self.settle, mid, f"broker {self.address} refused it: "
                       f"{reason_text(rc)}" if rc.is_failure else None)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      codes: list[ReasonCode], props: Any) -> None:
        self._handover(self.handler.mqtt_subscribed, mid,
                      [reason_text(c) for c in codes if c.is_failure])


def excerpt(payload: bytes) -> str:
    """A payload for a log line: text if printable, else hex; bounded."""
    head = payload[:EXCERPT]
    text = head.decode("utf-8", "replace")
    shown = repr(text) if text.isprintable() else f"hex {head.hex()}"
    return shown + ("..." if len(payload) > EXCERPT else "")
