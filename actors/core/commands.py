"""Running declared commands exactly once: the reply cache, Deferred, and the Dispatcher.

A handler returns a result, raises `CommandError`, or returns a `Deferred` and settles it later,
from any thread. The reply cache makes execution exactly-once: finished commands keep their reply
(status, result, error) in a bounded LRU keyed by command id, so a retried command is answered
again without running again; commands still running or waiting for their write-ahead record
(`actors.core.recovery`) are tracked by the Dispatcher, and their duplicates get no second run.
Declarations and argument conversion are in `actors.core.params`.

Nothing in this module does I/O; it is unit-tested without sockets.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from actors.core.params import (
    CommandError,
    CommandSpec,
    Param,
    bind,
    collect,
    command,
    convert,
    parse_call,
)
from broker.wire.envelope import Envelope
from broker.wire.errors import EnvelopeError, LocalProtocolError

__all__ = ["CommandError", "CommandSpec", "Deferred", "Dispatcher", "Outcome", "Param",
           "ReplyCache", "bind", "collect", "command", "convert", "parse_call"]

log = logging.getLogger(__name__)


class Outcome(NamedTuple):
    """What a finished command replied: kept in the cache and sent again on a duplicate."""

    status: str
    result: Any
    error: str


class ReplyCache:
    """Bounded LRU of command id → Outcome. A hit refreshes the entry."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("reply cache size must be at least 1")
        self.size = size
        self._entries: OrderedDict[str, Outcome] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, command_id: object) -> bool:
        return command_id in self._entries

    def get(self, command_id: str) -> Outcome | None:
        outcome = self._entries.get(command_id)
        if outcome is not None:
            self._entries.move_to_end(command_id)
        return outcome

    def put(self, command_id: str, outcome: Outcome) -> None:
        self._entries[command_id] = outcome
        self._entries.move_to_end(command_id)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
            self.evicted += 1


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class LoopLike(Protocol):
    """The part of `actors.core.loop.Loop` this module uses (tests pass a fake)."""

    def in_loop_thread(self) -> bool: ...

    def call_soon_threadsafe(self, fn: Callable[..., object], *args: Any) -> None: ...

    def call_later(self, delay: float, fn: Callable[..., object], *args: Any) -> Cancellable: ...


class Deferred:
    """A command result that comes later: return one from a handler, then `resolve(result)` or
    `fail(message)` exactly once (later calls are ignored). Either may be called from any
    thread; the reply is always sent from the loop thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outcome: Outcome | None = None
        self._loop: LoopLike | None = None
        self._on_done: Callable[[Outcome], object] | None = None

    @property
    def done(self) -> bool:
        return self._outcome is not None

    def resolve(self, result: Any = None) -> None:
        self._settle(Outcome("ok", result, ""))

    def fail(self, message: str) -> None:
        self._settle(Outcome("error", None, message))

    def _settle(self, outcome: Outcome) -> None:
        with self._lock:
            if self._outcome is not None:
                return
            loop = self._loop
            if loop is not None and not loop.in_loop_thread():
                loop.call_soon_threadsafe(self._settle, outcome)
                return
            self._outcome = outcome
            callback, self._on_done = self._on_done, None
        if callback is not None:
            callback(outcome)

    def _adopt(self, loop: LoopLike, callback: Callable[[Outcome], object]) -> Outcome | None:
        """Bind to the loop; the outcome if already settled, else `callback` gets it later."""
        with self._lock:
            self._loop = loop
            if self._outcome is None:
                self._on_done = callback
            return self._outcome


class Dispatcher:
    """Runs command envelopes on `target`'s handlers exactly once, on the loop thread.

    Order of checks for each envelope: not a command → ignored; id still running (Deferred) →
    nothing now, its reply goes out once when it finishes; id in the reply cache → the cached
    reply again; stopping → "actor stopping; not run"; past its deadline → "deadline passed N s
    ago; not run" (cached: a retry gets the same answer); else bind the arguments and run.
    `send(env, outcome)` publishes a reply; an EnvelopeError from it (a result msgpack cannot
    carry) turns into an error reply.
    """

    def __init__(self, specs: Mapping[str, CommandSpec], target: object,
                 send: Callable[[Envelope, Outcome], object], loop: LoopLike,
                 cache_size: int, counters: dict[str, int],
                 clock: Callable[[], float] = time.time) -> None:
        self.specs = specs
        self.target = target
        self.send = send
        self.loop = loop
        self.replies = ReplyCache(cache_size)
        self.running: dict[str, Deferred] = {}
        self.counters = counters
        self.clock = clock
        self.current: Envelope | None = None
        self.stopping = False
        # Write-ahead records (actors.core.recovery): record(env, name, None) before a command runs
        # returns a ticket; when_recorded(ticket, go) calls go(True) once it is durable (the
        # router journaled it), go(False) if it never will be. record(env, name, outcome) after.
        self.record: Callable[[Envelope, str, Outcome | None], int | None] | None = None
        self.when_recorded: Callable[[int, Callable[[bool], object]], None] | None = None
        self.parked: dict[str, Envelope] = {}  # waiting for their started record
        for key in ("commands", "command_ok", "command_errors", "command_duplicates",
                    "command_expired"):
            counters.setdefault(key, 0)

    def dispatch(self, env: Envelope) -> None:
        if env.kind != "command" or not env.reply_to:
            log.warning("ignoring a %s envelope %s from %s on a command topic", env.kind,
                        env.id, env.src)
            return
        if env.id in self.running or env.id in self.parked:
            self.counters["command_duplicates"] += 1
            return
        cached = self.replies.get(env.id)
        now = self.clock()
        if cached is not None:
            self.counters["command_duplicates"] += 1
            self._send(env, cached)
        elif self.stopping:
            self._send(env, Outcome("error", None, "actor stopping; not run"))
        elif env.deadline is not None and now > env.deadline:
            self.counters["command_expired"] += 1
            late = now - env.deadline
            self._finish(env, Outcome("error", None, f"deadline passed {late:.1f} s ago; not run"))
        else:
            self._execute(env)

    def fail_running(self, message: str) -> None:
        """Answer every command still running or waiting to run with `message` (teardown)."""
        for deferred in list(self.running.values()):
            deferred.fail(message)
        for env in list(self.parked.values()):
            self.parked.pop(env.id, None)
            self._finish(env, Outcome("error", None, f"{message}; not run"))

    def _execute(self, env: Envelope) -> None:
        try:
            call = parse_call(env.data)
            spec = self.specs.get(call.command)
            if spec is None:
                raise CommandError(f"unknown command {call.command!r} "
                                   f"(commands: {', '.join(sorted(self.specs))})")
            kwargs = bind(spec, call.args, call.argv)
        except CommandError as exc:
            self._finish(env, Outcome("error", None, str(exc)))
            return
        if spec.record and self.record is not None:
            ticket = self.record(env, spec.name, None)  # before the side effect
            if ticket is not None and self.when_recorded is not None:
                self.parked[env.id] = env
                self.when_recorded(ticket, lambda ok: self._recorded(env, spec, kwargs, ok))
                return
        self._run(env, spec, kwargs)

    def _recorded(self, env: Envelope, spec: CommandSpec, kwargs: dict[str, Any],
                  ok: bool) -> None:
        """The started record is journaled (ok) or lost: run the command, or refuse it."""
        if self.parked.pop(env.id, None) is None:
            return  # already answered (teardown)
        late = self.clock() - env.deadline if env.deadline is not None else 0.0
        if not ok:
            reason = "the router never journaled its record (outbox overflow)"
        elif self.stopping:
            reason = "actor stopping"
        elif late > 0:
            self.counters["command_expired"] += 1
            reason = f"deadline passed {late:.1f} s ago while its record was being journaled"
        else:
            self._run(env, spec, kwargs)
            return
        self._finish(env, Outcome("error", None, f"{reason}; not run"), spec)

    def _run(self, env: Envelope, spec: CommandSpec, kwargs: dict[str, Any]) -> None:
        self.counters["commands"] += 1
        self.current = env
        try:
            result = getattr(self.target, spec.attr)(**kwargs)
        except (CommandError, LocalProtocolError) as exc:
            # LocalProtocolError: a codec refused the values it was asked to encode, and says
            # why in operator terms (hex width, length): an error reply, not an internal error
            result = Outcome("error", None, str(exc))
        except Exception as exc:
            log.exception("command %s (id %s from %s) failed", spec.name, env.id, env.src)
            result = Outcome("error", None,
                             f"internal error in {spec.name}: {type(exc).__name__}: {exc}")
        finally:
            self.current = None
        if isinstance(result, Deferred):
            self._adopt(env, spec, result)
        else:
            outcome = result if isinstance(result, Outcome) else Outcome("ok", result, "")
            self._finish(env, outcome, spec)

    def _adopt(self, env: Envelope, spec: CommandSpec, deferred: Deferred) -> None:
        timer: list[Cancellable] = []
        name = spec.name
        done = deferred._adopt(self.loop,
                               lambda outcome: self._deferred_done(env, outcome, timer, spec))
        if done is not None:
            self._finish(env, done, spec)
            return
        self.running[env.id] = deferred
        if env.deadline is not None:
            timer.append(self.loop.call_later(env.deadline - self.clock(), deferred.fail,
                                              f"{name}: no result by the command's deadline"))

    def _deferred_done(self, env: Envelope, outcome: Outcome, timer: list[Cancellable],
                       spec: CommandSpec) -> None:
        self.running.pop(env.id, None)
        for handle in timer:
            handle.cancel()
        self._finish(env, outcome, spec)

    def _finish(self, env: Envelope, outcome: Outcome, ran: CommandSpec | None = None) -> None:
        """Record the outcome (before the reply: a retry after a crash must find it), reply,
        and remember the reply so a retry of `env` gets it without running again."""
        recorded = ran is not None and ran.record and self.record is not None
        if recorded and self.record is not None and ran is not None:
            self.record(env, ran.name, outcome)
        sent = self._send(env, outcome)
        if sent != outcome and recorded and self.record is not None and ran is not None:
            self.record(env, ran.name, sent)  # the reply had to change: the later record wins
        self.replies.put(env.id, sent)
        self.counters["command_ok" if sent.status == "ok" else "command_errors"] += 1

    def preload(self, done: Mapping[str, Outcome], interrupted: Sequence[str]) -> None:
        """Outcomes a previous incarnation of this actor recorded (read back from the journal
        at start): a retry of a finished command gets its reply again; one that was running
        when the process died is answered without being run a second time."""
        for command_id, outcome in done.items():
            self.replies.put(command_id, outcome)
        for command_id in interrupted:
            self.replies.put(command_id, Outcome(
                "error", None, "the actor restarted while this command was running; its "
                "outcome is unknown, so it is not run again"))

    def _send(self, env: Envelope, outcome: Outcome) -> Outcome:
        try:
            self.send(env, outcome)
        except EnvelopeError as exc:
            log.error("reply to %s (id %s) cannot be sent: %s", env.data.get("command"),
                      env.id, exc)
            outcome = Outcome("error", None, f"internal error: result cannot be sent: {exc}")
            self.send(env, outcome)
        return outcome
