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
