"""A router killed and restarted on its journal file holds the leases again at once (see
docs/leases.md, "router restart with journal"): another epoch of a held name is fenced before
the holder has claimed again, the holder's own claim is granted as the same grant, a holder
that is gone loses its name one ttl after the restart, and an actor carries on under the
lease it had."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from broker.client import lease as client_lease
from broker.client.bus import Bus
from tests.integration.test_single_instance import TABLES, leases, send_writes
from tests.support.echo import Recorder
from tests.support.stack import Proc, Stack, wait_for

HELD_TTL = 60.0  # the holder that stays: its lease outlives the test
GONE_TTL = 8.0  # the holder that is gone: its restored lease runs out during the test
HEARTBEAT = 0.5


def journal(tmp_path: Path) -> str:
    return f'journal_path = "{tmp_path / "journal.bin"}"'


def rogue_publishes(rogue: Bus) -> tuple[list[dict[str, Any]], list[bool]]:
    """One event from `rogue`: what it was told (on_fenced) and its ack (True: journaled)."""
    told: list[dict[str, Any]] = []
    rogue.on_fenced = told.append
    env = rogue.publish("evt.b1.valve", "event", {"open": True})
    acked: list[bool] = []
    rogue.on_acked(env.seq, acked.append)
    wait_for(lambda: rogue.poll(0.05) is not None and bool(acked), 20, "the rogue's ack")
    return told, acked


def b1_running(stack: Stack, tmp_path: Path, recorder: Recorder) -> tuple[Proc, Bus, Proc]:
    """A router with its journal file, a tester's Bus, and actor b1 (bus-link to `recorder`)
    up and running: (router, bus, actor)."""
    stack.write(TABLES.format(port=recorder.port, hb=HEARTBEAT), router_extra=journal(tmp_path))
    router = stack.start_router()
    bus = stack.client(name="tester")
    actor = stack.start_actor("b1")
    stack.wait_ready("b1")
    return router, bus, actor


def test_a_restarted_router_fences_other_epochs_before_the_holder_claims_again(
        stack: Stack, tmp_path: Path) -> None:
    stack.write("", router_extra=journal(tmp_path))
    router = stack.start_router()
    holder = stack.client(name="b1")
    held = client_lease.claim(holder, HELD_TTL, host="hostA", pid=4242)
    gone = stack.client(name="b2")
    gone_grant = client_lease.claim(gone, GONE_TTL, host="hostA", pid=4343)
    assert held.granted and gone_grant.granted
    gone.close()  # b2's holder is gone for good: nothing more of it reaches the router

    router.kill()  # SIGKILL: no clean stop, the table lives only in the journal file
    stack.start_router()
    log = stack.output("router")
    assert log.count("restored 2 lease(s)") == 1, log[-3000:]
    assert f"b1 (epoch {holder.epoch} on hostA pid 4242" in log

    # another epoch of b1 publishes before b1's holder has claimed again: fenced
    feed = stack.watch("sys.router.lease", "sys.router.denied", "evt.b1.", since=1)
    successor = stack.client(name="b2")
    refused = client_lease.claim(successor, GONE_TTL)  # the restored b2 is still live
    assert not refused.granted and refused.holder["epoch"] == gone.epoch
    rogue = stack.client(name="b1")
    told, acked = rogue_publishes(rogue)
    assert acked == [False] and told and told[0]["holder"]["epoch"] == holder.epoch
    assert "fenced" in told[0]["reason"] and rogue.counters["fenced"] >= 1
    denied = feed.wait("sys.router.denied", lambda d: d.get("fenced") is True)
    assert denied["src"] == "b1" and denied["epoch"] == rogue.epoch
    assert denied["holder"]["pid"] == 4242
    restored = feed.wait("sys.router.lease", lambda d: d["event"] == "restored"
                         and d["name"] == "b1")
    assert (restored["epoch"], restored["generation"]) == (holder.epoch, held.generation)

    # the holder claims again: granted at once, the same grant (generation, since)
    again = client_lease.claim(holder, HELD_TTL, host="hostA", pid=4242)
    assert again.granted and again.generation == held.generation
    assert again.holder["since"] == held.holder["since"]

    # b2's holder never comes back: its restored lease runs out, then the successor holds b2
    expired = feed.wait("sys.router.lease", lambda d: d["event"] == "expired"
                        and d["name"] == "b2", timeout=GONE_TTL + 30)
    assert expired["epoch"] == gone.epoch
    taken = client_lease.claim(successor, GONE_TTL)
    assert taken.granted and taken.generation > max(held.generation, gone_grant.generation)
    feed.drain(0.5)
    assert feed.events("evt.b1.valve") == []  # the rogue's event was never journaled
    table = client_lease.leases(successor)
    assert table["b1"]["epoch"] == holder.epoch and table["b2"]["epoch"] == successor.epoch


def test_an_actor_keeps_its_lease_across_a_router_killed_and_restarted_on_its_journal(
        stack: Stack, tmp_path: Path) -> None:
    recorder = Recorder()
    try:
        router, bus, actor = b1_running(stack, tmp_path, recorder)
        assert actor.popen is not None
        wait_for(lambda: "b1" in leases(bus), 10, "b1's lease")
        before = leases(bus)["b1"]
        sent = send_writes(bus, "g", 2)

        router.kill()
        stack.start_router()
        after = leases(bus)["b1"]  # restored before the actor said anything
        assert (after["epoch"], after["pid"], after["since"], after["generation"]) == \
            (before["epoch"], before["pid"], before["since"], before["generation"])
        wait_for(lambda: "holds again, after a router restart" in actor.output(), 20,
                 "b1 claiming its name again under the new router")
        sent += send_writes(bus, "h", 3)
        wait_for(lambda: len(recorder.writes()) >= len(sent), 10, "every write at the device")
        assert recorder.writes() == sent
        assert leases(bus)["b1"]["generation"] == before["generation"]  # the same grant
        assert actor.popen.poll() is None
    finally:
        recorder.close()


def test_an_actor_restarted_while_the_router_was_down_takes_over_its_dead_predecessors_lease(
        stack: Stack, tmp_path: Path) -> None:
    """A power cut of a host seen from one process's side: the router goes, b1 dies and is
    started again while the router is still away (no start-up claim), then the router comes
    back and restores the dead b1's lease. The new b1 replaces it (same machine, pid gone)
    instead of exiting as a duplicate."""
    recorder = Recorder()
    try:
        router, bus, _ = b1_running(stack, tmp_path, recorder)
        wait_for(lambda: "b1" in leases(bus), 10, "b1's lease")
        dead = leases(bus)["b1"]

        router.kill()
        stack.procs["b1"].kill()
        again = stack.start_actor("b1", log="b1-again")
        wait_for(lambda: "router not reachable" in again.output(), 20,
                 "the new b1 starting without its router")
        stack.start_router()
        wait_for(lambda: leases(bus).get("b1", {}).get("epoch") not in (None, dead["epoch"]),
                 20, "the new b1 holding its name")
        assert "no longer running here: taking over" in again.output()
        sent = send_writes(bus, "p", 2)
        wait_for(lambda: len(recorder.writes()) >= len(sent), 10, "every write at the device")
        assert recorder.writes() == sent
        assert again.popen is not None and again.popen.poll() is None, again.output()
    finally:
        recorder.close()
