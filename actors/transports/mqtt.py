"""MQTT for every device type and simulator: `MqttClient`, a paho-mqtt client driven by the
actor's own loop, and the settings of a broker connection (`broker_settings`) with their checks.

paho runs without its network thread; the actor loop does its I/O with paho's external-loop
calls:

- the socket is a loop reader (`Actor.add_reader`: ``loop_read``, which reads every packet that
  is there; an SSL socket's buffered bytes are read at once too) and, while paho has bytes to
  write, a loop writer (`Actor.add_writer`: ``loop_write``; paho asks with its
  ``on_socket_register_write`` callback);
- a timer calls ``loop_misc`` every `MISC_EVERY` seconds (keepalive pings, a silent broker);
- every paho callback (CONNACK, SUBACK, PUBACK, messages, the loss of the connection) runs on
  the loop thread, inside those calls, so the `MqttHandler` may touch actor state directly. No
  thread hand-over for each publish and acknowledgement, which at a thousand messages a second
  would cost CPU and milliseconds of latency (docs/bench.md).

Connecting blocks (name lookup, TCP connect, TLS handshake), so one short-lived thread runs
paho's ``reconnect`` and hands the connected socket over (`Actor.call_soon_threadsafe`); the
loop thread does not touch the client while that thread runs. Each `connect` is one attempt:
the actor base's link state machine retries with its jittered backoff and ``connect_timeout``
(``open_link`` calls `connect`, ``close_link`` calls `close`, or `stop` when the actor stops).
After the CONNACK the client subscribes to its `subscriptions`; the handler hears `mqtt_up` once
the broker granted every one (a refusal is an ERROR naming the topics and a `mqtt_down`). QoS 1
and 2 messages not yet acknowledged stay in paho's session and go out again after a reconnect;
`publish` withdraws the ones whose acknowledgement did not come in time, so a command is never
delivered late.

Backpressure (docs/backpressure.md). While the actor's Bus is congested the loop stops polling
its readers, this socket included, and the actor calls `pause`: the broker keeps the messages
(its queue for the session, ``max_queued_messages``), TCP pushes back. The socket is still read,
every `PAUSED_READ` seconds, while the client waits for an answer to a request of its own (the
PUBACK of its publish, a CONNACK or SUBACK): what arrives before that answer is handled. Not for
a PINGRESP: the broker's messages queue up in front of it, and reading them to reach it would
take in one message per read for as long as the pause lasts. The broker's in-flight window
(``max_inflight_messages``) does not bound that: Mosquitto 2.0.11 sends its whole queue once the
first acknowledgements come. So while paused and awaiting nothing, the client does not read;
keepalive goes on (paho's ``loop_misc`` sends a PINGREQ every ``keepalive``, so the broker keeps
the connection) and the unread PINGRESPs are not held against the broker (`_housekeeping`
tells paho bytes came in); a broker that died meanwhile is noticed at a failed write, or within
``keepalive`` once reads resume. QoS 1 messages are acknowledged to the broker only once the
router journaled what the handler published for them (paho's manual acknowledgement, driven by
`Bus.on_acked`), so a message whose event was not journaled (the process killed, the outbox
dropping while the router is unreachable) is sent again by the broker with the session (at the
next connection) instead of being lost. `stop`
waits (up to `STOP_FLUSH` s) for those acknowledgements before its DISCONNECT. A QoS 2 message
is completed as soon as it is handled: paho hands it over only after the broker's PUBREL and no
longer knows it after a reconnect, so a completion held back could never be sent (and would
take one of the broker's in-flight slots for good).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from actors.core.actor import Actor
from actors.core.commands import CommandError, Deferred
from actors.core.loop import TimerHandle
from broker.config import Setting, port_number, positive

log = logging.getLogger(__name__)

PLAIN_PORT: Final = 1883
TLS_PORT: Final = 8883
TLS_KEYS: Final = ("ca", "cert", "key")
EXCERPT: Final = 64  # payload bytes shown in a warning
MISC_EVERY: Final = 1.0  # seconds between paho's housekeeping calls
PAUSED_READ: Final = 0.05  # seconds between reads of an awaited answer while paused
PENDING_READS: Final = 64  # SSL records read after one readiness, at most
STOP_FLUSH: Final = 2.0  # seconds `stop` waits for the journaling of messages read
PAHO_LOG: Final = logging.getLogger(f"{__name__}.paho")


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


# --- the client: paho driven by the actor loop ---------------------------------------------------

class MqttHandler(Protocol):
    """What an `MqttClient` calls, on the loop thread."""

    def mqtt_up(self, reason: str) -> None:
        """Connected (``reason``: "connected to broker HOST:PORT") and every subscription
        granted."""

    def mqtt_down(self, reason: str) -> None:
        """An attempt failed, the broker refused the connection or a subscription, or the
        connection was lost; never after `MqttClient.stop`. Whoever retries calls `close`
        (the actor's ``close_link``) and later `connect`."""

    def mqtt_message(self, topic: str, payload: bytes, retained: bool) -> None: ...


@dataclass
class _Pending:
    deferred: Deferred
    timer: TimerHandle
    result: dict[str, Any]
    on_acked: Callable[[dict[str, Any]], object] | None


class MqttClient:
    """A paho client (API version 2) whose I/O runs on `actor`'s loop (module doc), subscribing
    to `subscriptions` ((topic, qos) pairs) after every CONNACK. `handler` gets the
    `MqttHandler` calls; the acknowledgement (error None) or refusal of a QoS 1/2 publish made
    with `client.publish` rather than `publish` goes to `on_published(mid, error)`. The paho
    client is `client` (``will_set`` before the first `connect`). Loop thread only."""

    def __init__(self, actor: Actor, client_id: str, handler: MqttHandler, address: str, *,
                 subscriptions: Sequence[tuple[str, int]] = (), clean_session: bool = True,
                 username: str = "", password: str = "",
                 on_published: Callable[[int, str | None], object] | None = None) -> None:
        self.actor = actor
        self.handler = handler
        self.address = address
        self.subscriptions = list(subscriptions)
        self.on_published = on_published
        self.up = False  # connected and subscribed
        self._pending: dict[int, _Pending] = {}  # publishes waiting for their acknowledgement
        self.client = client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                           clean_session=clean_session, manual_ack=True)
        client.enable_logger(PAHO_LOG)
        client.suppress_exceptions = True  # a callback that raises is logged, paho goes on
        client.max_inflight_messages_set(0)  # callers bound what they leave unacknowledged
        client.connect_timeout = actor.config["connect_timeout"]
        if username:
            client.username_pw_set(username, password or None)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write
        client.on_socket_close = self._socket_closed
        self._sock: Any = None  # the attached socket
        self._misc: TimerHandle | None = None
        self._subscribe_mid: int | None = None
        self._paused = False
        self._paused_read: TimerHandle | None = None
        actor.on_pause(lambda paused: self.pause() if paused else self.resume())
        self._connection = 0  # counts connections: a mid means something in its own only
        self._unjournaled = 0  # QoS 1/2 messages of this connection the router has not journaled
        self._not_journaled = 0  # QoS 1 messages of this connection whose events were not
        # journaled (dropped by the outbox, fenced): the broker holds them until a reconnect
        self._watching = False  # for the router to acknowledge again (`_router_back`)
        self._draining = False  # not reading until this connection's other messages settle
        self._generation = 0  # a connect thread's result for an older generation is stale
        self._connecting: threading.Thread | None = None
        self._configured = False
        self._stopped = False

    # --- connecting -----------------------------------------------------------------------

    def connect(self, host: str, port: int, keepalive: int) -> None:
        """Drop the connection (or attempt) there is and start one attempt, then return; the
        outcome comes as `MqttHandler` calls. Over TLS when the actor's ``tls`` setting is a
        table (paho checks the broker's certificate and its name, `host`, against ``ca`` or
        the system CAs)."""
        self.close()
        if not self._configured:
            tls = self.actor.config.get("tls")
            if tls is not None:
                self.client.tls_set(ca_certs=tls.get("ca"), certfile=tls.get("cert"),
                                    keyfile=tls.get("key"))
            self.client.connect_async(host, port, keepalive)
            self._configured = True
        self._attempt(self._generation)

    def _attempt(self, generation: int) -> None:
        if generation != self._generation or self._stopped:
            return
        if self._connecting is not None and self._connecting.is_alive():
            # an attempt given up on is still inside paho: let it end (stale) first
            self.actor.call_later(0.1, self._attempt, generation)
            return
        self._connecting = threading.Thread(target=self._connect_thread, args=(generation,),
                                            daemon=True, name=f"mqtt-connect-{self.actor.name}")
        self._connecting.start()

    def _connect_thread(self, generation: int) -> None:
        """Connect thread: paho's blocking reconnect, then hand the result to the loop."""
        try:
            rc = self.client.reconnect()
        except Exception as exc:  # OSError, ssl.SSLError, a name that does not resolve
            self.actor.call_soon_threadsafe(self._failed, generation, connect_error_text(exc))
            return
        self.actor.call_soon_threadsafe(self._attach, generation, rc)

    def _attach(self, generation: int, rc: MQTTErrorCode) -> None:
        sock: Any = self.client.socket()
        if generation != self._generation or self._stopped:
            if sock is not None:  # given up on meanwhile (connect timeout, stop)
                self.client._sock_close()  # paho has no public close without a DISCONNECT
            return
        if sock is None or rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._failed(generation, reason_text(rc))
            return
        self._sock = sock
        self._connection += 1
        # small publishes go out at once, not after the previous one's ACK (Nagle); a unix
        # socket has no such option
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.actor.add_reader(sock, self._readable)
        if self.client.want_write():
            self.actor.add_writer(sock, self._writable)
        self._misc = self.actor.call_later(MISC_EVERY, self._housekeeping)
        if self._paused:  # the CONNACK is awaited: read it
            self._schedule_paused_read()

    def _failed(self, generation: int, reason: str) -> None:
        if generation == self._generation:
            self._down(f"cannot connect to broker {self.address}: {reason}")

    def close(self) -> None:
        """Drop the connection (or the attempt under way) without a DISCONNECT; idempotent.
        Unacknowledged QoS 1/2 publishes stay in paho's session for the next connection."""
        self._generation += 1
        if self._sock is not None:
            self.client._sock_close()  # calls _socket_closed, which detaches
        self._detach()

    def stop(self, reason: str) -> None:
        """The messages read during a pause acknowledged, a clean DISCONNECT (after what is
        queued: a last publish goes out first), then close; for good. Publishes still waiting
        for their acknowledgement fail with `reason`."""
        self._stopped = True
        if self._sock is not None and self._unjournaled:  # their PUBACKs go before DISCONNECT
            self.actor.bus.flush(STOP_FLUSH)
        if self._sock is not None:
            self.client.disconnect()
            self.client.loop_write()  # the DISCONNECT goes out; paho closes after it
        self.close()
        for mid in list(self._pending):
            self.settle(mid, reason)

    # --- the loop's side of paho's I/O ----------------------------------------------------

    def _readable(self) -> None:
        self.client.loop_read()
        for _ in range(PENDING_READS):  # SSL: bytes decrypted already wait in the socket
            sock = self.client.socket()
            if sock is None or not hasattr(sock, "pending") or not sock.pending():
                break
            self.client.loop_read()

    def _writable(self) -> None:
        self.client.loop_write()

    def _housekeeping(self) -> None:
        self._misc = None
        if self._sock is None:
            return
        if (self._paused or self._draining) and not self.awaiting \
                and hasattr(self.client, "_last_bytes_received"):
            # not read on purpose (module doc): paho must not take the PINGRESPs waiting behind
            # the broker's messages for a silent broker; it goes on sending its PINGREQs. (A
            # paho without this attribute drops the connection after 1.5 keepalives instead,
            # and the broker sends what was not acknowledged again at the reconnect.)
            self.client._last_bytes_received = time.monotonic()  # paho's clock
        self.client.loop_misc()
        if self._sock is not None:
            self._misc = self.actor.call_later(MISC_EVERY, self._housekeeping)

    def _register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if sock is self._sock:  # else: the connect thread's CONNECT; `_attach` sees it
            self.actor.add_writer(sock, self._writable)

    def _unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if sock is self._sock:
            self.actor.remove_writer(sock)

    def _socket_closed(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if sock is self._sock:  # before paho closes it: a closed fd must not stay polled
            self._detach()

    def _detach(self) -> None:
        self.up = False
        self._subscribe_mid = None
        self._unjournaled = 0  # not acknowledged: the broker sends them again (its session)
        self._not_journaled = 0
        self._draining = False
        if self._sock is not None:
            self.actor.remove_reader(self._sock)
            self.actor.remove_writer(self._sock)
            self._sock = None
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None

    # --- backpressure -----------------------------------------------------------------------

    def pause(self) -> None:
        """The actor's Bus is congested and its loop no longer polls this socket (the actor's
        ``pause_device``): the broker keeps the messages. Read only an awaited answer of the
        broker meanwhile (module doc)."""
        self._paused = True
        self._schedule_paused_read()

    def resume(self) -> None:
        """Reads resume (the loop polls the socket again)."""
        self._paused = False
        if self._paused_read is not None:
            self._paused_read.cancel()
            self._paused_read = None

    @property
    def awaiting(self) -> bool:
        """Whether the broker owes this client the answer to a request of its own: a CONNACK or
        SUBACK, the acknowledgement of a publish (paho keeps those to itself, in
        ``_out_messages``). A PINGRESP does not count (module doc: paused, it is not read)."""
        return not self.up or bool(self.client._out_messages)

    def _schedule_paused_read(self) -> None:
        if self._paused_read is None and self._sock is not None:
            self._paused_read = self.actor.call_later(PAUSED_READ, self._read_while_paused)

    def _read_while_paused(self) -> None:
        self._paused_read = None
        if not self._paused or self._sock is None:
            return
        if self.awaiting and not self._draining:  # non-blocking socket: nothing there is no error
            self._readable()
        self._schedule_paused_read()

    def _journaled(self, mid: int, qos: int, connection: int, ok: bool) -> None:
        """The router journaled (`ok`) what the handler published for message `mid`: now the
        broker may forget it. Not journaled, or from an earlier connection: no acknowledgement,
        the broker sends it again with the session. It does so only at the next connection
        (and keeps it in its in-flight window until then), so once the router acknowledges
        again this connection is dropped (`_router_back`)."""
        if connection != self._connection or self._sock is None:
            return  # detached: the next connection gets it again anyway
        self._unjournaled -= 1
        if ok:
            self.client.ack(mid, qos)
            return
        self._not_journaled += 1
        if self.client._clean_session:  # lost either way: a reconnect forgets the session, and
            self.client.ack(mid, qos)  # held back it would take a broker in-flight slot for good
        self._watch_router()

    def _watch_router(self) -> None:
        """Call `_router_back` once the actor's newest envelope is acknowledged or dropped (on
        the next loop turn: not inside the Bus's settling of acknowledgements)."""
        if not self._watching:
            self._watching = True
            self.actor.bus.on_acked(self.actor.bus.last_seq, functools.partial(
                self.actor.call_later, 0, self._router_back))

    def _router_back(self, ok: bool) -> None:
        self._watching = False
        if self._stopped or not self._not_journaled:
            return  # a new connection had them sent again
        if not ok:  # dropped too: the router is still away
            self._watch_router()
            return
        if self.client._clean_session:
            log.warning("actor %s: %d message(s) from broker %s were not journaled and are "
                        "lost: with a clean session the broker forgets them at a reconnect",
                        self.actor.name, self._not_journaled, self.address)
            self._not_journaled = 0
            return
        if self._unjournaled and self._sock is not None and not self._draining:
            # Messages read since are still on their way to the journal: dropping the
            # connection now would have the broker send them again too (twice on the bus).
            # Stop reading, let them settle (and be acknowledged), then reconnect (after one
            # such round, whatever is still pending: it comes again, at least once).
            self._draining = True
            self.actor.remove_reader(self._sock)
            self._watch_router()
            return
        reason = (f"{self._not_journaled} message(s) from broker {self.address} were not "
                  "journaled: reconnecting, so that the broker sends them again (its session)")
        log.warning("actor %s: %s", self.actor.name, reason)
        self.close()
        self._down(reason)

    # --- publishing -------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, result: dict[str, Any], timeout: float,
                on_acked: Callable[[dict[str, Any]], object] | None = None, *,
                retain: bool = False) -> Deferred:
        """Publish at the actor's `qos`; the Deferred resolves to `result` once the broker
        acknowledged it (after `on_acked(result)`), or fails after `timeout` seconds, when the
        message is withdrawn so that it is not delivered late after a reconnect."""
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

    # --- paho's callbacks: on the loop thread, inside loop_read / loop_write / loop_misc ---

    def _up(self) -> None:
        self.up = True
        self.handler.mqtt_up(f"connected to broker {self.address}")

    def _down(self, reason: str) -> None:
        self.up = False
        if not self._stopped:
            self.handler.mqtt_down(reason)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode,
                    props: Any) -> None:
        if rc.is_failure:
            self._down(f"broker {self.address} refused the connection: {reason_text(rc)}")
            return
        if not self.subscriptions:
            self._up()
            return
        result, mid = client.subscribe(self.subscriptions)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._down(f"subscribe on {self.address} failed: {reason_text(result)}")
            return
        self._subscribe_mid = mid

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      codes: list[ReasonCode], props: Any) -> None:
        if mid != self._subscribe_mid:
            return
        self._subscribe_mid = None
        refused = [(topic, reason_text(code))
                   for (topic, _), code in zip(self.subscriptions, codes, strict=False)
                   if code.is_failure]
        if refused:
            log.error("actor %s: broker %s refused the subscription to %s: nothing published "
                      "there will arrive; check the broker's ACL for this client",
                      self.actor.name, self.address,
                      ", ".join(f"{topic} ({why})" for topic, why in refused))
            self._down(f"broker {self.address} refused subscriptions: {refused[0][1]}")
            return
        self._up()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode,
                       props: Any) -> None:
        self._down(f"connection to broker {self.address} lost: {reason_text(rc)}")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self.handler.mqtt_message(msg.topic, bytes(msg.payload), msg.retain)
        finally:  # acknowledged once what it became is journaled (module doc)
            if msg.qos == 2:
                # paho has dropped a QoS 2 message by the time it is handed over (after the
                # PUBREL) and would never complete it after a reconnect: completed at once
                client.ack(msg.mid, msg.qos)
            elif msg.qos:
                bus = self.actor.bus
                self._unjournaled += 1
                bus.on_acked(bus.last_seq, functools.partial(
                    self._journaled, msg.mid, msg.qos, self._connection))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: ReasonCode,
                    props: Any) -> None:
        error = f"broker {self.address} refused it: {reason_text(rc)}" if rc.is_failure \
            else None
        if mid in self._pending:
            self.settle(mid, error)
        elif self.on_published is not None:
            self.on_published(mid, error)

def excerpt(payload: bytes) -> str:
    """A payload for a log line: text if printable, else hex; bounded."""
    head = payload[:EXCERPT]
    text = head.decode("utf-8", "replace")
    shown = repr(text) if text.isprintable() else f"hex {head.hex()}"
    return shown + ("..." if len(payload) > EXCERPT else "")
