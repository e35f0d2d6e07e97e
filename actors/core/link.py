"""The device-link state machine and its reconnect backoff, without I/O.

States and the transitions allowed between them (one table, `TRANSITIONS`)::

    idle ──► connecting ──► up ──► down ──► connecting ...
      │           │                ▲  │
      │           └────────────────┘  └──► up     (a library that reconnects by itself)
      └──► up / down

``idle`` is the state before the first attempt (and of actors without a device link). Asking for
the current state again is a no-op (`Link.change` returns None), so a subclass may call
``link_down`` from several error paths. Anything else not in the table is a bug in the subclass:
`LinkStateError`.

Backoff: the delay before attempt n (n = 0, 1, ...) is drawn uniformly from
``[max(minimum, base / 2), base]`` with ``base = min(maximum, minimum * 2**n)``: exponential,
jittered so that many actors losing one network do not reconnect in lockstep, never below
``minimum`` nor above ``maximum``. The attempt counter is reset only when a link goes down after
having been up for at least ``stable_after`` seconds, so a device that accepts and then closes at
once backs off like one that refuses.

An outage is one span from the first failure to the next ``up``, however many attempts it
takes: `Link.down_since` is the time of that first failure, `Link.down_attempts` the connection
attempts made since the link was last up, `Link.last_error` the latest failure's reason. They
go into heartbeats, so an operator sees "down since 14:02:11, 37 attempts, last: connection
refused" rather than a state whose age starts over at every attempt.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Final

from broker.wire.errors import SctlError

IDLE: Final = "idle"
CONNECTING: Final = "connecting"
UP: Final = "up"
DOWN: Final = "down"
TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    IDLE: frozenset({CONNECTING, UP, DOWN}),
    CONNECTING: frozenset({UP, DOWN}),
    UP: frozenset({DOWN}),
    DOWN: frozenset({CONNECTING, UP}),
}


class LinkStateError(SctlError):
    """A transition the state machine does not allow (a bug in the actor, not the device)."""


class Backoff:
    """Jittered exponential backoff between `minimum` and `maximum` seconds."""

    def __init__(self, minimum: float, maximum: float, rng: random.Random | None = None) -> None:
        if not 0 < minimum <= maximum:
            raise ValueError(f"backoff needs 0 < minimum <= maximum, got {minimum}, {maximum}")
        self.minimum = minimum
        self.maximum = maximum
        self.attempt = 0  # delays handed out since the last reset
        self._rng = rng or random.Random()

    def peek_base(self) -> float:
        """The upper bound of the next delay."""
        # Cap the exponent: 2**1100 overflows a float long after the delay reached `maximum`.
        return min(self.maximum, self.minimum * 2.0 ** min(self.attempt, 64))

    def next_delay(self) -> float:
        base = self.peek_base()
        self.attempt += 1
        return self._rng.uniform(max(self.minimum, base / 2), base)

    def reset(self) -> None:
        self.attempt = 0


@dataclass(frozen=True, slots=True)
class LinkChange:
    """One transition, as published on ``evt.<actor>.link``."""

    state: str
    previous: str
    reason: str
    since: float  # Unix time the new state began
    attempt: int  # connection attempts since the link was last stable
    retry_in: float | None  # seconds until the next attempt, when one is scheduled
    down_since: float | None = None  # first failure of the current outage (None: not in one)

    def to_data(self) -> dict[str, Any]:
        return {"state": self.state, "previous": self.previous, "reason": self.reason,
                "since": self.since, "attempt": self.attempt, "retry_in": self.retry_in,
                "down_since": self.down_since}


class Link:
    """Current link state plus the backoff that paces reconnects.

    `change` takes the wall-clock time (for ``since``) and a monotonic time (to measure how long
    the link stayed up); both are passed in so tests need no clock.
    """

    def __init__(self, backoff: Backoff, stable_after: float) -> None:
        self.backoff = backoff
        self.stable_after = stable_after
        self.state = IDLE
        self.reason = ""
        self.since = 0.0
        self._since_mono = 0.0
        self.attempts = 0  # connection attempts since the link was last stable
        self.down_since: float | None = None  # first failure since the link was last up
        self.down_attempts = 0  # connection attempts since the link was last up
        self.last_error = ""  # reason of the latest failure

    def change(self, state: str, reason: str, now: float, mono: float,
               retry: bool = False) -> LinkChange | None:
        """Move to `state`; None when already there. With `retry` (only for DOWN) a backoff
        delay is drawn and reported as ``retry_in``; the caller schedules the attempt."""
        if state == self.state:
            return None
        if state not in TRANSITIONS[self.state]:
            raise LinkStateError(f"link cannot go from {self.state} to {state} ({reason})")
        if state == DOWN and self.state == UP and mono - self._since_mono >= self.stable_after:
            self.backoff.reset()
            self.attempts = 0
        if state == CONNECTING:
            self.attempts += 1
            self.down_attempts += 1
        elif state == UP:
            self.down_since, self.down_attempts = None, 0
        elif state == DOWN:
            self.last_error = reason
            if self.down_since is None:
                self.down_since = now
        retry_in = self.backoff.next_delay() if retry and state == DOWN else None
        previous = self.state
        self.state, self.reason, self.since, self._since_mono = state, reason, now, mono
        return LinkChange(state, previous, reason, now, self.attempts, retry_in,
                          self.down_since)

    def to_data(self) -> dict[str, Any]:
        """The link as shown in heartbeats and ``ping``: the state and since when, and while
        an outage lasts its first failure, the attempts since and the latest failure's
        reason (``down_since`` None: not in an outage)."""
        return {"state": self.state, "since": self.since, "reason": self.reason,
                "down_since": self.down_since, "attempts": self.down_attempts,
                "last_error": self.last_error}
