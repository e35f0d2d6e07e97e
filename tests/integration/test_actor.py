"""The actor base end to end: a real router process, a real Bus client, the EchoActor talking
to a real TCP echo device on loopback. The actor runs in a thread (so tests can look inside it)
or as ``sctl actor NAME`` in a subprocess (signals, exit codes)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.core.actor import Actor
from actors.registry import create_actor
from broker.client.bus import Bus, Delivery
from broker.config import SiteConfig
from broker.wire.envelope import Envelope
from broker.wire.errors import RequestTimeout
from tests.support.actors import EchoActor
from tests.support.echo import EchoServer
from tests.support.stack import Stack

ECHO_TABLE = """
[actors.echo1]
type = "tests.support.actors:EchoActor"
port = {port}
heartbeat_interval = 0.2
backoff_min = 0.05
backoff_max = 0.4
connect_timeout = 2.0
{extra}
"""


@pytest.fixture
def device() -> Iterator[EchoServer]:
    server = EchoServer().start()
    yield server
    server.close()


def make_site(stack: Stack, device: EchoServer, extra: str = "") -> Path:
    return stack.write(ECHO_TABLE.format(port=device.port, extra=extra))


@pytest.fixture
def site_path(stack: Stack, device: EchoServer) -> Path:
    return make_site(stack, device)


@pytest.fixture
def site(site_path: Path, stack: Stack) -> SiteConfig:
    """The site with its router running."""
    stack.start_router()
    return stack.site


@pytest.fixture
def client(site: SiteConfig, stack: Stack) -> Bus:
    return stack.client(name="tester", wait=10.0)


class ActorThread:
    def __init__(self, actor: Actor) -> None:
        self.actor = actor
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, name=f"actor-{actor.name}", daemon=True)

    def _run(self) -> None:
        self.code = self.actor.run()

    def stop(self) -> int | None:
        self.actor.request_stop("test over")
        self.thread.join(10)
        assert not self.thread.is_alive(), "actor did not stop"
        return self.code


@pytest.fixture
def echo1(site: SiteConfig, client: Bus) -> Iterator[EchoActor]:
    """echo1 running in a thread, its link up."""
    actor = create_actor(site, "echo1")
    assert isinstance(actor, EchoActor)
    runner = ActorThread(actor)
    runner.thread.start()
    ping = client.request("echo1", "ping", timeout=10.0)
    wait_until(lambda: actor.link_state == "up", what="link up")
    assert ping.data["status"] == "ok"
    yield actor
    assert runner.stop() == 0


def wait_until(pred: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def collect(bus: Bus, done: Callable[[list[Delivery]], bool], timeout: float = 10.0,
            topic: str = "") -> list[Delivery]:
    """Poll `bus` until `done(deliveries so far)`; fail (not hang) after `timeout`."""
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while not done(got):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; got {[(d.topic, d.envelope.data) for d in got]}"
        got += [d for d in bus.poll(min(left, 0.2)) if d.topic.startswith(topic)]
    return got


def drain(bus: Bus, seconds: float, topic: str = "") -> list[Delivery]:
    """Everything that arrives in the next `seconds` (to show that nothing more comes)."""
    end = time.monotonic() + seconds
    got: list[Delivery] = []
    while (left := end - time.monotonic()) > 0:
        got += [d for d in bus.poll(left) if d.topic.startswith(topic)]
    return got


def send_and_collect(bus: Bus, command: str, args: dict[str, Any],
                     done: Callable[[list[Delivery]], bool]) -> list[Delivery]:
    """Send a command and collect deliveries until `done` and the reply is in."""
    req = bus.start_request("echo1", command, args, timeout=10.0)
    got = collect(bus, lambda g: req.done and done(g))
    assert req.reply is not None and req.reply.data["status"] == "ok", req.error or req.reply
    return got


def result(reply: Envelope) -> Any:
    assert reply.data["status"] == "ok", reply.data
    return reply.data["result"]


def send_raw(bus: Bus, command: str, args: dict[str, Any], *, id: str,
             deadline: float | None = None, actor: str = "echo1") -> None:
    bus.publish(f"cmd.{actor}", "command", {"command": command, "args": args}, id=id,
                reply_to="rep.tester", deadline=time.time() + 10 if deadline is None else deadline)


# --- commands --------------------------------------------------------------------------------


def test_commands_reply_and_errors_do_not_kill(client: Bus, echo1: EchoActor) -> None:
    assert result(client.request("echo1", "add", {"a": 2, "b": 3})) == 5
    assert result(client.request("echo1", "add", argv=["2"])) == 3  # positional word, default b
    assert result(client.request("echo1", "echo", argv=["hello device"])) == "hello device"
    assert result(client.request("echo1", "slow_thread", {"seconds": 0.05})) == {"slept": 0.05}
    bad = client.request("echo1", "add", argv=["x"])
    assert bad.data == {"status": "error", "result": None,
                        "error": "add: parameter a: expected an integer, got 'x'"}
    assert client.request("echo1", "fail").data["error"] == "failed on purpose"
    crash = client.request("echo1", "crash")
    assert crash.data["error"] == "internal error in crash: RuntimeError: crash on purpose"
    ping = result(client.request("echo1", "ping"))  # still serving
    assert ping["state"] == "running" and ping["link"]["state"] == "up"
    desc = result(client.request("echo1", "describe"))
    add = next(c for c in desc["commands"] if c["name"] == "add")
    assert [p["name"] for p in add["params"]] == ["a", "b"] and desc["type"] == "test-echo"


def test_same_command_id_runs_once(client: Bus, echo1: EchoActor) -> None:
    client.subscribe("rep.tester", gapless=False)
    for _ in range(3):
        send_raw(client, "add", {"a": 1, "b": 1}, id="dup-add")
    # one reply per copy that arrived after it finished, none for copies that arrived while it
    # waited for its record to be journaled: the same answer every time, and it ran once
    replies = collect(client, lambda got: len(got) >= 1, topic="rep.tester")
    replies += drain(client, 0.5, topic="rep.tester")
    assert {(r.envelope.corr, r.envelope.data["result"]) for r in replies} == {("dup-add", 2)}
    send_raw(client, "add", {"a": 1, "b": 1}, id="dup-add")  # a retry after it finished
    (again,) = collect(client, lambda got: len(got) >= 1, topic="rep.tester")
    assert again.envelope.data["result"] == 2
    # duplicates of a command still running: no reply now, exactly one when it finishes
    for _ in range(3):
        send_raw(client, "slow", {"seconds": 0.3}, id="dup-slow")
    (reply,) = collect(client, lambda got: len(got) >= 1, topic="rep.tester")
    assert reply.envelope.corr == "dup-slow"
    assert drain(client, 0.5, topic="rep.tester") == []  # no second reply
    runs = result(client.request("echo1", "runs"))
    assert runs["dup-add"] == 1 and runs["dup-slow"] == 1
    assert echo1.counters["command_duplicates"] == 5


def test_command_past_its_deadline_is_not_run(client: Bus, echo1: EchoActor) -> None:
    client.subscribe("rep.tester", gapless=False)
    send_raw(client, "add", {"a": 1}, id="too-late", deadline=time.time() - 5)
    (reply,) = collect(client, lambda got: len(got) >= 1, topic="rep.tester")
    error = reply.envelope.data["error"]
    assert error.startswith("deadline passed 5.") and error.endswith(" s ago; not run")
    assert "too-late" not in result(client.request("echo1", "runs"))


def test_commands_for_a_longer_name_are_ignored(client: Bus, echo1: EchoActor) -> None:
    """cmd.echo10 shares the ZeroMQ prefix of cmd.echo1; echo1 must not run it."""
    with pytest.raises(RequestTimeout):
        client.request("echo10", "add", {"a": 1}, timeout=0.8)
    assert echo1.counters["commands"] == 1  # only the fixture's ping


# --- link and heartbeat ----------------------------------------------------------------------


def link_states(got: list[Delivery]) -> list[str]:
    return [d.envelope.data["state"] for d in got if d.topic == "evt.echo1.link"]


def test_link_goes_down_and_comes_back_with_backoff(site: SiteConfig, client: Bus,
                                                     device: EchoServer) -> None:
    client.subscribe("evt.echo1.link")
    runner = ActorThread(create_actor(site, "echo1"))
    runner.thread.start()
    got = collect(client, lambda g: link_states(g)[-1:] == ["up"])
    assert link_states(got) == ["connecting", "up"]
    device.stop()  # device closes the connection and stops listening
    got = collect(client, lambda g: link_states(g).count("down") >= 4)
    events = [d.envelope.data for d in got]
    assert events[0]["state"] == "down" and events[0]["previous"] == "up"
    assert events[0]["reason"] == "device closed the connection"
    refused = [e for e in events if e["state"] == "down"][1:]
    assert all("Connection refused" in e["reason"] for e in refused)
    assert all(0.05 <= e["retry_in"] <= 0.4 for e in refused)
    assert [e["attempt"] for e in refused] == sorted(e["attempt"] for e in refused)
    device.start()  # same port
    got = collect(client, lambda g: link_states(g)[-1:] == ["up"])
    assert link_states(got)[-2:] == ["connecting", "up"]
    assert runner.stop() == 0


def test_heartbeat_fields(site: SiteConfig, client: Bus, echo1: EchoActor) -> None:
    client.subscribe("hb.echo1")
    (hb,) = collect(client, lambda g: len(g) >= 1)
    data = hb.envelope.data
    assert hb.envelope.kind == "heartbeat"
    assert {"type", "state", "link", "counters", "pid", "host", "version", "uptime"} <= set(data)
    assert data["type"] == "test-echo" and data["state"] == "running"
    assert set(data["link"]) == {"state", "since", "reason", "down_since", "attempts",
                                 "last_error"} and data["link"]["state"] == "up"
    assert {"commands", "command_errors", "command_duplicates", "events", "outbox_dropped"} \
        <= set(data["counters"])


# --- the process: signals and exit codes -----------------------------------------------------


def test_sigterm_stops_gracefully_with_exit_0(site: SiteConfig, client: Bus,
                                              stack: Stack) -> None:
    client.subscribe("hb.echo1")
    client.subscribe("evt.echo1.link")
    client.subscribe("log.echo1")
    proc = stack.start_actor("echo1")
    collect(client, lambda g: "up" in link_states(g), timeout=20)
    send_and_collect(client, "warn", {"text": "to the bus"},
                     lambda g: any(d.topic == "log.echo1" for d in g))
    assert proc.kill(signal.SIGTERM) == 0, proc.output()
    got = collect(client, lambda g: any(d.topic == "hb.echo1"
                                        and d.envelope.data["state"] == "stopping" for d in g))
    down = [d.envelope.data for d in got if d.topic == "evt.echo1.link"]
    assert down[-1]["state"] == "down" and down[-1]["reason"] == "actor stopping"


def test_warning_reaches_log_topic(site: SiteConfig, client: Bus, stack: Stack) -> None:
    client.subscribe("log.echo1")
    stack.start_actor("echo1")
    client.request("echo1", "ping", timeout=20)
    (rec,) = send_and_collect(client, "warn", {"text": "to the bus"}, lambda g: len(g) >= 1)
    data = rec.envelope.data
    assert data["level"] == "WARNING" and data["message"] == "warn command: to the bus"
    assert data["logger"] == "tests.support.actors" and rec.envelope.kind == "log"


def test_exception_in_on_start_exits_non_zero(stack: Stack, device: EchoServer) -> None:
    make_site(stack, device, "fail_on_start = true")
    stack.start_router()
    bus = stack.client(name="tester", wait=10.0)
    bus.subscribe("log.echo1")
    proc = stack.start_actor("echo1")
    assert proc.popen is not None
    assert proc.popen.wait(timeout=20) == 1, proc.output()
    assert "fail_on_start is set" in proc.output()
    (rec,) = collect(bus, lambda g: len(g) >= 1)  # the failure reached the bus too
    assert "fail_on_start is set" in rec.envelope.data["exc"]


def test_unknown_setting_exits_before_start(stack: Stack, device: EchoServer) -> None:
    make_site(stack, device, "heartbeat_intervall = 1")
    proc = stack.start_actor("echo1")
    assert proc.popen is not None
    assert proc.popen.wait(timeout=20) != 0
    assert "actors.echo1.heartbeat_intervall" in proc.output()
