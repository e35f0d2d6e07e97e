"""The actor's side of its name's lease without sockets: a command runs only under a grant that
is certainly still ours (clock and claims passed in)."""

from __future__ import annotations

from typing import Any

import pytest

from actors.core import lease as lease_mod
from actors.core.lease import NameLease
from broker.client.lease import LeaseAnswer
from broker.wire.errors import BusError


class FakeBus:
    name = "b1"
    epoch = 11
    synced = True
    router_epoch = 7


def lease_with(monkeypatch: pytest.MonkeyPatch, answers: list[Any]) -> tuple[NameLease, list[float],
                                                                             list[dict[str, Any]]]:
    """A NameLease on a fake bus whose claims get `answers` in turn ("grant", "refuse",
    "silent"), on a clock the test moves."""
    clock = [100.0]
    refused: list[dict[str, Any]] = []

    def claim(bus: Any, ttl: float, **kw: Any) -> LeaseAnswer:
        what = answers.pop(0)
        if what == "silent":
            raise BusError("no answer")
        holder = {"epoch": 11 if what == "grant" else 22, "host": "h", "pid": 1, "since": 1.0}
        return LeaseAnswer(what == "grant", holder, 1, 7)

    monkeypatch.setattr(lease_mod.lease, "claim", claim)
    nl = NameLease(FakeBus(), 3.0, refused.append, clock=lambda: clock[0])  # type: ignore[arg-type]
    assert nl.ensure(force=True)
    return nl, clock, refused


def test_a_prompt_ack_runs_the_command_without_asking_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    nl, clock, _ = lease_with(monkeypatch, ["grant"])
    ran: list[bool] = []
    clock[0] += 2.0  # within 80 % of the ttl after the record's publication
    nl.gate(True, ran.append, sent_at=100.0)
    assert ran == [True] and nl.claims == 1


def test_an_ack_read_after_a_stall_runs_only_if_a_new_claim_is_granted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    nl, clock, refused = lease_with(monkeypatch, ["grant", "refuse"])
    ran: list[bool] = []
    clock[0] += 10.0  # stalled past the ttl: another instance may hold the name now
    nl.gate(True, ran.append, sent_at=100.0)
    assert ran == [False] and refused and refused[0]["epoch"] == 22

    nl, clock, refused = lease_with(monkeypatch, ["grant", "grant"])
    ran = []
    clock[0] += 10.0
    nl.gate(True, ran.append, sent_at=100.0)
    assert ran == [True] and not refused and nl.claims == 2


def test_a_stalled_ack_without_an_answer_waits_for_the_next_grant(
        monkeypatch: pytest.MonkeyPatch) -> None:
    nl, clock, _ = lease_with(monkeypatch, ["grant", "silent", "grant"])
    ran: list[bool] = []
    clock[0] += 10.0
    nl.gate(True, ran.append, sent_at=100.0)
    assert ran == [] and not nl.held  # in doubt: nothing runs
    clock[0] += 1.0
    assert nl.ensure()
    assert ran == [True]


def unheld(monkeypatch: pytest.MonkeyPatch, answers: list[Any], holder: dict[str, Any]
           ) -> tuple[NameLease, list[float], list[dict[str, Any]], list[dict[str, Any]]]:
    """A NameLease that never held its name (the router was away at start) whose claims get
    `answers` ("grant" or "refuse", the refusal naming `holder`); also returns the claims'
    keyword arguments."""
    clock = [100.0]
    refused: list[dict[str, Any]] = []
    asked: list[dict[str, Any]] = []

    def claim(bus: Any, ttl: float, **kw: Any) -> LeaseAnswer:
        asked.append(kw)
        what = answers.pop(0)
        return LeaseAnswer(what == "grant", {"epoch": 11} if what == "grant" else holder, 2, 7)

    monkeypatch.setattr(lease_mod.lease, "claim", claim)
    nl = NameLease(FakeBus(), 3.0, refused.append, clock=lambda: clock[0])  # type: ignore[arg-type]
    return nl, clock, refused, asked


def test_a_never_held_name_waits_out_another_machines_restored_lease(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A router restarted on its journal restores a dead predecessor's lease: an instance
    that could not claim at start is not refused for good by it, only after one ttl."""
    elsewhere = {"epoch": 22, "host": "other", "pid": 5, "machine": "m-other", "ttl": 3.0}
    nl, clock, refused, _ = unheld(monkeypatch, ["refuse", "refuse", "grant"], elsewhere)
    assert not nl.ensure(force=True) and not refused
    clock[0] += 2.0
    assert not nl.ensure(force=True) and not refused
    clock[0] += 2.0  # the restored lease expired on the router
    assert nl.ensure(force=True) and not refused

    nl, clock, refused, _ = unheld(monkeypatch, ["refuse", "refuse"], elsewhere)
    assert not nl.ensure(force=True)
    clock[0] += 3.0 + lease_mod.START_RETRY + 0.1  # still held after a whole ttl: it lives
    assert not nl.ensure(force=True) and refused == [elsewhere]


def test_a_never_held_name_replaces_a_dead_holder_of_this_machine(
        monkeypatch: pytest.MonkeyPatch) -> None:
    gone = {"epoch": 22, "host": "h", "pid": 2 ** 22 + 7, "machine": "m-here", "ttl": 3.0}
    monkeypatch.setattr(lease_mod.lease, "machine_id", lambda: "m-here")
    monkeypatch.setattr(lease_mod, "_pid_exists", lambda pid: False)
    nl, _, refused, asked = unheld(monkeypatch, ["refuse", "grant"], gone)
    assert nl.ensure(force=True) and not refused
    assert asked[1]["replaces"] == 22


def test_a_refusal_after_a_grant_is_final_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    nl, clock, refused = lease_with(monkeypatch, ["grant", "refuse"])
    monkeypatch.setattr(nl.bus, "router_epoch", 8)  # restarted: the grant is stale
    clock[0] += 1.0
    assert not nl.ensure(force=True) and refused and refused[0]["epoch"] == 22


def test_a_clean_stop_releases_a_grant_of_an_earlier_router_epoch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    nl, _, _ = lease_with(monkeypatch, ["grant"])
    released: list[str] = []

    def release(bus: Any, timeout: float) -> bool:
        released.append(bus.name)
        return True

    monkeypatch.setattr(lease_mod.lease, "release", release)
    monkeypatch.setattr(nl.bus, "router_epoch", 8)  # restarted on its journal: it holds
    assert not nl.held                               # the lease for our epoch
    nl.release()
    assert released == ["b1"] and nl.granted_by is None


def test_a_fence_is_final_unless_the_name_can_still_be_taken_over(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`fenced` returns whether the refusal is final: the Bus fails the ack waiters only then."""
    elsewhere = {"epoch": 22, "host": "other", "pid": 5, "machine": "m-other", "ttl": 3.0}
    nl, _, refused = lease_with(monkeypatch, ["grant"])
    assert nl.fenced({"fenced": 3, "holder": elsewhere}) and refused == [elsewhere]

    nl, _, refused, _ = unheld(monkeypatch, [], elsewhere)  # never held: waits one ttl
    assert not nl.fenced({"fenced": 1, "holder": elsewhere}) and not refused

    gone = {"epoch": 22, "host": "h", "pid": 2 ** 22 + 7, "machine": "m-here", "ttl": 3.0}
    monkeypatch.setattr(lease_mod.lease, "machine_id", lambda: "m-here")
    monkeypatch.setattr(lease_mod, "_pid_exists", lambda pid: False)
    nl, _, refused = lease_with(monkeypatch, ["grant", "grant"])  # held, then its grant lost
    assert not nl.fenced({"fenced": 4, "holder": gone}) and not refused and nl.held
