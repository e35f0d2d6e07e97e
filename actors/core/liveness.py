"""Which actors are known to be down, judged from their heartbeats, so that a command for one
fails at once instead of after its timeout.

The rule is the operator tools' (`sctl send`, `sctl status`): an actor is down when its last
heartbeat (``hb.<actor>``) is older than `STALE_FACTOR` of its own ``interval``, or said
``state = "stopping"`` (its last words). Everything else is "not known to be down", and its
commands go out: refusing is only ever done on evidence.

Evidence needs listening. Heartbeats arrive on a best-effort subscription (``hb.``: cheap, a
ZeroMQ prefix filter, or part of the ordered stream when the Bus has a gap-free subscription
anyway); a lost one only makes an actor look older, and three in a row must be lost before it
counts as down. The actor hears its own heartbeat too, so a silence of every heartbeat longer
than `DEAF_FACTOR` of its own interval means *we* are not hearing (router unreachable, a loop
stall, a gap being fetched): while so, nobody is judged, and when heartbeats come back a new
*listening period* starts. What was learnt before a break is not trusted after it; an actor not
heard in the current period is down only once the period is `STALE_FACTOR` intervals old (its
interval if known, else `DEFAULT_INTERVAL`). So at start-up, and after a router outage, no
command is refused until every actor had three intervals to be heard.

At start `seed` reads the newest heartbeat of every actor from the router's journal (one query),
so that a target already down when we start (stopped, or silent for long) is known at once.
Their ages use the senders' clocks, as ``sctl status`` does (keep hosts in NTP sync); a target
the journal does not know is "never seen" and gets the grace of the listening period.

Time is the caller's clock (`time.monotonic` in actors): every method takes ``now``.
`refusal` is what device actors call: the reason a command must not be sent, counted, and
logged once per episode (an episode ends when the target is heard alive again).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from broker.wire import protocol, topics
from broker.wire.errors import BusError, EnvelopeError

if TYPE_CHECKING:
    from actors.core.actor import Actor
    from broker.client.bus import Delivery

log = logging.getLogger(__name__)

STALE_FACTOR: Final = 3.0  # heartbeat intervals without one: down (as cli.ops.heartbeats)
DEFAULT_INTERVAL: Final = 1.0  # an actor whose interval is unknown (never seen, or none sent)
DEAF_FACTOR: Final = 1.5  # own intervals without any heartbeat: we are not hearing
STOPPING: Final = "stopping"
SEED_TIMEOUT: Final = 1.0  # seconds the start-up journal query may take
COUNTER: Final = "commands_target_down"


@dataclass
class _Seen:
    at: float  # the caller's clock: when heard, or when sent (seeded from the journal)
    wall: float  # Unix time it was sent (for messages)
    interval: float
    state: str
    error: str
    period: int  # the listening period it was learnt in


def _interval(data: Mapping[str, Any]) -> float:
    value = data.get("interval")
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 \
            or not math.isfinite(value):
        return DEFAULT_INTERVAL
    return float(value)


class Liveness:
    """Heartbeats in, ``down(name, now)`` out. `own_interval`: the interval of the owner's own
    heartbeat, which it hears too (`DEAF_FACTOR` of it without any heartbeat: not hearing).
    `owner`: the owner's name (never down to itself); `counters`: where `refusal` counts."""

    def __init__(self, own_interval: float, owner: str = "",
                 counters: dict[str, int] | None = None, counter: str = COUNTER) -> None:
        self.deaf_after = DEAF_FACTOR * own_interval
        self.owner = owner
        self.counters = counters if counters is not None else {}
        self.counter = counter
        self.counters.setdefault(counter, 0)
        self._seen: dict[str, _Seen] = {}
        self._period = 0  # 0: never heard anything
        self._since = math.inf  # start of the current listening period
        self._last_heard = -math.inf
        self._episodes: set[str] = set()  # targets refused since last heard alive

    # --- input -----------------------------------------------------------------------------

    def _listen(self, now: float) -> None:
        """Something was heard at `now`: a new listening period after a silence."""
        if self._period == 0 or now - self._last_heard > self.deaf_after:
            self._period += 1
            self._since = now
        self._last_heard = max(self._last_heard, now)

    def heard(self, name: str, data: Mapping[str, Any], now: float,
              sent: float | None = None) -> None:
        """A heartbeat of `name` (its envelope's data; `sent`: its Unix ts) arrived at `now`."""
        self._listen(now)
        self._record(name, data, now, time.time() if sent is None else sent)

    def seed(self, name: str, data: Mapping[str, Any], age: float, now: float,
             sent: float) -> None:
        """The journal's newest heartbeat of `name`, sent `age` seconds before `now`; the
        journal's answer covers the time before we listened, so it counts as heard now."""
        self._listen(now)
        self._record(name, data, now - max(0.0, age), sent)

    def on_delivery(self, delivery: Delivery, now: float) -> None:
        """A delivery on ``hb.<name>``; others (and undecodable ones) are ignored."""
        name = heartbeat_name(delivery.topic)
        if name is None:
            return
        try:
            env = delivery.envelope
        except EnvelopeError as exc:
            log.debug("liveness: undecodable heartbeat on %s: %s", delivery.topic, exc)
            return
        self.heard(name, env.data, now, env.ts)

    def _record(self, name: str, data: Mapping[str, Any], at: float, sent: float) -> None:
        state = str(data.get("state") or "")
        old = self._seen.get(name)
        if old is not None and old.period == self._period and old.at > at:
            return  # an older heartbeat than the one we have (a seed after a live one)
        error = data.get("error")
        self._seen[name] = _Seen(at, sent, _interval(data), state,
                                 str(error) if error else "", self._period)
        if state != STOPPING and name in self._episodes:
            self._episodes.discard(name)
            log.info("liveness: %s is back (heartbeat, state %s): commands to it go out "
                     "again", name, state or "?")

    # --- questions -------------------------------------------------------------------------

    def down(self, name: str, now: float) -> str | None:
        """Why `name` is known to be down at `now`, or None (alive, or not known)."""
        if name == self.owner or self._period == 0 or now - self._last_heard > self.deaf_after:
            return None  # we are not hearing heartbeats: nothing is known
        seen = self._seen.get(name)
        trusted = seen is not None and seen.period == self._period
        if seen is not None and trusted and seen.state == STOPPING:
            why = f"stopping since {_clock(seen.wall)} (its last heartbeat said so"
            return why + (f": {seen.error})" if seen.error else ")")
        interval = seen.interval if seen is not None else DEFAULT_INTERVAL
        last = seen.at if seen is not None and trusted else self._since
        silence = now - last
        if silence <= STALE_FACTOR * interval:
            return None
        if seen is None:
            return f"never seen since this process started listening {silence:.1f} s ago " \
                   f"(no heartbeat)"
        if not trusted:
            return f"no heartbeat for {silence:.1f} s since heartbeats were heard again " \
                   f"(interval {interval:g} s)"
        return f"no heartbeat for {silence:.1f} s (interval {interval:g} s)"

    def refusal(self, name: str, now: float, what: str = "command") -> str | None:
        """`down`, as the error a refused command gets (``None``: send it). Counts every
        refusal in ``counters[counter]``; logs a WARNING once per episode."""
        reason = self.down(name, now)
        if reason is None:
            return None
        self.counters[self.counter] = self.counters.get(self.counter, 0) + 1
        if name not in self._episodes:
            self._episodes.add(name)
            log.warning("actor %s: %s is down (%s): its %ss fail at once until it is heard "
                        "again (counted in %s)", self.owner or "?", name, reason, what,
                        self.counter)
        return f"{name} is down: {reason}; {what} not sent"


def heartbeat_name(topic: str) -> str | None:
    """``hb.door1`` → ``door1``; None for any other topic."""
    head = topics.HEARTBEAT + "."
    if not topic.startswith(head) or len(topic) == len(head) or "." in topic[len(head):]:
        return None
    return topic[len(head):]


def _clock(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def track(actor: Actor, clock: Callable[[], float] = time.monotonic) -> Liveness:
    """A `Liveness` for `actor`, fed by a best-effort ``hb.`` subscription and seeded from the
    journal (`SEED_TIMEOUT`; without an answer it starts empty). Call from `on_start`; ask
    ``refusal(target, clock())`` before sending a command on someone's behalf."""
    tracker = Liveness(actor.config["heartbeat_interval"], actor.name, actor.counters)
    actor.subscribe(topics.HEARTBEAT + ".",
                    lambda d: tracker.on_delivery(d, clock()), gapless=False)
    if actor.bus.synced:
        try:
            _, items = actor.bus.query(
                {"op": protocol.OP_LAST, "prefixes": [topics.HEARTBEAT + "."]}, SEED_TIMEOUT)
        except BusError as exc:
            log.info("actor %s: newest heartbeats not read from the journal (%s): targets are "
                     "judged once they have had three intervals to be heard", actor.name, exc)
            return tracker
        now, wall = clock(), time.time()
        for d in items:
            name = heartbeat_name(d.topic)
            try:
                env = d.envelope
            except EnvelopeError:
                continue
            if name is not None:
                tracker.seed(name, env.data, wall - env.ts, now, env.ts)
    return tracker
