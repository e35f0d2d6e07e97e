"""Leases: at most one live incarnation per bus name, decided by the router.

A lease ties a bus name (an actor's ``src``) to one incarnation of it, its ``epoch``. The router
is the one place every instance of a name must pass through (its commands arrive through it, its
write-ahead "started" record must be journaled by it before a command runs), so the router is
where the name is held:

- ``claim(name, epoch, host, pid, ttl)`` (a query op) grants the name when it is free, when its
  lease expired, or when that epoch already holds it (a renewal); otherwise it is refused with
  the holder (host, pid, since, epoch), and the claimant exits.
- Traffic renews: every (src, epoch) pair an ingress batch touched extends that pair's lease by
  its ttl (`renew`). An actor's heartbeats alone keep its lease (ttl = 3 heartbeat intervals).
- A lease not renewed for its ttl expires (`expire`). The expired lease is kept aside as
  *lapsed* until another epoch claims the name: if the old holder's traffic comes back first
  (a host that was cut off for longer than the ttl, nobody started elsewhere), it regains the
  name instead of running without one.
- ``release(name, epoch)`` (a clean stop) frees the name at once.
- A claim may *replace* a live lease whose holder died on the claimant's own machine (same
  kernel boot and pid namespace, ``machine``; the claimant found the holder's pid gone): a
  restart right after a ``kill -9`` need not wait out the dead holder's ttl. Only a claimant
  on that machine can see that pid, so nobody else may replace it.
- Fencing: while a name is held, the router refuses every sequenced message of that src from
  any other epoch (`Router._fenced`): not journaled, not forwarded, its seq not used up. A
  fenced instance's "started" records never become durable, so it runs no command, and it is
  told so on ``ack.<src>`` and exits.

Every change of holder takes a new `generation` (a fencing token, increasing for the life of
the table); with the router epoch it names one grant site-wide. Events (granted, refused,
released, expired, regained) are returned to the caller, which journals them on
``sys.router.lease``.

The table lives in router memory only: after a router restart it is empty and holders claim
again (docs/leases.md has the failure analysis). Nothing here does I/O and time is passed in
(``now`` is monotonic, ``wall`` is Unix time for display), so tests need no sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

MIN_TTL: Final = 0.2
MAX_TTL: Final = 3600.0
MAX_LAPSED: Final = 10_000  # lapsed leases remembered; the oldest is forgotten beyond

SourceKey = tuple[str, int]


@dataclass
class Lease:
    name: str
    epoch: int
    host: str
    pid: int
    since: float  # Unix time of the grant
    ttl: float
    expires: float  # monotonic
    generation: int
    machine: str = ""  # kernel boot and pid namespace of the holder ("" unknown)

    def holder(self, now: float | None = None) -> dict[str, Any]:
        """The holder as clients see it (in refusals, fenced acks, the ``leases`` table)."""
        out: dict[str, Any] = {"name": self.name, "epoch": self.epoch, "host": self.host,
                               "pid": self.pid, "since": self.since, "ttl": self.ttl,
                               "generation": self.generation}
        if self.machine:
            out["machine"] = self.machine
        if now is not None:
            out["expires_in"] = round(self.expires - now, 3)
        return out


@dataclass(frozen=True)
class LeaseEvent:
    """One change (or refusal) to publish on ``sys.router.lease``."""

    event: str  # granted, refused, released, expired, regained, replaced
    lease: Lease  # the lease concerned: for "refused", the holder
    claimant: dict[str, Any] | None = None  # refused: who asked
    previous: dict[str, Any] | None = None  # granted over an expired lease: its last holder

    def data(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.event, **self.lease.holder()}
        if self.claimant is not None:
            out["claimant"] = self.claimant
        if self.previous is not None:
            out["previous"] = self.previous
        return out

    def text(self) -> str:
        """One log line."""
        h = self.lease
        where = f"{h.name} epoch {h.epoch} on {h.host} pid {h.pid}"
        if self.event == "refused" and self.claimant is not None:
            c = self.claimant
            return (f"lease of {h.name} refused to epoch {c.get('epoch')} on {c.get('host')} "
                    f"pid {c.get('pid')}: held by epoch {h.epoch} on {h.host} pid {h.pid}")
        return f"lease {self.event}: {where} (generation {h.generation}, ttl {h.ttl:g} s)"


@dataclass(frozen=True)
class Claim:
    granted: bool
    lease: Lease  # the holder after the claim (the claimant when granted)
    events: tuple[LeaseEvent, ...]  # to publish; empty for a plain renewal


class LeaseTable:
    """name -> Lease. `held` (name -> holder epoch) is what the router's hot path reads."""

    def __init__(self) -> None:
        self.held: dict[str, int] = {}
        self.generation = 0
        self._leases: dict[str, Lease] = {}
        self._lapsed: dict[str, Lease] = {}  # expired, nobody else claimed since
        self._next_expiry = float("inf")

    def __bool__(self) -> bool:
        return bool(self._leases or self._lapsed)

    def __len__(self) -> int:
        return len(self._leases)

    def claim(self, name: str, epoch: int, host: str, pid: int, ttl: float, now: float,
              wall: float, machine: str = "", replaces: int | None = None) -> Claim:
        """`replaces`: the epoch of a live holder the claimant saw dead on its own `machine`."""
        ttl = min(max(ttl, MIN_TTL), MAX_TTL)
        lease = self._leases.get(name)
        if lease is not None and lease.epoch == epoch:
            lease.expires, lease.ttl, lease.host, lease.pid = now + ttl, ttl, host, pid
            lease.machine = machine or lease.machine
            self._next_expiry = min(self._next_expiry, lease.expires)
            return Claim(True, lease, ())
        events: list[LeaseEvent] = []
        previous = None
        if lease is not None:
            dead_here = (replaces == lease.epoch and bool(machine)
                         and machine == lease.machine)
            if lease.expires > now and not dead_here:
                claimant = {"epoch": epoch, "host": host, "pid": pid}
                return Claim(False, lease, (LeaseEvent("refused", lease, claimant),))
            events.append(LeaseEvent("expired" if lease.expires <= now else "replaced", lease))
            previous = lease.holder()
        else:
            lapsed = self._lapsed.get(name)
            previous = lapsed.holder() if lapsed is not None else None
        new = self._grant(name, epoch, host, pid, ttl, now, wall, machine)
        events.append(LeaseEvent("granted", new, previous=previous))
        return Claim(True, new, tuple(events))

    def release(self, name: str, epoch: int) -> LeaseEvent | None:
        """Free `name` if `epoch` holds it (a clean stop); None if it does not."""
        lease = self._leases.get(name)
        if lease is None or lease.epoch != epoch:
            lapsed = self._lapsed.get(name)
            if lapsed is not None and lapsed.epoch == epoch:
                del self._lapsed[name]
            return None
        del self._leases[name]
        del self.held[name]
        return LeaseEvent("released", lease)

    def renew(self, key: SourceKey, now: float) -> LeaseEvent | None:
        """Traffic from (src, epoch) arrived: extend its lease; regain a lapsed one (event)."""
        name, epoch = key
        lease = self._leases.get(name)
        if lease is not None:
            if lease.epoch == epoch:
                lease.expires = now + lease.ttl
            return None
        lapsed = self._lapsed.get(name)
        if lapsed is None or lapsed.epoch != epoch:
            return None
        del self._lapsed[name]
        new = self._grant(name, epoch, lapsed.host, lapsed.pid, lapsed.ttl, now, lapsed.since,
                          lapsed.machine)
        return LeaseEvent("regained", new)

    def expire(self, now: float) -> list[LeaseEvent]:
        """Leases not renewed within their ttl become lapsed; one event each."""
        if now < self._next_expiry:
            return []
        events = []
        nearest = float("inf")
        for name, lease in list(self._leases.items()):
            if lease.expires <= now:
                del self._leases[name]
                del self.held[name]
                self._lapsed[name] = lease
                events.append(LeaseEvent("expired", lease))
            else:
                nearest = min(nearest, lease.expires)
        self._next_expiry = nearest
        while len(self._lapsed) > MAX_LAPSED:
            del self._lapsed[next(iter(self._lapsed))]
        return events

    def hold_all(self, now: float) -> None:
        """Count every lease as renewed now: while the router reads no ingress (its journal
        cannot be written) it sees no traffic, which must not pass for dead holders."""
        for lease in self._leases.values():
            lease.expires = max(lease.expires, now + lease.ttl)

    def holder(self, name: str, now: float) -> Lease | None:
        """The live lease of `name` (None when free or expired)."""
        lease = self._leases.get(name)
        return lease if lease is not None and lease.expires > now else None

    def table(self, now: float) -> dict[str, dict[str, Any]]:
        """Every live lease, as the ``leases`` query and ``state`` report them."""
        return {name: lease.holder(now) for name, lease in sorted(self._leases.items())
                if lease.expires > now}

    def _grant(self, name: str, epoch: int, host: str, pid: int, ttl: float, now: float,
               wall: float, machine: str = "") -> Lease:
        self.generation += 1
        lease = Lease(name, epoch, host, pid, wall, ttl, now + ttl, self.generation, machine)
        self._leases[name] = lease
        self.held[name] = epoch
        self._lapsed.pop(name, None)
        self._next_expiry = min(self._next_expiry, lease.expires)
        return lease
