"""The SPEC client session without sockets: what it sends for each request, how replies, events
and the clock complete them, and what a reconnect re-sends. The "server" here is the codec:
the test decodes what the session queued and feeds it encoded replies and events."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.protocols.spec import Cmd, DataType, Decoder, Message, encode_message
from actors.protocols.spec_session import (
    BARRIER,
    ChannelEvent,
    Completed,
    Notice,
    Output,
    Session,
    TtyText,
)
from actors.protocols.spec_types import SpecArray, decode_value, encode_value, to_bus
from broker.wire.errors import LocalProtocolError, RemoteProtocolError

PEER = "127.0.0.1:6510"


def sent(session: Session) -> list[Message]:
    decoder = Decoder()
    decoder.feed(session.data_to_send())
    return list(decoder.events())


def reply(sn: int, value: Any = "", *, error: bool = False, name: str = "") -> bytes:
    kind, data, rows, cols = encode_value(value)
    return encode_message(Message(cmd=Cmd.SV_REPLY, name=name, sn=sn, data=data, rows=rows,
                                  cols=cols, type=DataType.SV_ERROR if error else kind,
                                  err=1 if error else 0))


def event(name: str, value: Any, flags: int = 0) -> bytes:
    kind, data, rows, cols = encode_value(value)
    return encode_message(Message(cmd=Cmd.SV_EVENT, name=name, data=data, type=kind,
                                  rows=rows, cols=cols, flags=flags))


def completed(outs: list[Output]) -> dict[int, Completed]:
    return {o.token: o for o in outs if isinstance(o, Completed)}


@pytest.fixture
def session() -> Session:
    s = Session(["motor/m0/position"], timeout=5.0)
    s.connection_made(PEER, 4)
    regs = sent(s)
    assert [(m.cmd, m.name) for m in regs] == [
        (Cmd.SV_REGISTER, "error"), (Cmd.SV_REGISTER, "output/tty"),
        (Cmd.SV_REGISTER, "motor/m0/position"), (Cmd.SV_CHAN_READ, BARRIER)]
    assert len({m.sn for m in regs}) == 4 and all(m.sn for m in regs)
    s.receive_data(reply(regs[-1].sn, "1"))
    assert s.outputs() == []
    return s


def test_replies_are_matched_by_sn_whatever_their_order_and_the_events_between(
        session: Session) -> None:
    a = session.read("var/a", 0.0)
    b = session.command("1+1", 0.0)
    read, cmd = sent(session)
    assert (read.cmd, read.name, cmd.cmd, decode_value(cmd)) == (
        Cmd.SV_CHAN_READ, "var/a", Cmd.SV_CMD_WITH_RETURN, "1+1")
    session.receive_data(reply(cmd.sn, "2") + event("motor/m0/position", "1.5") +
                         event("var/not_watched", "x") + reply(read.sn, {"k": "v"}))
    outs = session.outputs()
    assert completed(outs) == {b: Completed(b, "2"), a: Completed(a, {"k": "v"})}
    assert ChannelEvent("motor/m0/position", "1.5", False) in outs
    assert not any(isinstance(o, ChannelEvent) and o.chan == "var/not_watched" for o in outs)


def test_an_error_reply_fails_the_request_and_a_late_reply_is_only_noted(
        session: Session) -> None:
    token = session.read("var/missing", 0.0)
    (msg,) = sent(session)
    session.receive_data(reply(msg.sn, "var/missing: does not exist", error=True))
    (out,) = session.outputs()
    assert isinstance(out, Completed) and out.token == token
    assert out.error == "SPEC error for read var/missing: var/missing: does not exist"
    session.receive_data(reply(msg.sn, "again"))
    (note,) = session.outputs()
    assert isinstance(note, Notice) and "late or unknown reply" in note.text


def test_a_write_waits_for_its_barrier_and_fails_on_an_error_reply_with_its_sn(
        session: Session) -> None:
    ok = session.write("var/x", "1", 0.0)
    send, barrier = sent(session)
    assert (send.cmd, send.name, barrier.cmd, barrier.name) == (
        Cmd.SV_CHAN_SEND, "var/x", Cmd.SV_CHAN_READ, BARRIER)
    assert session.outputs() == []  # SPEC sends no reply to a CHAN_SEND that worked
    session.receive_data(reply(barrier.sn, "1"))
    assert session.outputs() == [Completed(ok)]
    bad = session.write("status/ready", "1", 0.0)
    send, barrier = sent(session)
    session.receive_data(reply(send.sn, "status/ready cannot be set", error=True)
                         + reply(barrier.sn, "1"))
    assert session.outputs() == [Completed(bad, error="SPEC refused status/ready: "
                                                       "status/ready cannot be set")]


def test_a_write_that_spec_reports_only_on_the_error_channel_fails(session: Session) -> None:
    """A CHAN_SEND failure that comes only as an ``error`` event (SPEC's error channel) is the
    write's failure, not a success the client believes in."""
    token = session.write("motor/m0/limits", "a b", 0.0)
    _, barrier = sent(session)
    session.receive_data(event("error", "motor m0: bad limits") + reply(barrier.sn, "1"))
    outs = session.outputs()
    assert Completed(token, error="SPEC reported an error: motor m0: bad limits") in outs
    assert ChannelEvent("error", "motor m0: bad limits", False) in outs
    later = session.write("var/y", "2", 0.0)  # an error after the barrier belongs to nobody
    _, barrier = sent(session)
    session.receive_data(reply(barrier.sn, "1") + event("error", "unrelated"))
    assert Completed(later) in session.outputs()


def test_a_command_that_times_out_fails_and_sends_abort(session: Session) -> None:
    token = session.command("sleep(60)", 10.0, timeout=2.0)
    (cmd,) = sent(session)
    assert cmd.cmd == Cmd.SV_CMD_WITH_RETURN
    assert session.next_deadline == 12.0
    session.handle_timeout(11.9)
    assert session.outputs() == [] and session.data_to_send() == b""
    session.handle_timeout(12.0)
    (timed_out,) = session.outputs()
    assert timed_out == Completed(token, error=f"no reply from SPEC {PEER} to cmd 'sleep(60)' "
                                         "within 2 s; sent SV_ABORT (^C) so that SPEC stops it")
    (abort,) = sent(session)
    assert (abort.cmd, abort.sn) == (Cmd.SV_ABORT, 0)
    func = session.call("slow", [5, "'text'"], 20.0, timeout=1.0)
    (msg,) = sent(session)
    assert decode_value(msg) == "slow(5, 'text')" and msg.cmd == Cmd.SV_FUNC_WITH_RETURN
    session.handle_timeout(21.0)
    assert completed(session.outputs())[func].error is not None
    assert [m.cmd for m in sent(session)] == [Cmd.SV_ABORT]
    session.read("var/x", 30.0, timeout=1.0)
    sent(session)
    session.handle_timeout(31.0)  # a read that times out aborts nothing
    (out,) = session.outputs()
    assert isinstance(out, Completed) and out.error is not None
    assert session.data_to_send() == b""


def test_a_lost_connection_fails_everything_waiting(session: Session) -> None:
    read = session.read("var/a", 0.0)
    move = session.move("m0", 3.0, 0.0, 100.0)
    sent(session)
    session.connection_lost(f"connection to SPEC {PEER} lost")
    outs = completed(session.outputs())
    assert outs[read].error == (f"connection to SPEC {PEER} lost while waiting for the reply "
                                "to read var/a")
    assert outs[move].error == f"connection to SPEC {PEER} lost while motor m0 was moving to 3"
    assert session.next_deadline is None and not session.connected
    with pytest.raises(LocalProtocolError, match="not connected"):
        session.read("var/a", 0.0)


def test_a_move_latches_move_done_and_ends_with_the_position(session: Session) -> None:
    token = session.move("m0", 3.0, 0.0, 100.0)
    register, start, barrier = sent(session)
    assert (register.cmd, register.name) == (Cmd.SV_REGISTER, "motor/m0/move_done")
    assert (start.name, decode_value(start)) == ("motor/m0/start_one", "3")
    assert (barrier.cmd, barrier.name) == (Cmd.SV_CHAN_READ, "motor/m0/move_done")
    # MX's note: move_done may read 0 just after the start; that is not the end of the move
    session.receive_data(event("motor/m0/move_done", "0") + reply(barrier.sn, "0"))
    assert completed(session.outputs()) == {}
    session.receive_data(event("motor/m0/move_done", "1") + event("motor/m0/position", "2")
                         + event("motor/m0/move_done", "0"))
    unregister, position = sent(session)
    assert (position.cmd, position.name) == (Cmd.SV_CHAN_READ, "motor/m0/position")
    assert (unregister.cmd, unregister.name) == (Cmd.SV_UNREGISTER, "motor/m0/move_done")
    session.receive_data(reply(position.sn, "3"))
    assert completed(session.outputs()) == {
        token: Completed(token, {"motor": "m0", "target": 3.0, "position": "3"})}


def test_a_move_seen_busy_by_its_barrier_and_a_second_move_refused(session: Session) -> None:
    token = session.move("m1", -1.0, 0.0, 100.0)
    *_, barrier = sent(session)
    with pytest.raises(LocalProtocolError, match="m1 is already moving"):
        session.move("m1", 2.0, 0.0, 100.0)
    session.receive_data(reply(barrier.sn, "1") + event("motor/m1/move_done", "0"))
    _, position = sent(session)
    session.receive_data(reply(position.sn, "-1"))
    assert completed(session.outputs())[token].result["position"] == "-1"
    late = session.move("m1", 5.0, 0.0, 10.0)
    *_, barrier = sent(session)
    session.receive_data(reply(barrier.sn, "1"))
    session.handle_timeout(10.0)
    assert completed(session.outputs())[late].error == (
        "motor m1 did not finish its move to 5 within 10 s")


def test_watches_come_back_after_a_reconnect_and_a_refused_one_is_dropped(
        session: Session) -> None:
    ok = session.watch("var/cfg", 0.0)
    register, barrier = sent(session)
    session.receive_data(event("var/cfg", {"a": "1"}) + reply(barrier.sn, "1"))
    assert completed(session.outputs()) == {ok: Completed(ok)}
    refused = session.watch("var/absent", 0.0)
    register, barrier = sent(session)
    session.receive_data(reply(register.sn, "var/absent does not exist", error=True)
                         + reply(barrier.sn, "1"))
    assert completed(session.outputs())[refused].error is not None
    assert list(session.watches) == ["motor/m0/position", "var/cfg"]
    session.unwatch("var/cfg")
    assert [(m.cmd, m.name) for m in sent(session)] == [(Cmd.SV_UNREGISTER, "var/cfg")]
    session.move("m0", 1.0, 0.0, 100.0)
    sent(session)
    session.connection_lost("gone")
    session.outputs()
    session.connection_made(PEER, 4)
    names = [m.name for m in sent(session) if m.cmd == Cmd.SV_REGISTER]
    assert names == ["error", "output/tty", "motor/m0/position"]


def test_tty_error_and_deleted_events(session: Session) -> None:
    session.receive_data(event("output/tty", "Hello\n") + event("error", "oops")
                         + event("motor/m0/position", "", flags=0x1000))
    assert session.outputs() == [TtyText("Hello\n"), ChannelEvent("error", "oops", False),
                                 ChannelEvent("motor/m0/position", "", True)]


def test_arrays_with_a_trailing_nul_and_variable_length_strings_are_accepted(
        session: Session) -> None:
    """What chess-pyspec's server sends: a 1 x 3 double array as 25 bytes (one NUL more than
    the elements need) and a string array as NUL-terminated strings plus one NUL."""
    data = SpecArray(DataType.SV_ARR_DOUBLE, 1, 3, (1.0, 2.0, 3.0)).data + b"\0"
    names = b"ab\0c\0\0"
    session.watch("var/arr", 0.0)
    session.watch("var/names", 0.0)
    sent(session)
    session.receive_data(
        encode_message(Message(cmd=Cmd.SV_EVENT, name="var/arr", type=DataType.SV_ARR_DOUBLE,
                               rows=1, cols=3, data=data))
        + encode_message(Message(cmd=Cmd.SV_EVENT, name="var/names",
                                 type=DataType.SV_ARR_STRING, rows=1, cols=2, data=names)))
    arr, strings = [o for o in session.outputs() if isinstance(o, ChannelEvent)]
    assert to_bus(arr.value) == {"dtype": "<f8", "shape": [1, 3], "data": data[:-1]}
    assert to_bus(strings.value) == ["ab", "c"]
    bad = Message(cmd=Cmd.SV_EVENT, name="var/arr", type=DataType.SV_ARR_DOUBLE, rows=1,
                  cols=3, data=data[:-1] + b"\0\0")  # two bytes too many: not tolerated
    session.receive_data(encode_message(bad))
    (note,) = session.outputs()
    assert isinstance(note, Notice) and "needs 24 bytes, got 26" in note.text


def test_requests_that_cannot_be_encoded_send_nothing(session: Session) -> None:
    with pytest.raises(LocalProtocolError, match="cannot contain NUL"):
        session.write("var/x", "a\0b", 0.0)
    with pytest.raises(LocalProtocolError, match="longer than 79"):
        session.read("var/" + "x" * 80, 0.0)
    assert session.data_to_send() == b"" and session.next_deadline is None


def test_bytes_that_are_not_spec_raise_remote_protocol_error(session: Session) -> None:
    with pytest.raises(RemoteProtocolError, match="bad SPEC magic"):
        session.receive_data(b"GET / HTTP/1.1\r\n\r\n")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 40), max_size=30))
def test_outputs_do_not_depend_on_how_the_bytes_are_cut(cuts: list[int]) -> None:
    def run(chunks: list[int]) -> list[Output]:
        s = Session(["var/x"])
        s.connection_made(PEER, 4)
        sns = [m.sn for m in sent(s)]
        token = s.read("var/y", 0.0)
        (read,) = sent(s)
        stream = (event("var/x", "1") + reply(sns[-1], "1") + event("output/tty", "t")
                  + reply(read.sn, {"a": "b"}))
        pos, outs = 0, list[Output]()
        for size in [*chunks, len(stream)]:
            s.receive_data(stream[pos:pos + size])
            pos += size
            outs += s.outputs()
        assert Completed(token, {"a": "b"}) in outs
        return outs
    assert run(cuts) == run([])
