"""One live instance per actor name: the actor's side of the router's leases.

The router grants a bus name to one incarnation at a time (`broker.router.leases`, the design
and its failure analysis in docs/leases.md). An actor:

1. claims its name right after connecting, before it reads its command records back and
   before it runs any command. Refused: another instance holds the name; this one logs where
   that one runs and exits `actors.core.actor.EXIT_DUPLICATE`. A refusal at start-up is final
   at once when the holder is a live process on this host; otherwise (a predecessor killed a
   moment ago, a host that died) the claim is repeated until the holder has kept its lease for
   one whole ttl (`claim_at_start`), so a restart right after a crash takes over once the dead
   lease expires instead of failing. A holder that ran on this very machine (same kernel boot
   and pid namespace) and whose pid is gone is replaced at once (``replaces``).
2. runs a command only while it holds the name *under the router epoch that acks the
   command's started record* (`gate`): the router fences every other epoch of the name, so a
   record journaled under our grant proves no other instance could have had one journaled
   meanwhile. A new router epoch (a router restart) makes the grant stale; the actor claims
   again and commands wait (their started records' acks are held, new commands are not
   dispatched; senders retry) until it is granted or refused. A router with a journal file
   has restored the lease (its ``restored`` record is the router's business, nothing here
   reads it), so that claim renews the same grant; one without grants it anew.
3. is fenced by the router when another instance holds the name (a host back from a
   partition whose lease expired and was claimed elsewhere): the Bus calls `on_fenced`, and
   the actor exits `EXIT_DUPLICATE` without running anything more.
4. releases the name on a clean stop, so a successor may claim it at once. A dead holder's
   lease expires ``ttl`` (three heartbeat intervals) after its last message.

Claims are blocking query round trips (milliseconds on a live router, bounded by
`CLAIM_TIMEOUT`), tried when the Bus is synced, at most once per `RETRY` seconds, from the
heartbeat timer and when a command arrives; runs on the loop thread.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, Final

from broker.client import lease
from broker.client.bus import Bus
from broker.client.lease import LeaseAnswer
from broker.wire.errors import BusError

log = logging.getLogger(__name__)

TTL_HEARTBEATS: Final = 3  # a lease lasts this many heartbeat intervals without traffic
CLAIM_TIMEOUT: Final = 2.0
RETRY: Final = 1.0
STALL_MARGIN: Final = 0.2  # share of the ttl kept as margin for a started record's ack
START_RETRY: Final = 0.25  # seconds between claims while a start-up refusal may be a dead holder


class NameLease:
    """The lease of `bus.name` as this actor knows it. `on_refused(holder)` is called once
    when the router says another instance holds the name (refused claim or fenced message)."""

    def __init__(self, bus: Bus, ttl: float, on_refused: Callable[[dict[str, Any]], object],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.bus = bus
        self.ttl = ttl
        self.on_refused = on_refused
        self.clock = clock
        self.granted_by: int | None = None  # the router epoch of the grant we hold
        self.generation = 0
        self.since: float | None = None
        self.refused: dict[str, Any] | None = None  # the holder, once refused or fenced
        self.claims = 0
        self._next_try = 0.0
        self._waiting: list[Callable[[bool], object]] = []
        self._unanswered_since: float | None = None
        self._ever_held = False  # granted once: a later refusal is final at once
        self._refused_since: float | None = None  # first refusal of a never-held name
        self._next_replace = 0.0  # a never-held name's next claim replacing a dead holder

    @property
    def held(self) -> bool:
        """Granted by the router we talk to now (a new router epoch must grant it again,
        even when it restored the lease from its journal)."""
        return self.granted_by is not None and self.granted_by == self.bus.router_epoch

    def ensure(self, force: bool = False) -> bool:
        """Held? If not (and not refused), claim, at most once per `RETRY` unless `force`."""
        if self.held or self.refused is not None:
            return self.held
        now = self.clock()
        if not self.bus.synced or (now < self._next_try and not force):
            return False
        self._next_try = now + RETRY
        answer = self._ask(now)
        if answer is not None and not answer.granted:
            self._refused_claim(answer.holder, now)
        return self.held

    def _refused_claim(self, holder: dict[str, Any], now: float) -> None:
        """A claim from `ensure` was refused, or a message fenced. Final at once when the holder
        is a live process of this machine. A holder that ran on this machine and is gone is
        replaced at once (a predecessor whose lease a router restarted on its journal file
        restored, or whose grant the router's journal lost). Otherwise final at once for an
        instance that held the name before; one that never held it (the router was unreachable
        when it started) waits the holder out for one ttl, as at start-up, before the refusal
        is final."""
        if _alive_here(holder):
            self._refuse(holder)
            return
        if _dead_here(holder) and now >= self._next_replace:
            self._next_replace = now + RETRY
            log.info("%s: held by %s, which is no longer running here: taking over",
                     self.bus.name, lease.holder_text(holder))
            answer = self._ask(now, replaces=int(holder["epoch"]))
            if answer is None or answer.granted:
                return
            holder = answer.holder
        if self._ever_held:
            self._refuse(holder)
            return
        if self._refused_since is None:
            self._refused_since = now
            log.info("%s: held by %s; waiting up to %.1f s for that lease to expire (a holder "
                     "that died while the router was away)", self.bus.name,
                     lease.holder_text(holder), float(holder.get("ttl") or self.ttl))
        if now - self._refused_since > float(holder.get("ttl") or self.ttl) + START_RETRY:
            self._refuse(holder)

    def _ask(self, now: float, replaces: int | None = None) -> LeaseAnswer | None:
        """One claim; a grant is taken, a refusal returned, no answer logged (None)."""
        self.claims += 1
        try:
            answer = lease.claim(self.bus, self.ttl, replaces=replaces, timeout=CLAIM_TIMEOUT)
        except BusError as exc:
            self._no_answer(now, exc)
            return None
        self._unanswered_since = None
        if answer.granted:
            self._granted(answer)
        return answer

    def claim_at_start(self, sleep: Callable[[float], object] = time.sleep) -> bool:
        """The start-up claim (blocking): True when granted; False when the router did not
        answer (`ensure` tries again later) or when it refused (`on_refused` was called)."""
        refused_at: float | None = None
        while True:
            now = self.clock()
            answer = self._ask(now)
            if answer is None or answer.granted:
                return answer is not None
            holder = answer.holder
            refused_at = now if refused_at is None else refused_at
            ttl = float(holder.get("ttl") or self.ttl)
            if _alive_here(holder) or now - refused_at > ttl + START_RETRY:
                self._refuse(holder)
                return False
            if _dead_here(holder):  # a predecessor killed a moment ago on this machine
                log.info("%s: held by %s, which is no longer running here: taking over",
                         self.bus.name, lease.holder_text(holder))
                answer = self._ask(now, replaces=int(holder["epoch"]))
                if answer is None or answer.granted:
                    return answer is not None
            if refused_at == now:
                log.info("%s: held by %s; waiting up to %.1f s for that lease to expire (a "
                         "holder that died a moment ago)", self.bus.name,
                         lease.holder_text(holder), ttl)
            sleep(START_RETRY)

    def gate(self, ok: bool, go: Callable[[bool], object], sent_at: float | None = None) -> None:
        """A started record's ack (`ok`): let its command run only while the name is held;
        if the grant is stale (router restarted), claim first and run once granted.

        `sent_at` (monotonic) is when the record was published. The router renewed our lease
        when it journaled the record, so nobody else can hold the name before ``sent_at +
        ttl``; an ack read later than that (this process was stalled: SIGSTOP, swap, a VM
        pause) proves nothing, and the name is claimed again before the command runs."""
        if not ok or self.refused is not None:
            go(False)
            return
        late = 0.0 if sent_at is None else self.clock() - sent_at
        stale = late > self.ttl * (1 - STALL_MARGIN)
        if self.held and not stale:
            go(True)
            return
        if stale and self.held:
            log.warning("%s: a command's started record was acknowledged %.1f s after it was "
                        "sent (over the lease's %.1f s): claiming the name again before it "
                        "runs", self.bus.name, late, self.ttl)
            answer = self._ask(self.clock())  # same epoch: renewed, or refused (it moved)
            if answer is None:  # no answer: our grant is in doubt until a claim succeeds
                self.granted_by = None
                self._waiting.append(go)
            elif answer.granted:
                go(True)
            else:
                go(False)
                self._refuse(answer.holder)
        elif self.ensure(force=True):
            go(True)
        else:
            self._waiting.append(go)

    def fenced(self, data: dict[str, Any]) -> bool:
        """The router refused one of our messages: another epoch holds the name. Handled as a
        refused claim (`_refused_claim`): final for an instance that held the name unless the
        holder is a dead process of this machine; one that never held it (it started while the
        router was away, and what it sent meanwhile met a lease the restarted router restored)
        may still take it over. Until then the fenced messages stay in the outbox, their seqs
        unused, and go through once it holds the name. Returns whether the refusal is final
        (`Bus.on_fenced`: only then are the messages' ack waiters failed)."""
        holder = data.get("holder")
        if self.refused is None:
            self._refused_claim(holder if isinstance(holder, dict) else {}, self.clock())
        return self.refused is not None

    def release(self) -> None:
        """Clean stop: free the name so a successor can claim it at once. Also under a grant
        of an earlier router epoch: a router restarted on its journal file holds the lease
        for this epoch until it is claimed again, and a release names (name, epoch)."""
        if self.granted_by is None or not self.bus.synced:
            return
        try:
            released = lease.release(self.bus, CLAIM_TIMEOUT)
        except BusError as exc:
            log.warning("%s: could not release its name (%s); it frees after %.1f s",
                        self.bus.name, exc, self.ttl)
            return
        if released:
            log.info("%s: released its name", self.bus.name)
        self.granted_by = None

    def to_data(self) -> dict[str, Any]:
        """For the heartbeat: whether this instance holds its name, and since when."""
        return {"held": self.held, "generation": self.generation, "since": self.since,
                "router_epoch": self.granted_by}

    def _granted(self, answer: LeaseAnswer) -> None:
        first = self.granted_by is None
        self.granted_by = answer.router_epoch
        self._ever_held = True
        self._refused_since = None
        self.generation = answer.generation
        since = answer.holder.get("since")
        self.since = float(since) if isinstance(since, (int, float)) else None
        log.log(logging.INFO if first else logging.WARNING,
                "%s: %s its name (generation %d, router epoch %d, ttl %.1f s)", self.bus.name,
                "holds" if first else "holds again, after a router restart,", answer.generation,
                answer.router_epoch, self.ttl)
        waiting, self._waiting = self._waiting, []
        for go in waiting:
            go(True)

    def _refuse(self, holder: dict[str, Any]) -> None:
        if self.refused is not None:
            return
        self.refused = holder
        self.granted_by = None
        waiting, self._waiting = self._waiting, []
        for go in waiting:
            go(False)
        self.on_refused(holder)

    def _no_answer(self, now: float, exc: BusError) -> None:
        if self._unanswered_since is None:
            self._unanswered_since = now
        log.warning("%s: the router did not answer its claim for %.0f s (%s); no command runs "
                    "until it does", self.bus.name, now - self._unanswered_since, exc)


def _here(holder: dict[str, Any]) -> bool:
    """The holder ran on this machine: its pid means the same process here. Without a machine
    id (an older router), the host name decides."""
    machine = holder.get("machine")
    if machine:
        return bool(machine == lease.machine_id())
    return bool(holder.get("host") == socket.gethostname())


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _alive_here(holder: dict[str, Any]) -> bool:
    """The holder is a running process of this machine (so not a dead predecessor)."""
    pid = holder.get("pid")
    return (isinstance(pid, int) and pid > 0 and pid != os.getpid() and _here(holder)
            and _pid_exists(pid))


def _dead_here(holder: dict[str, Any]) -> bool:
    """The holder ran on this machine (same kernel boot and pid namespace) and its process is
    gone: the router lets a claim replace it at once (it checks the machine id matches)."""
    pid, epoch = holder.get("pid"), holder.get("epoch")
    return (bool(holder.get("machine")) and holder.get("machine") == lease.machine_id()
            and isinstance(pid, int) and pid > 0 and isinstance(epoch, int)
            and (pid == os.getpid() or not _pid_exists(pid)))  # our pid: a reused one
