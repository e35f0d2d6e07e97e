"""What ``sctl alerts`` sends, and the two rules that decide when: episodes and the rate limit.
Pure: clocks are passed in, so the tests need no sleeps.

**Episodes.** An alert belongs to an episode named by its `key` (``outbox_overflow:reader1``,
``program:psu1``, ``link:reader1``, ``restart:psu1``). The first occurrence opens it and is
sent (state ``open``); repeats while it is open are only counted; its end is sent once (state
``resolved``, with the count and the duration). An episode ends when its cause says so (a link
up again, the watchdog's alarm cleared) or, for causes that never say so (an alarm such as
``ingress_lost`` is one message, restarts are single events), after ``resolve_after`` seconds
without a repeat. Both notices of an episode carry the same `id` (``key@opened``).

**Rate limit.** Per receiver, at most ``max_per_minute`` episodes are opened per minute (a
token bucket holding a minute's worth, refilled continuously). An ``open`` notice over the
limit is not sent, nor later its ``resolved``; they are counted, and once a token is free one
``summary`` notice says how many were held back and which. A ``resolved`` notice of an episode
whose ``open`` went out is never held back: a receiver must not keep an incident open forever.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final

OPEN: Final = "open"
RESOLVED: Final = "resolved"
INFO: Final = "info"
SUMMARY: Final = "summary"  # the rate limit's notice: its kind, sent whatever a receiver's kinds
TEST: Final = "test"  # `sctl alerts --test`
SUPPRESSED_KEYS_SHOWN: Final = 10
SUPPRESSED_IDS_MAX: Final = 10_000


@dataclass(frozen=True)
class Alert:
    """One notice. `time` and `opened` are Unix times; `count`: occurrences in the episode."""

    id: str
    key: str
    kind: str  # alarm | link_down | restart | summary | test
    state: str  # open | resolved | info
    severity: str  # critical | error | warning | notice | info
    source: str  # the actor or program concerned
    title: str  # one line
    opened: float
    time: float
    count: int = 1
    data: Mapping[str, Any] = field(default_factory=dict)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def alert_json(alert: Alert, site: str, host: str) -> dict[str, Any]:
    """The JSON document of an alert (the webhook's body; the e-mail's details)."""
    return {"id": alert.id, "key": alert.key, "kind": alert.kind, "state": alert.state,
            "severity": alert.severity, "source": alert.source, "title": alert.title,
            "opened": iso(alert.opened), "time": iso(alert.time), "count": alert.count,
            "site": site, "host": host, "data": dict(alert.data)}


@dataclass
class _Episode:
    alert: Alert  # the open notice
    last: float  # monotonic time of the last occurrence
    count: int
    quiet: bool  # ends after resolve_after without a repeat


class Episodes:
    """The open episodes, by key."""

    def __init__(self, resolve_after: float) -> None:
        self.resolve_after = resolve_after
        self._open: dict[str, _Episode] = {}

    def keys(self) -> list[str]:
        return list(self._open)

    def is_open(self, key: str) -> bool:
        return key in self._open

    def occur(self, alert: Alert, now: float, *, quiet: bool, count: int = 1) -> Alert | None:
        """An occurrence of `alert.key`: the open notice when it starts an episode, else None
        (counted). `now` is monotonic; `alert.time` the Unix time of the occurrence."""
        episode = self._open.get(alert.key)
        if episode is not None:
            episode.count += count
            episode.last = now
            return None
        opened = replace(alert, id=f"{alert.key}@{alert.time:.3f}", opened=alert.time,
                         state=OPEN, count=max(1, count))
        self._open[alert.key] = _Episode(opened, now, opened.count, quiet)
        return opened

    def resolve(self, key: str, why: str, wall: float) -> Alert | None:
        """End the episode `key`: its resolved notice, or None when none is open."""
        episode = self._open.pop(key, None)
        if episode is None:
            return None
        first = episode.alert
        duration = wall - first.opened
        return replace(first, state=RESOLVED, severity="notice", time=wall,
                       count=episode.count, title=f"resolved: {first.title} ({why})",
                       data={**first.data, "why": why, "duration": round(duration, 3)})

    def expire(self, now: float, wall: float) -> list[Alert]:
        """Resolve the quiet episodes with no occurrence for `resolve_after` seconds."""
        due = [k for k, e in self._open.items()
               if e.quiet and now - e.last >= self.resolve_after]
        out = []
        for key in due:
            ended = self.resolve(key, f"no repeat for {self.resolve_after:g} s", wall)
            if ended is not None:
                out.append(ended)
        return out


class Limiter:
    """One receiver's rate limit (module doc). `now` is monotonic."""

    def __init__(self, per_minute: int, now: float) -> None:
        self.capacity = float(per_minute)
        self.tokens = self.capacity
        self._stamp = now
        self._held: dict[str, None] = {}  # ids of episodes whose open notice was held back
        self.pending: list[str] = []  # keys held back since the last summary
        self.suppressed = 0  # total held back

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity,
                          self.tokens + (now - self._stamp) * self.capacity / 60.0)
        self._stamp = now

    def admit(self, alert: Alert, now: float) -> bool:
        self._refill(now)
        if alert.state == RESOLVED:
            if alert.id in self._held:
                del self._held[alert.id]
                return False
            return True
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self._held[alert.id] = None
        while len(self._held) > SUPPRESSED_IDS_MAX:
            del self._held[next(iter(self._held))]
        self.pending.append(alert.key)
        self.suppressed += 1
        return False

    def summary(self, now: float, wall: float) -> Alert | None:
        """The notice about what was held back, once a token is free; else None."""
        self._refill(now)
        if not self.pending or self.tokens < 1.0:
            return None
        self.tokens -= 1.0
        keys, self.pending = self.pending, []
        shown = ", ".join(keys[:SUPPRESSED_KEYS_SHOWN]) + (" ..." if len(keys) >
                                                           SUPPRESSED_KEYS_SHOWN else "")
        title = (f"{len(keys)} alert(s) not sent: more than {self.capacity:g} a minute "
                 f"({shown})")
        return Alert(id=f"summary@{wall:.3f}", key=SUMMARY, kind=SUMMARY, state=INFO,
                     severity="warning", source="alerts", title=title, opened=wall, time=wall,
                     count=len(keys), data={"held_back": keys})
