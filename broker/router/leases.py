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
the table and, with a journal file, across router restarts as far as the file tells: a file set
aside as unreadable, or a grant lost with the unwritten tail of a crash, restarts it lower);
with the router epoch it names one grant site-wide. Events (granted, refused, released,
expired, regained, replaced, restored) are returned to the caller, which journals them on
``sys.router.lease``.

Restart. A router with a journal file rebuilds the table when it starts (`LeaseHistory`): the
lease map of the file's snapshot (`LeaseTable.snapshot`, written at every compaction, so the
records compaction drops are summed up there), then every ``sys.router.lease`` record after it,
in gseq order; a name's newest record decides. Names held at the end are restored
(`LeaseTable.restore`, one ``restored`` event each) with their holder, since and generation and
an expiry of now + ttl on this router's clock, and fenced like any held name: the holder keeps
its name by claiming again or by its traffic, a dead holder's lease expires one ttl later.
Leases whose expiry was journaled (lapsed) are not restored. A router without a journal starts
with an empty table and holders claim again (docs/leases.md has the failure analysis). Nothing
here does I/O and time is passed in (``now`` is monotonic, ``wall`` is Unix time for display),
so tests need no sleeps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from broker.wire import envelope, rules, topics
from broker.wire.errors import EnvelopeError, TopicError

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

    event: str  # granted, refused, released, expired, regained, replaced, restored
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

    def snapshot(self) -> dict[str, Any]:
        """The table as the journal file's snapshot keeps it (read back by `LeaseHistory`):
        the generation counter and every lease held, each in the shape of its records."""
        return {"generation": self.generation,
                "held": [lease.holder() for lease in self._leases.values()]}

    def restore(self, leases: Iterable[Lease], generation: int, now: float) -> list[LeaseEvent]:
        """Hold `leases` again after a router restart (a `LeaseHistory`'s result): each
        expires `now` + its ttl, as if its holder had just renewed it; generations go on from
        `generation` (and never below a restored one). One ``restored`` event per lease."""
        events = []
        for lease in leases:
            lease.expires = now + lease.ttl
            self._leases[lease.name] = lease
            self.held[lease.name] = lease.epoch
            self._lapsed.pop(lease.name, None)
            self._next_expiry = min(self._next_expiry, lease.expires)
            self.generation = max(self.generation, lease.generation)
            events.append(LeaseEvent("restored", lease))
        self.generation = max(self.generation, generation)
        return events

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


HOLDING_EVENTS: Final = frozenset({"granted", "regained", "restored", "refused"})
FREEING_EVENTS: Final = frozenset({"released", "expired", "replaced"})
MAX_PROBLEMS: Final = 10  # problems kept (with their gseq) for the router's warning
MAX_WHOLE: Final = 2**63 - 1  # epochs, pids and generations read back must pack as msgpack ints


class LeaseHistory:
    """The lease table as a journal file tells it, for a router that restarts on that file.

    `observe` is given every entry the journal loads (gseq order); it keeps, per name, what its
    newest ``sys.router.lease`` record says: held by the lease it names (granted, regained,
    restored, and refused, which names the holder), or free (released, expired, replaced; a
    replacement's grant follows it). `result` lays that over the snapshot's lease map (older
    than every record after it) and returns the leases held at the end and the generation to
    go on from. A record that cannot be read (not an envelope, not from the router, an unknown
    event, a field missing or of the wrong type) changes nothing; it is counted in `ignored`
    and described in `problems` (the first `MAX_PROBLEMS`), which the router logs.
    """

    def __init__(self) -> None:
        self.records = 0  # lease records read
        self.ignored = 0
        self.problems: list[str] = []
        self._state: dict[str, Lease | None] = {}  # name -> holder after its newest record
        self._generation = 0

    def observe(self, gseq: int, src: str, topic: str, body: bytes) -> None:
        """One journal entry (any topic; only ``sys.router.lease`` ones are read)."""
        if topic != topics.ROUTER_LEASE:
            return
        if src != rules.ROUTER_SRC:
            self._ignore(gseq, f"src {src!r} is not the router")
            return
        try:
            data = envelope.decode(bytes(body)).data
        except EnvelopeError as exc:
            self._ignore(gseq, f"not an envelope ({exc})")
            return
        self.record(data, gseq)

    def record(self, data: Any, gseq: int = 0) -> None:
        """One lease record's data (``LeaseEvent.data``), newer than every one before it."""
        event = data.get("event") if isinstance(data, dict) else None
        if not isinstance(event, str) or (event not in HOLDING_EVENTS
                                          and event not in FREEING_EVENTS):
            self._ignore(gseq, f"unknown event {event!r}")
            return
        try:
            lease = lease_of(data)
        except ValueError as exc:
            self._ignore(gseq, f"{event}: {exc}")
            return
        self.records += 1
        self._generation = max(self._generation, lease.generation)
        self._state[lease.name] = lease if event in HOLDING_EVENTS else None

    def result(self, snapshot: Any = None) -> tuple[list[Lease], int]:
        """(leases held at the end, the generation to go on from), given the snapshot's lease
        map (`LeaseTable.snapshot`; None when the file has none)."""
        state: dict[str, Lease | None] = {}
        generation = self._generation
        if snapshot is not None:
            if not isinstance(snapshot, dict) or not isinstance(snapshot.get("held"), list):
                self._ignore(0, f"the snapshot's lease map is not readable: {snapshot!r:.200}")
            else:
                gen = snapshot.get("generation")
                if isinstance(gen, int) and not isinstance(gen, bool) and 0 <= gen <= MAX_WHOLE:
                    generation = max(generation, gen)
                for held in snapshot["held"]:
                    try:
                        lease = lease_of(held)
                    except ValueError as exc:
                        self._ignore(0, f"snapshot: {exc}")
                        continue
                    state[lease.name] = lease
                    generation = max(generation, lease.generation)
        state.update(self._state)  # the records are newer than the snapshot
        return [lease for _, lease in sorted(state.items()) if lease is not None], generation

    def _ignore(self, gseq: int, problem: str) -> None:
        self.ignored += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(f"gseq {gseq}: {problem}" if gseq else problem)


def lease_name(name: Any, what: str) -> str:
    """`name` if it can be a bus name (one topic segment), else TopicError naming `what`."""
    if not isinstance(name, str):
        raise TopicError(f"{what} needs name (a string), got {name!r}")
    return topics.check_name(name, "lease name")


def lease_of(data: Any) -> Lease:
    """A `Lease` from its record shape (`Lease.holder`); ValueError naming what is wrong. The
    expiry is left at 0: only the restoring router can give it one."""
    if not isinstance(data, dict):
        raise ValueError(f"a lease is a map, got {type(data).__name__}")
    try:
        name = lease_name(data.get("name"), "a lease")
    except TopicError as exc:
        raise ValueError(str(exc)) from None
    epoch, pid, generation = (_whole(data, key, low) for key, low in
                              (("epoch", 1), ("pid", 0), ("generation", 1)))
    host, machine = data.get("host"), data.get("machine", "")
    if not isinstance(host, str) or not isinstance(machine, str):
        raise ValueError(f"host and machine must be strings, got {host!r} and {machine!r}")
    since, ttl = _number(data.get("since")), _number(data.get("ttl"))
    if since is None or ttl is None or not ttl > 0:
        raise ValueError(f"since and ttl must be numbers (ttl > 0), got "
                         f"{data.get('since')!r} and {data.get('ttl')!r}")
    return Lease(name, epoch, host, pid, since, min(max(ttl, MIN_TTL), MAX_TTL), 0.0,
                 generation, machine)


def _whole(data: dict[str, Any], key: str, low: int) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_WHOLE:
        raise ValueError(f"{key} must be an integer from {low} to {MAX_WHOLE}, got {value!r}")
    return value


def _number(value: Any) -> float | None:
    """`value` as a finite float, None when it is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None
