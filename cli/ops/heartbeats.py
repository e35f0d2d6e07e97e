"""Operator-side questions answered from the router's journal: who is alive, and why no reply.

Heartbeats (`hb.<actor>`) carry ``data.interval``; a heartbeat older than `STALE_FACTOR` intervals
means the actor is not running (or cannot reach the router), and one saying ``state = stopping``
was its last. Ages use the sender's clock: across hosts, keep clocks in sync (NTP). Used by
``sctl send``, ``sctl status`` and ``sctl ping``; knows nothing of what the actors drive.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Final

from broker.client.bus import Bus
from broker.wire import protocol, topics
from broker.wire.errors import BusError, EnvelopeError

STALE_FACTOR: Final = 3.0
DEFAULT_INTERVAL: Final = 1.0


@dataclass(frozen=True)
class Heartbeat:
    actor: str
    age: float  # seconds since it was sent
    data: dict[str, Any]

    @property
    def alive(self) -> bool:
        """Fresh and not the last words of an actor that stopped (state "stopping")."""
        return not self.stale and self.data.get("state") != "stopping"

    @property
    def stale(self) -> bool:
        interval = self.data.get("interval", DEFAULT_INTERVAL)
        if not isinstance(interval, int | float) or interval <= 0:
            interval = DEFAULT_INTERVAL
        return self.age > STALE_FACTOR * float(interval)


def heartbeats(bus: Bus, timeout: float = 2.0) -> dict[str, Heartbeat]:
    """The newest heartbeat of every actor the journal still holds one for."""
    _, items = bus.query({"op": protocol.OP_LAST, "prefixes": [topics.HEARTBEAT + "."]}, timeout)
    now = time.time()
    out: dict[str, Heartbeat] = {}
    for d in items:
        try:
            env = d.envelope
        except EnvelopeError:
            continue
        name = d.topic.split(".", 1)[1] if "." in d.topic else d.topic
        out[name] = Heartbeat(name, max(0.0, now - env.ts), env.data)
    return out


def age_text(seconds: float | None) -> str:
    """A short age: 42s, 17m, 5h, 3d ("-" for None)."""
    if seconds is None:
        return "-"
    s = int(max(0.0, seconds))
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h" \
        if s < 172800 else f"{s // 86400}d"


def clock_text(ts: float, now: float) -> str:
    """A wall-clock time in this host's zone: 14:02:11 today, else 2026-05-08 14:02."""
    t, today = time.localtime(ts), time.localtime(now)
    if t[:3] == today[:3]:
        return time.strftime("%H:%M:%S", t)
    return time.strftime("%Y-%m-%d %H:%M", t)


def link_text(link: dict[str, Any] | None, now: float) -> str:
    """A heartbeat's link as an operator reads it: ``up 3m``; during an outage ``down since
    14:02:11, 37 attempts, last: connection refused`` (its first failure, not the latest
    attempt); ``connecting`` before the first failure; ``-`` without a link."""
    if not link:
        return "-"
    state = str(link.get("state") or "?")
    since = link.get("since")
    if state == "up":
        return f"up {age_text(now - since)}" if isinstance(since, int | float) and since \
            else "up"
    if state == "idle":
        return "idle"
    down_since = link.get("down_since")
    if not isinstance(down_since, int | float):  # a heartbeat without outage fields
        text = f"{state} {age_text(now - since)}" if isinstance(since, int | float) and since \
            else state
        reason = link.get("reason")
        return f"{text}, last: {reason}" if reason and state == "down" else text
    parts = [f"down since {clock_text(down_since, now)}"]
    attempts = link.get("attempts")
    if isinstance(attempts, int) and attempts:
        parts.append(f"{attempts} attempt{'s' if attempts != 1 else ''}")
    if link.get("last_error"):
        parts.append(f"last: {link['last_error']}")
    return ", ".join(parts)


def link_ok(link: dict[str, Any] | None) -> bool:
    """Up, or an actor without a device link (idle)."""
    return not link or link.get("state") in ("up", "idle")


def explain_silence(bus: Bus, actor: str, command: str, waited: float) -> str:
    """Say why `actor` did not answer `command`: not running, stale, or running but silent."""
    try:
        hb = heartbeats(bus, timeout=1.0).get(actor)
    except BusError as exc:
        return f"{actor}: no reply to {command!r} in {waited:.1f} s, and the router does not " \
               f"answer queries either ({exc})"
    if hb is None:
        return f"{actor}: no reply to {command!r} in {waited:.1f} s; no heartbeat from it on " \
               f"the bus — is it running? (sctl status)"
    if hb.stale:
        return f"{actor}: no heartbeat for {hb.age:.0f} s — is it running? (sctl status)"
    if not hb.alive:
        return f"{actor}: stopped {hb.age:.0f} s ago (its last heartbeat said so) — " \
               f"is it being restarted? (sctl status)"
    return f"{actor} is running (heartbeat {hb.age:.1f} s ago) but did not answer " \
           f"{command!r} within {waited:.1f} s"
