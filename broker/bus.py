"""The Bus client: the one way actors, sctl and outside Python tools use the bus.

A `Bus` is owned by one thread. It has three sockets to the router (see `broker.wire`): a PUB to
ingress (``XPUB_NODROP``: a full pipe is reported, not dropped), a SUB to egress, and a DEALER to
the query socket. It gives:

- **at-least-once ingress**: `publish` numbers envelopes per (name, epoch) and keeps them in the
  `Outbox` until acked; unacked envelopes are resent after ``resend_after`` seconds without ack
  progress and after a router restart. Nothing is transmitted before the sync handshake.
- **no slow joiner**: `connect` sends ``ctl.sync`` probes until the router's answer comes back on
  the SUB socket, so both paths are live before the first envelope is sent or awaited.
- **gap-free egress**: gapless subscriptions receive the whole feed (ZeroMQ prefix filtering would
  hide gaps), the `Stream` checks gseq continuity, fetches gaps from the query socket and delivers
  in order; the topic filter is applied after ordering. ``gapless=False`` subscriptions are
  filtered by ZeroMQ and best effort (actors use that for their ``cmd.<name>``; commands are
  retried by their senders anyway).
- **commands**: `start_request`/`request` publish a command and re-publish it (same id) until a
  reply or the deadline; the actor's reply cache makes the execution exactly-once.

Driving it: simple clients call `poll(timeout)`. Event loops register `pollables()` in their own
`zmq.Poller`, pass the result to `handle(events)` and call `tick()` by `next_deadline()`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import zmq

from broker import envelope as envmod
from broker import ingress, topics, wire
from broker.config import RouterConfig
from broker.envelope import Envelope
from broker.errors import BusError, EnvelopeError, RequestTimeout, TopicError
from broker.outbox import DEFAULT_MAX_BYTES, DEFAULT_MAX_MESSAGES, Entry, Outbox
from broker.stream import Stream

log = logging.getLogger(__name__)

SYNC_FIRST: Final = 0.02  # first probe interval; doubles up to SYNC_MAX while unanswered
SYNC_MAX: Final = 0.5
RETRY_FIRST: Final = 0.25  # command re-publish interval; doubles up to RETRY_MAX
RETRY_MAX: Final = 1.0
REPLAY_TIMEOUT: Final = 5.0  # re-ask after this; a late answer is still used
RULE_CACHE: Final = 4096  # topics whose ingress rule is remembered
# pyzmq's C-level send/recv: its Python-level wrappers cost about 1 us per frame
_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
_get = zmq.backend.Socket.get
_MORE: Final = int(zmq.SNDMORE | zmq.NOBLOCK)
_LAST: Final = int(zmq.NOBLOCK)
HEARTBEAT_IVL_MS: Final = 1000  # ZMTP heartbeats: a dead peer or half-open TCP is noticed
HEARTBEAT_TIMEOUT_MS: Final = 4000
RECV_BATCH: Final = 2000  # messages drained per socket per handle(), for fairness
QUERY_TIMEOUT: Final = 5.0


class Delivery:
    """One message from the router. The envelope is decoded on first access."""

    __slots__ = ("_env", "body", "gseq", "router_epoch", "topic")

    def __init__(self, topic: str, body: bytes, router_epoch: int, gseq: int) -> None:
        self.topic = topic
        self.body = body
        self.router_epoch = router_epoch
        self.gseq = gseq
        self._env: Envelope | None = None

    @property
    def envelope(self) -> Envelope:
        if self._env is None:
            self._env = envmod.decode(self.body)
        return self._env

    def __repr__(self) -> str:
        return f"Delivery({self.topic!r}, gseq={self.gseq})"


@dataclass
class Request:
    """A command in flight. `reply` or `error` is set when `done`."""

    id: str
    actor: str
    command: str
    data: dict[str, Any]
    deadline: float  # Unix time
    callback: Callable[[Request], None] | None = None
    started: float = field(default_factory=time.monotonic)
    expires: float = 0.0  # monotonic: wall-clock steps must not stretch a timeout
    next_retry: float = 0.0
    retries: int = 0
    reply: Envelope | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.reply is not None or self.error is not None


def client_name(prefix: str = "sctl") -> str:
    """A bus name for a short-lived client: ``<prefix>-<host>-<pid>``, one topic segment."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0])[:32] or "host"
    return f"{prefix}-{host}-{os.getpid()}"


def new_epoch() -> int:
    return time.time_ns() // 1000


def _call(callback: Callable[[bool], object], ok: bool) -> None:
    try:
        callback(ok)
    except Exception:  # runs inside handle(): must not cost the batch's deliveries
        log.exception("ack callback failed")


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
    ) -> None:
        self.name = topics.check_name(name, "bus client name")
        self.epoch = new_epoch()
        self.router = router
        self.resend_after = resend_after
        self._ctx = context or zmq.Context.instance()
        self._seq = 0
        self._outbox = Outbox(outbox_max_messages, outbox_max_bytes)
        self._ack_topic = topics.ack(name)
        self._reply_topic = topics.reply(name)
        self._subs: dict[str, bool] = {}  # prefix -> gapless
        self._stream: Stream[Delivery] = Stream()
        self._requests: dict[str, Request] = {}
        self._rcvhwm = rcvhwm
        self._pub: zmq.Socket[bytes] | None = None
        self._sub: zmq.Socket[bytes] | None = None
        self._dealer: zmq.Socket[bytes] | None = None
        self._blocked = False  # PUB said Again; wait for POLLOUT
        self.synced = False
        self.router_epoch: int | None = None
        self._sync_token = ""
        self._sync_interval = SYNC_FIRST
        self._next_sync = 0.0
        self._last_progress = time.monotonic()
        self._replay_token: bytes | None = None
        self._replay_sent = 0.0
        self._replay_seq = 0
        self._pending_start: int | None = None
        self._catching_up = False
        self._awaiting_start = False  # a start probe for a new gapless subscription is out
        self._stash: list[Delivery] = []  # deliveries that arrived inside blocking calls
        self._rules: dict[bytes, ingress.TopicRule] = {}
        self._alarm: dict[str, Any] | None = None  # outbox overflow not yet reported
        self._origin: int | None = None  # router epoch that started the gseq numbering
        self._ack_waiters: dict[int, list[Callable[[bool], object]]] = {}
        self.counters: dict[str, int] = dict.fromkeys((
            "published", "sent", "resent", "acked", "outbox_dropped", "alarms", "sync_probes",
            "router_restarts", "delivered", "gaps", "gap_filled", "lost", "duplicates",
            "bad_frames", "requests", "request_retries", "request_timeouts", "resets",
        ), 0)

    # ---------------------------------------------------------------- connection

    def connect(self, wait: float = 5.0) -> bool:
        """Open the sockets and run the sync handshake for up to `wait` seconds.

        Returns False when the router did not answer in time; the Bus keeps probing from
        `tick()` and sends its outbox once the router answers.
        """
        if self._pub is not None:
            raise BusError("connect() called twice")
        r = self.router
        self._pub = self._socket(zmq.PUB, r.connect_url("ingress"))
        self._pub.setsockopt(zmq.XPUB_NODROP, 1)
        self._pub.setsockopt(zmq.SNDHWM, 50_000)
        self._sub = self._ctx.socket(zmq.SUB)
        _liveness(self._sub)
        self._sub.setsockopt(zmq.RCVHWM, self._rcvhwm)
        self._apply_subscriptions()
        self._sub.connect(r.connect_url("egress"))
        self._dealer = self._socket(zmq.DEALER, r.connect_url("query"))
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

    def _socket(self, kind: int, url: str) -> zmq.Socket[bytes]:
        s: zmq.Socket[bytes] = self._ctx.socket(kind)
        _liveness(s)
        s.connect(url)
        return s

    def close(self, linger: float = 0.0) -> bool:
        """Wait up to `linger` seconds for the outbox to be acked, then close; True if empty."""
        flushed = self.flush(linger) if linger > 0 else len(self._outbox) == 0
        self._settle_waiters(self._seq, False)
        for s in (self._pub, self._sub, self._dealer):
            if s is not None:
                s.close(0)
        self._pub = self._sub = self._dealer = None
        return flushed

    def flush(self, timeout: float) -> bool:
        """Pump until every published envelope is acked, for up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._stashing() as got:
            while len(self._outbox) and time.monotonic() < deadline:
                got.extend(self._poll_once(max(0.0, min(0.05, deadline - time.monotonic()))))
        return len(self._outbox) == 0

    # ---------------------------------------------------------------- publishing

    def publish(self, topic: str, kind: str, data: dict[str, Any] | None = None,
                **extra: Any) -> Envelope:
        """Queue one envelope for the router; never blocks.

        Raises EnvelopeError/TopicError for anything the router would refuse (bad topic, kind
        not allowed on it, reserved topic, body over max_message_bytes) before a seq is used:
        a refused envelope must not leave a hole in this sender's stream.
        """
        tframe = topic.encode()
        rule = self._rules.get(tframe)
        if rule is None:
            rule = ingress.topic_rule(tframe)
            if len(self._rules) >= RULE_CACHE:
                self._rules.clear()
            self._rules[tframe] = rule
        _, need, special = rule
        if special != ingress.NORMAL:
            raise TopicError(f"{topic} is reserved for the router")
        if kind != need and (need is not None or kind == "command"):
            raise EnvelopeError(f"kind {kind!r} may not be published on {topic} "
                                f"(expects {need or 'anything but command'})")
        env = envmod.make(self.name, self.epoch, self._seq + 1, kind, data, **extra)
        body = env.encode()
        if len(body) > self.router.max_message_bytes:
            raise EnvelopeError(f"{topic}: envelope of {len(body)} bytes is over the router's "
                                f"max_message_bytes ({self.router.max_message_bytes})")
        self._seq += 1
        self.counters["published"] += 1
        if not self._outbox.inflight and not self._outbox.waiting:
            self._last_progress = time.monotonic()
        overflow = self._outbox.add(Entry(env.seq, tframe, body))
        if overflow is not None:
            self._on_overflow(overflow.dropped, overflow.first_seq, overflow.new_episode)
        self._flush()
        return env

    def reply_to(self, command: Envelope, status: str, result: Any = None,
                 error: str = "") -> Envelope | None:
        """Publish the reply to `command` on its reply_to topic."""
        if command.reply_to is None:
            return None
        data = {"status": status, "result": result, "error": error}
        return self.publish(command.reply_to, "reply", data, corr=command.id)

    def _on_overflow(self, dropped: int, first_seq: int, new_episode: bool) -> None:
        """Count and log now; the sys.alarm goes out once the router acknowledges again.

        Published right away it would sit at the tail of a full outbox and be the next thing
        evicted; sent when acks flow again it reaches the router with the episode's totals.
        """
        self.counters["outbox_dropped"] += dropped
        if self._ack_waiters:
            self._settle_waiters(first_seq + dropped - 1, False)
        if new_episode:
            self.counters["alarms"] += 1
            log.warning("%s: outbox full (%d messages / %d bytes): router unreachable or too "
                        "slow; dropping the oldest unacknowledged envelopes from seq %d",
                        self.name, self._outbox.max_messages, self._outbox.max_bytes, first_seq)
            self._alarm = {"alarm": "outbox_overflow", "source": self.name,
                           "first_seq": first_seq, "dropped": 0}
        if self._alarm is not None:
            self._alarm["dropped"] += dropped
            self._alarm["last_seq"] = first_seq + dropped - 1

    def _raise_alarm(self) -> None:
        alarm, self._alarm = self._alarm, None
        if alarm is None:
            return
        alarm["dropped_total"] = self._outbox.dropped_total
        alarm["message"] = (f"{self.name}: outbox overflow dropped {alarm['dropped']} "
                            f"envelope(s), seq {alarm['first_seq']}..{alarm['last_seq']}")
        self.publish(topics.ALARM, "system", alarm)

    def _flush(self) -> None:
        if not self.synced or self._pub is None or self._blocked:
            return
        entry = self._outbox.next_unsent()
        pub = self._pub
        while entry is not None:
            try:
                # XPUB_NODROP refuses at a message's first frame only, never mid-message
                _send(pub, entry.topic, _MORE)
            except zmq.Again:
                self._blocked = True  # pipe full: POLLOUT in pollables() resumes us
                return
            _send(pub, entry.body, _LAST)
            self._outbox.mark_sent()
            self.counters["sent"] += 1
            entry = self._outbox.next_unsent()

    def _probe(self, now: float) -> None:
        assert self._pub is not None
        # One token per sync episode: an answer slower than the probe interval still counts.
        if not self._sync_token:
            self._sync_token = os.urandom(8).hex()
        held = self._outbox.first_seq
        env = envmod.make(self.name, self.epoch, 0, "system", {
            "token": self._sync_token, "next": self._seq + 1 if held is None else held})
        with contextlib.suppress(zmq.Again):
            self._pub.send_multipart((wire.SYNC_TOPIC.encode(), env.encode()), flags=zmq.NOBLOCK)
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

    # ---------------------------------------------------------------- subscribing

    def subscribe(self, prefix: str, *, gapless: bool = True, since: int | None = None) -> None:
        """Deliver messages whose topic matches `prefix` (segment aligned, see broker.topics).

        gapless: every matching message exactly once and in gseq order, from now on (or from
        gseq `since`). Otherwise best effort, filtered by ZeroMQ.
        """
        topics.check_prefix(prefix)
        was_gapless = any(self._subs.values())
        self._subs[prefix] = self._subs.get(prefix, False) or gapless
        if since is not None:
            self._pending_start = since if self._pending_start is None \
                else min(self._pending_start, since)
        if self._sub is not None:
            self._apply_subscriptions()
            if gapless and not was_gapless and self._stream.expected is None \
                    and since is None and self.synced:
                # the answer's head, taken when the probe reaches the router, is the start
                self._awaiting_start = True
                self._sync_token = ""
                self._sync_interval = SYNC_FIRST
                self._probe(time.monotonic())
            self._start_pending()

    def _apply_subscriptions(self) -> None:
        assert self._sub is not None
        if any(self._subs.values()):
            self._sub.setsockopt(zmq.SUBSCRIBE, b"")
            return
        for prefix in (*self._subs, self._reply_topic, self._ack_topic):
            self._sub.setsockopt(zmq.SUBSCRIBE, topics.zmq_prefix(prefix))

    def _start_pending(self) -> None:
        if self._pending_start is not None and self.synced:
            self._stream.start_at(self._pending_start, self.router_epoch, self._origin)
            self._pending_start = None
            self._catching_up = True
            self._request_replay(time.monotonic())

    def _wants(self, topic: str) -> bool:
        return any(topics.matches(topic, p) for p in self._subs)

    # ---------------------------------------------------------------- pumping

    def pollables(self) -> list[tuple[zmq.Socket[bytes], int]]:
        out: list[tuple[zmq.Socket[bytes], int]] = []
        if self._sub is not None:
            out.append((self._sub, zmq.POLLIN))
        if self._dealer is not None:
            out.append((self._dealer, zmq.POLLIN))
        if self._pub is not None:
            out.append((self._pub, zmq.POLLOUT if self._blocked else 0))
        return out

    def handle(self, events: dict[Any, int]) -> list[Delivery]:
        """Process whatever is ready on the bus sockets (non-blocking); deliveries in order."""
        out, self._stash = self._stash, []
        if self._pub is not None and events.get(self._pub, 0) & zmq.POLLOUT:
            self._blocked = False
            self._flush()
        if self._sub is not None and events.get(self._sub, 0) & zmq.POLLIN:
            self._drain_sub(out)
        if self._dealer is not None and events.get(self._dealer, 0) & zmq.POLLIN:
            self._drain_dealer(out)
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
        poller = zmq.Poller()
        for s, flags in self.pollables():
            poller.register(s, flags)
        wait = max(0.0, min(time.monotonic() + timeout, self.next_deadline()) - time.monotonic())
        return self.handle(dict(poller.poll(int(wait * 1000))))

    def next_deadline(self) -> float:
        """Monotonic time by which `tick()` must run again."""
        if self._stash:
            return time.monotonic()  # deliveries from a blocking call wait in the stash
        t = time.monotonic() + 1.0
        if not self.synced or self._awaiting_start:
            t = min(t, self._next_sync)
        elif self._outbox.inflight:
            t = min(t, self._last_progress + self.resend_after)
        if self._requests:
            t = min(t, min(r.next_retry for r in self._requests.values()))
        if self._replay_token is not None:
            t = min(t, self._replay_sent + REPLAY_TIMEOUT)
        return t

    def tick(self) -> None:
        """Timers: sync probes, resends, command retries and deadlines, replay retries."""
        if self._pub is None:
            return
        now = time.monotonic()
        if not self.synced or self._awaiting_start:
            if now >= self._next_sync:
                self._probe(now)
        elif self._outbox.inflight and now - self._last_progress >= self.resend_after:
            self._unsync(f"no ack for {now - self._last_progress:.1f} s")
            self._probe(now)
        self._tick_requests(now)
        if self._replay_token is not None and now - self._replay_sent >= REPLAY_TIMEOUT:
            self._replay_token = None
            self._request_replay(now)

    # ---------------------------------------------------------------- receiving

    def _drain_sub(self, out: list[Delivery]) -> None:
        sub = self._sub
        assert sub is not None
        for _ in range(RECV_BATCH):
            try:
                frames = [_recv(sub, _LAST)]
            except zmq.Again:
                return
            while _get(sub, zmq.RCVMORE):
                frames.append(_recv(sub, 0))
            self._on_frames(frames, out)

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
        if gseq == 0:
            if topic == self._ack_topic:
                self._on_ack(d)
            return
        if any(self._subs.values()):
            if self._stream.expected is None and (not self.synced or self._awaiting_start):
                # the sync answer says where this subscriber starts; replay covers the rest.
                # Replies to our own requests must not wait for that.
                if d.topic == self._reply_topic:
                    self._route(d, out)
                return
            ready = self._stream.on_live(d)
            self._sync_stream_counters()
            if self._stream.wanted() is not None and self._replay_token is None:
                self._request_replay(time.monotonic())
            for item in ready:
                self._route(item, out)
        else:
            self._route(d, out)

    def _on_router_epoch(self, router_epoch: int) -> None:
        if self.router_epoch is not None:
            self.counters["router_restarts"] += 1
            log.warning("%s: router restarted (epoch %d -> %d)", self.name, self.router_epoch,
                        router_epoch)
            self._unsync("router restarted")
        self.router_epoch = router_epoch

    def _route(self, d: Delivery, out: list[Delivery]) -> None:
        if d.topic == self._reply_topic and self._requests:
            try:
                env = d.envelope
            except EnvelopeError:
                self.counters["bad_frames"] += 1
                return
            req = self._requests.get(env.corr or "")
            if req is not None and env.kind == "reply":
                self._finish(req, reply=env)
                return
        if self._wants(d.topic):
            self.counters["delivered"] += 1
            out.append(d)

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
        if data.get("epoch") == self.epoch and isinstance(data.get("seq"), int):
            self._ack(data["seq"])
        if data.get("sync") == self._sync_token:
            self._on_synced(data)

    def _ack(self, seq: int) -> None:
        released = self._outbox.ack(seq)
        if released:
            self.counters["acked"] += released
            self._last_progress = time.monotonic()
            if self._alarm is not None:
                self._raise_alarm()
            self._settle_waiters(self._outbox.acked, True)

    def on_acked(self, seq: int, callback: Callable[[bool], object]) -> None:
        """Call `callback(True)` once the router has journaled our envelope `seq` (at once if
        it already has), or `callback(False)` if the outbox dropped it on overflow or the Bus
        closed first. Runs on the Bus's thread, inside poll()/handle()."""
        if seq <= self._outbox.acked:
            _call(callback, True)
        else:
            self._ack_waiters.setdefault(seq, []).append(callback)

    def _settle_waiters(self, upto: int, ok: bool) -> None:
        for seq in [s for s in self._ack_waiters if s <= upto]:
            for callback in self._ack_waiters.pop(seq):
                _call(callback, ok)

    def _on_synced(self, data: dict[str, Any]) -> None:
        was_synced, self.synced = self.synced, True
        self._awaiting_start = False
        self._sync_token = ""  # answered: a duplicate answer must not count twice
        self.router_epoch = data.get("router_epoch", self.router_epoch)
        self._origin = data.get("origin", self._origin)
        head = data.get("head", 0)
        if any(self._subs.values()) and self._stream.expected is None \
                and self._pending_start is None:
            self._stream.start_at(int(head) + 1, self.router_epoch, self._origin)
        elif self._stream.origin is None and self._stream.router_epoch == self.router_epoch:
            self._stream.origin = self._origin
        if not was_synced:
            resent = self._outbox.rewind()
            self.counters["resent"] += resent
            self._last_progress = time.monotonic()
            log.debug("%s: synced with router epoch %s, head %s, resending %d", self.name,
                      self.router_epoch, head, resent)
            self._flush()
            for req in self._requests.values():
                req.next_retry = 0.0  # re-send commands promptly after a (re)sync
        self._start_pending()

    # ---------------------------------------------------------------- replay

    def _request_replay(self, now: float) -> None:
        """Ask for the missing range (or, catching up after `since`, for everything new)."""
        span = self._stream.wanted()
        start = self._stream.expected
        if start is None or self._dealer is None or (span is None and not self._catching_up):
            return
        self._replay_seq += 1
        self._replay_token = f"r{self._replay_seq}".encode()
        self._replay_sent = now
        req: dict[str, Any] = {"op": wire.OP_SINCE, "gseq": start,
                               "reason": "since" if self._catching_up else "gap",
                               "prefixes": sorted({*self._subs, self._reply_topic})}
        if span is not None:
            req["until"] = span[1]
        self._dealer.send_multipart((self._replay_token, wire.pack(req)))

    def _drain_dealer(self, out: list[Delivery]) -> None:
        assert self._dealer is not None
        for _ in range(RECV_BATCH):
            try:
                frames = self._dealer.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) < 2 or not frames[0].startswith(b"r"):
                continue  # not an answer to a replay of ours
            current = frames[0] == self._replay_token
            if current:
                self._replay_token = None
            try:
                header, items = parse_reply(frames[1:])
            except BusError as exc:
                log.warning("%s: bad replay answer: %s", self.name, exc)
                continue
            self._on_replay(header, items, out, current)

    def _on_replay(self, header: dict[str, Any], items: list[Delivery],
                   out: list[Delivery], current: bool) -> None:
        """Merge a replay answer. A late answer (to a request already re-asked) still gives
        its entries, but its `next` and the evicted count are left to the current request."""
        if not header.get("ok"):
            log.warning("%s: replay refused by the router: %s", self.name, header.get("error"))
            return
        if not current:
            ready = self._stream.on_replay(items, 0, 0)
            self._sync_stream_counters()
            for item in ready:
                self._route(item, out)
            return
        first = int(header.get("first", 1) or 1)
        expected = self._stream.expected or first
        evicted = max(0, first - expected) if header.get("evicted") else 0
        if evicted:
            log.warning("%s: %d message(s) were evicted from the router journal before this "
                        "subscriber could fetch them — lost to it", self.name, evicted)
        ready = self._stream.on_replay(items, int(header.get("next", 0)), evicted,
                                       header.get("router_epoch"), header.get("origin"), first)
        self._sync_stream_counters()
        for item in ready:
            self._route(item, out)
        if not header.get("more"):
            self._catching_up = False
        self._awaiting_start = False  # a start probe for a new gapless subscription is out
        self._request_replay(time.monotonic())

    def _sync_stream_counters(self) -> None:
        s = self._stream
        self.counters["gaps"] = s.gaps
        self.counters["gap_filled"] = s.filled
        self.counters["lost"] = s.lost
        self.counters["duplicates"] = s.duplicates
        self.counters["resets"] = s.resets

    # ---------------------------------------------------------------- queries

    def query(self, request: dict[str, Any],
              timeout: float = QUERY_TIMEOUT) -> tuple[dict[str, Any], list[Delivery]]:
        """Blocking request on the query socket (its own DEALER, so replays are undisturbed)."""
        s: zmq.Socket[bytes] = self._ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        try:
            s.connect(self.router.connect_url("query"))
            s.send_multipart((b"q", wire.pack(request)))
            if not s.poll(int(timeout * 1000)):
                raise BusError(f"router query socket {self.router.connect_url('query')} did not "
                               f"answer within {timeout:g} s — is the router running?")
            frames = s.recv_multipart()
        finally:
            s.close(0)
        header, items = parse_reply(frames[1:])
        if not header.get("ok"):
            raise BusError(f"router refused {request.get('op')}: {header.get('error')}")
        return header, items

    def state(self, timeout: float = QUERY_TIMEOUT) -> dict[str, Any]:
        header, _ = self.query({"op": wire.OP_STATE}, timeout)
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
        req = Request(id=envmod.new_id(), actor=topics.check_name(actor, "actor"),
                      command=command, data=data, deadline=time.time() + timeout,
                      callback=callback, expires=time.monotonic() + timeout)
        self._requests[req.id] = req
        self.counters["requests"] += 1
        self._send_request(req, time.monotonic())
        return req

    def _send_request(self, req: Request, now: float) -> None:
        self.publish(topics.command(req.actor), "command", req.data, id=req.id,
                     reply_to=self._reply_topic, deadline=req.deadline)
        req.next_retry = now + min(RETRY_MAX, RETRY_FIRST * 2**req.retries)

    def _tick_requests(self, now: float) -> None:
        for req in list(self._requests.values()):
            if now >= req.expires:
                self.counters["request_timeouts"] += 1
                self._finish(req, error=f"no reply from {req.actor} to {req.command!r} within "
                                        f"{now - req.started:.1f} s")
            elif now >= req.next_retry and self.synced:
                req.retries += 1
                self.counters["request_retries"] += 1
                self._send_request(req, now)

    def _finish(self, req: Request, reply: Envelope | None = None,
                error: str | None = None) -> None:
        self._requests.pop(req.id, None)
        req.reply, req.error = reply, error
        if req.callback is not None:
            try:
                req.callback(req)
            except Exception:  # runs inside handle(): must not cost the batch's deliveries
                log.exception("%s: callback of request %s (%s %s) failed", self.name, req.id,
                              req.actor, req.command)

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

    @property
    def outbox_size(self) -> int:
        return len(self._outbox)



def parse_reply(frames: list[bytes]) -> tuple[dict[str, Any], list[Delivery]]:
    """Split a query answer into its header map and (topic, body, stamp) entries."""
    if not frames:
        raise BusError("empty answer from the query socket")
    header = wire.unpack_map(frames[0], "query answer header")
    rest = frames[1:]
    if len(rest) % 3:
        raise BusError(f"query answer has {len(rest)} entry frames, not a multiple of 3")
    items: list[Delivery] = []
    for i in range(0, len(rest), 3):
        try:
            epoch, gseq = envmod.unpack_stamp(rest[i + 2])
            items.append(Delivery(rest[i].decode(), rest[i + 1], epoch, gseq))
        except (UnicodeDecodeError, EnvelopeError) as exc:
            raise BusError(f"bad entry in query answer: {exc}") from None
    return header, items
