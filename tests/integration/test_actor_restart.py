"""Exactly-once across a crash: the actor process is SIGKILLed and supervisord-style restarted;
retries of its commands are answered from its journaled records, never run twice."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker.client.bus import Bus, Delivery
from broker.config import load_site
from tests.support.echo import EchoServer
from tests.support.stack import Stack

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def device() -> Iterator[EchoServer]:
    server = EchoServer().start()
    yield server
    server.close()


def ask(bus: Bus, got: list[Delivery], command: str, args: dict[str, object], cid: str,
        timeout: float = 20) -> dict[str, object]:
    """Publish command `cid` (same id every time, as a requester's retries are) until its reply
    comes back."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        bus.publish("cmd.echo1", "command", {"command": command, "args": args}, id=cid,
                    reply_to="rep.tester", deadline=time.time() + 60)
        resend = time.monotonic() + 1.0
        while time.monotonic() < resend:
            got += bus.poll(0.1)
            for d in got:
                if d.topic == "rep.tester" and d.envelope.corr == cid:
                    return dict(d.envelope.data)
    raise AssertionError(f"no reply to {cid}; got {[d.topic for d in got]}")


def wait_topic(bus: Bus, got: list[Delivery], pred: Callable[[Delivery], bool],
               timeout: float = 20) -> Delivery:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got += bus.poll(0.2)
        for d in got:
            if pred(d):
                return d
    raise AssertionError(f"not seen; got {[d.topic for d in got]}")


@pytest.mark.parametrize("scenario", ["plain", "router_late", "flood"])
def test_retries_after_a_crash_are_not_run_again(tmp_path: Path, device: EchoServer,
                                                  stack: Stack, scenario: str) -> None:
    """plain: only the actor dies. router_late: the router (with its journal file) dies too and
    comes back after the actor has restarted, so the actor must hold commands until it can read
    its records. flood: 60 000 other messages are journaled between the crash and the retry."""
    site_path = stack.write(
        '[actors.echo1]\ntype = "tests.support.actors:EchoActor"\n'
        f"port = {device.port}\nheartbeat_interval = 0.2\n",
        router_extra=f'journal_path = "{tmp_path / "journal.bin"}"')
    router = stack.start_router()  # router.start() later binds the same endpoints
    actor = stack.start_actor("echo1")
    bus = Bus(load_site(site_path).router, "tester")
    bus.subscribe("rep.tester")
    bus.subscribe("evt.echo1.run")
    assert bus.connect(wait=15)
    got: list[Delivery] = []
    try:
        assert ask(bus, got, "add", {"a": 2}, "cmd-a") == {"status": "ok", "result": 3,
                                                           "error": ""}
        bus.publish("cmd.echo1", "command", {"command": "slow", "args": {"seconds": 30}},
                    id="cmd-b", reply_to="rep.tester", deadline=time.time() + 60)
        wait_topic(bus, got, lambda d: d.topic == "evt.echo1.run"
                   and d.envelope.data["id"] == "cmd-b")  # started, journaled
        assert actor.kill() != 0  # SIGKILL mid-command
        if scenario == "flood":  # before the actor is back: its records are 60 000 back
            flooder = Bus(load_site(site_path).router, "flooder")
            assert flooder.connect(wait=10)
            for i in range(60_000):
                flooder.publish("evt.flood.n", "event", {"i": i})
                if i % 500 == 0:
                    flooder.poll(0)
            assert flooder.flush(60)
            flooder.close()
        if scenario == "router_late":
            router.kill()
            actor.start()
            time.sleep(3.0)  # the actor starts, cannot reach the router, holds commands
            router.start()
        else:
            actor.start()
        got.clear()
        # a retry of the finished command, then of the interrupted one
        assert ask(bus, got, "add", {"a": 2}, "cmd-a", timeout=30) == {
            "status": "ok", "result": 3, "error": ""}
        reply = ask(bus, got, "slow", {"seconds": 30}, "cmd-b")
        assert reply["status"] == "error" and "not run again" in str(reply["error"])
        runs = ask(bus, got, "runs", {}, "cmd-runs")["result"]
        assert isinstance(runs, dict) and "cmd-a" not in runs and "cmd-b" not in runs
    finally:
        bus.close()
