"""The SPEC simulator's macro language and session state with an explicit clock (no sockets):
the SPEC that clients send at connect and in their test suites, data arrays, element writes,
the motor properties clients set, and counting."""

from __future__ import annotations

import pytest

from actors.protocols.spec import DataType
from actors.protocols.spec_types import SpecArray, Value
from actors.sim.spec_arrays import LiveImage, LiveSpectrum, frame_number
from actors.sim.spec_eval import EvalError, Interpreter, Result
from actors.sim.spec_state import PropertyError, SpecState

Event = tuple[str, Value, bool]

# What a vendor client (mxcube's SpecClient HardwareObject) sends to list the motors, and what
# its SpecConnection sends to list the motor positions.
MOTOR_LIST_DEF = ("def _ho_MotorList() '{local md[]; for (i=0; i<MOTORS; i++) "
                  "{md[motor_mne(i)]=motor_name(i)}; return md}'")
MOTOR_LIST = """local md[];
            for (i=0; i<MOTORS; i++) {
                 md[motor_mne(i)]=motor_name(i) };
            return md"""
POSITIONS = """ local mpos[]
           for (i=0;i<MOTORS;i++) {
              mpos[motor_mne(i)]=A[i]
           }
        return mpos"""


@pytest.fixture
def events() -> list[Event]:
    return []


@pytest.fixture
def state(events: list[Event]) -> SpecState:
    return SpecState("fourc", {"m0": 0.0, "tth": 5.0}, ["sec", "mon", "det"], 10.0,
                     lambda p, v, d: events.append((p, v, d)))


def run(state: SpecState, text: str, now: float = 0.0) -> Result:
    return Interpreter(state, now).run(text)


def test_print_with_parentheses_goes_to_the_tty(state: SpecState) -> None:
    assert run(state, 'print("Hello, world!")').printed == ["Hello, world!\n"]
    assert run(state, 'print("a", 1 + 1)').printed == ["a 2\n"]
    assert run(state, 'printf("%5.2f|%-3d|%s|%x|%%\\n", 3.14159, 42.7, "ab", 255)').printed \
        == [" 3.14|42 |ab|ff|%\n"]
    assert run(state, 'sprintf("%03d-%c", 7, 65)').value == "007-A"


@pytest.mark.parametrize("text", [MOTOR_LIST, POSITIONS])
def test_the_macros_clients_send_to_list_motors(state: SpecState, text: str) -> None:
    value = run(state, text).value
    assert value == ({"m0": "m0", "tth": "tth"} if text == MOTOR_LIST else
                     {"m0": "0", "tth": "5"})
    assert "md" not in state.variables and "mpos" not in state.variables  # locals stay local


def test_a_macro_function_defined_then_called(state: SpecState) -> None:
    assert run(state, MOTOR_LIST_DEF).value is None
    assert run(state, "_ho_MotorList()").value == {"m0": "m0", "tth": "tth"}
    run(state, "def twice(x) '{ return 2 * x }'")
    assert run(state, "twice(21) + 0").value == 42.0
    run(state, "def hello 'print \"hello\", \"$1\", $#'")
    assert run(state, "hello world").printed == ["hello world 1\n"]
    run(state, "undef hello")
    with pytest.raises(EvalError, match="hello: unknown command or macro"):
        run(state, "hello world")
    with pytest.raises(EvalError, match="takes 1 argument"):
        run(state, "twice(1, 2)")


def test_associative_array_literals(state: SpecState, events: list[Event]) -> None:
    run(state, "__X = [ 1:0 ]")
    assert state.read("var/__X", 0) == {"1": "0"}
    run(state, '__X = [1:2:0, "k": "v"]')  # an assignment replaces the array
    assert state.read("var/__X", 0) == {"1\x1c2": "0", "k": "v"}
    assert ("var/__X", {"1\x1c2": "0", "k": "v"}, False) in events
    assert run(state, "__X[1][2] + 5").value == 5.0
    with pytest.raises(EvalError, match="key: value"):
        run(state, "y = [1, 2]")


def test_control_flow(state: SpecState) -> None:
    assert run(state, "x = 0; while (x < 10) { x++; if (x == 3) break }; x").value == 3.0
    assert run(state, "n = 0; for (i = 0; i < 5; i++) { if (i % 2) continue; n += i }; n"
               ).value == 6.0
    assert run(state, "if (0) {print \"a\"} else {print \"b\"}").printed == ["b\n"]
    assert run(state, 'if (1) print "a"; else print "b"').printed == ["a\n"]
    assert run(state, "for (k in A) print k, A[k]").printed == ["0 0\n", "1 5\n"]
    assert run(state, 'x = 3 > 2 ? "yes" : "no"; x').value == "yes"
    assert run(state, 's = "abc"; s += "d"; length(s) * 10 + index(s, "c")').value == 43.0
    assert run(state, '1 && 0 || !0').value == 1.0


@pytest.mark.parametrize(("text", "match"), [
    ("while (1) {}", "more than 100000 statements"),
    ("def f() '{ return f() }'; f()", "nested more than"),
    ("ascan m0 0 1 10 0.1", "ascan: not supported by the SPEC simulator"),
    ('cdef("x", "y")', r"cdef\(\): not supported"),
    ("foo(1)", "cannot call foo with 1 argument"),
    ("break", "outside a loop"),
    ('printf("%n", 1)', "unsupported conversion"),
    ("string array S2[3][10]", "not supported"),
    ("local x; x[1] = 2", "not an array"),
])
def test_what_the_simulator_does_not_run_is_a_clear_error(state: SpecState, text: str,
                                                           match: str) -> None:
    with pytest.raises(EvalError, match=match):
        run(state, text)


def test_data_arrays_stay_data_arrays_when_an_element_is_set(state: SpecState,
                                                             events: list[Event]) -> None:
    run(state, "array DARR[4]")
    run(state, "DARR[1] = 7")
    value = state.read("var/DARR", 0)
    assert isinstance(value, SpecArray) and value.type == DataType.SV_ARR_DOUBLE
    assert (value.rows, value.cols, value.items) == (1, 4, (0.0, 7.0, 0.0, 0.0))
    assert events[-1][0] == "var/DARR" and isinstance(events[-1][1], SpecArray)
    run(state, "shared ushort array U[2][3]; U[1][2] = 9; U[0][0] = U[1][2] + 1")
    u = state.read("var/U", 0)
    assert isinstance(u, SpecArray) and u.items == (10, 0, 0, 0, 0, 9)
    assert u.type == DataType.SV_ARR_USHORT
    state.write("var/DARR[2]", "3.5", 0)  # a client's CHAN_SEND of one element
    assert run(state, "DARR[2]").value == 3.5
    for text, match in [("DARR[4] = 1", "out of range"), ("U[1] = 1", "give 2 index"),
                        ("U[0][0] = -1", "does not fit"), ("U[0][0] = 70000", "does not fit")]:
        with pytest.raises(EvalError, match=match):
            run(state, text)


def test_element_writes_take_text_or_a_table_holding_the_element(state: SpecState) -> None:
    """chess-pyspec writes ``var/ARR[c]`` as an associative array holding that element."""
    state.write("var/ARR[c]", "text value", 0)
    state.write("var/ARR[d]", {"d": "packed"}, 0)
    state.write("var/ARR[1][2]", {"1\x1c2": "one two"}, 0)
    assert state.read("var/ARR", 0) == {"c": "text value", "d": "packed", "1\x1c2": "one two"}
    assert state.read("var/ARR[1][2]", 0) == {"1\x1c2": "one two"}
    with pytest.raises(PropertyError, match="has no element"):
        state.write("var/ARR[e]", {"x": "1", "y": "2"}, 0)
    state.write("var/SCALAR", "1", 0)
    with pytest.raises(PropertyError, match="not an associative array"):
        state.write("var/SCALAR[1]", "2", 0)


def test_a_whole_array_written_by_a_client_becomes_a_data_array(state: SpecState) -> None:
    sent = SpecArray(DataType.SV_ARR_FLOAT, 2, 2, (1.0, 2.0, 3.0, 4.0), order=">")
    state.write("var/F", sent, 0)
    assert state.read("var/F", 0) == sent
    assert run(state, "F[1][0]").value == 3.0


def test_motor_limits_search_and_sync_check(state: SpecState, events: list[Event]) -> None:
    state.write("motor/tth/limits", "-2 8", 0)
    assert (state.read("motor/tth/low_limit", 0), state.read("motor/tth/high_limit", 0)) == \
        ("-2", "8")
    with pytest.raises(EvalError, match="outside the limits"):
        run(state, "mv tth 9")
    state.write("motor/tth/search", "home 1.5", 0.0)  # dial 5 → home switch at 0 → dial 1.5
    assert state.read("motor/tth/move_done", 0.1) == "1"
    state.tick(1.0)
    assert state.read("motor/tth/dial_position", 1.0) == "1.5"
    assert events[-1] == ("motor/tth/move_done", "0", False)
    state.write("motor/tth/search", "lim-", 1.0)
    state.tick(10.0)
    assert state.read("motor/tth/position", 10.0) == "-2"
    state.write("motor/tth/sync_check", "1", 10.0)  # an answer nobody asked for: ignored
    for prop, value, match in [("motor/tth/limits", "1", "takes 'low high'"),
                               ("motor/tth/search", "sideways", "not one of")]:
        with pytest.raises(PropertyError, match=match):
            state.write(prop, value, 10.0)
    with pytest.raises(PropertyError, match="can be set"):
        state.read("motor/tth/sync_check", 10.0)
    run(state, "set_lm m0 -1 1")
    assert state.read("motor/m0/high_limit", 0) == "1"


def test_a_count_ends_with_its_counter_values_and_counts_follow_each_other(
        state: SpecState, events: list[Event]) -> None:
    result = run(state, "count 0.3", now=10.0)
    assert result.delay == pytest.approx(0.3) and state.read("scaler/.all./count", 10) == "1"
    assert state.finish_count(10.2) is False
    assert state.finish_count(10.3) is True
    assert state.read("scaler/mon/value", 10.3) == "300"
    assert [e[0] for e in events[-4:]] == ["scaler/sec/value", "scaler/mon/value",
                                           "scaler/det/value", "scaler/.all./count"]
    both = run(state, "count 0.5; count 0.25; S[mon]", now=20.0)  # each waits for the one before
    assert both.value == 250.0 and both.delay == pytest.approx(0.75)
    assert run(state, "sleep(0.5); sleep(0.25)", now=30.0).delay == pytest.approx(0.75)


def test_live_arrays_carry_their_frame_number() -> None:
    mca = LiveSpectrum("MCA", 4096, 10.0, start=100.0)
    mca.frame = 3
    assert mca.next_due() == pytest.approx(100.4)
    frame = mca.render(70000)
    assert (frame.rows, frame.cols, frame.type) == (1, 4096, DataType.SV_ARR_ULONG)
    assert frame_number(frame) == 70000 and len(frame.data) == 4096 * 4
    assert mca.render(1).data[4:] != mca.render(2).data[4:]  # the counts change over time
    img = LiveImage("IMG", 1024, 1024, 1.0, start=0.0)
    picture = img.render(70000)
    assert len(picture.data) == 1024 * 1024 * 2 and frame_number(picture) == 70000
    assert img.render(3).data[4:] != img.render(4).data[4:]


def test_live_arrays_are_read_only(state: SpecState) -> None:
    state.live["IMG"] = image = LiveImage("IMG", 4, 4, 1.0, start=0.0)
    image.frame = 2
    read = state.read("var/IMG", 2.5)
    assert isinstance(read, SpecArray) and frame_number(read) == 2
    with pytest.raises(PropertyError, match="read-only"):
        state.write("var/IMG", "1", 0)
