"""One live instance per actor name: a real router, a bus-link actor ``b1`` to an instrument
stand-in that accepts several clients and records every line written to it, and a second
``sctl actor b1`` started by hand beside the first (see docs/leases.md).

The stand-in is the point of the test: it would accept the duplicate's connection and its
writes, so "each write recorded exactly once" can only hold because the duplicate never runs.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker import security
from broker.client import lease as client_lease
from broker.client.bus import Bus
from broker.wire.errors import BusError
from tests.support.echo import Recorder
from tests.support.stack import Stack, wait_for

EXIT_DUPLICATE = 4
HEARTBEAT = 0.5
TTL = 3 * HEARTBEAT

TABLES = """
[actors.b1]
type = "bus-link"
host = "127.0.0.1"
port = {port}
timeout = 5.0
heartbeat_interval = {hb}
backoff_min = 0.05
backoff_max = 0.2
"""


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    yield rec
    rec.close()


def leases(bus: Bus) -> dict[str, dict[str, Any]]:
    try:
        return client_lease.leases(bus)
    except BusError:
        return {}


def holder_pid(bus: Bus) -> int | None:
    held = leases(bus).get("b1")
    return None if held is None else int(held["pid"])


def send_writes(bus: Bus, tag: str, n: int) -> list[str]:
    sent = []
    for i in range(n):
        line = f"OPEN_VALVE-{tag}-{i}"
        reply = bus.request("b1", "write", {"data": line + "\\n"}, timeout=10.0)
        assert reply.data["status"] == "ok", reply.data
        sent.append(line)
    return sent


def test_a_second_instance_is_refused_and_every_command_runs_once(
        stack: Stack, recorder: Recorder) -> None:
    stack.write(TABLES.format(port=recorder.port, hb=HEARTBEAT))
    stack.start_router()
    feed = stack.watch("sys.router.lease", "sys.router.denied")
    bus = feed.bus
    first = stack.start_actor("b1")
    stack.wait_ready("b1")
    assert first.popen is not None
    wait_for(lambda: holder_pid(bus) == first.popen.pid if first.popen else False, 10,
             "b1's lease held by the first instance")
    sent = send_writes(bus, "a", 5)

    second = stack.start_actor("b1", log="b1-second")
    assert second.popen is not None
    code = second.popen.wait(timeout=30)
    out = second.output()
    assert code == EXIT_DUPLICATE, out[-3000:]
    host = socket.gethostname()
    assert f"actor b1 already runs on host {host} (pid {first.popen.pid})" in out, out[-3000:]
    assert "this instance exits" in out
    feed.wait("sys.router.lease", lambda d: d["event"] == "refused"
              and d["claimant"]["pid"] == second.popen.pid if second.popen else False)

    sent += send_writes(bus, "b", 5)
    wait_for(lambda: len(recorder.writes()) >= len(sent), 10, "every write at the instrument")
    feed.drain(1.0)  # anything written twice would arrive meanwhile
    assert recorder.writes() == sent
    assert recorder.accepted == 1  # the duplicate never opened the device link

    status = json.loads(stack.sctl("status", "--json").stdout)
    row = status["actors"]["b1"]
    assert row["holder"]["pid"] == first.popen.pid and row["pid"] == first.popen.pid, row
    assert status["router"]["leases"]["b1"]["host"] == host


def test_a_clean_stop_frees_the_name_at_once_and_a_kill_within_the_ttl(
        stack: Stack, recorder: Recorder) -> None:
    stack.write(TABLES.format(port=recorder.port, hb=HEARTBEAT))
    stack.start_router()
    feed = stack.watch("sys.router.lease")
    bus = feed.bus
    first = stack.start_actor("b1")
    stack.wait_ready("b1")
    assert first.stop() == 0
    feed.wait("sys.router.lease", lambda d: d["event"] == "released", timeout=5)
    assert "b1" not in leases(bus)  # free at once: a successor needs no ttl

    second = stack.start_actor("b1", log="b1-second")
    stack.wait_ready("b1")
    assert second.popen is not None and holder_pid(bus) == second.popen.pid
    sent = send_writes(bus, "c", 3)

    killed_at = time.monotonic()
    second.kill()  # SIGKILL: nothing released; the lease runs out ttl after its last message
    feed.wait("sys.router.lease", lambda d: d["event"] == "expired"
              and d["pid"] == second.popen.pid if second.popen else False, timeout=TTL + 10)
    assert time.monotonic() - killed_at >= TTL - 0.5  # not before its ttl (a clock margin)
    third = stack.start_actor("b1", log="b1-third")
    stack.wait_ready("b1")
    assert third.popen is not None and holder_pid(bus) == third.popen.pid
    sent += send_writes(bus, "d", 3)
    wait_for(lambda: len(recorder.writes()) >= len(sent), 10, "every write at the instrument")
    assert recorder.writes() == sent


def test_a_fenced_publisher_is_refused_by_the_router_and_told_why(
        stack: Stack, recorder: Recorder) -> None:
    """A Bus publishing under a held name (a host back from a partition) is fenced: nothing of
    it is journaled, the holder is named on ack and sys.router.denied."""
    stack.write(TABLES.format(port=recorder.port, hb=HEARTBEAT))
    stack.start_router()
    feed = stack.watch("evt.b1.", "sys.router.denied")
    stack.start_actor("b1")
    stack.wait_ready("b1")
    rogue = stack.client(name="b1")
    told: list[dict[str, Any]] = []
    rogue.on_fenced = told.append
    env = rogue.publish("evt.b1.valve", "event", {"open": True})
    acked: list[bool] = []
    rogue.on_acked(env.seq, acked.append)
    wait_for(lambda: rogue.poll(0.05) is not None and bool(told) and bool(acked), 10,
             "the rogue b1 fenced")
    assert acked == [False] and rogue.counters["fenced"] >= 1
    assert told[0]["holder"]["pid"] != os.getpid() and "fenced" in told[0]["reason"]
    denied = feed.wait("sys.router.denied", lambda d: d.get("fenced") is True)
    assert denied["src"] == "b1" and denied["epoch"] == rogue.epoch
    assert not [d for d in feed.events("evt.b1.valve")]  # never journaled nor forwarded
    state = rogue.state()
    assert state["counts"]["fenced"] >= 1 and "b1" in state["leases"]


def test_a_fenced_publisher_that_expects_the_name_keeps_its_messages_until_it_holds_it(
        stack: Stack) -> None:
    """`on_fenced` returning False (an actor's lease that may still take the name over): the
    ack waiters are not failed, the fenced messages stay in the outbox, their seqs unused, and
    once the holder is gone and the name claimed they are journaled, each once."""
    stack.write("")
    stack.start_router()
    feed = stack.watch("evt.b9.")
    holder = stack.client(name="b9")
    assert client_lease.claim(holder, 30.0).granted
    waiting = stack.client(name="b9")
    told: list[dict[str, Any]] = []

    def expects_the_name(data: dict[str, Any]) -> bool:
        told.append(data)
        return False

    waiting.on_fenced = expects_the_name
    sent = [waiting.publish("evt.b9.valve", "event", {"n": n}) for n in (1, 2, 3)]
    acked: list[bool] = []
    for env in sent:
        waiting.on_acked(env.seq, acked.append)
    wait_for(lambda: waiting.poll(0.05) is not None and bool(told), 10, "the fence")
    assert acked == [] and waiting.outbox_size == 3  # waiting, not failed

    assert client_lease.release(holder)
    assert client_lease.claim(waiting, 30.0).granted
    wait_for(lambda: waiting.poll(0.05) is not None and len(acked) == 3, 30,
             "the messages journaled once the name is held")
    assert acked == [True, True, True] and waiting.outbox_size == 0
    feed.drain(0.5)
    assert [d["n"] for d in feed.events("evt.b9.valve")] == [1, 2, 3]


def test_after_a_router_restart_the_holder_claims_again_before_it_runs_a_command(
        stack: Stack, recorder: Recorder) -> None:
    """The restarted router's table is empty: the actor claims again (its grant belonged to
    the old router epoch) and commands run once it holds the name."""
    stack.write(TABLES.format(port=recorder.port, hb=HEARTBEAT))
    router = stack.start_router()
    bus = stack.client(name="tester")
    actor = stack.start_actor("b1")
    stack.wait_ready("b1")
    sent = send_writes(bus, "e", 2)
    router.kill()
    stack.start_router()
    assert actor.popen is not None
    wait_for(lambda: holder_pid(bus) == actor.popen.pid if actor.popen else False, 20,
             "b1 holding its name again under the new router")
    sent += send_writes(bus, "f", 3)
    wait_for(lambda: len(recorder.writes()) >= len(sent), 10, "every write at the instrument")
    assert recorder.writes() == sent
    assert "holds again, after a router restart" in actor.output(), actor.output()[-3000:]
    assert actor.popen.poll() is None


def test_with_curve_a_key_claims_only_a_name_it_may_publish_as(stack: Stack,
                                                                tmp_path: Path) -> None:
    stack.write("", router_extra='[router.security]\ncurve = true\nkeys_dir = "keys"\n')
    keys = tmp_path / "keys"
    security.gen_key(keys, "router", "router")
    security.gen_key(keys, "b1", "actor")
    security.gen_key(keys, "b2", "actor")
    stack.start_router()
    router = stack.site.router
    own = Bus(router, "b2", identity="b2")
    posing = Bus(router, "b1", identity="b2")
    try:
        assert client_lease.claim(own, 3.0).granted
        with pytest.raises(BusError, match="key 'b2' may not claim the name 'b1'"):
            client_lease.claim(posing, 3.0)
        with pytest.raises(BusError, match="may not release"):
            client_lease.release(posing)
        assert list(client_lease.leases(own)) == ["b2"]
    finally:
        own.close()
        posing.close()


if __name__ == "__main__":  # HOST PORT FILE: the system test runs one in a network namespace
    standalone = Recorder(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
    print(f"recording on {sys.argv[1]}:{standalone.port}", flush=True)
    standalone.join()
