"""The SPEC simulator's state and command evaluator, with an explicit clock (no sockets)."""

from __future__ import annotations

import pytest

from actors.protocols.spec_types import Value
from actors.sim.spec_eval import EvalError, Interpreter
from actors.sim.spec_state import PropertyError, SpecState

Event = tuple[str, Value, bool]


@pytest.fixture
def events() -> list[Event]:
    return []


@pytest.fixture
def state(events: list[Event]) -> SpecState:
    return SpecState("fourc", {"m0": 0.0, "tth": 5.0}, ["sec", "mon", "det"], 10.0,
                     lambda p, v, d: events.append((p, v, d)))


def run(state: SpecState, text: str, now: float = 0.0) -> Value | float | None:
    return Interpreter(state, now).run(text).value


@pytest.mark.parametrize("text, value", [
    ("1+1", 2.0), ("2*3+4", 10.0), ("2*(3+4)", 14.0), ("-3 % 2", -1.0), ("7/2", 3.5),
    ('"a" + "b"', "ab"), ("2 > 1", 1.0), ("!0", 1.0), ("x = 4; x * x", 16.0),
    ("motor_mne(1)", "tth"), ("motor_name(0)", "m0"), ("cnt_mne(2)\n", "det"),
    ("cnt_name(0)", "sec"), ('motor_num("tth")', 1.0), ("int(2.7)", 2.0), ("sqrt(16)", 4.0),
    ("{get_angles;A[tth]}", 5.0), ("SPEC", "fourc"), ("MOTORS", 2.0),
])
def test_expressions_and_functions(state: SpecState, text: str, value: Value) -> None:
    assert run(state, text) == value


@pytest.mark.parametrize("text, match", [
    ("nosuch", "'nosuch' is not a variable"), ("1/0", "divide by zero"),
    ("__import__('os')", "cannot call __import__"), ("os.system('x')", "syntax error"),
    ("1 +", "expected a value"), ("1 2", "unexpected '2'"), ("x = ", "expected a value"),
    ("`ls`", "syntax error"), ("MOTORS = 3", "read-only"), ("sqrt(-1)", "domain error"),
    ("mv nosuch 1", "'nosuch' is not a variable"), ("mv m0 1e9", "outside the limits"),
    ("A", "is an array"), ("A[99]", r"A\[99\] does not exist"), ("motor_mne(7)", "7 does not"),
])
def test_bad_text_is_an_eval_error_never_python(state: SpecState, text: str,
                                                 match: str) -> None:
    with pytest.raises(EvalError, match=match):
        run(state, text)


def test_print_sleep_and_assignments(state: SpecState, events: list[Event]) -> None:
    result = Interpreter(state, 0.0).run('arr["k"] = 2; print "v", arr["k"] * 2; sleep(0.5)')
    assert result.printed == ["v 4\n"] and result.delay == 0.5
    assert ("var/arr[k]", {"k": "2"}, False) in events and state.read("var/arr", 0) == {"k": "2"}
    assert state.read("var/arr[k]", 0) == {"k": "2"}
    run(state, "unglobal arr")
    assert events[-1] == ("var/arr", "", True)
    with pytest.raises(PropertyError, match="'arr' does not exist"):
        state.read("var/arr", 0)


def test_a_move_ends_with_the_last_position_then_move_done_0(state: SpecState,
                                                             events: list[Event]) -> None:
    run(state, "mv m0 2", now=0.0)
    assert events == [("motor/m0/move_done", "1", False)]
    assert state.read("motor/m0/move_done", 0.1) == "1"
    state.tick(0.1)
    assert state.read("motor/m0/position", 0.1) == "1"
    state.tick(0.25)
    moves = [e for e in events if e[0].startswith("motor/m0/")]
    assert [e[0].rsplit("/", 1)[1] for e in moves] == [
        "move_done", "position", "dial_position", "position", "dial_position", "move_done"]
    assert moves[-2][1] == "2" and moves[-1][1] == "0" and moves[-3] == (
        "motor/m0/position", "2", False)
    assert not state.moving()


def test_pycertifspec_move_text_and_abort(state: SpecState, events: list[Event]) -> None:
    run(state, "{get_angles;A[tth]=9;move_em;}\n", now=0.0)
    assert state.motors["tth"].target == 9.0 and state.motors["m0"].target is None
    state.abort(0.2)  # halfway: 5 → 7 at 10 units/s
    assert state.read("motor/tth/position", 1.0) == "7" and events[-1][1] == "0"


def test_position_write_sets_the_offset(state: SpecState) -> None:
    state.write("motor/tth/position", "10", 0.0)
    assert state.read("motor/tth/dial_position", 0) == "5"
    assert state.read("motor/tth/offset", 0) == "5"
    with pytest.raises(PropertyError, match="expected a number"):
        state.write("motor/tth/position", "abc", 0.0)


def test_counting_over_time(state: SpecState, events: list[Event]) -> None:
    result = Interpreter(state, 0.0).run("count 2")
    assert result.delay == 2 and state.read("scaler/.all./count", 0) == "1"
    state.tick(1.0)
    assert state.count_end is not None
    state.tick(2.0)
    assert state.read("scaler/mon/value", 2) == "2000" and events[-1] == (
        "scaler/.all./count", "0", False)


def test_unknown_and_event_only_properties(state: SpecState) -> None:
    for prop, match in [("motor/m0/nope", "no property 'nope'"), ("bogus/x", "unknown"),
                        ("output/tty", "events only"), ("scaler/zz/value", "unknown")]:
        with pytest.raises(PropertyError, match=match):
            state.read(prop, 0)
    with pytest.raises(PropertyError, match="cannot be set"):
        state.write("status/ready", "1", 0)


@pytest.mark.parametrize(("text", "match"), [
    ("(" * 5000 + "1" + ")" * 5000, "nested too deeply"),
    ("-" * 5000 + "1", "nested too deeply"),
    ("int(1e999)", "math domain error"),
])
def test_hostile_text_is_an_eval_error_not_a_crash(state: SpecState, text: str,
                                                   match: str) -> None:
    """The simulator's request handler turns EvalError into an SV_ERROR reply; any other
    exception would escape it and leave the client waiting for a reply."""
    with pytest.raises(EvalError, match=match):
        Interpreter(state, 0.0).run(text)
