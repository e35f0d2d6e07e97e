"""The $SCRDR / $SCCMD codec without sockets: the documented examples, every rejection path, and
Hypothesis properties (round trips, chunking does not matter, garbage never escapes as anything
but a reported rejection)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.protocols.springcore import (
    MAX_LINE,
    Greeting,
    Rejected,
    ScrdrDecoder,
    ScrdrEvent,
    buzz_command,
    decode_command,
    decode_line,
    encode_command,
    encode_tag_line,
    greeting_line,
    leds_command,
    seq_command,
    xor_checksum,
)
from actors.protocols.springcore_tag import TAG_KEYS
from broker.wire.errors import LocalProtocolError, RemoteProtocolError

# the synthetic $SCRDR examples of docs/protocols/springcore.md, one per checksum convention
EXCL = b"$SCRDR;13;01;01;;047DAE02C84080;;00047DAE02C84080;*56"
INCL = b"$SCRDR;13;01;01;;047DAE02C84080;;00047DAE02C84080;*58"


def feed_all(chunks: list[bytes], max_line: int = MAX_LINE) -> list[ScrdrEvent]:
    decoder = ScrdrDecoder(max_line)
    out: list[ScrdrEvent] = []
    for chunk in chunks:
        decoder.feed(chunk)
        out += decoder.events()
    return out


# --- decode_line ------------------------------------------------------------------------------


@pytest.mark.parametrize("line", [EXCL, INCL, EXCL.lower().replace(b"$scrdr", b"$SCRDR")])
def test_documented_example_decodes_under_both_conventions(line: bytes) -> None:
    tag = decode_line(line)
    assert isinstance(tag, dict) and tuple(tag) == TAG_KEYS
    assert tag["tag_id"] == "047DAE02C84080"
    assert (tag["interface"], tag["protocol"], tag["template"], tag["rssi"]) == ("13", "01", 1,
                                                                                 None)
    assert tag["tag_data"].upper() == "00047DAE02C84080" and tag["tag_details"] is None
    assert tag["checksum"] == "ok" and tag["raw"] == line.decode() and tag["device"] is None


def test_checksums_of_the_documented_lines() -> None:
    body = EXCL[1:EXCL.index(b"*")].decode()
    assert xor_checksum(body) == 0x56 and xor_checksum(body) ^ 0x0E == 0x58


@pytest.mark.parametrize(("tail", "verdict"), [(b"*57", "bad"), (b"", "absent"),
                                               (b"*", "absent"), (b"*56\r", "ok"),
                                               (b"*56\r\n", "ok")])
def test_checksum_verdicts(tail: bytes, verdict: str) -> None:
    tag = decode_line(EXCL[:EXCL.index(b"*")] + tail)
    assert isinstance(tag, dict) and tag["checksum"] == verdict


@pytest.mark.parametrize("line", [b"$SCRDR;;;;;;;;*54", b"$SCRDR;;;;;;;;*5A", "$SCRDR;;;;;;;;",
                                  b"$SCRDR; ; ;;;;;;*54"])
def test_empty_line_is_a_greeting_never_a_tag(line: bytes | str) -> None:
    assert isinstance(decode_line(line), Greeting)


def test_move_rssi_and_text_fields() -> None:
    tag = decode_line(b"$SCRDR;ff;02;00;C4;abcd;IR ;hello world;scan resp")
    assert isinstance(tag, dict)
    assert tag["tag_id"] == "ABCD" and tag["interface"] == "FF" and tag["rssi"] == 0xC4
    assert tag["template"] == 0 and tag["move"] == "insert,remove"
    assert (tag["tag_data"], tag["tag_details"], tag["checksum"]) == ("hello world", "scan resp",
                                                                      "absent")


@pytest.mark.parametrize(("line", "reason"), [
    (b"$SCCMD;SEQ=60", "does not start with $SCRDR"),
    (b"hello", "does not start with $SCRDR"),
    (b"$SCRDRX;;;;;;;;", "is not SCRDR"),
    (b"$SCRDR;13;01;01;;04AB;;", "7 fields, expected 8"),
    (b"$SCRDR;13;01;01;;04AB;;;;", "9 fields, expected 8"),
    (b"$SCRDR;13;01;01;;;;00;", "without a TagId"),
    (b"$SCRDR;13;01;01;;04XY;;;", "TagId '04XY' is not hex"),
    (b"$SCRDR;133;01;01;;04AB;;;", "Interface '133' is not 2 hex digits"),
    (b"$SCRDR;13;01;01;-5;04AB;;;", "RSSI '-5' is not 2 hex digits"),
    (b"$SCRDR;13;01;01;;04AB;X;;", "Move: unknown move 'X'"),
    (b"$SCRDR;13;01;01;;04AB;;;*5", "checksum '5' after '*' is not 2 hex digits"),
    (b"$SCRDR;13;01;01;;04\xffAB;;;", "byte 0xFF at offset 19 is not printable ASCII"),
    (b"$SCRDR;13;01;01;;04\x00AB;;;", "byte 0x00 at offset 19"),
])
def test_bad_lines_raise_remote_protocol_error(line: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_line(line)
    assert reason in str(info.value)
    assert info.value.raw == line[:64]


def test_non_ascii_text_is_rejected_not_replaced() -> None:
    with pytest.raises(RemoteProtocolError, match="not printable ASCII"):
        decode_line("$SCRDR;13;01;01;;04AB;;é;")
    with pytest.raises(RemoteProtocolError, match="not printable ASCII"):
        decode_line("$SCRDR;13;01;01;;04AB;;\udcff;")


# --- the stream decoder -----------------------------------------------------------------------


def test_stream_frames_on_lf_with_optional_cr_and_skips_blank_lines() -> None:
    events = feed_all([EXCL + b"\r\n\r\n" + greeting_line() + INCL[:10], INCL[10:] + b"\n"])
    assert [type(e) for e in events] == [dict, Greeting, dict]
    assert [e["checksum"] for e in events if isinstance(e, dict)] == ["ok", "ok"]


def test_bad_line_is_rejected_and_the_stream_goes_on() -> None:
    events = feed_all([b"garbage\r\n$SCRDR;1;2\n" + EXCL + b"\n"])
    assert isinstance(events[0], Rejected) and events[0].raw == b"garbage"
    assert "does not start with $SCRDR" in events[0].reason
    assert isinstance(events[1], Rejected) and "fields" in events[1].reason
    assert isinstance(events[2], dict) and events[2]["tag_id"] == "047DAE02C84080"


def test_over_long_line_is_reported_once_and_discarded_up_to_lf() -> None:
    decoder = ScrdrDecoder()
    decoder.feed(b"$SCRDR;" + b"A" * 40000)
    assert decoder.events() == [] and decoder.pending == 40007
    decoder.feed(b"B" * 40000)  # crosses the bound: reported now, buffer released
    (rejected,) = decoder.events()
    assert isinstance(rejected, Rejected) and f"longer than {MAX_LINE} bytes" in rejected.reason
    assert rejected.raw.startswith(b"$SCRDR;AAA") and decoder.pending == 0
    decoder.feed(b"C" * 100000)
    assert decoder.events() == [] and decoder.pending == 0  # still skipping, nothing held
    decoder.feed(b"CCC\r\n" + EXCL + b"\r\n")
    (tag,) = decoder.events()
    assert isinstance(tag, dict) and tag["tag_id"] == "047DAE02C84080"


def test_line_of_exactly_max_length_is_accepted() -> None:
    head = b"$SCRDR;13;01;01;;04AB;;"
    line = head + b"D" * (MAX_LINE - len(head) - 1) + b";"
    assert len(line) == MAX_LINE
    (tag,) = feed_all([line + b"\r\n"])
    assert isinstance(tag, dict) and len(tag["tag_data"]) == MAX_LINE - len(head) - 1
    (rejected,) = feed_all([line + b"E\n"])
    assert isinstance(rejected, Rejected)


def test_reset_returns_the_partial_line() -> None:
    decoder = ScrdrDecoder()
    decoder.feed(EXCL + b"\r\n" + EXCL[:20])
    assert len(decoder.events()) == 1
    assert decoder.reset() == EXCL[:20] and decoder.pending == 0
    decoder.feed(EXCL[20:] + b"\n")  # the rest of the old line after a reconnect: garbage
    assert isinstance(decoder.events()[0], Rejected)


# --- $SCCMD -----------------------------------------------------------------------------------


def test_documented_commands() -> None:
    assert encode_command([seq_command("60")]) == b"$SCCMD;SEQ=60\r\n"
    assert encode_command([seq_command(0x61)]) == b"$SCCMD;SEQ=61\r\n"
    assert encode_command([seq_command("e")], line_ending="") == b"$SCCMD;SEQ=0E"
    assert encode_command([leds_command("92929292"), buzz_command(100)],
                          line_ending="\n") == b"$SCCMD;LEDS=92929292;BUZZ=0064\n"
    assert buzz_command(65535) == ("BUZZ", "FFFF") and leds_command("abcdef01")[1] == "ABCDEF01"


def test_command_checksum_modes_decode_as_expected() -> None:
    for mode, verdict in (("incl", "ok"), ("excl", "ok"), ("bad", "bad"), ("none", "absent")):
        line = encode_command([seq_command("0E")], checksum=mode)
        assert decode_command(line).checksum == verdict
        assert decode_command(line).fields == (("SEQ", "0E"),)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: seq_command(256), "not one byte"),
    (lambda: seq_command("600"), "exactly 2 hex digits"),
    (lambda: seq_command("G0"), "exactly 2 hex digits"),
    (lambda: seq_command(True), "hex text or an int"),
    (lambda: leds_command("9292929"), "exactly 8 hex digits"),
    (lambda: buzz_command(-1), "0 to 65535"),
    (lambda: buzz_command(70000), "0 to 65535"),
    (lambda: encode_command([]), "at least one"),
    (lambda: encode_command([("SEQ", "6;0")]), "contains ';'"),
    (lambda: encode_command([("SE=Q", "60")]), "contains '='"),
    (lambda: encode_command([("SEQ", "60\r")]), "contains '\\r'"),
    (lambda: encode_command([("", "60")]), "empty field name"),
    (lambda: encode_command([("X", "A" * 250)]), "the reader discards"),
    (lambda: encode_command([seq_command(1)], line_ending="\r"), "line ending"),
    (lambda: encode_command([seq_command(1)], checksum="maybe"), "checksum mode"),
])
def test_invalid_commands_raise_local_protocol_error(make: Any, message: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        make()
    assert message in str(info.value)


def test_longest_command_allowed() -> None:
    line = encode_command([("X", "A" * (255 - len("$SCCMD;X=")))], line_ending="")
    assert len(line) == 255


@pytest.mark.parametrize(("line", "message"), [
    (b"$SCCMD;SEQ", "is not Field=Value"), (b"$SCRDR;;;;;;;;", "does not start with $SCCMD"),
    (b"$SCCMD;X=" + b"A" * 250, "discards commands longer than 255"),
])
def test_bad_commands_raise_remote_protocol_error(line: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_command(line)
    assert message in str(info.value)


def test_encode_tag_line_validates() -> None:
    for kwargs, message in (({"tag_id": ""}, "TagId must not be empty"),
                            ({"tag_id": "0G"}, "TagId"),
                            ({"tag_id": "04", "rssi": 300}, "RSSI 300"),
                            ({"tag_id": "04", "interface": "1"}, "Interface"),
                            ({"tag_id": "04", "move": "sideways"}, "unknown move"),
                            ({"tag_id": "04", "tag_data": "a;b"}, "contains ';'")):
        with pytest.raises(LocalProtocolError) as info:
            encode_tag_line(**kwargs)
        assert message in str(info.value)


# --- properties -------------------------------------------------------------------------------

HEX = st.text("0123456789ABCDEFabcdef", min_size=1, max_size=40)
TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="$*;"),
               max_size=60)
TAG_ARGS = st.fixed_dictionaries({
    "tag_id": HEX, "interface": st.sampled_from(["", "13", "0a"]),
    "protocol": st.sampled_from(["", "01", "2C"]),
    "template": st.none() | st.integers(0, 255), "rssi": st.none() | st.integers(0, 255),
    "move": st.sampled_from([None, "I", "R", "IR", "insert", "remove", "insert,remove"]),
    "tag_data": TEXT, "tag_details": TEXT,
    "checksum": st.sampled_from(["incl", "excl", "none", "bad"]),
    "line_ending": st.sampled_from(["\r\n", "\n"]),
})
VERDICT = {"incl": "ok", "excl": "ok", "none": "absent", "bad": "bad"}


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=200, deadline=None)
@given(TAG_ARGS)
def test_tag_line_round_trip(args: dict[str, Any]) -> None:
    line = encode_tag_line(**args)
    tag = decode_line(line)
    if not isinstance(tag, dict):  # only an all-empty line is a greeting; a TagId prevents it
        pytest.fail(f"{line!r} decoded as {tag!r}")
    assert tag["tag_id"] == args["tag_id"].upper()
    assert tag["template"] == args["template"] and tag["rssi"] == args["rssi"]
    assert tag["tag_data"] == (args["tag_data"] or None)
    assert tag["checksum"] == VERDICT[args["checksum"]]
    assert tag["raw"] == line.decode().rstrip("\r\n")


@settings(max_examples=100, deadline=None)
@given(st.lists(TAG_ARGS, min_size=1, max_size=5), st.lists(st.binary(max_size=30), max_size=3),
       st.lists(st.integers(0, 10_000), max_size=20))
def test_chunking_does_not_matter(tags: list[dict[str, Any]], junk: list[bytes],
                                  cuts: list[int]) -> None:
    stream = b"".join(encode_tag_line(**t) for t in tags) + b"\n".join(junk) + b"\n"
    stream += greeting_line()
    whole = feed_all([stream])
    assert feed_all(split_at(stream, cuts)) == whole
    assert feed_all([bytes([b]) for b in stream]) == whole  # byte by byte
    decoded = [e for e in whole if isinstance(e, dict)]
    assert [e["tag_id"] for e in decoded[:len(tags)]] == [t["tag_id"].upper() for t in tags]
    assert isinstance(whole[-1], Greeting)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.builds(lambda a, b: a + b, st.just(b"$SCRDR;"),
                                           st.binary(max_size=200)))
def test_garbage_is_decoded_or_reported_never_another_exception(data: bytes) -> None:
    try:
        result = decode_line(data)
    except RemoteProtocolError as exc:
        assert str(exc) and len(exc.raw) <= 64
    else:
        assert isinstance(result, dict | Greeting)
    with contextlib.suppress(RemoteProtocolError):
        decode_command(data)
    for event in feed_all([data, b"\n"], max_line=100):
        assert isinstance(event, dict | Greeting | Rejected)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 400), st.lists(st.integers(0, 2000), max_size=8))
def test_over_long_lines_never_grow_the_buffer(length: int, cuts: list[int]) -> None:
    stream = b"$SCRDR;" + b"F" * length + b"\n" + EXCL + b"\n"
    decoder = ScrdrDecoder(max_line=64)
    events: list[ScrdrEvent] = []
    for chunk in split_at(stream, cuts):
        decoder.feed(chunk)
        assert decoder.pending <= 65
        events += decoder.events()
    assert isinstance(events[-1], dict) and events[-1]["tag_id"] == "047DAE02C84080"
    assert len(events) == 2  # the first line: rejected (too long or too few fields), once


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=6),
                          TEXT.filter(lambda t: "=" not in t).map(lambda t: t[:20])),
                min_size=1, max_size=6),
       st.sampled_from(["incl", "excl", "none", "bad"]), st.sampled_from(["\r\n", "\n", ""]))
def test_command_round_trip(fields: list[tuple[str, str]], mode: str, ending: str) -> None:
    line = encode_command(fields, checksum=mode, line_ending=ending)
    decoded = decode_command(line)
    assert decoded.checksum == VERDICT[mode]
    assert decoded.fields == tuple(fields)
