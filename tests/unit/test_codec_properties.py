"""Hypothesis properties that the per-codec test files do not state.

Every codec must (1) round-trip what it encodes, (2) turn arbitrary peer input into a valid
result or the project's protocol error, never another exception, and (3) give the same result
however a byte stream is chunked. The existing files cover most of it; this one adds:

- SpringCore ``$SCRDR``: the greeting round trip; arbitrary bytes in arbitrary chunks through
  the stream decoder (same events as one chunk, bounded buffer, never an exception).
- SpringCore JSON: status, meta, JSON and ``$SCCMD`` command, and raw command round trips;
  arbitrary JSON documents (not only random bytes) through every decoder. Chunking does not
  apply: MQTT delivers whole payloads.
- SPEC: numeric and string value round trips over random shapes; arbitrary headers and data
  never give an array whose bus form outgrows its data (a ``4294967295 x 0`` header, found by
  the fuzzer, must not build 2^32 rows).
- cmd_tcp: what a text read shows can be written back (``strip_text`` then ``unescape``);
  arbitrary argument text through every parser; arbitrary device bytes through a `Receiver`
  doing consecutive reads, in arbitrary chunks.
- Envelope: a frame cut short or two frames glued together are refused (frames are whole on
  ZeroMQ, so this is the framing property in place of chunking).
"""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from actors.protocols import cmd_tcp, springcore, springcore_json
from actors.protocols.spec import Cmd, DataType, Decoder, Message, encode_message
from actors.protocols.spec_types import (
    ELEMENTS,
    SpecArray,
    decode_value,
    encode_value,
    format_number,
    parse_text,
    to_bus,
)
from broker.wire import envelope
from broker.wire.errors import EnvelopeError, LocalProtocolError, RemoteProtocolError
from tests.unit.test_envelope import envelopes


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


# --- SpringCore $SCRDR ------------------------------------------------------------------------

@given(st.sampled_from(["incl", "excl", "none"]), st.sampled_from(["\r\n", "\n", ""]))
def test_greeting_round_trip(mode: str, ending: str) -> None:
    message = springcore.decode_line(springcore.greeting_line(mode, ending))
    assert isinstance(message, springcore.Greeting)
    assert message.checksum == ("absent" if mode == "none" else "ok")


# bytes biased towards what the framing and the field parser look at
scrdr_noise = st.lists(st.sampled_from([b"$SCRDR;", b";", b"*", b"\r", b"\n", b"\r\n", b"0A",
                                        b"I", b"\x00", b"\xff", b"$", b"=", b"*5A"])
                       | st.binary(max_size=12), max_size=40).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(scrdr_noise, st.lists(st.integers(0, 500), max_size=12), st.integers(1, 40))
@example(b"$SCRDR;", [3], 1)  # an over-long line whose reported excerpt could vary by chunking
def test_scrdr_stream_any_bytes_any_chunks(data: bytes, cuts: list[int], max_line: int) -> None:
    def run(chunks: list[bytes]) -> list[springcore.ScrdrEvent]:
        decoder = springcore.ScrdrDecoder(max_line=max_line)
        events: list[springcore.ScrdrEvent] = []
        for chunk in chunks:
            decoder.feed(chunk)  # never raises: bad lines become Rejected events
            assert decoder.pending <= max_line + 1
            events += decoder.events()
        return events

    whole = run([data])
    assert run(split_at(data, cuts)) == whole
    assert run([data[i:i + 1] for i in range(len(data))]) == whole
    for event in whole:
        assert isinstance(event, dict | springcore.Greeting | springcore.Rejected)
        if isinstance(event, springcore.Rejected):
            assert event.reason and len(event.raw) <= 64


# --- SpringCore JSON ----------------------------------------------------------------------------

PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)


@given(st.sampled_from(["online", "offline", "offline,dead", "Online,busy"]),
       st.none() | PRINTABLE, st.none() | PRINTABLE)
def test_status_round_trip(state: str, uptime: str | None, date_time: str | None) -> None:
    status = springcore_json.decode_status(
        springcore_json.encode_status(state, uptime=uptime, date_time=date_time))
    assert (status.state, status.uptime, status.date_time) == (state, uptime, date_time)
    assert status.online == state.lower().startswith("online")


@given(st.fixed_dictionaries({}, optional={
    name: st.booleans() if kind is bool else st.text(max_size=20)
    for name, kind in springcore_json.META_FIELDS.items()}),
    st.dictionaries(st.text(max_size=8).filter(lambda k: k not in springcore_json.META_FIELDS),
                    st.integers() | st.text(max_size=5), max_size=3))
def test_meta_round_trip_keeps_known_fields_only(known: dict[str, Any],
                                                 other: dict[str, Any]) -> None:
    assert springcore_json.decode_meta(springcore_json.encode_meta({**other, **known})) == known


commands = st.lists(st.sampled_from(["SEQ", "LEDS", "BUZZ"]), min_size=1, max_size=3,
                    unique=True)


def _fields(names: list[str], data: st.DataObject) -> list[tuple[str, str]]:
    make = {"SEQ": lambda: springcore.seq_command(data.draw(st.integers(0, 255))),
            "LEDS": lambda: springcore.leds_command(data.draw(st.text("0123456789ABCDEF",
                                                                      min_size=8, max_size=8))),
            "BUZZ": lambda: springcore.buzz_command(data.draw(st.integers(0, 0xFFFF)))}
    return [make[name]() for name in names]


@given(commands, st.data())
def test_commands_round_trip_in_both_formats(names: list[str], data: st.DataObject) -> None:
    fields = _fields(names, data)
    sccmd = springcore_json.decode_command(springcore_json.encode_command(springcore_json.SCRDR,
                                                                          fields))
    assert sccmd.format == springcore_json.SCRDR and sccmd.fields == dict(fields)
    raw = springcore_json.encode_raw_command(";".join(f"{n}={v}" for n, v in fields))
    assert springcore_json.decode_command(raw).fields == dict(fields)
    if "SEQ" in names and len(names) > 1:
        with pytest.raises(LocalProtocolError, match="Sequence cannot be combined"):
            springcore_json.encode_command(springcore_json.JSON, fields)
        return
    decoded = springcore_json.decode_command(springcore_json.encode_command(
        springcore_json.JSON, fields))
    keys = {"SEQ": "Sequence", "LEDS": "Leds", "BUZZ": "Buzzer"}
    assert decoded.format == springcore_json.JSON
    assert decoded.fields == {keys[n]: v for n, v in fields}


json_docs = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=10),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(
        st.sampled_from(["State", "Uptime", "DateTime", "TagId", "Move", "Open", "VendorName",
                         "Sequence", "Leds", "x"]), kids, max_size=4),
    max_leaves=10)


@settings(max_examples=300)
@given(json_docs)
def test_any_json_document_decodes_or_raises_our_error(doc: Any) -> None:
    payload = json.dumps(doc).encode()
    for decode in (springcore_json.decode_status, springcore_json.decode_meta,
                   springcore_json.decode_command,
                   lambda p: springcore_json.decode_event(p, "R1")):
        with contextlib.suppress(RemoteProtocolError):
            decode(payload)


# --- SPEC ----------------------------------------------------------------------------------------

@st.composite
def numeric_arrays(draw: st.DrawFn) -> SpecArray:
    kind = draw(st.sampled_from(sorted(ELEMENTS)))
    rows, cols = draw(st.integers(0, 4)), draw(st.integers(0, 4))
    code = ELEMENTS[kind]
    if code in "df":
        items = st.floats(allow_nan=False, width=64 if code == "d" else 32)
    else:
        bits = {"b": 8, "h": 16, "i": 32, "q": 64}[code.lower()]
        signed = code.islower()
        items = st.integers(-(2 ** (bits - 1)) if signed else 0,
                            2 ** (bits - 1) - 1 if signed else 2 ** bits - 1)
    values = draw(st.lists(items, min_size=rows * cols, max_size=rows * cols))
    return SpecArray(kind, rows, cols, tuple(values))


@given(numeric_arrays(), st.sampled_from(["<", ">"]), st.sampled_from([2, 3, 4]))
def test_numeric_array_round_trip_through_the_wire(array: SpecArray, order: str,
                                                   vers: int) -> None:
    kind, data, rows, cols = encode_value(array, order)
    raw = encode_message(Message(cmd=Cmd.SV_REPLY, type=kind, data=data, rows=rows, cols=cols,
                                 order=order, vers=vers))
    decoder = Decoder()
    decoder.feed(raw)
    (msg,) = decoder.events()
    if not cols and rows > 1:  # an empty array has at most 1 row (see the module docstring)
        with pytest.raises(RemoteProtocolError, match="at most 1 row"):
            decode_value(msg)
        return
    assert decode_value(msg) == array


# floats within 1e308: %.15g rounds the largest doubles up to text that reads back as inf
@given(st.text(st.characters(min_codepoint=1, exclude_categories=["Cs"]), max_size=40)
       | st.integers() | st.floats(-1e308, 1e308))
def test_string_and_number_round_trip(value: str | int | float) -> None:
    kind, data, _, _ = encode_value(value)
    text = decode_value(Message(cmd=Cmd.SV_REPLY, type=kind, data=data))
    assert isinstance(text, str)
    if isinstance(value, str):
        assert text == value
    elif isinstance(value, int):
        assert parse_text(text) == value
    else:  # %.15g keeps 15 significant digits
        assert math.isclose(float(text), value, rel_tol=1e-14)
        assert text == format_number(value)


@settings(max_examples=400)
@given(st.sampled_from([*sorted(ELEMENTS), DataType.SV_ARR_STRING]),
       st.integers(0, 0xFFFFFFFF) | st.integers(0, 4), st.integers(0, 0xFFFFFFFF)
       | st.integers(0, 4), st.binary(max_size=64))
@example(DataType.SV_ARR_DOUBLE, 0xFFFFFFFF, 0, b"")  # found by the fuzzer: 2^32 empty rows
@example(DataType.SV_ARR_STRING, 0xFFFFFFFF, 0, b"")
def test_decoded_arrays_never_outgrow_their_data(kind: int, rows: int, cols: int,
                                                 data: bytes) -> None:
    """What `to_bus` builds is bounded by the bytes received, whatever the header says."""
    try:
        value = decode_value(Message(cmd=Cmd.SV_EVENT, type=kind, rows=rows, cols=cols,
                                     data=data))
    except RemoteProtocolError:
        return
    assert isinstance(value, SpecArray)
    assert value.rows <= max(1, len(data)) and len(value.items) <= len(data)
    bus = to_bus(value)
    assert len(bus["data"] if isinstance(bus, dict) else bus) <= max(1, len(data))


# --- cmd_tcp -------------------------------------------------------------------------------------

@given(st.binary(max_size=200).filter(lambda b: b"\\" not in b))
def test_what_a_text_read_shows_can_be_written_back(data: bytes) -> None:
    shown = cmd_tcp.strip_text(data)
    assert cmd_tcp.unescape(shown) == data.translate(None, cmd_tcp.STRIPPED)


arg_text = st.lists(st.sampled_from(["\\", "\\x", "\\x4", "4", "g", ",", "\\0", "\\777", "\n",
                                     "undef", "é", " ", "+f", "1e3", "nan", "-1", "0"])
                    | st.text(max_size=4), max_size=12).map("".join)


@settings(max_examples=300)
@given(arg_text)
def test_any_argument_text_parses_or_raises_local_protocol_error(text: str) -> None:
    parsers = (cmd_tcp.unescape, cmd_tcp.decode_hex, cmd_tcp.parse_eot, cmd_tcp.parse_pattern,
               lambda t: cmd_tcp.parse_timeout(t, 5.0), cmd_tcp.parse_count)
    for parse in parsers:
        with contextlib.suppress(LocalProtocolError):
            parse(text)
    for function in cmd_tcp.FUNCTIONS:
        with contextlib.suppress(LocalProtocolError):
            cmd_tcp.plan_call(function, [text, text, text][:len(
                cmd_tcp.FUNCTIONS[function].params)], 5.0)


device_bytes = st.lists(st.sampled_from([b"\0", b"\r", b"\n", b"\r\n", b"ab", b"E", b"a"])
                        | st.binary(max_size=6), max_size=30).map(b"".join)


def _consecutive_reads(make: Any, chunks: list[bytes], limit: int) -> list[bytes]:
    rx = cmd_tcp.Receiver(limit=limit)
    results: list[bytes] = []
    got = rx.begin(make())
    for chunk in chunks:
        got = rx.feed(chunk) if got is None else got
        while got is not None:
            results.append(got)
            got = rx.begin(make())
        assert len(rx.buffer) <= limit
    return results


@settings(max_examples=300, deadline=None)
@given(device_bytes, st.lists(st.integers(0, 200), max_size=10),
       st.sampled_from(["exact", "until", "expect"]))
def test_receiver_consecutive_reads_any_chunks(data: bytes, cuts: list[int], kind: str) -> None:
    makers = {"exact": lambda: cmd_tcp.ReadExact(3),
              "until": lambda: cmd_tcp.ReadUntil(cmd_tcp.parse_eot(r"\r\n,E")),
              "expect": lambda: cmd_tcp.Expect(b"ab")}
    whole = _consecutive_reads(makers[kind], [data], limit=1024)
    assert _consecutive_reads(makers[kind], split_at(data, cuts), limit=1024) == whole
    with contextlib.suppress(RemoteProtocolError):  # a small limit: the flood error, nothing else
        _consecutive_reads(makers[kind], split_at(data, cuts), limit=4)


# --- envelope ------------------------------------------------------------------------------------

@settings(max_examples=100)
@given(envelopes(), st.data())
def test_cut_or_glued_frames_are_refused(env: envelope.Envelope, data: st.DataObject) -> None:
    raw = env.encode()
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(EnvelopeError):
        envelope.decode(raw[:cut])
    with pytest.raises(EnvelopeError):
        envelope.decode(raw + data.draw(envelopes()).encode())
