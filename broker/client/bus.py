"""The Bus client: the one way actors, sctl and outside Python tools use the bus.

A `Bus` is owned by one thread. It has three sockets to the router (see `broker.wire.protocol`):
a PUB to ingress (``XPUB_NODROP``: a full pipe is reported, not dropped), a SUB to egress, and a
DEALER to the query socket. It gives:

- **at-least-once ingress**: `publish` numbers envelopes per (name, epoch) and keeps them in the
  `Outbox` until acked; unacked envelopes are resent after ``resend_after`` seconds without ack
  progress (doubling, up to `RESEND_MAX`, while resends bring no ack) and after a router
  restart. Nothing is transmitted before the sync handshake.
- **no slow joiner**: `connect` sends ``ctl.sync`` probes until the router's answer comes back on
  the SUB socket, so both paths are live before the first envelope is sent or awaited.
- **gap-free egress**: gapless subscriptions receive the whole feed (ZeroMQ prefix filtering would
  hide gaps), the `Stream` checks gseq continuity, fetches gaps from the query socket and delivers
  in order; the topic filter is applied after ordering. ``gapless=False`` subscriptions are
  filtered by ZeroMQ and best effort (actors use that for their ``cmd.<name>``; commands are
  retried by their senders anyway).
- **commands**: `start_request`/`request` publish a command and re-publish it (same id) until a
  reply or the deadline; the actor's reply cache makes the execution exactly-once.

Each part explains its own strategy: `broker.client.publisher` (ingress), `broker.client.egress`
(subscriptions, gap-free egress), `broker.client.requests` (commands) and `broker.client.delivery`
(what the router sends). This module owns the sockets, the sync handshake and the one set of
timers of all the parts (`next_deadline`, `tick`), and dispatches what arrives.

Security: with ``[router.security] curve = true`` every socket of the Bus (and the one-shot query
sockets of `query`) is a CURVE client acting as the key ``identity`` (`broker.security`): its
secret key and the router's public key are read from keys_dir when the Bus is created. The
Bus's `name` (the envelopes' src) is separate: an actor's is its key name, sctl's a client name.

Driving it: simple clients call `poll(timeout)`. Event loops call `pollables()` before every
wait and register them in their own `zmq.Poller` (the flags change from turn to turn), pass the
result to `handle(events)` and call `tick()` by `next_deadline()`. `publish` hands the first
envelope of a loop turn to ZeroMQ at once and the turn's later ones when `pollables()` ends the
turn, as one burst: a lone send costs a wake-up of ZeroMQ's I/O thread, a burst one for many.
A Bus nobody has pumped for `TURN_WINDOW` sends every publish at once, as there is no turn
whose end would send it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import zmq
from zmq.utils import monitor as zmq_monitor

from broker import security
from broker.client import delivery
from broker.client.delivery import ZERO_COPY_MIN, Delivery, parse_reply
from broker.client.egress import Egress
from broker.client.outbox import DEFAULT_MAX_BYTES, DEFAULT_MAX_MESSAGES, Outbox
from broker.client.publisher import Publisher
from broker.client.requests import Request, Requests
from broker.config import RouterConfig
from broker.wire import envelope as envmod
from broker.wire import protocol, topics
from broker.wire.envelope import Envelope
from broker.wire.errors import BusError, BusFull, EnvelopeError, RequestTimeout

__all__ = ["Bus", "Delivery", "Request", "client_name", "new_epoch", "parse_reply"]

log = logging.getLogger(__name__)

SYNC_FIRST: Final = 0.02  # first probe interval; doubles up to SYNC_MAX while unanswered
SYNC_MAX: Final = 0.5
# Each resend that brings no ack doubles the wait before the next one, up to RESEND_MAX: a
# router that reads but cannot acknowledge (stopped, its journal blocked) must not receive the
# whole outbox again every `resend_after` seconds.
RESEND_MAX: Final = 8.0
# pyzmq's C-level recv: its Python-level wrapper is a noticeable share of the cost of a frame.
# Frames are taken with copy=False for their `more` flag, which is cheaper than
# getsockopt(RCVMORE).
_recv = zmq.backend.Socket.recv
_NOBLOCK: Final = int(zmq.NOBLOCK)
# Plain ints: `revents & zmq.POLLIN` runs IntFlag.__rand__ in Python, three times a turn.
_POLLIN: Final = int(zmq.POLLIN)
_POLLOUT: Final = int(zmq.POLLOUT)
_ACK_PREFIX: Final = topics.ACK + "."  # acks are plumbing: never delivered, whoever they are for
# A live message's stamp; struct.error if it is not 16 bytes (`envelope.unpack_stamp` says why).
_unpack_stamp = envmod.STAMP.unpack
# PUB socket events: a finished handshake means connected, the others that it is lost
_MONITOR_LOST: Final = frozenset({
    zmq.EVENT_DISCONNECTED, zmq.EVENT_CLOSED, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_AUTH})
_MONITOR_EVENTS: Final = int(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
                             | zmq.EVENT_CLOSED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                             | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                             | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
HEARTBEAT_IVL_MS: Final = 1000  # ZMTP heartbeats: a dead peer or half-open TCP is noticed
HEARTBEAT_TIMEOUT_MS: Final = 4000
RECV_BATCH: Final = 2000  # messages drained per socket per handle(), for fairness
QUERY_TIMEOUT: Final = 5.0
# Publishes handed to ZeroMQ at once per loop turn; the turn's later ones go out together when
# the driver comes back to the loop (`pollables`). Each lone send wakes ZeroMQ's I/O thread,
# which costs far more CPU than a message; a burst wakes it once.
SEND_AT_ONCE: Final = 1
# A turn that began (handle/pollables) longer ago than this is not a loop turn about to end:
# the owner publishes between other work and may not pump the Bus again soon, so a publish is
# sent at once, with whatever waits before it. The window is several times longer than a busy
# loop turn (the bench's turns of 500 publishes).
TURN_WINDOW: Final = 0.02


def client_name(prefix: str = "sctl") -> str:
    """A bus name for a short-lived client: ``<prefix>-<host>-<pid>``, one topic segment."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0])[:32] or "host"
    return f"{prefix}-{host}-{os.getpid()}"


def new_epoch() -> int:
    return time.time_ns() // 1000


def _whole(sub: zmq.Socket[bytes], *read: zmq.Frame | None) -> list[bytes]:
    """The frames of a message whose first ones were `read` (None: not read), with the rest
    of it read too, as bytes."""
    frames = [f for f in read if f is not None]
    while frames[-1].more:
        frames.append(_recv(sub, 0, False))
    return [f.bytes for f in frames]


def _liveness(s: zmq.Socket[bytes]) -> None:
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    s.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    s.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)


class Bus:
    def __init__(
        self,
        router: RouterConfig,
        name: str,
        *,
        context: zmq.Context[Any] | None = None,
        outbox_max_messages: int = DEFAULT_MAX_MESSAGES,
        outbox_max_bytes: int = DEFAULT_MAX_BYTES,
        resend_after: float = 1.0,
        rcvhwm: int = 100_000,
        identity: str | None = None,
    ) -> None:
        """`identity`: the CURVE key to act as when the router requires it (default
        ``$SCTL_AS``, else ``operator``); ignored without ``[router.security]``. A missing
        key file is a BusError here, before anything is sent."""
        self.name = topics.check_name(name, "bus client name")
        self.epoch = new_epoch()
        self.router = router
        self.resend_after = resend_after
        self._resend_wait = resend_after  # grows while resends bring no ack (RESEND_MAX)
        self._acked_mark = 0  # counters["acked"] at the last resend
        self._ctx = context or zmq.Context.instance()
        self._plain_ctx = self._ctx  # for the inproc monitor socket, which takes no CURVE
        self.identity: str | None = None
        sec = security.security_of(router.security)
        if sec is not None:
            self.identity = identity or security.default_identity()
            options = security.client_options(sec, self.identity)
            # A shadow of the context with CURVE as default socket options: every socket made
            # from it, here and in delivery.query, is a CURVE client. The context is shared.
            self._ctx = zmq.Context.shadow(self._ctx.underlying)
            for opt, value in options.items():
                self._ctx.setsockopt(opt, value)
        self.counters: dict[str, int] = dict.fromkeys((
            "published", "sent", "resent", "acked", "outbox_dropped", "alarms", "sync_probes",
            "router_restarts", "delivered", "gaps", "gap_filled", "lost", "duplicates",
            "bad_frames", "requests", "request_retries", "request_timeouts", "resets",
            "held_dropped", "denied", "fenced",
        ), 0)
        self._outbox = Outbox(outbox_max_messages, outbox_max_bytes)
        self._publisher = Publisher(self.name, self.epoch, router.max_message_bytes,
                                    self._outbox, self.counters, self._on_enqueued)
        self._ack_topic = topics.ack(name)
        self._reply_topic = topics.reply(name)
        self._requests = Requests(self.name, self._reply_topic, self.publish, self.counters)
        self._egress = Egress(self.name, self._reply_topic, self.counters, self._requests)
        self._egress.on_lost = lambda alarm: self.publish(topics.ALARM, "system", alarm)
        self._rcvhwm = rcvhwm
        self._pub: zmq.Socket[bytes] | None = None
        self._sub: zmq.Socket[bytes] | None = None
        self._blocked = False  # PUB said Again; wait for POLLOUT
        self._sent_this_turn = 0  # publishes sent at once since the last pollables()
        self._turn_began = 0.0  # monotonic time of the last handle() or pollables()
        self.synced = False
        self.router_epoch: int | None = None
        self._sync_token = ""
        self._sync_interval = SYNC_FIRST
        self._next_sync = 0.0
        self._stash: list[Delivery] = []  # deliveries that arrived inside blocking calls
        # Called (loop thread) when the router fences us: another instance holds our name
        # (broker.client.lease); the ack's data, with the holder, is the argument. It returns
        # False when it expects to get the name (the messages then wait in the outbox, their
        # ack waiters with them); anything else fails every ack waiter at once.
        self.on_fenced: Callable[[dict[str, Any]], object] | None = None
        self._monitor: zmq.Socket[bytes] | None = None  # the PUB socket's events: `connected`

    # ---------------------------------------------------------------- connection

    def connect(self, wait: float = 5.0) -> bool:
        """Open the sockets and run the sync handshake for up to `wait` seconds.

        Returns False when the router did not answer in time; the Bus keeps probing from
        `tick()` and sends its outbox once the router answers.
        """
        if self._pub is not None:
            raise BusError("connect() called twice")
        r = self.router
        self._pub = self._socket(zmq.PUB, r.connect_url("ingress"), watch=True)
        self._pub.setsockopt(zmq.XPUB_NODROP, 1)
        self._pub.setsockopt(zmq.SNDHWM, 50_000)
        self._sub = self._ctx.socket(zmq.SUB)
        _liveness(self._sub)
        self._sub.setsockopt(zmq.RCVHWM, self._rcvhwm)
        self._apply_subscriptions()
        self._sub.connect(r.connect_url("egress"))
        self._egress.dealer = self._socket(zmq.DEALER, r.connect_url("query"))
        self._probe(time.monotonic())
        if wait > 0:
            deadline = time.monotonic() + wait
            with self._stashing() as got:
                while not self.synced and time.monotonic() < deadline:
                    got.extend(self._poll_once(min(0.05, wait)))
        return self.synced

    @contextlib.contextmanager
    def _stashing(self) -> Iterator[list[Delivery]]:
        """Deliveries that arrive during a blocking call, kept for the next poll()/handle().
        Collected apart from the stash until the call ends: a non-empty stash makes
        next_deadline() "now", which would turn the blocking call into a busy loop."""
        earlier, self._stash = self._stash, []
        got: list[Delivery] = []
        try:
            yield got
        finally:
            self._stash = earlier + self._stash + got

    def _watch(self, pub: zmq.Socket[bytes]) -> zmq.Socket[bytes]:
        """A monitor on the PUB socket: its handshakes and disconnects tell `connected`."""
        url = f"inproc://sctl-bus-monitor-{id(self):x}-{self.epoch}"
        pub.monitor(url, _MONITOR_EVENTS)
        monitor: zmq.Socket[bytes] = self._plain_ctx.socket(zmq.PAIR)
        monitor.setsockopt(zmq.LINGER, 0)
        monitor.connect(url)
        return monitor

    def _on_monitor(self) -> None:
        assert self._monitor is not None
        while True:
            try:
                frames = self._monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            event = zmq_monitor.parse_monitor_message(frames)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._publisher.set_connected(True)
            elif event in _MONITOR_LOST:
                if self._outbox.connected:
                    log.info("%s: lost the connection to the router's ingress", self.name)
                self._publisher.set_connected(False)

    def _socket(self, kind: int, url: str, watch: bool = False) -> zmq.Socket[bytes]:
        """`watch`: monitor it (`_watch`) from before it connects, so no event is missed."""
        s: zmq.Socket[bytes] = self._ctx.socket(kind)
        _liveness(s)
        if watch:
            self._monitor = self._watch(s)
        s.connect(url)
        return s

    def close(self, linger: float = 0.0) -> bool:
        """Wait up to `linger` seconds for the outbox to be acked, then close; True if empty."""
        flushed = self.flush(linger) if linger > 0 else len(self._outbox) == 0
        self._publisher.close()
        if self._monitor is not None and self._pub is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._pub.disable_monitor()
        for s in (self._pub, self._sub, self._egress.dealer, self._monitor):
            if s is not None:
                s.close(0)
        self._monitor = None
        self._pub = self._sub = self._egress.dealer = None
        return flushed

    def flush(self, timeout: float) -> bool:
        """Pump until every published envelope is acked, for up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._stashing() as got:
            while len(self._outbox) and time.monotonic() < deadline:
                got.extend(self._poll_once(max(0.0, min(0.05, deadline - time.monotonic()))))
        return len(self._outbox) == 0

    # ---------------------------------------------------------------- publishing

    def publish(self, topic: str, kind: str, data: dict[str, Any] | None = None, *,
                headroom: bool = False, **extra: Any) -> Envelope:
        """Queue one envelope for the router; never blocks.

        Raises EnvelopeError/TopicError for anything the router would refuse (bad topic, kind
        not allowed on it, reserved topic, body over max_message_bytes) before a seq is used:
        a refused envelope must not leave a hole in this sender's stream.

        Backpressure (docs/backpressure.md): an ``event`` that does not fit in the outbox while
        the router is connected raises BusFull, also before a seq is used; `publish_wait` waits
        for room instead. Other kinds (heartbeats, replies, alarms, logs, commands) and events
        published with `headroom` (an actor that already paused its device) may use the
        outbox's headroom beyond its bounds. With the router unreachable nothing is refused:
        the outbox drops its oldest at the bound, counted and alarmed.
        """
        try:
            if headroom:
                return self._publisher.publish(topic, kind, data, headroom=True, **extra)
            if extra:  # unpacking even an empty **extra has a cost on every publish
                return self._publisher.publish(topic, kind, data, **extra)
            return self._publisher.publish(topic, kind, data)
        except BusFull:
            # a router that died since the last poll: unreachable, so no backpressure
            if self._monitor is not None:
                self._on_monitor()
            if self._outbox.connected:
                raise
            return self._publisher.publish(topic, kind, data, **extra)

    def publish_wait(self, topic: str, kind: str, data: dict[str, Any] | None = None, *,
                     timeout: float, **extra: Any) -> Envelope:
        """`publish`, pumping the Bus while the outbox is full (deliveries that arrive wait
        for the next poll()/handle(), as in `flush`) until the envelope fits; BusFull when it
        still does not after `timeout` seconds. For producers that may block; an event loop
        uses `congested` to stop reading its source instead."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.publish(topic, kind, data, **extra)
            except BusFull as exc:
                if not self._wait_room(exc.size, deadline):
                    raise BusFull(f"{exc} (waited {timeout:g} s)", size=exc.size,
                                  held=exc.held, held_bytes=exc.held_bytes,
                                  max_messages=exc.max_messages,
                                  max_bytes=exc.max_bytes) from None

    def _wait_room(self, size: int, deadline: float) -> bool:
        """Pump until the outbox is under its low watermark with room for `size` bytes (each
        retry encodes the envelope again, so not after every single ack); False at `deadline`."""
        outbox = self._outbox
        with self._stashing() as got:
            while outbox.connected and (outbox.congested or not outbox.has_room(size)):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                got.extend(self._poll_once(min(0.05, left)))
        return True

    @property
    def connected(self) -> bool:
        """The PUB socket has a live connection to the router's ingress (ZMTP handshake done,
        not lost since; ZMTP heartbeats notice a dead peer within HEARTBEAT_TIMEOUT_MS)."""
        return self._outbox.connected

    @property
    def congested(self) -> bool:
        """The router is connected and the outbox reached its high watermark (75 % of a
        bound), until it is back under the low one (50 % of both). Actors pause their device
        reads while it holds; cheap enough to read every loop turn."""
        outbox = self._outbox
        return outbox.congested and outbox.connected

    @property
    def room(self) -> int:
        """Bytes an event may still take before the outbox's byte bound (0: full)."""
        return max(0, self._outbox.max_bytes - self._outbox.bytes)

    @property
    def last_seq(self) -> int:
        """The seq of our newest publish (0 before the first): with `on_acked`, a caller learns
        when everything it published so far is journaled."""
        return self._publisher.seq

    def outbox_status(self) -> dict[str, Any]:
        """The outbox's fill for heartbeats and `sctl top`."""
        o, p = self._outbox, self._publisher
        return {"messages": o.held, "bytes": o.bytes, "max_messages": o.max_messages,
                "max_bytes": o.max_bytes, "fill": round(o.fill, 3),
                "congested": self.congested, "connected": o.connected,
                "unreachable_since": p.unreachable_since}

    def reply_to(self, command: Envelope, status: str, result: Any = None,
                 error: str = "") -> Envelope | None:
        """Publish the reply to `command` on its reply_to topic."""
        if command.reply_to is None:
            return None
        data = {"status": status, "result": result, "error": error}
        return self.publish(command.reply_to, "reply", data, corr=command.id)

    def on_acked(self, seq: int, callback: Callable[[bool], object]) -> None:
        """Call `callback(True)` once the router has journaled our envelope `seq` (at once if
        it already has), or `callback(False)` if the outbox dropped it on overflow or the Bus
        closed first. Runs on the Bus's thread, inside poll()/handle()."""
        self._publisher.on_acked(seq, callback)

    @property
    def outbox_size(self) -> int:
        return len(self._outbox)

    def _on_enqueued(self) -> None:
        """The Publisher queued one envelope: the turn's first goes out now, later ones wait
        for the end of the turn (`pollables`) and leave as one burst; unless nobody has pumped
        the Bus for `TURN_WINDOW` (no loop turn is under way), then everything goes now."""
        if self._sent_this_turn < SEND_AT_ONCE:
            self._sent_this_turn += 1
            self._flush()
        elif time.monotonic() - self._turn_began > TURN_WINDOW:
            self._flush()

    def _flush(self) -> None:
        if self.synced and self._pub is not None and not self._blocked:
            # False: the pipe is full, POLLOUT in pollables() resumes us
            self._blocked = not self._publisher.send_unsent(self._pub)

    # ---------------------------------------------------------------- sync handshake

    def _probe(self, now: float) -> None:
        assert self._pub is not None
        # One token per sync episode: an answer slower than the probe interval still counts.
        if not self._sync_token:
            self._sync_token = os.urandom(8).hex()
        env = envmod.make(self.name, self.epoch, 0, "system", {
            "token": self._sync_token, "next": self._publisher.held_from})
        with contextlib.suppress(zmq.Again):
            self._pub.send_multipart((protocol.SYNC_TOPIC.encode(), env.encode()),
                                     flags=zmq.NOBLOCK)
        self.counters["sync_probes"] += 1
        self._next_sync = now + self._sync_interval
        self._sync_interval = min(SYNC_MAX, self._sync_interval * 2)

    def _unsync(self, why: str) -> None:
        if self.synced:
            log.info("%s: re-synchronising with the router (%s)", self.name, why)
        self.synced = False
        self._sync_token = ""  # a new episode: answers to older probes no longer count
        self._sync_interval = SYNC_FIRST
        self._next_sync = 0.0

    def _on_synced(self, data: dict[str, Any]) -> None:
        was_synced, self.synced = self.synced, True
        self._sync_token = ""  # answered: a duplicate answer must not count twice
        self.router_epoch = data.get("router_epoch", self.router_epoch)
        self._egress.on_synced(data, self.router_epoch)
        if not was_synced:
            resent = self._publisher.resend()
            log.debug("%s: synced with router epoch %s, head %s, resending %d", self.name,
                      self.router_epoch, data.get("head", 0), resent)
            self._flush()
            self._requests.resend_soon()
        self._start_pending()

    # ---------------------------------------------------------------- subscribing

    def subscribe(self, prefix: str, *, gapless: bool = True, since: int | None = None) -> None:
        """Deliver messages whose topic matches `prefix` (segment aligned, see broker.wire.topics).

        gapless: every matching message exactly once and in gseq order, from now on (or from
        gseq `since`). Otherwise best effort, filtered by ZeroMQ.
        """
        topics.check_prefix(prefix)
        connected = self._sub is not None
        start_probe = self._egress.subscribe(prefix, gapless, since, connected and self.synced)
        if connected:
            self._apply_subscriptions()
            if start_probe:
                # the answer's head, taken when the probe reaches the router, is the start
                self._sync_token = ""
                self._sync_interval = SYNC_FIRST
                self._probe(time.monotonic())
            self._start_pending()

    def _apply_subscriptions(self) -> None:
        assert self._sub is not None
        if self._egress.gapless:
            self._sub.setsockopt(zmq.SUBSCRIBE, b"")
            return
        for prefix in (*self._egress.prefixes, self._reply_topic, self._ack_topic):
            self._sub.setsockopt(zmq.SUBSCRIBE, topics.zmq_prefix(prefix))

    def _start_pending(self) -> None:
        if self.synced:
            self._egress.start_pending(self.router_epoch)

    # ---------------------------------------------------------------- pumping

    def pollables(self) -> list[tuple[zmq.Socket[bytes], int]]:
        """The sockets to poll and their flags. Called before each wait, so it also ends the
        loop turn: what the turn published and has not sent yet goes out now."""
        self._sent_this_turn = 0
        self._turn_began = time.monotonic()
        if self._outbox.waiting:
            self._flush()
        out: list[tuple[zmq.Socket[bytes], int]] = []
        if self._sub is not None:
            out.append((self._sub, zmq.POLLIN))
        if self._egress.dealer is not None:
            out.append((self._egress.dealer, zmq.POLLIN))
        if self._pub is not None:
            out.append((self._pub, zmq.POLLOUT if self._blocked else 0))
        if self._monitor is not None:
            out.append((self._monitor, zmq.POLLIN))
        return out

    def handle(self, events: dict[Any, int]) -> list[Delivery]:
        """Process whatever is ready on the bus sockets (non-blocking); deliveries in order."""
        self._turn_began = time.monotonic()  # a loop turn: publishes from here may wait for its end
        out, self._stash = self._stash, []
        if self._pub is not None and events.get(self._pub, 0) & _POLLOUT:
            self._blocked = False
            self._flush()
        if self._sub is not None and events.get(self._sub, 0) & _POLLIN:
            self._drain_sub(out)
        dealer = self._egress.dealer
        if dealer is not None and events.get(dealer, 0) & _POLLIN:
            self._egress.drain(out, RECV_BATCH)
        if self._monitor is not None and events.get(self._monitor, 0) & _POLLIN:
            self._on_monitor()
        if time.monotonic() >= self.next_deadline():
            self.tick()
        return out

    def poll(self, timeout: float) -> list[Delivery]:
        """Wait up to `timeout` seconds for deliveries, doing all bus housekeeping meanwhile."""
        end = time.monotonic() + timeout
        while True:
            out = self._poll_once(max(0.0, end - time.monotonic()))
            if out or time.monotonic() >= end:
                return out

    def _poll_once(self, timeout: float) -> list[Delivery]:
        """One loop turn. `zmq_poll` takes the `pollables()` with flags directly: a
        `zmq.Poller` would be built and registered anew every turn."""
        items = [(s, f) for s, f in self.pollables() if f]
        wait = max(0.0, min(time.monotonic() + timeout, self.next_deadline()) - time.monotonic())
        return self.handle(dict(zmq.zmq_poll(items, math.ceil(wait * 1000))))

    def next_deadline(self) -> float:
        """Monotonic time by which `tick()` must run again."""
        if self._stash:
            return time.monotonic()  # deliveries from a blocking call wait in the stash
        t = time.monotonic() + 1.0
        if not self.synced or self._egress.awaiting_start:
            t = min(t, self._next_sync)
        elif self._outbox.inflight:
            t = min(t, self._publisher.last_progress + self._resend_wait_now())
        if self._requests:  # runs twice a loop turn: no scan of an empty set
            t = min(t, self._requests.next_retry())
        return min(t, self._egress.next_deadline())

    def tick(self) -> None:
        """Timers: sync probes, resends, command retries and deadlines, replay retries."""
        if self._pub is None:
            return
        now = time.monotonic()
        if not self.synced or self._egress.awaiting_start:
            if now >= self._next_sync:
                self._probe(now)
        elif self._outbox.inflight and \
                now - self._publisher.last_progress >= self._resend_wait_now():
            self._unsync(f"no ack for {now - self._publisher.last_progress:.1f} s")
            self._probe(now)
            self._resend_wait = min(RESEND_MAX, self._resend_wait * 2)
        self._requests.tick(now, self.synced)
        self._egress.tick(now)

    def _resend_wait_now(self) -> float:
        """Seconds without ack before the next resend: `resend_after` again once acks flowed
        since the last resend, else the doubled wait."""
        acked = self.counters["acked"]
        if acked != self._acked_mark:
            self._acked_mark = acked
            self._resend_wait = self.resend_after
        return self._resend_wait

    # ---------------------------------------------------------------- receiving

    def _drain_sub(self, out: list[Delivery]) -> None:
        """Take up to RECV_BATCH messages from the SUB socket.

        Every live message passes here, so it is shaped for speed. A message's three frames are
        read unrolled, as Frames: their `more` flag tells a malformed message apart at no extra
        cost (a getsockopt(RCVMORE) call costs more than taking a Frame). The common case, the next
        gseq in order of the current router epoch, is taken by comparing ints against the egress
        cursor (`Egress.cursor`) rather than by passing each message through `_on_frames`,
        `Egress.on_live` and `Stream.take_next`; the delivered counter is updated once a batch.
        Everything else (our acks, gaps, duplicates, a new router epoch, replies to our commands,
        best-effort subscriptions, malformed frames) takes the general path `_on_frames`, with the
        cursor handed back before it and read again after it, as that path may change the stream
        and the router epoch. Another sender's ack of the current router epoch is dropped at once,
        as `_on_frames` would drop it: a gap-free subscription receives the whole feed, and with
        it an ack for every batch of every publisher.
        """
        sub = self._sub
        assert sub is not None
        egress = self._egress
        wants = egress.wants
        reply_topic = self._reply_topic
        ack_topic = self._ack_topic
        epoch = self.router_epoch
        cursor = egress.cursor(epoch)
        delivered = 0
        for _ in range(RECV_BATCH):
            try:
                topic_f = _recv(sub, _NOBLOCK, False)
            except zmq.Again:
                break
            body_f = stamp_f = None
            if topic_f.more:
                body_f = _recv(sub, 0, False)
                if body_f.more:
                    stamp_f = _recv(sub, 0, False)
                    if not stamp_f.more:
                        try:
                            topic = topic_f.bytes.decode()
                            router_epoch, gseq = _unpack_stamp(stamp_f.bytes)
                        except (UnicodeDecodeError, struct.error):
                            pass  # the general path counts and logs it
                        else:
                            if gseq == cursor and router_epoch == epoch and topic != reply_topic:
                                cursor += 1
                                if wants(topic):
                                    delivered += 1
                                    out.append(Delivery(topic, body_f.bytes if len(body_f)
                                                        < ZERO_COPY_MIN else body_f.buffer,
                                                        router_epoch, gseq))
                                continue
                            if gseq == 0 and router_epoch == epoch and topic != ack_topic \
                                    and topic.startswith(_ACK_PREFIX):
                                continue  # another sender's ack: a gap-free SUB gets them all
            egress.took(cursor, delivered)
            delivered = 0
            self._on_frames(_whole(sub, topic_f, body_f, stamp_f), out)
            epoch = self.router_epoch
            cursor = egress.cursor(epoch)
        egress.took(cursor, delivered)

    def _on_frames(self, frames: list[bytes], out: list[Delivery]) -> None:
        try:
            topic_b, body, stamp = frames
            topic = topic_b.decode()
            router_epoch, gseq = envmod.unpack_stamp(stamp)
        except (ValueError, EnvelopeError):
            self.counters["bad_frames"] += 1
            log.warning("%s: malformed frame from the router: %s", self.name,
                        b"|".join(f[:32] for f in frames).hex())
            return
        if router_epoch != self.router_epoch:
            self._on_router_epoch(router_epoch)
        d = Delivery(topic, body, router_epoch, gseq)
        if gseq == 0:  # transient (never journaled): outside the gap-free order, never replayed
            if topic == self._ack_topic:
                self._on_ack(d)
            elif not topic.startswith(_ACK_PREFIX) and self._egress.wants(topic):
                out.append(d)  # the router's alarm while it cannot write its journal
            return
        self._egress.on_live(d, out, self.synced)

    def _on_router_epoch(self, router_epoch: int) -> None:
        if self.router_epoch is not None:
            self.counters["router_restarts"] += 1
            log.warning("%s: router restarted (epoch %d -> %d)", self.name, self.router_epoch,
                        router_epoch)
            self._unsync("router restarted")
        self.router_epoch = router_epoch

    def _on_ack(self, d: Delivery) -> None:
        try:
            env = d.envelope
        except EnvelopeError:
            self.counters["bad_frames"] += 1
            return
        data = env.data
        if data.get("epoch") == self.epoch and data.get("resync"):
            self._unsync("the router does not know this sender (restarted without journal?)")
            return
        if data.get("epoch") == self.epoch and isinstance(data.get("fenced"), int):
            self._on_fenced(data)
            return
        if data.get("epoch") == self.epoch and isinstance(data.get("denied"), int):
            # [router.security] refused one of ours: loud, never mistaken for delivery
            self.counters["denied"] += 1
            log.warning("%s: the router refused our seq %d (key %s): %s", self.name,
                        data["denied"], self.identity, data.get("reason"))
        if data.get("epoch") == self.epoch and isinstance(data.get("seq"), int):
            self._publisher.ack(data["seq"])
        if data.get("sync") == self._sync_token:
            self._on_synced(data)

    def _on_fenced(self, data: dict[str, Any]) -> None:
        """Another instance holds our name: nothing of ours is journaled while it does (the
        router keeps the seqs unused), so every ack waiter fails now, and a command whose
        started record waits never runs; unless `on_fenced` says the name is about to be ours
        (False), and the messages wait for it. Told first loudly, then once a second or
        less."""
        self.counters["fenced"] += 1
        if self.counters["fenced"] == 1:
            holder = data.get("holder")
            holder = holder if isinstance(holder, dict) else {}
            log.error("%s: the router fenced our seq %s: %s is held by host %s (pid %s), "
                      "epoch %s; this instance must not run while it does", self.name,
                      data["fenced"], self.name, holder.get("host"), holder.get("pid"),
                      holder.get("epoch"))
        final = self.on_fenced(data) if self.on_fenced is not None else True
        if final is not False:  # False: the owner expects the name, the messages wait for it
            self._publisher.fenced()

    # ---------------------------------------------------------------- queries

    def query(self, request: dict[str, Any],
              timeout: float = QUERY_TIMEOUT) -> tuple[dict[str, Any], list[Delivery]]:
        """Blocking request on the query socket (its own DEALER, so replays are undisturbed)."""
        return delivery.query(self._ctx, self.router.connect_url("query"), request, timeout)

    def state(self, timeout: float = QUERY_TIMEOUT) -> dict[str, Any]:
        header, _ = self.query({"op": protocol.OP_STATE}, timeout)
        state = header.get("state")
        if not isinstance(state, dict):
            raise BusError("router state answer has no state map")
        return state

    def head(self, timeout: float = QUERY_TIMEOUT) -> int:
        return int(self.state(timeout).get("last", 0))

    # ---------------------------------------------------------------- commands

    def start_request(self, actor: str, command: str, args: dict[str, Any] | None = None,
                      timeout: float = 5.0, callback: Callable[[Request], None] | None = None,
                      argv: list[str] | None = None) -> Request:
        """Publish a command to `actor`; retried (same id) until a reply or the deadline."""
        data: dict[str, Any] = {"command": command, "args": dict(args or {})}
        if argv:
            data["argv"] = list(argv)
        if self._pub is None:
            raise BusError("request() on a Bus that is not connected (call connect() first)")
        return self._requests.start(actor, command, data, timeout, callback)

    def request(self, actor: str, command: str, args: dict[str, Any] | None = None,
                timeout: float = 5.0, argv: list[str] | None = None) -> Envelope:
        """Blocking command round trip; raises RequestTimeout when no reply came in time."""
        req = self.start_request(actor, command, args, timeout, argv=argv)
        with self._stashing() as got:
            while not req.done:
                got.extend(self._poll_once(0.05))
        if req.reply is None:
            raise RequestTimeout(req.error or "no reply", actor, command,
                                 time.monotonic() - req.started)
        return req.reply
