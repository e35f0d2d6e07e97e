"""The SPEC codec without sockets: headers in every version and byte order, framing over any
chunking, the data encodings, the bounds, and the promise that peer garbage only ever raises
RemoteProtocolError."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.protocols.spec import (
    BIG,
    HEADER_SIZES,
    LITTLE,
    MAX_HEADER,
    Cmd,
    DataType,
    Decoder,
    Message,
    encode_message,
    is_deleted,
    parse_header,
)
from actors.protocols.spec_types import (
    ELEMENTS,
    SpecArray,
    decode_assoc,
    decode_value,
    encode_assoc,
    encode_value,
    format_number,
    parse_text,
    to_bus,
)
from broker.wire.errors import LocalProtocolError, RemoteProtocolError

U32 = st.integers(0, 0xFFFFFFFF)
I32 = st.integers(-(2**31), 2**31 - 1)
NAMES = st.text(st.characters(min_codepoint=1, max_codepoint=0x7FF), max_size=39)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    vers = draw(st.sampled_from([2, 3, 4]))
    return Message(cmd=draw(I32), name=draw(NAMES), data=draw(st.binary(max_size=64)),
                   type=draw(I32), sn=draw(U32), rows=draw(U32), cols=draw(U32),
                   err=draw(I32) if vers >= 3 else 0, flags=draw(I32) if vers >= 4 else 0,
                   sec=draw(U32), usec=draw(U32), vers=vers,
                   order=draw(st.sampled_from([LITTLE, BIG])))


def decode_all(data: bytes, chunks: list[int] | None = None) -> list[Message]:
    dec = Decoder()
    out: list[Message] = []
    pos = 0
    for size in (chunks or []) + [len(data)]:
        dec.feed(data[pos:pos + size])
        pos += size
        out += list(dec.events())
    return out


# --- headers -----------------------------------------------------------------------------------


@given(messages())
def test_header_round_trip_every_version_and_order(msg: Message) -> None:
    raw = encode_message(msg)
    assert len(raw) == HEADER_SIZES[msg.vers] + len(msg.data)
    assert decode_all(raw) == [msg]


def test_known_bytes_of_a_v4_little_endian_chan_read() -> None:
    raw = encode_message(Message(cmd=Cmd.SV_CHAN_READ, name="var/COUNTERS", sn=7, vers=4))
    assert raw[:52].hex() == ("cefaedfe04000000840000000700000000000000000000000b000000"
                              "020000000000000000000000000000000000000000000000")
    assert raw[52:].rstrip(b"\0") == b"var/COUNTERS" and len(raw) == 132


def test_big_endian_magic_and_v2_layout() -> None:
    raw = encode_message(Message(cmd=Cmd.SV_HELLO, name="x", vers=2, order=BIG, data=b"ab"))
    assert raw[:4] == bytes.fromhex("feedface") and len(raw) == 124 + 2
    assert struct.unpack(">i", raw[4:8]) == (2,) and raw[44:45] == b"x"
    msg = decode_all(raw)[0]
    assert (msg.order, msg.vers, msg.err, msg.flags, msg.data) == (BIG, 2, 0, 0, b"ab")


def test_a_longer_future_header_keeps_the_name_in_its_last_80_bytes() -> None:
    head = struct.pack("<IiIIIIiiIIIii", 0xFEEDFACE, 5, 140, 9, 0, 0, Cmd.SV_REPLY,
                       DataType.SV_STRING, 0, 0, 3, 0, 0)
    raw = head + b"\xff" * 8 + b"var/x".ljust(80, b"\0") + b"ok\0"
    msg = decode_all(raw)[0]
    assert (msg.name, msg.sn, msg.vers, decode_value(msg)) == ("var/x", 9, 5, "ok")


def test_name_is_cut_at_the_first_nul() -> None:
    raw = bytearray(encode_message(Message(cmd=Cmd.SV_EVENT, name="abc")))
    raw[132 - 80 + 4:132 - 80 + 8] = b"junk"  # garbage after the terminating NUL
    assert decode_all(bytes(raw))[0].name == "abc"


@pytest.mark.parametrize("msg, match", [
    (Message(cmd=1, vers=5), "version 5"),
    (Message(cmd=1, name="n" * 80), "longer than 79"),
    (Message(cmd=1, name="a\0b"), "NUL"),
    (Message(cmd=1, sn=-1), "cannot encode"),
    (Message(cmd=1, order="!"), "byte order"),
    (Message(cmd=1, name="\ud800"), "not valid Unicode"),
])
def test_values_the_header_cannot_carry_are_local_errors(msg: Message, match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        encode_message(msg)


@pytest.mark.parametrize("raw, match", [
    (b"GET / HTTP/1.1\r\n\r\n", "bad SPEC magic"),
    (struct.pack("<IiI", 0xFEEDFACE, 1, 124), "version 1"),
    (struct.pack("<IiI", 0xFEEDFACE, 4, 124), "size 124 is impossible"),
    (struct.pack("<IiI", 0xFEEDFACE, 2, MAX_HEADER + 4), "impossible"),
])
def test_bytes_that_are_not_spec_are_remote_errors(raw: bytes, match: str) -> None:
    dec = Decoder()
    dec.feed(raw)
    with pytest.raises(RemoteProtocolError, match=match):
        list(dec.events())
    with pytest.raises(RemoteProtocolError):  # the decoder stays failed: framing is lost
        dec.feed(encode_message(Message(cmd=Cmd.SV_HELLO)))


def test_data_length_is_bounded() -> None:
    dec = Decoder(max_data=100)
    dec.feed(encode_message(Message(cmd=Cmd.SV_REPLY, data=b"x" * 101))[:132])
    with pytest.raises(RemoteProtocolError, match="101 data bytes, more than the bound of 100"):
        list(dec.events())


def test_partial_message_waits_for_the_rest() -> None:
    raw = encode_message(Message(cmd=Cmd.SV_REPLY, data=b"hello\0", sn=3))
    dec = Decoder()
    dec.feed(raw[:-1])
    assert list(dec.events()) == [] and dec.buffered == 5
    dec.feed(raw[-1:])
    assert [m.sn for m in dec.events()] == [3]


def test_first_message_fixes_the_decoders_order_and_version() -> None:
    dec = Decoder()
    dec.feed(encode_message(Message(cmd=Cmd.SV_HELLO, vers=3, order=BIG)))
    dec.feed(encode_message(Message(cmd=Cmd.SV_HELLO, vers=4, order=LITTLE)))
    assert [m.order for m in dec.events()] == [BIG, LITTLE]
    assert (dec.order, dec.vers) == (BIG, 3)


@given(st.lists(messages(), min_size=1, max_size=5), st.data())
def test_chunking_does_not_matter(msgs: list[Message], data: st.DataObject) -> None:
    raw = b"".join(encode_message(m) for m in msgs)
    chunks = data.draw(st.lists(st.integers(1, 200), max_size=30))
    assert decode_all(raw, chunks) == msgs
    assert decode_all(raw, [1] * len(raw)) == msgs


@settings(max_examples=300)
@given(st.binary(max_size=400), st.sampled_from([b"", b"\xce\xfa\xed\xfe", b"\xfe\xed\xfa\xce"]))
def test_random_bytes_decode_or_raise_remote_protocol_error(raw: bytes, prefix: bytes) -> None:
    dec = Decoder(max_data=1000)
    try:
        dec.feed(prefix + raw)
        for msg in dec.events():
            decode_value(msg)
    except RemoteProtocolError:
        pass


@settings(max_examples=300)
@given(st.integers(0, 20), U32 | st.integers(0, 4), U32 | st.integers(0, 4),
       st.binary(max_size=64), st.sampled_from([LITTLE, BIG]))
def test_random_payloads_decode_or_raise_remote_protocol_error(
        kind: int, rows: int, cols: int, data: bytes, order: str) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_value(Message(cmd=Cmd.SV_EVENT, type=kind, rows=rows, cols=cols, data=data,
                             order=order))


def test_deleted_flag_is_read_in_both_published_values() -> None:
    assert is_deleted(0x0001) and is_deleted(0x1000) and not is_deleted(0x0100)


# --- data encodings ----------------------------------------------------------------------------


def test_strings_carry_one_nul_and_numbers_go_as_15g_text() -> None:
    assert encode_value("abc") == (DataType.SV_STRING, b"abc\0", 0, 0)
    assert encode_value(0.1 + 0.2)[1] == b"0.3\0"
    assert encode_value(25.000001373291)[1] == b"25.000001373291\0"
    assert format_number(True) == "1" and format_number(2.0) == "2"
    for data in (b"abc\0", b"abc"):  # pycertifspec sends strings without the NUL
        assert decode_value(Message(cmd=Cmd.SV_REPLY, data=data)) == "abc"
    with pytest.raises(LocalProtocolError, match="NUL"):
        encode_value("a\0b")
    with pytest.raises(LocalProtocolError, match="cannot send"):
        encode_value(object())
    with pytest.raises(LocalProtocolError, match="not valid Unicode"):
        encode_value("\udc80")


def test_parse_text_numbers_like_spec_clients() -> None:
    assert parse_text("2") == 2 and isinstance(parse_text("2"), int)
    assert parse_text("2.5") == 2.5 and parse_text("abc") == "abc"
    assert parse_text("nan") == "nan"  # not finite: kept as text


def test_assoc_encoding_and_terminator() -> None:
    raw = encode_assoc({"0": "12.5", "1": "-3"})
    assert raw == b"0\x0012.5\x001\x00-3\x00\x00"
    assert decode_assoc(raw) == {"0": "12.5", "1": "-3"}
    assert decode_assoc(b"k\0\0\0") == {"k": ""} and decode_assoc(b"") == {}
    with pytest.raises(RemoteProtocolError, match="two NULs"):
        decode_assoc(b"k\0v\0")
    with pytest.raises(RemoteProtocolError, match="key/value"):
        decode_assoc(b"k\0v\0x\0\0")
    with pytest.raises(LocalProtocolError, match="empty"):
        encode_assoc({"": "v"})


TEXT = st.characters(min_codepoint=1, exclude_categories=["Cs"])  # no NUL, no surrogates


@given(st.dictionaries(st.text(TEXT, min_size=1, max_size=8), st.text(TEXT, max_size=8),
                       max_size=6))
def test_assoc_round_trip(table: dict[str, str]) -> None:
    kind, data, _, _ = encode_value(table)
    assert decode_value(Message(cmd=Cmd.SV_EVENT, type=kind, data=data)) == table


@pytest.mark.parametrize("kind", sorted(ELEMENTS))
@pytest.mark.parametrize("order", [LITTLE, BIG])
def test_numeric_arrays_round_trip_in_both_orders(kind: int, order: str) -> None:
    items = tuple(float(i) if ELEMENTS[kind] in "fd" else i for i in range(6))
    array = SpecArray(kind, 2, 3, items)
    code, data, rows, cols = encode_value(array, order)
    assert len(data) == 6 * struct.calcsize(ELEMENTS[kind])  # no trailing NUL
    msg = Message(cmd=Cmd.SV_REPLY, type=code, rows=rows, cols=cols, data=data, order=order)
    assert decode_value(msg) == array
    bus = to_bus(decode_value(msg))  # the wire bytes as they came, numpy's layout
    assert bus["shape"] == [2, 3] and bus["data"] == data
    assert bus["dtype"][1:] in ("f8", "f4", "i4", "u4", "i2", "u2", "i1", "u1", "i8", "u8")


def test_array_length_is_checked_against_rows_and_cols() -> None:
    msg = Message(cmd=Cmd.SV_REPLY, type=DataType.SV_ARR_LONG, rows=2, cols=2, data=b"\0" * 12)
    with pytest.raises(RemoteProtocolError, match="needs 16 bytes, got 12"):
        decode_value(msg)
    with pytest.raises(LocalProtocolError, match="is not 2 x 2"):
        SpecArray(DataType.SV_ARR_LONG, 2, 2, (1, 2, 3))
    with pytest.raises(LocalProtocolError, match="do not fit"):
        encode_value(SpecArray(DataType.SV_ARR_UCHAR, 1, 1, (300,)))


def test_string_arrays_are_fixed_width_rows() -> None:
    msg = Message(cmd=Cmd.SV_REPLY, type=DataType.SV_ARR_STRING, rows=2, cols=4,
                  data=b"ab\0\0cdef")
    assert decode_value(msg) == SpecArray(DataType.SV_ARR_STRING, 2, 1, ("ab", "cdef"))
    with pytest.raises(RemoteProtocolError, match="needs 8 bytes"):
        decode_value(Message(cmd=Cmd.SV_REPLY, type=DataType.SV_ARR_STRING, rows=2, cols=4,
                             data=b"ab\0"))


def test_sv_double_and_unknown_types() -> None:
    msg = Message(cmd=Cmd.SV_REPLY, type=DataType.SV_DOUBLE, data=struct.pack(">d", 1.5),
                  order=BIG)
    assert decode_value(msg) == 1.5
    with pytest.raises(RemoteProtocolError, match="unknown SPEC data type 99"):
        decode_value(Message(cmd=Cmd.SV_REPLY, type=99))


def test_header_parse_rejects_a_wrong_length() -> None:
    raw = encode_message(Message(cmd=Cmd.SV_HELLO))
    with pytest.raises(RemoteProtocolError, match="size field says 132"):
        parse_header(raw[:131])
