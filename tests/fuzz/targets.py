"""One fuzz target per decoder: what it runs on the raw input and which errors it may raise.

The allowed errors are each decoder's documented contract: peer bytes may only raise
`RemoteProtocolError` (SpringCore, SpringCore JSON, SPEC), operator arguments only
`LocalProtocolError` (cmd_tcp escapes, hex, eot lists), bus frames only `EnvelopeError`.
Stream targets also check an oracle: feeding the same bytes in other chunks must give the same
result (an `AssertionError` is a crash like any other). Round-tripping targets check that what
decodes re-encodes to something that decodes to the same value.
"""

from __future__ import annotations

from typing import Any

from actors.protocols import cmd_tcp, spec, spec_types, springcore, springcore_json
from broker.wire import envelope
from broker.wire.errors import EnvelopeError, LocalProtocolError, RemoteProtocolError
from tests.fuzz.engine import Target

SCRDR_TOKENS = (b"$SCRDR;", b"$SCCMD;", b";", b"*", b"\r\n", b"\n", b"\r", b"*54", b"*5A",
                b"IR", b"I", b"R", b"047DAE02C84080", b"SEQ=60", b"=", b";;;;;;;;", b"FF")
JSON_TOKENS = (b"{", b"}", b"[", b"]", b'"', b":", b",", b"null", b"true", b"false", b"1e999",
               b'"TagId":', b'"Move":"Insert"', b'"State":"Insert/Remove"', b'"RSSI":',
               b'"Rssi":-60', b'"Template":1', b'"Sequence":', b'"State":"online"',
               b'"offline,dead"', b'"Open":true', b'"Uptime":"1:2"', b"\\u0000", b"\\ud800",
               b"$SCRDR;", b"$SCCMD;SEQ=60", b"[[[[[[[[[[", b"\xff", b"\xc3\xa9")
SPEC_TOKENS = (b"\xce\xfa\xed\xfe", b"\xfe\xed\xfa\xce", b"\x02\0\0\0", b"\x04\0\0\0",
               b"\0\0\0\x84", b"\x84\0\0\0", b"\x7c\0\0\0", b"\0\0\0\x7c", b"var/x\0",
               b"output/tty\0", b"k\0v\0\0", b"\0\0", b"\0" * 8)
CMD_TCP_TOKENS = (b"\\", b"\\x", b"\\x4", b"\\x41", b"\\0", b"\\777", b"\\n", b"\\r", b"\\\n",
                  b",", b"\\x2c", b"undef", b"\xc3\xa9", b"\xff", b"zz", b"0A", b"+f", b" f")
ENVELOPE_TOKENS = (b"\x8b", b"\xa1v\x01", b"\xa2id", b"\xa3src", b"\xa5epoch", b"\xa3seq",
                   b"\xa2ts", b"\xa4kind", b"\xa5event", b"\xa7command", b"\xa5reply",
                   b"\xa4data", b"\x80", b"\x90", b"\xc0", b"\xc2", b"\xc3", b"\xcb",
                   b"\xd6\xff", b"\xc7", b"\xdc\xff\xff", b"\xde\xff\xff", b"\xa4corr",
                   b"\xa8reply_to", b"\xa8deadline", b"\xa7rep.cli")


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


def _split_control(data: bytes) -> tuple[int, bytes]:
    """The first byte steers the target (chunk size, read kind); the rest is the input."""
    return (data[0], data[1:]) if data else (0, b"")


# --- SpringCore $SCRDR / $SCCMD -------------------------------------------------------------

def scrdr_line(data: bytes) -> None:
    message = springcore.decode_line(data)
    assert isinstance(message, dict | springcore.Greeting)


def sccmd_line(data: bytes) -> None:
    cmd = springcore.decode_command(data)
    assert springcore.decode_command(cmd.raw) == cmd


def scrdr_stream(data: bytes) -> None:
    """The control byte sets the chunk size (1-13) and the line bound (1-229 bytes)."""
    control, stream = _split_control(data)
    max_line = control // 13 * 12 + 1

    def run(chunks: list[bytes]) -> list[springcore.ScrdrEvent]:
        decoder = springcore.ScrdrDecoder(max_line=max_line)
        events: list[springcore.ScrdrEvent] = []
        for chunk in chunks:
            decoder.feed(chunk)
            assert decoder.pending <= max_line + 1
            events += decoder.events()
        return events

    whole = run([stream])
    assert run(_chunks(stream, control % 13 + 1)) == whole, "chunking changed the events"


# --- SpringCore JSON (MQTT) --------------------------------------------------------------------

def json_event(data: bytes) -> None:
    springcore_json.decode_event(data, "R1")


def json_status(data: bytes) -> None:
    springcore_json.decode_status(data)


def json_meta(data: bytes) -> None:
    springcore_json.decode_meta(data)


def json_command(data: bytes) -> None:
    springcore_json.decode_command(data)


# --- SPEC --------------------------------------------------------------------------------------

def spec_header(data: bytes) -> None:
    msg, _ = spec.parse_header(data)
    assert msg.describe()


def _spec_messages(chunks: list[bytes]) -> list[tuple[spec.Message, Any]]:
    decoder = spec.Decoder(max_data=4096)
    out: list[tuple[spec.Message, Any]] = []
    for chunk in chunks:
        decoder.feed(chunk)
        for msg in decoder.events():
            try:
                value: Any = spec_types.to_bus(spec_types.decode_value(msg))
            except RemoteProtocolError as exc:
                value = str(exc)
            out.append((msg, value))
    return out


def _spec_stream(prefix: bytes, data: bytes) -> None:
    control, stream = _split_control(data)
    stream = prefix + stream
    try:
        whole: Any = _spec_messages([stream])
    except RemoteProtocolError as exc:
        whole = str(exc)
    try:
        chunked: Any = _spec_messages(_chunks(stream, control % 61 + 1))
    except RemoteProtocolError as exc:
        chunked = str(exc)
    # repr: a NaN in a decoded array is never == itself, but prints the same
    assert repr(chunked) == repr(whole), "chunking changed the SPEC messages"


def spec_stream_le(data: bytes) -> None:
    _spec_stream(b"\xce\xfa\xed\xfe", data)


def spec_stream_be(data: bytes) -> None:
    _spec_stream(b"\xfe\xed\xfa\xce", data)


# --- cmd_tcp -----------------------------------------------------------------------------------

def _text(data: bytes) -> str:
    """Bus arguments are msgpack str: always valid Unicode (no lone surrogates)."""
    return data.decode("utf-8", errors="replace")


def cmd_unescape(data: bytes) -> None:
    sent = cmd_tcp.unescape(_text(data))
    assert isinstance(sent, bytes)
    # a text read shows undecodable bytes as \xNN: writing that text back sends the same bytes
    kept = sent.translate(None, cmd_tcp.STRIPPED)
    assert cmd_tcp.unescape(cmd_tcp.strip_text(sent)) == kept or b"\\" in kept


def cmd_hex(data: bytes) -> None:
    text = _text(data)
    raw = cmd_tcp.decode_hex(text)
    assert cmd_tcp.encode_hex(raw) == text.lower()


def cmd_eot(data: bytes) -> None:
    items = cmd_tcp.parse_eot(_text(data))
    assert items and all(items)


def _receive(kind: int, arg: bytes, chunks: list[bytes]) -> list[bytes]:
    def new_read() -> cmd_tcp.Read:
        if kind == 0:
            return cmd_tcp.ReadExact(len(arg) % 9)
        if kind == 1:
            return cmd_tcp.ReadUntil(cmd_tcp.parse_eot(_text(arg)))
        return cmd_tcp.Expect(cmd_tcp.parse_pattern(_text(arg)))

    rx = cmd_tcp.Receiver(limit=256)
    results: list[bytes] = []
    got = rx.begin(new_read())
    for chunk in chunks:
        if got is None:
            got = rx.feed(chunk)
        else:
            rx.feed(chunk)
        while got is not None and len(results) < 1000:
            results.append(got)
            got = rx.begin(new_read())
    return results


def cmd_receiver(data: bytes) -> None:
    """Input: control byte (read kind, chunk size), the read's argument up to the first NUL,
    then the device's bytes."""
    control, rest = _split_control(data)
    arg, _, stream = rest.partition(b"\0")
    kind = control % 3
    try:
        whole: Any = _receive(kind, arg, [stream])
    except RemoteProtocolError:
        return  # more than the limit in one chunk: the chunked run may legitimately differ
    chunked = _receive(kind, arg, _chunks(stream, control // 3 % 17 + 1))
    assert chunked == whole, "chunking changed the read results"


# --- bus envelope ------------------------------------------------------------------------------

def envelope_decode(data: bytes) -> None:
    env = envelope.decode(data)
    raw = env.encode()
    # compared as bytes: a NaN in data is never == itself
    assert envelope.decode(raw).encode() == raw, "re-encoding changed the envelope"


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("springcore_line", scrdr_line, (RemoteProtocolError,), SCRDR_TOKENS,
           doc="springcore.decode_line: one $SCRDR line"),
    Target("springcore_command", sccmd_line, (RemoteProtocolError,), SCRDR_TOKENS,
           doc="springcore.decode_command: one $SCCMD line (simulator side), re-decodes"),
    Target("springcore_stream", scrdr_stream, (), SCRDR_TOKENS,
           doc="ScrdrDecoder.feed/events: never raises, bounded, chunking-invariant"),
    Target("json_event", json_event, (RemoteProtocolError,), JSON_TOKENS,
           doc="springcore_json.decode_event"),
    Target("json_status", json_status, (RemoteProtocolError,), JSON_TOKENS,
           doc="springcore_json.decode_status"),
    Target("json_meta", json_meta, (RemoteProtocolError,), JSON_TOKENS,
           doc="springcore_json.decode_meta"),
    Target("json_command", json_command, (RemoteProtocolError,), JSON_TOKENS,
           doc="springcore_json.decode_command (simulator side)"),
    Target("spec_header", spec_header, (RemoteProtocolError,), SPEC_TOKENS,
           doc="spec.parse_header on one header"),
    Target("spec_stream_le", spec_stream_le, (RemoteProtocolError,), SPEC_TOKENS, 4096,
           doc="spec.Decoder feed/events + decode_value/to_bus, little-endian"),
    Target("spec_stream_be", spec_stream_be, (RemoteProtocolError,), SPEC_TOKENS, 4096,
           doc="spec.Decoder feed/events + decode_value/to_bus, big-endian"),
    Target("cmd_tcp_unescape", cmd_unescape, (LocalProtocolError,), CMD_TCP_TOKENS,
           doc="cmd_tcp.unescape (write arguments), strip_text round trip"),
    Target("cmd_tcp_hex", cmd_hex, (LocalProtocolError,), CMD_TCP_TOKENS,
           doc="cmd_tcp.decode_hex/encode_hex round trip"),
    Target("cmd_tcp_eot", cmd_eot, (LocalProtocolError,), CMD_TCP_TOKENS,
           doc="cmd_tcp.parse_eot"),
    Target("cmd_tcp_receiver", cmd_receiver, (RemoteProtocolError, LocalProtocolError),
           (*CMD_TCP_TOKENS, b"\0", b"\r\n", b"E"),
           doc="cmd_tcp.Receiver with ReadExact/ReadUntil/Expect, chunking-invariant"),
    Target("envelope", envelope_decode, (EnvelopeError,), ENVELOPE_TOKENS,
           doc="broker.wire.envelope.decode, re-encodes to the same envelope"),
)}
