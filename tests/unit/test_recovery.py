"""Command records (evt.<actor>.run) and their read-back: exactly-once across restarts."""

from __future__ import annotations

from actors.core.commands import Outcome
from actors.core.recovery import done_record, settle, started_record
from tests.unit.test_actor_parts import Harness, cmd


def test_dispatcher_records_start_before_running_and_outcome_after() -> None:
    h = Harness()
    seen: list[tuple[str, str, Outcome | None, list[str]]] = []
    h.d.record = lambda env, name, outcome: seen.append((env.id, name, outcome,
                                                         list(h.target.calls)))
    h.d.dispatch(cmd("add", a=2))
    assert seen[0] == ("c1", "add", None, [])  # recorded before the handler ran
    assert seen[1][:3] == ("c1", "add", Outcome("ok", 3, ""))


def test_deferred_is_recorded_when_it_settles() -> None:
    h = Harness()
    seen: list[Outcome | None] = []
    h.d.record = lambda env, name, outcome: seen.append(outcome)
    h.d.dispatch(cmd("later"))
    assert seen == [None]
    assert h.target.deferred is not None
    h.target.deferred.resolve("fine")
    assert seen == [None, Outcome("ok", "fine", "")]


def test_rejected_commands_are_not_recorded() -> None:
    h = Harness()
    seen: list[object] = []
    h.d.record = lambda *a: seen.append(a)
    h.d.dispatch(cmd("nope"))
    h.d.dispatch(cmd("add", id="late", deadline=1.0, a=1))
    assert seen == []


def test_settle_finished_interrupted_and_expired() -> None:
    done = Outcome("ok", 3, "")
    records = [
        started_record("a", "add", "sctl-x", 200.0), done_record("a", "add", "sctl-x", done),
        started_record("b", "slow", "sctl-x", 200.0),  # died while running
        started_record("c", "slow", "sctl-x", 50.0),  # died, but its deadline is past
        started_record("d", "open", "sctl-x", None),  # no deadline: a retry may still come
        {"state": "started"}, {"id": 5},  # malformed records are skipped
    ]
    finished, interrupted = settle(records, now=100.0)
    assert finished == {"a": done}
    assert sorted(interrupted) == ["b", "d"]


def test_preloaded_outcomes_answer_retries_without_running() -> None:
    h = Harness()
    h.d.preload({"a": Outcome("ok", 3, "")}, ["b"])
    h.d.dispatch(cmd("add", id="a", a=100))
    h.d.dispatch(cmd("later", id="b"))
    assert h.target.calls == []
    assert h.sent[0] == ("a", Outcome("ok", 3, ""))
    assert h.sent[1][1].status == "error" and "not run again" in h.sent[1][1].error


def test_command_waits_until_its_started_record_is_journaled() -> None:
    h = Harness()
    waiting: list[tuple[int, object]] = []
    h.d.record = lambda env, name, outcome: 7 if outcome is None else None
    h.d.when_recorded = lambda ticket, go: waiting.append((ticket, go))
    h.d.dispatch(cmd("add", a=2))
    h.d.dispatch(cmd("add", a=2))  # a retry while it waits: ignored, not run twice
    assert h.target.calls == [] and len(waiting) == 1 and waiting[0][0] == 7
    go = waiting[0][1]
    go(True)  # type: ignore[operator]
    assert h.target.calls == ["add"] and h.sent == [("c1", Outcome("ok", 3, ""))]


def test_command_whose_record_was_lost_is_refused() -> None:
    h = Harness()
    gos: list[object] = []
    h.d.record = lambda env, name, outcome: 1 if outcome is None else None
    h.d.when_recorded = lambda ticket, go: gos.append(go)
    h.d.dispatch(cmd("add", a=2))
    gos[0](False)  # type: ignore[operator]
    assert h.target.calls == []
    assert h.sent[0][1].status == "error" and "not run" in h.sent[0][1].error


def test_command_past_its_deadline_when_recorded_is_refused() -> None:
    h = Harness()
    gos: list[object] = []
    h.d.record = lambda env, name, outcome: 1 if outcome is None else None
    h.d.when_recorded = lambda ticket, go: gos.append(go)
    h.d.dispatch(cmd("add", a=2, deadline=1001.0))
    h.now = 1005.0
    gos[0](True)  # type: ignore[operator]
    assert h.target.calls == [] and "deadline passed" in h.sent[0][1].error


def test_done_is_recorded_before_the_reply() -> None:
    h = Harness()
    order: list[str] = []
    h.d.record = lambda env, name, outcome: order.append("record") if outcome else None
    real_send = h.send

    def send(env: object, outcome: Outcome) -> None:
        order.append("reply")
        real_send(env, outcome)  # type: ignore[arg-type]

    h.d.send = send  # type: ignore[assignment]
    h.d.dispatch(cmd("add", a=1))
    assert order == ["record", "reply"]


def test_teardown_answers_parked_commands() -> None:
    h = Harness()
    h.d.record = lambda env, name, outcome: 1 if outcome is None else None
    h.d.when_recorded = lambda ticket, go: None
    h.d.dispatch(cmd("add", a=2))
    h.d.fail_running("actor stopping")
    assert h.target.calls == [] and "actor stopping; not run" in h.sent[0][1].error
