"""The one Actor base: what every device actor builds on.

A device actor declares its type name, its settings and its commands, and implements a few hooks;
the base owns everything else: the Bus connection, the loop, heartbeats, command dispatch with
exactly-once execution, the device-link state machine with backoff, and the process lifecycle.

Lifecycle, in three phases like pykka's actor loop:

1. setup: connect the Bus (a router that is not up yet is not an error: the outbox holds what we
   publish), subscribe to ``cmd.<name>``, claim the name (`actors.core.lease`: refused, the
   actor logs where the other instance runs and `run` returns `EXIT_DUPLICATE`; no answer, it
   carries on and runs no command until granted), publish a ``starting`` heartbeat, run
   `on_start`, open the device link if the class has one. An exception here is logged and
   `run` returns 1, so supervisord restarts the process.
2. running: the loop (`actors.core.loop.Loop`) until `request_stop` (SIGTERM/SIGINT in `run_actor`).
3. teardown: close the link (``evt.<name>.link`` down, reason "actor stopping"), run `on_stop`,
   answer every command still running with "actor stopping", publish a ``stopping`` heartbeat,
   flush the outbox for up to `STOP_FLUSH` seconds so the last events reach the router, and
   release the name (a duplicate skips these three: its messages are fenced).

Threads: every hook, command handler, timer and reader callback runs on the loop thread, which
owns all state. Library threads (paho, c104) may only call `call_soon_threadsafe` (and
`Deferred.resolve`/`fail`, which hand over by themselves) and `request_stop`.

Command handlers return a result (ok reply), raise `CommandError` (error reply with its message),
raise anything else (error reply "internal error in CMD: ...", logged with the traceback; the actor
keeps serving) or return a `Deferred` to reply later.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, Final

import zmq

from actors.core import recovery
from actors.core.commands import (
    CommandError,
    CommandSpec,
    Deferred,
    Dispatcher,
    Outcome,
    Param,
    collect,
    command,
)
from actors.core.lease import TTL_HEARTBEATS, NameLease
from actors.core.link import CONNECTING, DOWN, UP, Backoff, Link, LinkChange, LinkStateError
from actors.core.loop import Loop, Pollable, TimerHandle
from broker.client.bus import Bus, Delivery
from broker.client.lease import holder_text
from broker.client.outbox import DEFAULT_MAX_MESSAGES
from broker.config import (
    ActorConfig,
    RouterConfig,
    Setting,
    check_settings,
    non_negative,
    positive,
)
from broker.memory import tune_malloc
from broker.wire import topics
from broker.wire.envelope import Envelope
from broker.wire.errors import ConfigError, EnvelopeError

__all__ = ["Actor", "CommandError", "Deferred", "Param", "Setting", "command"]

log = logging.getLogger(__name__)

STARTING: Final = "starting"
RUNNING: Final = "running"
STOPPING: Final = "stopping"
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
CONNECT_WAIT: Final = 2.0  # seconds setup waits for the router before carrying on without it
STOP_FLUSH: Final = 2.0  # seconds teardown spends getting the outbox acked
EXIT_CONFIG: Final = 2  # the site file does not describe a runnable actor
EXIT_DUPLICATE: Final = 4  # another instance holds this actor's name (actors.core.lease)

BASE_SETTINGS: Final = (
    Setting("heartbeat_interval", float, 1.0, "seconds between heartbeats on hb.<name>",
            check=positive),
    Setting("backoff_min", float, 0.5, "first reconnect delay, seconds", check=positive),
    Setting("backoff_max", float, 30.0, "longest reconnect delay, seconds", check=positive),
    Setting("link_stable_after", float, 10.0,
            "seconds a link must stay up before the reconnect backoff starts over",
            check=non_negative),
    Setting("connect_timeout", float, 10.0,
            "seconds a connection attempt may take before it counts as failed", check=positive),
    Setting("reply_cache_size", int, 1000,
            "finished command ids remembered to answer retries without re-running",
            check=positive),
    Setting("outbox_max_messages", int, DEFAULT_MAX_MESSAGES,
            "envelopes kept for the router while it is unreachable; beyond, the oldest are "
            "dropped (counted in outbox_dropped, one sys.alarm per episode)", check=positive),
    Setting("recover_horizon", float, 600.0,
            "seconds of the router journal searched at start for this actor's command "
            "records, so a retried command never runs twice across a restart (0 = off)",
            check=non_negative),
)


class Actor:
    """Base of every actor. Subclasses set `type_name`, `settings`, declare commands with
    `@command`, and implement the hooks they need (`on_start`, `on_stop`, `open_link`,
    `close_link`). Settings values are in `self.config`."""

    type_name: ClassVar[str] = ""
    settings: ClassVar[tuple[Setting, ...]] = ()
    # (address setting, port setting) of a TCP port the actor listens on, for `sctl check` to
    # find two programs of one host on the same port; None: it listens on none.
    listens: ClassVar[tuple[str, str] | None] = None
    reconnect: ClassVar[bool] = True  # False: the device's library reconnects by itself
    commands: ClassVar[dict[str, CommandSpec]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.commands = collect(cls)

    def __init__(self, name: str, config: dict[str, Any], router: RouterConfig,
                 *, context: zmq.Context[Any] | None = None) -> None:
        self.name = topics.check_name(name, "actor name")
        self.config = config
        self.router = router
        self.state = STARTING
        self.counters: dict[str, int] = {"events": 0}
        self.exit_code = EXIT_OK
        self._context = context
        self._bus: Bus | None = None
        self._loop = Loop()
        self._started = time.monotonic()
        self._stop_reason: str | None = None
        self._cmd_topic = topics.command(name)
        self._commands = Dispatcher(self.commands, self, self._send_reply, self._loop,
                                    config["reply_cache_size"], self.counters)
        self._commands.record = self._record_run
        self._commands.when_recorded = self._when_recorded
        self._recovered = not config["recover_horizon"]  # commands wait for the read-back
        self._next_recovery = 0.0
        self._subscriptions: list[tuple[str, Callable[[Delivery], object]]] = []
        self._link = Link(Backoff(config["backoff_min"], config["backoff_max"]),
                          config["link_stable_after"])
        self._link_timer: TimerHandle | None = None
        self.config_digest: dict[str, str] = {}  # see `config_digest`; set by from_config
        self.failure: str | None = None  # why start-up failed, for the last heartbeat
        self._lease: NameLease | None = None  # this instance's hold on its name
        self._paused_since: float | None = None  # device reads paused (congested bus) since
        self._pause_hooks: list[Callable[[bool], object]] = []  # see `on_pause`

    @classmethod
    def declared_settings(cls) -> tuple[Setting, ...]:
        """Base settings, then the class's own; a class may redeclare a base one (new default)."""
        own = {s.name for s in cls.settings}
        return tuple(s for s in BASE_SETTINGS if s.name not in own) + cls.settings

    @classmethod
    def from_config(cls, actor: ActorConfig, router: RouterConfig,
                    *, context: zmq.Context[Any] | None = None) -> Actor:
        """Check the ``[actors.NAME]`` table (`check_table`), then construct. Raises the first
        ConfigError, naming the key path; nothing is opened yet."""
        values, problems = cls.check_table(actor)
        if problems:
            raise problems[0]
        instance = cls(actor.name, values, router, context=context)
        instance.config_digest = config_digest(actor, router)
        return instance

    @classmethod
    def check_table(cls, actor: ActorConfig) -> tuple[dict[str, Any], list[ConfigError]]:
        """Every problem of the ``[actors.NAME]`` table, and its values: the declared settings
        first (names, types, ranges, required keys), then, when those hold, `cross_check`.
        The one check behind both `from_config` and ``sctl check``; opens nothing."""
        values, problems = check_settings(actor.settings, cls.declared_settings(), actor.path,
                                          actor.source, base=actor.folder)
        if not problems:
            for exc in cls.cross_check(values, actor):
                problems.append(exc if exc.source or not actor.source else
                                ConfigError(exc.path, exc.reason, actor.source))
        return values, problems

    @classmethod
    def cross_check(cls, values: dict[str, Any], actor: ActorConfig) -> Iterator[ConfigError]:
        """Rules between settings of one table (each value already has its declared type and
        passed its own check): yield a ConfigError per broken rule, naming the key path.
        Subclasses add theirs after ``yield from super().cross_check(values, actor)``."""
        if values["backoff_min"] > values["backoff_max"]:
            yield ConfigError(f"{actor.path}.backoff_min",
                              f"{values['backoff_min']} is more than backoff_max "
                              f"{values['backoff_max']}", actor.source)

    @classmethod
    def command_targets(cls, values: dict[str, Any]) -> list[tuple[str, str, str]]:
        """Commands this actor sends to other actors by itself, as (key path below
        ``actors.NAME``, target actor, command): ``sctl check`` makes sure each target is an
        actor of the site with that command."""
        return []

    # --- hooks (loop thread) ---------------------------------------------------------------

    def on_start(self) -> None:
        """Setup, on the loop thread, after the Bus is connected and before the link opens.
        Raising makes `run` return 1 (supervisord restarts the process); `on_stop` still runs."""

    def on_stop(self) -> None:
        """Teardown, on the loop thread, after the link is closed and before commands still
        running are failed. An exception is logged; the exit code stays what it was."""

    def open_link(self) -> None:
        """Start connecting to the device (non-blocking if you can: `add_writer`), then call
        `link_up()` or `link_down(reason)`. Runs on the loop thread. Defining it turns the link
        state machine on. An exception counts as `link_down("open_link failed: ...")`."""

    def close_link(self) -> None:
        """Release the device connection; the base calls it every time the link goes down
        (after `link_down`, on connect timeout, at stop), so it must be idempotent. Loop thread;
        an exception is logged and ignored."""

    # --- what subclasses call (loop thread unless stated) ----------------------------------

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            raise RuntimeError("the bus exists only while the actor runs")
        return self._bus

    @property
    def current_command(self) -> Envelope | None:
        """The command envelope whose handler is running now (sender: ``.src``), else None."""
        return self._commands.current

    @property
    def link_state(self) -> str:
        return self._link.state

    @property
    def link_since(self) -> float | None:
        """Wall-clock time of the last link change (None: never changed)."""
        return self._link.since

    @property
    def link_reason(self) -> str:
        """Why the link is in its state ("connected to ...", "connection refused", ...)."""
        return self._link.reason or ""

    def wants_link(self) -> bool:
        """Whether the base should open the device link at start and reopen it after a loss.
        True when the class defines `open_link`; override for links that are opened on
        demand or held closed on purpose (checked again before every reconnect)."""
        return type(self).open_link is not Actor.open_link

    def publish_event(self, event: str, data: dict[str, Any] | None = None) -> Envelope:
        """Publish ``evt.<name>.<event>`` (kind event). Never blocks and never raises BusFull:
        the actor's backpressure is `pause_device` (docs/backpressure.md), so an event made
        from bytes already read goes into the outbox's headroom rather than being lost."""
        self.counters["events"] += 1
        return self.bus.publish(topics.event(self.name, event), "event", data or {},
                                headroom=True)

    def pause_device(self) -> None:
        """The Bus is congested (router connected, outbox at its high watermark): stop taking
        data from the device. Stops polling every reader registered with `add_reader`, so TCP
        pushes back on the device, and tells every `on_pause` hook; commands, replies,
        heartbeats and timers keep going. Loop thread."""
        self._loop.pause_readers()
        for hook in self._pause_hooks:
            hook(True)

    def resume_device(self) -> None:
        """The outbox is back under its low watermark (or the router went away, when holding
        back helps nobody): read the device again. Loop thread."""
        self._loop.resume_readers()
        for hook in self._pause_hooks:
            hook(False)

    def on_pause(self, hook: Callable[[bool], object]) -> None:
        """`hook(True)` at every `pause_device`, `hook(False)` at every `resume_device`: for a
        transport that must do more than stop being polled (MQTT still reads an awaited
        answer of the broker while paused)."""
        self._pause_hooks.append(hook)

    def subscribe(self, prefix: str, callback: Callable[[Delivery], object],
                  *, gapless: bool = True) -> None:
        """Deliveries whose topic `topics.matches` `prefix` go to `callback` (loop thread)."""
        self._subscriptions.append((topics.check_prefix(prefix), callback))
        self.bus.subscribe(prefix, gapless=gapless)

    def call_later(self, delay: float, fn: Callable[..., object], *args: Any) -> TimerHandle:
        return self._loop.call_later(delay, fn, *args)

    def call_soon_threadsafe(self, fn: Callable[..., object], *args: Any) -> None:
        """The only way other threads hand work to the actor. Any thread."""
        self._loop.call_soon_threadsafe(fn, *args)

    def add_reader(self, fd: Pollable, callback: Callable[[], object]) -> None:
        self._loop.add_reader(fd, callback)

    def remove_reader(self, fd: Pollable) -> None:
        self._loop.remove_reader(fd)

    def add_writer(self, fd: Pollable, callback: Callable[[], object]) -> None:
        self._loop.add_writer(fd, callback)

    def remove_writer(self, fd: Pollable) -> None:
        self._loop.remove_writer(fd)

    def link_up(self, reason: str = "connected") -> None:
        self._cancel_link_timer()
        self._change_link(UP, reason)

    def link_down(self, reason: str) -> None:
        """The device is unreachable (or went away). Publishes the change, calls `close_link`,
        and schedules the next `open_link` after the backoff delay."""
        retry = self.reconnect and self._stop_reason is None and self._has_link()
        change = self._change_link(DOWN, reason, retry)
        if change is None:
            return
        self._cancel_link_timer()
        self._close_link()
        if change.retry_in is not None:
            self._link_timer = self.call_later(change.retry_in, self._open_link)

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask for a graceful stop. Any thread, and signal handlers."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._loop.wake()

    # --- built-in commands ------------------------------------------------------------------

    @command("describe", doc="the actor type, its commands with their parameters, its settings",
             record=False)
    def cmd_describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "type": self.type_name,
            "doc": (type(self).__doc__ or "").strip().split("\n\n")[0].replace("\n", " "),
            "commands": [self.commands[n].describe() for n in sorted(self.commands)],
            "settings": [_describe_setting(s, self.config.get(s.name))
                         for s in self.declared_settings()],
        }

    @command("ping", doc="liveness: pid, host, uptime, state, link", record=False)
    def cmd_ping(self) -> dict[str, Any]:
        status = self._status()
        return {k: status[k] for k in ("type", "pid", "host", "version", "uptime", "state", "link")}

    # --- lifecycle --------------------------------------------------------------------------

    def run(self) -> int:
        """Setup, run until `request_stop`, teardown; returns the process exit code."""
        tune_malloc()  # big bodies reuse freed memory instead of faulting in new pages
        try:
            self._setup()
        except DuplicateInstanceError:
            self._stop_reason = self._stop_reason or "another instance holds the name"
        except Exception as exc:
            # one line with the reason: the watchdog and `sctl status` show a program's last
            # error line; the stopping heartbeat carries it too
            self.failure = f"{type(exc).__name__}: {exc}"
            log.exception("actor %s failed to start: %s", self.name, self.failure)
            self.exit_code = EXIT_FAILED
            self._stop_reason = self._stop_reason or "start-up failed"
        else:
            log.info("actor %s (%s) running", self.name, self.type_name)
            try:
                self._loop.run_until(lambda: self._stop_reason is not None)
            except Exception:  # a bug in the loop itself, not in a callback: restart us
                log.exception("actor %s loop failed", self.name)
                self.exit_code = EXIT_FAILED
        self._teardown()
        return self.exit_code

    def _setup(self) -> None:
        self._loop.thread_id = threading.get_ident()
        # With CURVE an actor (simulators too) acts as its own key: NAME.key_secret.
        self._bus = bus = Bus(self.router, self.name, context=self._context, identity=self.name,
                              outbox_max_messages=self.config["outbox_max_messages"])
        bus.subscribe(self._cmd_topic, gapless=False)
        self._loop.pollables = bus.pollables
        self._loop.next_deadline = bus.next_deadline
        self._loop.on_events = self._on_events
        self._loop.on_tick = self._on_tick
        self._lease = NameLease(bus, TTL_HEARTBEATS * self.config["heartbeat_interval"],
                                self._duplicate)
        bus.on_fenced = self._lease.fenced
        if not bus.connect(wait=CONNECT_WAIT):
            log.warning("router not reachable at %s yet; carrying on, the outbox keeps events",
                        self.router.connect_url("ingress"))
        elif self._lease.claim_at_start():  # before the read-back: a duplicate reads nothing
            self._recover_commands()
        if self._lease.refused is not None:
            raise DuplicateInstanceError(self.failure or "another instance holds the name")
        self._heartbeat(schedule=False)
        self.on_start()
        self.state = RUNNING
        if self._has_link():  # first, so that no "running" heartbeat shows a link not tried
            self._open_link()
        self._heartbeat()

    def _teardown(self) -> None:
        log.info("actor %s stopping: %s", self.name, self._stop_reason)
        self.state = STOPPING
        self._commands.stopping = True
        self._cancel_link_timer()
        if self._link.state in (CONNECTING, UP):
            self.link_down("actor stopping")
        try:
            self.on_stop()
        except Exception:
            log.exception("on_stop of actor %s failed", self.name)
        self._commands.fail_running("actor stopping")
        if self._bus is not None:
            if self.exit_code != EXIT_DUPLICATE:  # a duplicate's messages are all fenced
                self._heartbeat(schedule=False)
                self._flush(STOP_FLUSH)
                if self._lease is not None:
                    self._lease.release()
            elif self._bus.outbox_size:  # the router fences them: say what goes with us
                log.error("actor %s: %d envelope(s) not acknowledged leave with this instance "
                          "(the router fences every message of a name another instance "
                          "holds)", self.name, self._bus.outbox_size)
            self._bus.close()
        self._loop.close()

    def _flush(self, timeout: float) -> None:
        """Keep the loop turning (hand-overs such as log records, resends) until the router
        acked everything or `timeout` passed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._loop.run_once(max_wait=0.05)
            if self.bus.outbox_size == 0 and not self._loop.has_handover():
                return
        log.warning("actor %s: %d messages not acknowledged by the router at exit",
                    self.name, self.bus.outbox_size)

    # --- dispatch ---------------------------------------------------------------------------

    def _on_tick(self) -> None:
        self.bus.tick()
        congested, since = self.bus.congested, self._paused_since  # once a loop turn
        if congested == (since is not None):
            return
        if since is None:
            self._paused_since = time.time()
            self.counters["device_pauses"] = self.counters.get("device_pauses", 0) + 1
            log.info("actor %s: bus congested (%s), device reads paused", self.name,
                     self.bus.outbox_status())
            self.pause_device()
        else:
            log.info("actor %s: device reads resumed after %.1f s", self.name,
                     time.time() - since)
            self._paused_since = None
            self.resume_device()

    def _on_events(self, events: dict[Any, int]) -> None:
        for delivery in self.bus.handle(events):
            try:
                self._on_delivery(delivery)
            except Exception:  # one bad callback must not lose the rest of the batch
                log.exception("actor %s: handling %s failed", self.name, delivery)

    def _on_delivery(self, delivery: Delivery) -> None:
        if delivery.topic == self._cmd_topic:
            try:
                env = delivery.envelope
            except EnvelopeError as exc:
                log.warning("actor %s: undecodable command (gseq %d): %s; body %s", self.name,
                            delivery.gseq, exc, delivery.body[:64].hex())
                return
            if self._lease is not None and not self._lease.ensure():
                self.counters["commands_held"] = self.counters.get("commands_held", 0) + 1
                log.info("actor %s: command %s from %s not run yet: the router has not granted "
                         "this instance its name yet; the sender retries", self.name, env.id,
                         env.src)
                return
            if not self._recover_commands():
                self.counters["commands_held"] = self.counters.get("commands_held", 0) + 1
                log.info("actor %s: command %s from %s not run yet: command records not read "
                         "back (router journal unreachable); the sender retries", self.name,
                         env.id, env.src)
                return
            self._commands.dispatch(env)
            return
        for prefix, callback in self._subscriptions:
            if topics.matches(delivery.topic, prefix):
                callback(delivery)

    def _send_reply(self, env: Envelope, outcome: Outcome) -> None:
        self.bus.reply_to(env, outcome.status, outcome.result, outcome.error)

    def _record_run(self, env: Envelope, name: str, outcome: Outcome | None) -> int | None:
        """evt.<name>.run before and after a command runs (see actors.core.recovery); returns the
        started record's seq, which the command waits on (write-ahead)."""
        if outcome is None:
            return self.publish_event(
                recovery.EVENT, recovery.started_record(env.id, name, env.src, env.deadline)).seq
        try:
            self.publish_event(recovery.EVENT, recovery.done_record(env.id, name, env.src,
                                                                    outcome))
        except EnvelopeError:  # a result too big for the record: keep the outcome without it
            self.publish_event(recovery.EVENT, recovery.done_record(
                env.id, name, env.src, outcome._replace(result=None), omitted=True))
        return None

    def _when_recorded(self, seq: int, go: Callable[[bool], object]) -> None:
        lease = self._lease
        sent_at = time.monotonic()  # the started record was published just now
        self.bus.on_acked(seq, go if lease is None else lambda ok: lease.gate(ok, go, sent_at))

    def _duplicate(self, holder: dict[str, Any]) -> None:
        """Another instance holds this name (claim refused, or our messages fenced): say where
        it runs, run nothing more, exit EXIT_DUPLICATE."""
        self.exit_code = EXIT_DUPLICATE
        self.failure = (f"actor {self.name} already runs on {holder_text(holder)}; this "
                        f"instance exits")
        log.error("%s", self.failure)
        self.request_stop("another instance holds the name")

    def _recover_commands(self) -> bool:
        """Read this actor's recent command records back (at most once a second); until that
        has worked, commands are not run: they are retried by their senders."""
        if self._recovered or not self.bus.synced or time.monotonic() < self._next_recovery:
            return self._recovered
        self._next_recovery = time.monotonic() + 1.0
        records = recovery.read_back(self.bus, self.name, self.config["recover_horizon"])
        if records is None:
            return False
        self._recovered = True
        done, interrupted = recovery.settle(records, time.time())
        self._commands.preload(done, interrupted)
        if interrupted:
            log.warning("actor %s: %d command(s) were running when the previous process "
                        "ended; retries of them are refused (outcome unknown): %s", self.name,
                        len(interrupted), ", ".join(interrupted[:5]))
        return True

    # --- device link ------------------------------------------------------------------------

    def _has_link(self) -> bool:
        return self.wants_link()

    def _open_link(self) -> None:
        self._link_timer = None
        if self._stop_reason is not None:
            return
        change = self._change_link(CONNECTING, f"attempt {self._link.attempts + 1}")
        if change is None:
            return
        timeout = self.config["connect_timeout"]
        self._link_timer = self.call_later(timeout, self._connect_timed_out, timeout)
        try:
            self.open_link()
        except Exception as exc:
            log.exception("open_link of actor %s failed", self.name)
            self.link_down(f"open_link failed: {type(exc).__name__}: {exc}")

    def _connect_timed_out(self, timeout: float) -> None:
        self._link_timer = None
        if self._link.state == CONNECTING:
            self.link_down(f"no connection after {timeout:g} s")

    def _close_link(self) -> None:
        try:
            self.close_link()
        except Exception:
            log.exception("close_link of actor %s failed", self.name)

    def _cancel_link_timer(self) -> None:
        if self._link_timer is not None:
            self._link_timer.cancel()
            self._link_timer = None

    def _change_link(self, state: str, reason: str, retry: bool = False) -> LinkChange | None:
        previous = self._link.state
        try:
            change = self._link.change(state, reason, time.time(), time.monotonic(), retry)
        except LinkStateError as exc:
            log.warning("actor %s: %s", self.name, exc)
            return None
        if change is None:
            return None
        level = logging.WARNING if previous == UP else logging.INFO
        log.log(level, "actor %s link %s -> %s: %s%s", self.name, previous, state, reason,
                "" if change.retry_in is None else f" (retry in {change.retry_in:.2f} s)")
        self.publish_event("link", change.to_data())
        return change

    # --- heartbeat and logs -----------------------------------------------------------------

    def _heartbeat(self, schedule: bool = True) -> None:
        if schedule and self._stop_reason is None:
            self.call_later(self.config["heartbeat_interval"], self._heartbeat)
            if self._lease is not None:  # a new router epoch needs a new claim
                self._lease.ensure()
        self.bus.publish(topics.heartbeat(self.name), "heartbeat", self._status())

    def _status(self) -> dict[str, Any]:
        counters = dict(self._bus.counters) if self._bus is not None else {}
        # running, outbox: gauges (commands running now, envelopes not yet acked)
        counters.update(self.counters, callback_errors=self._loop.errors,
                        running=len(self._commands.running),
                        outbox=self._bus.outbox_size if self._bus is not None else 0)
        status = {
            "type": self.type_name, "state": self.state, "link": self._link.to_data(),
            "counters": counters, "pid": os.getpid(), "host": socket.gethostname(),
            "version": VERSION, "uptime": round(time.monotonic() - self._started, 3),
            "interval": self.config["heartbeat_interval"],  # lets readers judge staleness
            "config": self.config_digest,  # `sctl reload` restarts actors whose table changed
        }
        if self._bus is not None:  # the outbox's fill, and since when the device waits for it
            status["backpressure"] = {**self._bus.outbox_status(),
                                      "paused_since": self._paused_since}
        if self._lease is not None:
            status["lease"] = self._lease.to_data()
        if self.failure is not None:
            status["error"] = self.failure
        return status

    def publish_log(self, record: dict[str, Any]) -> None:
        """Loop thread: one structured log record to ``log.<name>`` (see BusLogHandler)."""
        if self._bus is not None:
            self._bus.publish(topics.log(self.name), "log", record)


Actor.commands = collect(Actor)  # __init_subclass__ does this for every subclass


def _describe_setting(s: Setting, value: Any) -> dict[str, Any]:
    kinds = s.kind if isinstance(s.kind, tuple) else (s.kind,)
    secret = any(w in s.name.split("_") for w in ("password", "secret", "token", "key"))
    return {"name": s.name, "type": " or ".join(k.__name__ for k in kinds), "doc": s.doc,
            "required": s.required, "default": None if secret else s.default,
            "value": "***" if secret and value else value}


def config_digest(actor: ActorConfig, router: RouterConfig) -> dict[str, str]:
    """Short digests of what an actor was started from: ``actor`` covers its table (type,
    placement, settings) and the router endpoints and keys it connects with, ``router`` the
    whole ``[router]`` table. Heartbeats carry them, so that `sctl reload` can tell, from a new
    site file, which running actors (and whether the router) run on changed settings."""
    bus = {k: getattr(router, k) for k in ("ingress", "egress", "query", "security")}
    return {"actor": _digest({"type": actor.type, "runs_on": actor.runs_on,
                              "settings": actor.settings, "bus": bus}),
            "router": _digest(dataclasses.asdict(router))}


def _digest(value: Any) -> str:
    def plain(obj: Any) -> Any:  # paths as absolute paths: `-c` relative or not, same digest
        return str(obj.resolve()) if isinstance(obj, Path) else str(obj)

    text = json.dumps(value, sort_keys=True, default=plain)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _version() -> str:
    with contextlib.suppress(metadata.PackageNotFoundError):
        return metadata.version("sctl")
    return "0+unknown"


VERSION: Final = _version()


class DuplicateInstanceError(Exception):
    """Raised out of `Actor._setup` when the router refused this instance its name."""
