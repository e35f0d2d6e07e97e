"""The receiving half of a Bus: subscriptions and gap-free egress.

Best-effort subscriptions (``gapless=False``) are ZeroMQ prefix filters; their messages are
routed at once. Once any subscription is gapless the SUB socket takes the whole feed instead,
since a filter would hide the gaps: `Stream` checks gseq continuity and orders, and the topic
filter is applied after ordering (`wants`).

Where a gapless subscriber starts: at the router's head + 1 from the sync answer, or at
``since`` (then it *catches up*: replays until the router says there is no ``more``). Until the
start is known, live messages are dropped, as the replay from the start will bring them; only
replies to this client's own commands are routed at once, a command round trip must not wait.

Replays go over the Bus's DEALER to the query socket as ``since`` requests, one at a time, each
with a fresh token (``r1``, ``r2`` ...): the missing range (reason ``gap``) or, catching up,
everything new (reason ``since``). An unanswered request is asked again after
``REPLAY_TIMEOUT``; should the old answer still come, its entries are used (the `Stream` drops
duplicates) but its ``next`` and evicted count are not, they belong to the current request.
Entries evicted from the router's journal before they could be fetched are lost to this
subscriber: counted and logged, never skipped silently.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, Final, cast

import zmq

from broker.client.delivery import ZERO_COPY_MIN, Delivery, parse_reply
from broker.client.requests import Requests
from broker.client.stream import Stream
from broker.wire import protocol, topics
from broker.wire.errors import BusError, EnvelopeError

log = logging.getLogger(__name__)

REPLAY_TIMEOUT: Final = 5.0  # re-ask after this; a late answer is still used
WANTS_CACHE: Final = 4096  # topics whose subscription match is remembered


class Egress:
    """Subscriptions, the `Stream` and its replays. What comes out in order is routed: replies
    to this client's commands to `requests`, the rest to the caller if a subscription wants it."""

    def __init__(self, name: str, reply_topic: str, counters: dict[str, int],
                 requests: Requests) -> None:
        self.name = name
        self.dealer: zmq.Socket[bytes] | None = None  # opened and closed by the Bus
        self.awaiting_start = False  # a start probe for a new gapless subscription is out
        self._reply_topic = reply_topic
        self._counters = counters  # the Bus's
        self._requests = requests
        self._subs: dict[str, bool] = {}  # prefix -> gapless
        self._gapless = False  # any(self._subs.values()), kept current by `subscribe`
        self._wanted: dict[str, bool] = {}  # topic -> wants(topic), reset by `subscribe`
        self._stream: Stream[Delivery] = Stream()
        self.on_lost: Callable[[dict[str, Any]], object] | None = None  # the Bus's sys.alarm
        self._origin: int | None = None  # router epoch that started the gseq numbering
        self._replay_token: bytes | None = None
        self._replay_sent = 0.0
        self._replay_seq = 0
        self._pending_start: int | None = None
        self._catching_up = False

    # ---------------------------------------------------------------- subscriptions

    @property
    def gapless(self) -> bool:
        return self._gapless

    @property
    def prefixes(self) -> list[str]:
        return list(self._subs)

    def wants(self, topic: str) -> bool:
        """Whether a subscription matches `topic`; decided once per topic (per-message path)."""
        wanted = self._wanted.get(topic)
        if wanted is None:
            wanted = any(topics.matches(topic, p) for p in self._subs)
            if len(self._wanted) >= WANTS_CACHE:
                self._wanted.clear()
            self._wanted[topic] = wanted
        return wanted

    def subscribe(self, prefix: str, gapless: bool, since: int | None, live: bool) -> bool:
        """Add `prefix` (checked by the caller). True if the Bus, connected and synced (`live`),
        must send a start probe: the first gapless subscription starts at the head its
        answer reports, taken when the probe reaches the router."""
        was_gapless = self.gapless
        self._subs[prefix] = self._subs.get(prefix, False) or gapless
        self._gapless = was_gapless or gapless
        self._wanted.clear()
        if since is not None:
            self._pending_start = since if self._pending_start is None \
                else min(self._pending_start, since)
        if gapless and not was_gapless and self._stream.expected is None \
                and since is None and live:
            self.awaiting_start = True
            return True
        return False

    def on_synced(self, data: dict[str, Any], router_epoch: int | None) -> None:
        """A sync answer (`data`): it carries the head a new gapless subscriber starts after."""
        self.awaiting_start = False
        self._origin = data.get("origin", self._origin)
        if self.gapless and self._stream.expected is None and self._pending_start is None:
            self._stream.start_at(int(data.get("head", 0)) + 1, router_epoch, self._origin)
        elif self._stream.origin is None and self._stream.router_epoch == router_epoch:
            self._stream.origin = self._origin

    def start_pending(self, router_epoch: int | None) -> None:
        """Start a ``since`` subscription; only once synced, as it needs the router epoch."""
        if self._pending_start is not None:
            self._stream.start_at(self._pending_start, router_epoch, self._origin)
            self._pending_start = None
            self._catching_up = True
            self._request_replay(time.monotonic())

    # ---------------------------------------------------------------- live feed

    def cursor(self, router_epoch: int | None) -> int:
        """For the fused in-order path of `Bus._drain_sub`: the next gseq in order
        (`Stream.cursor`), -1 when that path may not be taken (with best-effort subscriptions
        only, every message is routed as it comes). A message of `router_epoch` with that gseq
        is what `on_live` would route at once: the caller routes it itself if it is not the
        reply topic (`wants`), counts the cursor on and hands both back to `took`."""
        return self._stream.cursor(router_epoch) if self._gapless else -1

    def took(self, cursor: int, delivered: int) -> None:
        """The caller's batch took everything up to `cursor` and delivered `delivered`."""
        self._stream.advance(cursor)
        self._counters["delivered"] += delivered

    def on_live(self, d: Delivery, out: list[Delivery], synced: bool) -> None:
        if not self._gapless or self._stream.take_next(d):
            # best effort, or the next gseq in order: no gap, no counter changed, no replay
            self._route(d, out)
            return
        if self._stream.expected is None and (not synced or self.awaiting_start):
            # the sync answer says where this subscriber starts; replay covers the rest.
            # Replies to our own requests must not wait for that.
            if d.topic == self._reply_topic:
                self._route(d, out)
            return
        ready = self._stream.on_live(d)
        self._sync_counters()
        if self._stream.wanted() is not None and self._replay_token is None:
            self._request_replay(time.monotonic())
        for item in ready:
            self._route(item, out)

    def _route(self, d: Delivery, out: list[Delivery]) -> None:
        if d.topic == self._reply_topic and self._requests:
            try:
                env = d.envelope
            except EnvelopeError:
                self._counters["bad_frames"] += 1
                return
            if self._requests.on_reply(env):
                return
        if self.wants(d.topic):
            self._counters["delivered"] += 1
            out.append(d)

    def _sync_counters(self) -> None:
        s = self._stream
        if s.lost > self._counters.get("lost", 0) and self.on_lost is not None:
            # one alarm per replay answer (or router reset) that lost messages: an episode
            self.on_lost({
                "alarm": "subscriber_lost", "source": self.name,
                "lost": s.lost - self._counters.get("lost", 0), "lost_total": s.lost,
                "message": f"{self.name}: {s.lost - self._counters.get('lost', 0)} message(s) "
                           "gone from the router journal (evicted, or a router restart without "
                           "journal) before this subscriber could get them"})
        self._counters["gaps"] = s.gaps
        self._counters["gap_filled"] = s.filled
        self._counters["lost"] = s.lost
        self._counters["duplicates"] = s.duplicates
        self._counters["resets"] = s.resets
        self._counters["held_dropped"] = s.held_dropped  # refetched from the journal

    # ---------------------------------------------------------------- replay

    def next_deadline(self) -> float:
        """Monotonic time by which `tick` must run; infinity with no replay out."""
        if self._replay_token is None:
            return math.inf
        return self._replay_sent + REPLAY_TIMEOUT

    def tick(self, now: float) -> None:
        if self._replay_token is not None and now - self._replay_sent >= REPLAY_TIMEOUT:
            self._replay_token = None
            self._request_replay(now)

    def _request_replay(self, now: float) -> None:
        """Ask for the missing range (or, catching up after `since`, for everything new)."""
        span = self._stream.wanted()
        start = self._stream.expected
        if start is None or self.dealer is None or (span is None and not self._catching_up):
            return
        self._replay_seq += 1
        self._replay_token = f"r{self._replay_seq}".encode()
        self._replay_sent = now
        req: dict[str, Any] = {"op": protocol.OP_SINCE, "gseq": start,
                               "reason": "since" if self._catching_up else "gap",
                               "prefixes": sorted({*self._subs, self._reply_topic})}
        if span is not None:
            req["until"] = span[1]
        self.dealer.send_multipart((self._replay_token, protocol.pack(req)))

    def drain(self, out: list[Delivery], batch: int) -> None:
        """Take up to `batch` answers from the DEALER (a bound keeps the sockets fair)."""
        assert self.dealer is not None
        for _ in range(batch):
            try:
                got = self.dealer.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            # As on the live path, a big body stays a view of its frame (`ZERO_COPY_MIN`); only
            # topics, stamps and headers, all small, are read as bytes.
            frames = [f.bytes if len(f) < ZERO_COPY_MIN else cast(bytes, f.buffer) for f in got]
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
            self._sync_counters()
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
        self._sync_counters()
        for item in ready:
            self._route(item, out)
        if not header.get("more"):
            self._catching_up = False
        self.awaiting_start = False  # the stream has its start: the start probe is moot
        self._request_replay(time.monotonic())
