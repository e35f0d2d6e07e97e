"""The actor base in parts, without network sockets: backoff, link state machine, parameter
binding and conversion, the reply cache and exactly-once dispatch, the loop, the log handler,
settings and the registry."""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from actors.core.actor import BASE_SETTINGS, Actor
from actors.core.buslog import BusLogHandler
from actors.core.commands import (
    CommandError,
    CommandSpec,
    Deferred,
    Dispatcher,
    Outcome,
    Param,
    ReplyCache,
    bind,
    collect,
    command,
    convert,
    parse_call,
)
from actors.core.link import CONNECTING, DOWN, IDLE, UP, Backoff, Link, LinkStateError
from actors.core.loop import Loop, TimerHandle
from actors.registry import actor_class, create_actor
from broker.config import load_site
from broker.wire.envelope import Envelope, make
from broker.wire.errors import ConfigError
from tests.support.actors import EchoActor
from tests.support.stack import ANY_PORT, write_site

# --- backoff ---------------------------------------------------------------------------------


def test_backoff_grows_jittered_within_bounds() -> None:
    b = Backoff(0.5, 30.0, random.Random(1))
    delays = [b.next_delay() for _ in range(12)]
    assert delays[0] == 0.5  # attempt 0: base == minimum, nothing to jitter below it
    for n, d in enumerate(delays):
        base = min(30.0, 0.5 * 2**n)
        assert max(0.5, base / 2) <= d <= base
    assert delays[-1] >= 15.0  # capped at maximum, jitter at most halves it
    assert len({round(d, 6) for d in delays[6:]}) > 1  # jittered, not lockstep


def test_backoff_reset_and_huge_attempts() -> None:
    b = Backoff(1.0, 8.0)
    b.attempt = 5000  # no float overflow after a very long outage
    assert 4.0 <= b.next_delay() <= 8.0
    b.reset()
    assert b.next_delay() == 1.0


def test_backoff_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0)
    with pytest.raises(ValueError):
        Backoff(0.0, 1.0)


# --- link state machine ----------------------------------------------------------------------


def make_link(stable_after: float = 10.0) -> Link:
    return Link(Backoff(1.0, 64.0, random.Random(0)), stable_after)


def test_link_transitions_and_event_data() -> None:
    link = make_link()
    assert link.state == IDLE
    c = link.change(CONNECTING, "attempt 1", now=100.0, mono=1.0)
    assert c is not None and (c.previous, c.state, c.attempt, c.retry_in) == (IDLE, CONNECTING,
                                                                                1, None)
    c = link.change(UP, "connected", now=101.0, mono=2.0)
    assert c is not None and c.to_data() == {"state": UP, "previous": CONNECTING,
                                             "reason": "connected", "since": 101.0,
                                             "attempt": 1, "retry_in": None,
                                             "down_since": None}
    assert link.change(UP, "again", now=102.0, mono=3.0) is None  # same state: no event
    c = link.change(DOWN, "peer closed", now=103.0, mono=4.0, retry=True)
    assert c is not None and c.retry_in is not None and c.reason == "peer closed"
    assert link.to_data() == {"state": DOWN, "since": 103.0, "reason": "peer closed",
                              "down_since": 103.0, "attempts": 0, "last_error": "peer closed"}


@pytest.mark.parametrize(("start", "to"), [(CONNECTING, CONNECTING + "x"), (UP, CONNECTING)])
def test_link_refuses_transitions_not_in_the_table(start: str, to: str) -> None:
    link = make_link()
    link.state = start
    with pytest.raises(LinkStateError):
        link.change(to, "bug", now=0.0, mono=0.0)


def test_flapping_device_keeps_backing_off() -> None:
    """Accept-then-close at once: the backoff must keep growing, not reset on every 'up'."""
    link = make_link(stable_after=5.0)
    mono, retries = 0.0, []
    for _ in range(6):
        link.change(CONNECTING, "", 0.0, mono)
        link.change(UP, "", 0.0, mono)
        mono += 0.01
        c = link.change(DOWN, "closed", 0.0, mono, retry=True)
        assert c is not None and c.retry_in is not None
        retries.append(c.retry_in)
        mono += c.retry_in
    assert retries[-1] >= 16.0 and link.attempts == 6


def test_stable_link_resets_backoff() -> None:
    link = make_link(stable_after=5.0)
    for _ in range(4):
        link.change(CONNECTING, "", 0.0, 0.0)
        link.change(DOWN, "refused", 0.0, 0.0, retry=True)
    assert link.backoff.attempt == 4
    link.change(CONNECTING, "", 0.0, 100.0)
    link.change(UP, "", 0.0, 100.0)
    c = link.change(DOWN, "closed", 0.0, 106.0, retry=True)
    assert c is not None and c.retry_in == 1.0 and c.attempt == 0


# --- parameters ------------------------------------------------------------------------------

SPEC = collect(type("Adder", (), {
    "add": command("add", Param("a", int), Param("b", int, default=1))(lambda self, a, b: a + b),
}))["add"]


@pytest.mark.parametrize(("kind", "raw", "value"), [
    (int, "42", 42), (int, "0x1F", 31), (int, "-0x10", -16), (int, "010", 10), (int, 7, 7),
    (int, 3.0, 3), (float, "2.5", 2.5), (float, 2, 2.0), (bool, "on", True), (bool, "FALSE", False),
    (bool, 1, True), (bool, "no", False), (str, "x y", "x y"), (bytes, "02 41 03", b"\x02A\x03"),
    (bytes, b"\x00", b"\x00"), (object, [1, {"a": 2}], [1, {"a": 2}]),
])
def test_convert_accepts(kind: type, raw: Any, value: Any) -> None:
    got = convert(Param("p", kind), raw)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(("kind", "raw", "message"), [
    (int, "x", "parameter p: expected an integer, got 'x'"),
    (int, True, "parameter p: expected an integer, got bool True"),
    (int, 2.5, "parameter p: expected an integer, got float 2.5"),
    (float, "nan", "parameter p: expected a number, got 'nan'"),
    (bool, "maybe", "parameter p: expected true or false, got 'maybe'"),
    (bool, 2, "parameter p: expected true or false, got int 2"),
    (str, 5, "parameter p: expected a string, got int 5"),
    (bytes, "zz", "parameter p: expected hex bytes such as '02 41 03', got 'zz'"),
])
def test_convert_refuses_with_the_parameter_name(kind: type, raw: Any, message: str) -> None:
    with pytest.raises(CommandError) as info:
        convert(Param("p", kind), raw)
    assert str(info.value) == message


def test_bind_positional_named_and_defaults() -> None:
    assert bind(SPEC, {}, ["2"]) == {"a": 2, "b": 1}
    assert bind(SPEC, {"b": "5"}, ["2"]) == {"a": 2, "b": 5}
    assert bind(SPEC, {"a": 3, "b": 4}, []) == {"a": 3, "b": 4}


def test_bind_words_name_only_declared_parameters() -> None:
    """`sctl send` passes every word as argv: ``b=5`` names b; ``VOLT=1`` is just data."""
    assert bind(SPEC, {}, ["2", "b=5"]) == {"a": 2, "b": 5}
    assert bind(SPEC, {}, ["b=5", "2"]) == {"a": 2, "b": 5}
    text = CommandSpec("write", (Param("data", str),), "", "cmd_write")
    assert bind(text, {}, ["VOLT=1"]) == {"data": "VOLT=1"}
    assert bind(text, {}, ["data=x=5"]) == {"data": "x=5"}
    with pytest.raises(CommandError, match="parameter b given twice"):
        bind(SPEC, {"b": 1}, ["1", "b=2"])


@pytest.mark.parametrize(("args", "argv", "message"), [
    ({}, ["x"], "add: parameter a: expected an integer, got 'x'"),
    ({}, [], "add: missing parameter a (int); usage: add a [b]"),
    ({}, ["1", "2", "3"], "add: too many arguments: takes a, b, got 3 (usage: add a [b])"),
    ({"c": 1}, ["1"], "add: unknown parameter 'c' (parameters: a, b)"),
    ({"a": "1"}, ["1"], "add: parameter a given twice (by position and by name)"),
])
def test_bind_errors_name_the_command(args: dict[str, Any], argv: list[str],
                                      message: str) -> None:
    with pytest.raises(CommandError) as info:
        bind(SPEC, args, argv)
    assert str(info.value) == message


@pytest.mark.parametrize("data", [{}, {"command": 3}, {"command": "x", "args": [1]},
                                  {"command": "x", "argv": "a b"}, {"command": "x", "argv": [1]}])
def test_parse_call_refuses_malformed(data: dict[str, Any]) -> None:
    with pytest.raises(CommandError, match="malformed command"):
        parse_call(data)


def test_command_declaration_rules() -> None:
    with pytest.raises(ValueError, match="follows a parameter with a default"):
        command("x", Param("a", int, default=1), Param("b", int))
    with pytest.raises(ValueError, match="duplicate"):
        command("x", Param("a"), Param("a"))
    with pytest.raises(ValueError, match="identifier"):
        Param("not-an-identifier")
    with pytest.raises(ValueError, match="kind"):
        Param("a", list)


def test_commands_are_collected_and_described() -> None:
    assert {"describe", "ping", "echo", "add", "runs", "crash"} <= set(EchoActor.commands)
    assert set(Actor.commands) == {"describe", "ping"}
    add = EchoActor.commands["add"].describe()
    assert add["params"] == [
        {"name": "a", "type": "int", "required": True, "doc": ""},
        {"name": "b", "type": "int", "required": False, "doc": "", "default": 1},
    ]
    assert EchoActor.commands["echo"].doc.startswith("Send a line to the device")

    class Sub(EchoActor):
        @command("add", Param("a", int))
        def add2(self, a: int) -> int:
            return -a

    assert collect(Sub)["add"].attr == "add2"


# --- reply cache and dispatch ----------------------------------------------------------------


def test_reply_cache_is_a_bounded_lru() -> None:
    cache = ReplyCache(2)
    ok = Outcome("ok", 1, "")
    cache.put("a", ok)
    cache.put("b", ok)
    assert cache.get("a") == ok  # refreshes a
    cache.put("c", ok)
    assert "b" not in cache and "a" in cache and "c" in cache and cache.evicted == 1


class FakeLoop:
    def __init__(self) -> None:
        self.timers: list[tuple[float, Callable[..., object], tuple[Any, ...]]] = []
        self.handed_over: list[tuple[Callable[..., object], tuple[Any, ...]]] = []
        self.handles: list[TimerHandle] = []
        self.thread = threading.get_ident()

    def in_loop_thread(self) -> bool:
        return threading.get_ident() == self.thread

    def call_soon_threadsafe(self, fn: Callable[..., object], *args: Any) -> None:
        self.handed_over.append((fn, args))

    def call_later(self, delay: float, fn: Callable[..., object], *args: Any) -> TimerHandle:
        self.timers.append((delay, fn, args))
        self.handles.append(TimerHandle(delay, fn, args))
        return self.handles[-1]


class Target:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.deferred: Deferred | None = None

    @command("add", Param("a", int), Param("b", int, default=1))
    def add(self, a: int, b: int) -> int:
        self.calls.append("add")
        return a + b

    @command("later")
    def later(self) -> Deferred:
        self.calls.append("later")
        self.deferred = Deferred()
        return self.deferred

    @command("crash")
    def crash(self) -> None:
        raise KeyError("boom")

    @command("unsendable")
    def unsendable(self) -> object:
        return object()

    @command("encode")
    def encode(self) -> None:
        from broker.wire.errors import LocalProtocolError
        raise LocalProtocolError("LEDS must be 8 hex digits, got '123'")


class Harness:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.sent: list[tuple[str, Outcome]] = []
        self.loop = FakeLoop()
        self.target = Target()
        self.counters: dict[str, int] = {}
        self.d = Dispatcher(collect(Target), self.target, self.send, self.loop, 10,
                            self.counters, clock=lambda: self.now)

    def send(self, env: Envelope, outcome: Outcome) -> None:
        if outcome.result is not None and not isinstance(outcome.result, int | str | dict):
            from broker.wire.errors import EnvelopeError
            raise EnvelopeError("not msgpack-native")
        self.sent.append((env.id, outcome))


def cmd(name: str, *, id: str = "c1", deadline: float | None = 2000.0, **args: Any) -> Envelope:
    return make("tester", 1, 1, "command", {"command": name, "args": args}, id=id,
                reply_to="rep.tester", deadline=deadline)


def test_duplicate_of_a_finished_command_gets_the_cached_reply() -> None:
    h = Harness()
    for _ in range(3):
        h.d.dispatch(cmd("add", a=2, b=3))
    assert h.target.calls == ["add"]
    assert h.sent == [("c1", Outcome("ok", 5, ""))] * 3
    assert h.counters["command_duplicates"] == 2 and h.counters["commands"] == 1


def test_a_codec_refusing_the_arguments_is_an_error_reply_not_an_internal_error() -> None:
    h = Harness()
    h.d.dispatch(cmd("encode"))
    assert h.sent == [("c1", Outcome("error", None, "LEDS must be 8 hex digits, got '123'"))]


def test_duplicate_of_a_running_command_waits_for_the_one_reply() -> None:
    h = Harness()
    h.d.dispatch(cmd("later"))
    h.d.dispatch(cmd("later"))
    assert h.sent == [] and h.target.calls == ["later"]
    assert h.target.deferred is not None
    h.target.deferred.resolve("done")
    h.target.deferred.resolve("again")  # ignored: first settle wins
    assert h.sent == [("c1", Outcome("ok", "done", ""))]
    assert h.loop.handles[0].cancelled  # the deadline timer goes with it
    h.d.dispatch(cmd("later"))
    assert len(h.sent) == 2 and h.target.calls == ["later"]


def test_expired_command_is_not_run_and_the_answer_is_cached() -> None:
    h = Harness(now=1003.25)
    h.d.dispatch(cmd("add", a=1, deadline=1000.0))
    assert h.target.calls == []
    assert h.sent == [("c1", Outcome("error", None, "deadline passed 3.2 s ago; not run"))]
    h.now = 900.0  # even a retry that seems on time now gets the same answer
    h.d.dispatch(cmd("add", a=1, deadline=1000.0))
    assert h.target.calls == [] and h.counters["command_expired"] == 1


def test_errors_become_replies() -> None:
    h = Harness()
    h.d.dispatch(cmd("nope", id="u"))
    h.d.dispatch(cmd("add", id="x", a="x"))
    h.d.dispatch(cmd("crash", id="k"))
    h.d.dispatch(cmd("unsendable", id="s"))
    errors = {i: o.error for i, o in h.sent}
    assert errors["u"] == "unknown command 'nope' (commands: add, crash, encode, later, unsendable)"
    assert errors["x"] == "add: parameter a: expected an integer, got 'x'"
    assert errors["k"] == "internal error in crash: KeyError: 'boom'"
    assert errors["s"].startswith("internal error: result cannot be sent")
    assert h.counters["command_errors"] == 4


def test_deferred_deadline_timer_and_stop() -> None:
    h = Harness()
    h.d.dispatch(cmd("later", id="a"))
    (delay, fn, args), = h.loop.timers
    assert delay == pytest.approx(1000.0)
    fn(*args)  # the deadline timer fires
    assert h.sent[-1] == ("a", Outcome("error", None, "later: no result by the command's deadline"))
    h.d.dispatch(cmd("later", id="b"))
    h.d.stopping = True
    h.d.fail_running("actor stopping")
    h.d.dispatch(cmd("add", id="c", a=1))
    assert [(i, o.error) for i, o in h.sent[1:]] == [("b", "actor stopping"),
                                                      ("c", "actor stopping; not run")]
    assert not h.d.running


def test_deferred_settled_from_another_thread_is_handed_over() -> None:
    h = Harness()
    h.d.dispatch(cmd("later"))
    deferred = h.target.deferred
    assert deferred is not None
    t = threading.Thread(target=deferred.resolve, args=("x",))
    t.start()
    t.join()
    assert h.sent == [] and len(h.loop.handed_over) == 1
    fn, args = h.loop.handed_over[0]
    fn(*args)
    assert h.sent == [("c1", Outcome("ok", "x", ""))]


def test_non_command_envelopes_are_ignored() -> None:
    h = Harness()
    h.d.dispatch(make("tester", 1, 1, "event", {"command": "add"}))
    assert h.sent == []


# --- the loop --------------------------------------------------------------------------------


def test_loop_timers_readers_handover_and_errors() -> None:
    loop = Loop()
    seen: list[str] = []
    r, w = os.pipe()
    try:
        loop.call_later(0.05, seen.append, "late")
        loop.call_later(0.0, seen.append, "soon")
        loop.call_later(0.0, seen.append, "cancelled").cancel()
        loop.call_soon(lambda: 1 / 0)
        loop.add_reader(r, lambda: seen.append(os.read(r, 10).decode()))
        threading.Timer(0.01, loop.call_soon_threadsafe, args=(seen.append, "handed")).start()
        os.write(w, b"data")
        deadline = time.monotonic() + 5
        while "late" not in seen and time.monotonic() < deadline:
            loop.run_once()
        assert seen.index("soon") < seen.index("late")
        assert "data" in seen and "handed" in seen and "cancelled" not in seen
        assert loop.errors == 1  # the ZeroDivisionError was logged and counted, not raised
        loop.remove_reader(r)
    finally:
        loop.close()
        os.close(r)
        os.close(w)
    loop.call_soon_threadsafe(seen.append, "after close")  # dropped silently


def test_handover_wakes_a_sleeping_loop() -> None:
    loop = Loop()
    got = threading.Event()
    threading.Timer(0.05, loop.call_soon_threadsafe, args=(got.set,)).start()
    start = time.monotonic()
    loop.run_once(max_wait=5.0)
    loop.close()
    assert got.is_set() and time.monotonic() - start < 2.0


# --- log handler -----------------------------------------------------------------------------


class LogOwner:
    def __init__(self) -> None:
        self.counters: dict[str, int] = {}
        self.records: list[dict[str, Any]] = []
        self.pending: list[tuple[Callable[..., object], tuple[Any, ...]]] = []
        self.logger = logging.getLogger("tests.buslog.inner")

    def call_soon_threadsafe(self, fn: Callable[..., object], *args: Any) -> None:
        self.pending.append((fn, args))

    def publish_log(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self.logger.warning("a warning while publishing")  # must not come back

    def run(self) -> None:
        while self.pending:
            fn, args = self.pending.pop(0)
            fn(*args)


def test_bus_log_handler_formats_rate_limits_and_does_not_feed_back() -> None:
    owner = LogOwner()
    handler = BusLogHandler(owner, rate=3)
    logger = logging.getLogger("tests.buslog")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.info("below the level")
        try:
            raise ValueError("bad")
        except ValueError:
            logger.exception("it failed: %s", "x")
        for i in range(5):
            logger.warning("w%d", i)
        owner.run()
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    first = owner.records[0]
    assert (first["level"], first["logger"], first["message"]) == ("ERROR", "tests.buslog",
                                                                   "it failed: x")
    assert "ValueError: bad" in first["exc"]
    assert [r["message"] for r in owner.records] == ["it failed: x", "w0", "w1"]
    assert owner.counters["log_suppressed"] == 3
    assert not owner.pending  # the warning logged while publishing was not handed over


# --- settings and registry -------------------------------------------------------------------


def echo_site(tmp_path: Path, table: str) -> Path:
    return write_site(tmp_path, '[actors.e1]\ntype = "tests.support.actors:EchoActor"\n' + table,
                      endpoints=ANY_PORT)  # never bound: no socket


def test_settings_are_checked_with_the_key_path(tmp_path: Path) -> None:
    site = load_site(echo_site(tmp_path, "port = 1234\nheartbeat_intervall = 2\n"))
    with pytest.raises(ConfigError) as info:
        create_actor(site, "e1")
    assert info.value.path == "actors.e1.heartbeat_intervall"
    site = load_site(echo_site(tmp_path, "port = 1234\nbackoff_min = 5\nbackoff_max = 1\n"))
    with pytest.raises(ConfigError, match=r"actors\.e1\.backoff_min"):
        create_actor(site, "e1")
    site = load_site(echo_site(tmp_path, ""))
    with pytest.raises(ConfigError, match=r"actors\.e1\.port: is required"):
        create_actor(site, "e1")


def test_actor_from_site_and_describe(tmp_path: Path) -> None:
    site = load_site(echo_site(tmp_path, "port = 1234\nheartbeat_interval = 2\n"))
    actor = create_actor(site, "e1")
    assert isinstance(actor, EchoActor)
    assert actor.config["heartbeat_interval"] == 2.0 and actor.config["backoff_max"] == 30.0
    desc = actor.cmd_describe()
    assert desc["type"] == "test-echo" and desc["name"] == "e1"
    assert [c["name"] for c in desc["commands"]][:3] == ["add", "crash", "describe"]
    settings = {s["name"]: s for s in desc["settings"]}
    assert set(settings) == {s.name for s in BASE_SETTINGS} | {"host", "port", "fail_on_start"}
    assert settings["port"]["value"] == 1234 and settings["port"]["required"]


def test_registry_errors() -> None:
    with pytest.raises(ConfigError) as info:
        actor_class("springcore-tcpp", "actors.r1.type")
    assert info.value.path == "actors.r1.type"
    assert "unknown actor type 'springcore-tcpp' (known:" in info.value.reason
    with pytest.raises(ConfigError, match=r"cannot import 'tests\.support\.nothing'"):
        actor_class("tests.support.nothing:X")
    with pytest.raises(ConfigError, match="is missing"):
        actor_class("tests.support.actors:Nope")
    with pytest.raises(ConfigError, match="is not an Actor subclass"):
        actor_class("tests.support.echo:EchoServer")
    assert actor_class("tests.support.actors:EchoActor") is EchoActor
