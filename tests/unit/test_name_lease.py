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
