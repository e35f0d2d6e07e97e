"""The cmd_tcp codec without sockets: Pyrame's wordings and quirks (the data functions' exact
semantics in the protocol notes), the receive side's matching, and Hypothesis properties (escapes
agree with the reference decoder, hex round trips, chunking never changes a result)."""

from __future__ import annotations

import codecs
import warnings

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.bus_link import parse_polls
from actors.protocols.cmd_tcp import (
    Expect,
    ReadExact,
    ReadUntil,
    Receiver,
    decode_hex,
    encode_hex,
    parse_count,
    parse_eot,
    parse_pattern,
    parse_timeout,
    plan_call,
    strip_text,
    unescape,
)
from broker.wire.errors import ConfigError, LocalProtocolError, RemoteProtocolError


def reference_unescape(text: str) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return codecs.escape_decode(text.encode("utf-8"))[0]


# --- escapes ----------------------------------------------------------------------------------


def test_unescape_matches_the_original_on_the_notes_example() -> None:
    assert unescape(r"a\tb\n\x41\e\r\\z\101") == b"a\tb\nA\\e\r\\zA"
    assert unescape(r"\777\0\01\012\0123") == b"\xff\x00\x01\n\n3"
    assert unescape("line\\\ncontinued") == b"linecontinued"
    assert unescape("é") == "é".encode()


@pytest.mark.parametrize(("text", "message"), [
    ("abc\\", "Trailing \\ in string"),
    (r"\x4", "invalid \\x escape at position 0"),
    (r"ab\x4g", "invalid \\x escape at position 2"),
])
def test_unescape_errors_use_the_reference_wording(text: str, message: str) -> None:
    with pytest.raises(LocalProtocolError) as exc:
        unescape(text)
    assert str(exc.value) == message
    with pytest.raises(ValueError, match=message.replace("\\", "\\\\")):
        reference_unescape(text)


escaped_text = st.text(alphabet=st.sampled_from(list("abx0178\\nrte'\"\n AF9é")), max_size=40)


@given(escaped_text)
def test_unescape_agrees_with_codecs_escape_decode(text: str) -> None:
    try:
        expected = reference_unescape(text)
    except ValueError as exc:
        with pytest.raises(LocalProtocolError) as ours:
            unescape(text)
        assert str(ours.value) == str(exc)
    else:
        assert unescape(text) == expected


# --- hex, text, eot, numbers ------------------------------------------------------------------


def test_hex_wordings_and_case() -> None:
    assert decode_hex("4A4b") == b"JK"
    assert encode_hex(b"__TEST__") == "5f5f544553545f5f"
    with pytest.raises(LocalProtocolError, match=r"^data must have a length multiple of 2\. "
                                                  r"Current length: 3$"):
        decode_hex("4A4")
    with pytest.raises(LocalProtocolError) as exc:
        decode_hex("41zz")
    assert str(exc.value) == "invalid literal for int() with base 16: 'zz'"
    for lenient in ("+f", " f", "é1"):  # int(pair, 16) would have taken the first two
        with pytest.raises(LocalProtocolError):
            decode_hex(lenient)


@given(st.binary(max_size=200))
def test_hex_round_trip(data: bytes) -> None:
    text = encode_hex(data)
    assert text == text.lower() and decode_hex(text) == data == decode_hex(text.upper())


def test_text_reads_strip_nul_cr_lf_anywhere() -> None:
    assert strip_text(b"TESTTEST\n") == "TESTTEST"
    assert strip_text(b"\0a\rb\nc\r\n") == "abc"
    assert strip_text(b"\xff") == "\\xff" and unescape(strip_text(b"\xff")) == b"\xff"


def test_eot_list_splits_before_unescaping() -> None:
    assert parse_eot(r"\r\n,\r") == (b"\r\n", b"\r")
    assert parse_eot(r"\x2c") == (b",",)
    for missing in ("", "undef"):
        with pytest.raises(LocalProtocolError, match=r"^End Of Transmission"):
            parse_eot(missing)
    with pytest.raises(LocalProtocolError, match=r"eot item 2 .* is empty"):
        parse_eot("a,,b")


def test_timeouts_counts_patterns() -> None:
    assert parse_timeout("undef", 60.0) == 60.0 == parse_timeout("", 60.0)
    assert parse_timeout("0.3", 60.0) == 0.3 == parse_timeout(0.3, 60.0)
    for bad in ("x", "0", "-1", "nan", "inf"):
        with pytest.raises(LocalProtocolError, match="timeout must be"):
            parse_timeout(bad, 60.0)
    assert parse_count("9") == 9 == parse_count(9)
    for bad_count in ("-1", "nine", 2.5, 1 << 30):
        with pytest.raises(LocalProtocolError, match="bytes_to_read"):
            parse_count(bad_count)
    assert parse_pattern(r"OK\r") == b"OK\r"
    for bad_pattern in ("", r"\0"):
        with pytest.raises(LocalProtocolError):
            parse_pattern(bad_pattern)


# --- the receive side -------------------------------------------------------------------------


def test_read_until_leaves_later_bytes_for_the_next_read() -> None:
    rx = Receiver()
    rx.feed(b"__TEST__")
    assert rx.begin(ReadUntil(parse_eot("E"))) == b"__T"
    assert rx.begin(ReadExact(4)) == b"ST__"
    assert rx.buffer == b""


def test_first_eot_wins_then_list_order() -> None:
    rx = Receiver()
    assert rx.begin(ReadUntil(parse_eot(r"\r\n,\r"))) is None
    assert rx.feed(b"ab\r\ncd") == b"ab"
    assert bytes(rx.buffer) == b"\ncd"  # the \r matched first; \n stays
    rx.reset()
    rx.feed(b"ab\r\n")
    assert rx.begin(ReadUntil(parse_eot(r"\n,\r\n"))) == b"ab\r"  # same end: list order
    rx.reset()
    rx.feed(b"ab\r\n")
    assert rx.begin(ReadUntil(parse_eot(r"\r\n,\n"))) == b"ab"


def test_expect_skips_nuls_discards_what_it_read_and_keeps_the_rest() -> None:
    rx = Receiver()
    assert rx.begin(Expect(b"abc")) is None
    assert rx.feed(b"xxa\0b") is None
    assert rx.buffer == b""  # nothing accumulates while waiting
    assert rx.feed(b"\0cREST") == b"abc"
    assert rx.buffer == b"REST"
    rx.reset()
    rx.feed(b"abc")
    assert rx.begin(Expect(b"a.c")) is None  # plain bytes, not a regex


def test_bounded_buffer_and_timeout_reasons() -> None:
    rx = Receiver(limit=16)
    rx.begin(ReadUntil((b"\n",)))
    rx.feed(b"x" * 10)
    with pytest.raises(RemoteProtocolError, match="more than 16 bytes without an eot") as exc:
        rx.feed(b"x" * 10)
    assert exc.value.raw == b"x" * 20
    rx.reset()
    with pytest.raises(RemoteProtocolError, match="that no read asked for"):
        rx.feed(b"y" * 17)
    until = ReadUntil((b"\n",))
    assert until.timeout_reason(0, "10.0.0.1:5025") == \
        "TCP link at 10.0.0.1:5025 is not responding <- timed out"
    assert until.timeout_reason(3, "10.0.0.1:5025") == "Timeout waiting for EOT character"
    rx = Receiver()
    rx.begin(ReadExact(4))
    rx.feed(b"ab")
    rx.abort()  # partial data discarded, like the original
    assert rx.buffer == b"" and rx.read is None


def run_chunked(data: bytes, cuts: list[int], read: ReadExact | ReadUntil | Expect,
                ) -> tuple[bytes | None, bytes]:
    rx = Receiver()
    result = rx.begin(read)
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        if result is None:
            result = rx.feed(data[start:cut])
        else:
            rx.buffer += data[start:cut]
        start = max(start, cut)
    return result, bytes(rx.buffer)


stream = st.binary(max_size=60).map(lambda b: b.replace(b"Z", b"")) | \
    st.lists(st.sampled_from([b"\0", b"\r", b"\n", b"ab", b"E", b"\r\n"]), max_size=20).map(
        b"".join)


@given(stream, st.lists(st.integers(0, 60), max_size=8),
       st.sampled_from(["exact", "until", "expect"]))
def test_chunking_does_not_change_results(data: bytes, cuts: list[int], kind: str) -> None:
    def make() -> ReadExact | ReadUntil | Expect:
        if kind == "exact":
            return ReadExact(5)
        if kind == "until":
            return ReadUntil(parse_eot(r"\r\n,E"))
        return Expect(b"ab")

    whole = run_chunked(data, [], make())
    assert run_chunked(data, [c % (len(data) + 1) for c in cuts], make()) == whole
    one_by_one = run_chunked(data, list(range(len(data))), make())
    assert one_by_one == whole


# --- calls and poll tables --------------------------------------------------------------------


def test_plan_call_encodes_and_checks() -> None:
    call = plan_call("wrnrd_bin_until", ["5f5f544553545f5f", "E"], 60.0)
    assert (call.write, call.timeout, call.result(b"__T")) == (b"__TEST__", 60.0, "5f5f54")
    assert plan_call("write", [r"TEST\n"], 60.0).result(None) == "ok"
    assert plan_call("expect", ["OK", "2"], 60.0).result(b"xOK") == "Pattern found"
    with pytest.raises(LocalProtocolError, match="read takes bytes_to_read, timeout"):
        plan_call("read", [], 60.0)
    with pytest.raises(LocalProtocolError, match="Current length: 3"):
        plan_call("write_bin", ["4A4"], 60.0)


def test_poll_tables_are_checked_with_their_key_path() -> None:
    good = [{"every": 1, "command": "wrnrd_until", "args": ["MEAS:VOLT?\\n", "\\n"],
             "event": "voltage"}]
    (poll,) = parse_polls(good, "actors.psu1.poll", "site.toml", 60.0, 1024)
    assert (poll.every, poll.args, poll.event) == (1.0, ("MEAS:VOLT?\\n", "\\n"), "voltage")
    cases = [
        ([{"every": 0, "command": "read", "args": ["1"], "event": "v"}], "poll[0].every"),
        ([{"every": 1, "command": "inval", "event": "v"}], "poll[0].command"),
        ([{"every": 1, "command": "write_bin", "args": ["4A4"], "event": "v"}],
         "poll[0].args"),
        ([{"every": 1, "command": "read", "args": ["1"], "event": "a.b"}], "poll[0].event"),
        ([{"every": 1, "command": "read", "args": ["1"], "event": "link"}], "poll[0].event"),
        ([{"every": 1, "command": "read", "event": "v", "evry": 2}], "poll[0].evry"),
        ([good[0], {"command": "read", "event": "v"}], "poll[1].every"),
        (["read"], "poll[0]"),
    ]
    for polls, path in cases:
        with pytest.raises(ConfigError) as exc:
            parse_polls(polls, "actors.psu1.poll", "site.toml", 60.0, 1024)
        assert exc.value.path == f"actors.psu1.{path}", (polls, exc.value)
