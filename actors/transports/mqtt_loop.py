"""`LoopPaho`: a paho-mqtt client driven by the actor's own loop, without paho's network thread.

`actors.transports.mqtt.PahoBridge` runs paho's thread (``loop_start``), which suits a few
commands and events a second. A bridge that publishes a thousand messages a second pays twice
for that thread: every ``publish`` wakes it through a socket pair, every PUBACK is handed back
to the loop, and the two threads take the interpreter lock from each other a few thousand
times a second, which costs CPU and, on a loaded machine, milliseconds of latency. Here the
actor loop does paho's I/O itself, with paho's documented external-loop calls:

- the socket is registered with `Actor.add_reader` (``loop_read``, which reads every packet
  that is there; an SSL socket's buffered bytes are read at once too) and, while paho has
  bytes to write, `Actor.add_writer` (``loop_write``; paho asks with its
  ``on_socket_register_write`` callback);
- a timer calls ``loop_misc`` every `MISC_EVERY` seconds (keepalive pings, a silent broker);
- every paho callback (CONNACK, SUBACK, PUBACK, messages, the loss of the connection) runs on
  the loop thread, inside those calls, so it may touch actor state directly.

Connecting blocks (name lookup, TCP connect, TLS handshake), so one short-lived thread runs
paho's ``reconnect`` and hands the connected socket over (`Actor.call_soon_threadsafe`);
the loop thread does not touch the client while that thread runs. paho does not reconnect by
itself here: the actor base's link state machine does (``reconnect = True``: backoff,
``connect_timeout``). QoS 1 and 2 messages not yet acknowledged stay in paho's session and are
sent again after the reconnect, as with paho's own loop.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from actors.core.actor import Actor
from actors.core.loop import TimerHandle
from actors.transports.mqtt import PAHO_LOG, MqttHandler, connect_error_text, reason_text

log = logging.getLogger(__name__)

MISC_EVERY: Final = 1.0  # seconds between paho's housekeeping calls
PENDING_READS: Final = 64  # SSL records read after one readiness, at most


class LoopPaho:
    """A paho client whose I/O runs on `actor`'s loop (module doc). `handler` gets the
    `MqttHandler` calls, and `on_published(mid, error)` each acknowledgement (None) or
    refusal of a QoS 1/2 publish. Every method runs on the loop thread."""

    def __init__(self, actor: Actor, client_id: str, handler: MqttHandler, address: str, *,
                 on_published: Callable[[int, str | None], object],
                 clean_session: bool = True) -> None:
        self.actor = actor
        self.handler = handler
        self.address = address
        self.on_published = on_published
        self.client = client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                           clean_session=clean_session)
        client.enable_logger(PAHO_LOG)
        client.suppress_exceptions = True
        client.max_inflight_messages_set(0)  # the caller bounds what it leaves unacknowledged
        client.connect_timeout = actor.config["connect_timeout"]
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
        self._generation = 0  # a connect thread's result for an older generation is stale
        self._connecting: threading.Thread | None = None
        self._configured = False
        self._stopped = False

    # --- connecting -----------------------------------------------------------------------

    def connect(self, host: str, port: int, keepalive: int) -> None:
        """Start one connection attempt and return; the outcome comes as `MqttHandler`
        calls (or a link-down of the actor when the socket cannot be made)."""
        if self._connecting is not None and self._connecting.is_alive():
            # the previous attempt is still inside paho: let it end (stale) before the next
            self.actor.call_later(0.1, self.connect, host, port, keepalive)
            return
        if not self._configured:
            tls = self.actor.config.get("tls")
            if tls is not None:
                self.client.tls_set(ca_certs=tls.get("ca"), certfile=tls.get("cert"),
                                    keyfile=tls.get("key"))
            self.client.connect_async(host, port, keepalive)
            self._configured = True
        self._generation += 1
        self._connecting = threading.Thread(target=self._connect_thread,
                                            args=(self._generation,), daemon=True,
                                            name=f"mqtt-connect-{self.actor.name}")
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
        # small publishes go out at once, not after the previous one's ACK (Nagle); a unix
        # socket has no such option
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.actor.add_reader(sock, self._readable)
        if self.client.want_write():
            self.actor.add_writer(sock, self._writable)
        self._misc = self.actor.call_later(MISC_EVERY, self._housekeeping)

    def _failed(self, generation: int, reason: str) -> None:
        if generation == self._generation and not self._stopped:
            self.handler.mqtt_connect_failed(reason)

    def close(self) -> None:
        """Drop the connection (or the attempt under way) without a DISCONNECT; idempotent."""
        self._generation += 1
        if self._sock is not None:
            self.client._sock_close()  # calls _socket_closed, which detaches
        self._detach()

    def stop(self) -> None:
        """A clean DISCONNECT if connected, then close."""
        if self._sock is not None:
            self.client.disconnect()
            self.client.loop_write()  # the DISCONNECT goes out; paho closes after it
        self._stopped = True
        self.close()

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
        if self._sock is not None:
            self.actor.remove_reader(self._sock)
            self.actor.remove_writer(self._sock)
            self._sock = None
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None

    # --- paho's callbacks: on the loop thread, inside loop_read / loop_write / loop_misc ---

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode,
                    props: Any) -> None:
        self.handler.mqtt_connected(rc.is_failure, reason_text(rc))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode,
                       props: Any) -> None:
        self.handler.mqtt_disconnected(reason_text(rc))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.handler.mqtt_message(msg.topic, bytes(msg.payload), msg.retain)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: ReasonCode,
                    props: Any) -> None:
        self.on_published(mid, f"broker {self.address} refused it: {reason_text(rc)}"
                          if rc.is_failure else None)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      codes: list[ReasonCode], props: Any) -> None:
        self.handler.mqtt_subscribed(mid, [reason_text(c) for c in codes if c.is_failure])
