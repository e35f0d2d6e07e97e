"""SpringCore Smart Reader text protocol: ``$SCRDR`` events in, ``$SCCMD`` commands out (sans-IO).

Stable API (the TCP reader, its simulator and the MQTT reader use it; keep these names):

- ``decode_line(line: bytes | str) -> ScrdrMessage``: ONE ``$SCRDR`` line without its line
  ending (a trailing CR/LF is tolerated) → a tag dict built by
  `actors.protocols.springcore_tag.tag_event` (every key of ``TAG_KEYS``; ``device`` None), or a
  `Greeting` for the all-empty line older firmware sends on connect. Anything else raises
  ``RemoteProtocolError`` with the reason and ``raw`` = the line's first bytes.
- ``ScrdrDecoder``: ``feed(chunk)`` with arbitrary chunks of a TCP stream, then ``events()`` →
  a list of tag dicts, `Greeting` and `Rejected` (a line that could not be decoded, or an
  over-long line discarded up to its LF). Chunking does not change the events.
- ``encode_command(fields, *, line_ending="\\r\\n", checksum="none") -> bytes``: one ``$SCCMD``
  line. ``seq_command(code)``, ``leds_command(hex8)``, ``buzz_command(ms)`` each return ONE
  validated field tuple, so they combine: ``encode_command([leds_command("92929292"),
  buzz_command(100)])`` is ``b"$SCCMD;LEDS=92929292;BUZZ=0064\\r\\n"``. Invalid input raises
  ``LocalProtocolError`` saying what is wrong.
- ``decode_command(line) -> Sccmd`` and ``encode_tag_line(...)`` / ``greeting_line(...)``: the
  device's side (the simulator), also used by the property tests for round trips.

Wire layout (docs/protocols/springcore.md: the $SCRDR message, host commands)::

    $SCRDR;<Interface>;<Protocol>;<Template>;<RSSI>;<TagId>;<Move>;<TagData>;<TagDetails>*<hh>\\r\\n
    $SCCMD;<Field1>=<Value1>;...;<FieldN>=<ValueN>[*<hh>]\\r\\n

Fields are positional (8 after ``$SCRDR``), printable ASCII 0x20-0x7E, with ``$ * ;`` reserved.
Interface, Protocol, Template and RSSI are 2 hex digits (1 or 2 accepted; RSSI is reported as the
unsigned byte the device sent), TagId is hex (upper-cased), Move is empty, ``I``, ``R`` or ``IR``
(whitespace stripped), TagData and TagDetails are hex or text (empty → None). Lines are framed on
LF with an optional CR and may be up to `MAX_LINE` bytes; blank lines carry nothing and are
skipped.

The checksum is an XOR of the ASCII codes written as 2 hex digits (either case), but the vendor's
pages disagree on its range: between ``$`` and ``*`` with both excluded, or with both included.
The two values always differ by ``0x24 ^ 0x2A = 0x0E``; a line matching either is ``"ok"``, a line
matching neither is ``"bad"`` (reported, still decoded: the caller logs it), a line without
``*hh`` is ``"absent"``. Commands are sent without a checksum by default: it is optional from host
to device, and a device that takes the other convention would discard a checksummed one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from actors.protocols.springcore_tag import INSERT, INSERT_REMOVE, REMOVE, normalize_move, tag_event
from broker.wire.errors import LocalProtocolError, RemoteProtocolError

MAX_LINE: Final = 65536  # bytes of one $SCRDR line, line ending excluded ("up to 64kB")
MAX_COMMAND: Final = 255  # a $SCCMD line must be shorter than 256 characters (ending excluded)
SCRDR: Final = "$SCRDR"
SCCMD: Final = "$SCCMD"
FIELD_COUNT: Final = 8
CHECKSUM_DELTA: Final = 0x24 ^ 0x2A  # "$" and "*": included vs excluded conventions differ by it
OK: Final = "ok"
BAD: Final = "bad"
ABSENT: Final = "absent"
LINE_ENDINGS: Final = ("\r\n", "\n", "")
# how encode_* write the checksum: per convention, none at all, or a wrong one (simulator tests)
CHECKSUM_MODES: Final = ("incl", "excl", "none", "bad")

SEQ_WINK: Final = "0E"
SEQ_ACCEPT: Final = "60"
SEQ_DENY: Final = "61"

_HEX: Final = re.compile(r"[0-9A-Fa-f]+")
_MOVE_CODES: Final = {INSERT: "I", REMOVE: "R", INSERT_REMOVE: "IR"}

Field: TypeAlias = tuple[str, str]


@dataclass(frozen=True)
class Greeting:
    """The all-empty ``$SCRDR;;;;;;;;*hh`` of older firmware: "connected", never a tag."""

    raw: str
    checksum: str


@dataclass(frozen=True)
class Rejected:
    """A line the decoder could not accept; the stream goes on with the next line."""

    reason: str
    raw: bytes  # the first 64 bytes of the offending line


@dataclass(frozen=True)
class Sccmd:
    """A decoded ``$SCCMD`` line (the device's side)."""

    fields: tuple[Field, ...]
    checksum: str
    raw: str


ScrdrMessage: TypeAlias = dict[str, Any] | Greeting
ScrdrEvent: TypeAlias = dict[str, Any] | Greeting | Rejected


def xor_checksum(text: str) -> int:
    """XOR of the ASCII codes of `text` (the "both excluded" convention when `text` is what lies
    between ``$`` and ``*``; XOR the result with `CHECKSUM_DELTA` for "both included")."""
    value = 0
    for byte in text.encode("ascii"):
        value ^= byte
    return value


# --- decoding ---------------------------------------------------------------------------------


def _text_of(line: bytes | str) -> str:
    """`line` as str, a trailing CR/LF removed; RemoteProtocolError on non-printable bytes."""
    data = line.encode("utf-8", "surrogatepass") if isinstance(line, str) else bytes(line)
    data = data.rstrip(b"\r\n")
    for pos, byte in enumerate(data):
        if not 0x20 <= byte <= 0x7E:
            raise RemoteProtocolError(f"byte 0x{byte:02X} at offset {pos} is not printable "
                                      "ASCII (noise on the line, or not a SpringCore reader?)",
                                      data)
    return data.decode("ascii")


def _split_checksum(text: str, start: str) -> tuple[str, str]:
    """(body between ``$`` and ``*``, checksum verdict) for a line starting with `start`."""
    if not text.startswith(start):
        raise RemoteProtocolError(f"line does not start with {start}: {text[:32]!r}",
                                  text.encode())
    body, star, written = text.rpartition("*")
    if not star:
        return text[1:], ABSENT
    if written == "":
        return body[1:], ABSENT
    if len(written) != 2 or not _HEX.fullmatch(written):
        raise RemoteProtocolError(f"checksum {written!r} after '*' is not 2 hex digits",
                                  text.encode())
    excl = xor_checksum(body[1:])
    verdict = OK if int(written, 16) in (excl, excl ^ CHECKSUM_DELTA) else BAD
    return body[1:], verdict


def _hex_field(line: str, name: str, value: str, max_digits: int | None = None) -> str | None:
    value = value.strip()
    if not value:
        return None
    if not _HEX.fullmatch(value) or (max_digits is not None and len(value) > max_digits):
        width = f"{max_digits} " if max_digits else ""
        raise RemoteProtocolError(f"{name} {value!r} is not {width}hex digits", line.encode())
    return value.upper()


def decode_line(line: bytes | str) -> ScrdrMessage:
    """Decode ONE ``$SCRDR`` line (see the module docstring); RemoteProtocolError if it is not
    one. A bad checksum is not an error: the result says ``checksum="bad"``."""
    text = _text_of(line)
    body, checksum = _split_checksum(text, SCRDR)
    items = body.split(";")
    if items[0] != SCRDR[1:]:
        raise RemoteProtocolError(f"message type {items[0]!r} is not SCRDR", text.encode())
    fields = items[1:]
    if len(fields) != FIELD_COUNT:
        raise RemoteProtocolError(f"$SCRDR has {len(fields)} fields, expected {FIELD_COUNT} "
                                  "(Interface;Protocol;Template;RSSI;TagId;Move;TagData;"
                                  "TagDetails)", text.encode())
    if not any(f.strip() for f in fields):
        return Greeting(raw=text, checksum=checksum)
    interface, protocol, template, rssi, tag_id, move, tag_data, tag_details = fields
    tag = _hex_field(text, "TagId", tag_id)
    if tag is None:
        raise RemoteProtocolError("$SCRDR without a TagId", text.encode())
    template_hex = _hex_field(text, "Template", template, 2)
    rssi_hex = _hex_field(text, "RSSI", rssi, 2)
    try:
        moved = normalize_move(move)
    except ValueError as exc:
        raise RemoteProtocolError(f"Move: {exc}", text.encode()) from None
    return tag_event(
        tag_id=tag, raw=text, interface=_hex_field(text, "Interface", interface, 2),
        protocol=_hex_field(text, "Protocol", protocol, 2),
        template=None if template_hex is None else int(template_hex, 16),
        rssi=None if rssi_hex is None else int(rssi_hex, 16), move=moved,
        tag_data=tag_data or None, tag_details=tag_details or None, checksum=checksum)


class ScrdrDecoder:
    """Frames a byte stream into ``$SCRDR`` lines and decodes them.

    The buffer never holds more than `max_line` + 1 bytes: a longer line is reported once as
    `Rejected` when it passes the bound, and its bytes are discarded up to the next LF, after
    which decoding goes on. Events queue until `events()` takes them.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._skipping = False  # inside an over-long line: drop bytes up to the next LF
        self._events: list[ScrdrEvent] = []

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held (0 while skipping an over-long one)."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        start = 0
        while start < len(data):
            end = data.find(b"\n", start)
            piece = data[start:] if end < 0 else data[start:end]
            if not self._skipping:
                if len(self._buf) + len(piece) > self.max_line + 1:  # + 1: the CR before the LF
                    # the excerpt is the line's first bytes, as many whatever the chunking
                    head = (bytes(self._buf[:64]) + piece[:64])[:min(64, self.max_line + 2)]
                    self._events.append(Rejected(
                        f"line longer than {self.max_line} bytes: discarded up to its end", head))
                    self._buf.clear()
                    self._skipping = True
                else:
                    self._buf += piece
            if end < 0:
                return
            if self._skipping:
                self._skipping = False
            else:
                self._line(bytes(self._buf))
                self._buf.clear()
            start = end + 1

    def events(self) -> list[ScrdrEvent]:
        out, self._events = self._events, []
        return out

    def reset(self) -> bytes:
        """Forget the unfinished line (the connection ended mid-line) and return its bytes."""
        partial = bytes(self._buf)
        self._buf.clear()
        self._skipping = False
        return partial

    def _line(self, line: bytes) -> None:
        line = line.rstrip(b"\r")
        if not line.strip():
            return
        if len(line) > self.max_line:
            self._events.append(Rejected(f"line longer than {self.max_line} bytes", line[:64]))
            return
        try:
            self._events.append(decode_line(line))
        except RemoteProtocolError as exc:
            self._events.append(Rejected(str(exc), line[:64]))


def decode_command(line: bytes | str) -> Sccmd:
    """Decode ONE ``$SCCMD`` line, with or without checksum and line ending (the device side).
    Empty tuples (``;;``) are skipped; a tuple without ``=`` raises RemoteProtocolError."""
    text = _text_of(line)
    if len(text) > MAX_COMMAND:
        raise RemoteProtocolError(f"$SCCMD of {len(text)} characters: a reader discards "
                                  f"commands longer than {MAX_COMMAND}", text.encode())
    body, checksum = _split_checksum(text, SCCMD)
    items = body.split(";")
    if items[0] != SCCMD[1:]:
        raise RemoteProtocolError(f"message type {items[0]!r} is not SCCMD", text.encode())
    fields: list[Field] = []
    for item in items[1:]:
        if not item:
            continue
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise RemoteProtocolError(f"$SCCMD tuple {item!r} is not Field=Value", text.encode())
        fields.append((name, value))
    return Sccmd(fields=tuple(fields), checksum=checksum, raw=text)


# --- encoding ---------------------------------------------------------------------------------


def _check_text(what: str, value: str, reserved: str = "$*;") -> None:
    bad = [c for c in value if not " " <= c <= "~" or c in reserved]
    if bad:
        raise LocalProtocolError(f"{what} {value!r} contains {bad[0]!r}: only printable ASCII "
                                 f"without {' '.join(reserved)} is allowed")


def _finish(body: str, checksum: str, line_ending: str) -> bytes:
    """`body` (starting with ``$``) plus the checksum in `checksum` mode and the line ending."""
    if line_ending not in LINE_ENDINGS:
        raise LocalProtocolError(f"line ending {line_ending!r} is not one of "
                                 f"{', '.join(repr(e) for e in LINE_ENDINGS)}")
    if checksum not in CHECKSUM_MODES:
        raise LocalProtocolError(f"checksum mode {checksum!r} is not one of "
                                 f"{', '.join(CHECKSUM_MODES)}")
    excl = xor_checksum(body[1:])
    value = {"excl": excl, "incl": excl ^ CHECKSUM_DELTA, "bad": excl ^ 0xFF}.get(checksum)
    tail = "" if value is None else f"*{value:02X}"
    return (body + tail + line_ending).encode("ascii")


def encode_command(fields: Sequence[Field], *, line_ending: str = "\r\n",
                   checksum: str = "none") -> bytes:
    """One ``$SCCMD;F=V;...`` line. LocalProtocolError if a name or value has a character the
    protocol reserves or is not printable ASCII, there are no fields, or the line (ending
    excluded) would be 256 characters or more, which the reader silently discards."""
    if not fields:
        raise LocalProtocolError("$SCCMD needs at least one Field=Value")
    for name, value in fields:
        _check_text("field name", name, "$*;=")
        _check_text(f"value of {name}", value, "$*;=")
        if not name:
            raise LocalProtocolError("empty field name in $SCCMD")
    body = SCCMD + "".join(f";{name}={value}" for name, value in fields)
    line = _finish(body, checksum, line_ending)
    length = len(line) - len(line_ending)
    if length > MAX_COMMAND:
        raise LocalProtocolError(f"$SCCMD would be {length} characters; the reader discards "
                                 f"commands of {MAX_COMMAND + 1} or more")
    return line


def _hex_value(what: str, value: str, digits: int) -> str:
    if not isinstance(value, str) or len(value) != digits or not _HEX.fullmatch(value):
        raise LocalProtocolError(f"{what} must be exactly {digits} hex digits, got {value!r}")
    return value.upper()


def seq_command(code: str | int) -> Field:
    """``("SEQ", "hh")``: play UI sequence `code` (1 byte: "60" or "6" as hex text, or an int
    0-255; "0E" wink, "60" access granted, "61" access denied)."""
    if isinstance(code, bool) or not isinstance(code, int | str):
        raise LocalProtocolError(f"SEQ code must be hex text or an int, got {code!r}")
    if isinstance(code, int):
        if not 0 <= code <= 0xFF:
            raise LocalProtocolError(f"SEQ code {code} is not one byte (0-255)")
        return ("SEQ", f"{code:02X}")
    return ("SEQ", _hex_value("SEQ code", code.zfill(2) if len(code) == 1 else code, 2))


def leds_command(hex8: str) -> Field:
    """``("LEDS", "hhhhhhhh")``: direct LED control, 4 bytes, byte n drives LED n+1."""
    return ("LEDS", _hex_value("LEDS", hex8, 8))


def buzz_command(ms: int) -> Field:
    """``("BUZZ", "hhhh")``: beep for `ms` milliseconds (2 bytes, MSB first: 0-65535)."""
    if isinstance(ms, bool) or not isinstance(ms, int) or not 0 <= ms <= 0xFFFF:
        raise LocalProtocolError(f"BUZZ duration must be an int from 0 to 65535 ms, got {ms!r}")
    return ("BUZZ", f"{ms:04X}")


def encode_tag_line(tag_id: str, *, interface: str = "13", protocol: str = "01",
                    template: int | None = 1, rssi: int | None = None,
                    move: str | None = None, tag_data: str = "", tag_details: str = "",
                    checksum: str = "incl", line_ending: str = "\r\n") -> bytes:
    """A ``$SCRDR`` line as a reader sends it (the simulator's side). `move` takes the device's
    spelling or the canonical one (``insert``...). LocalProtocolError on any invalid field."""
    tag = _hex_value("TagId", tag_id, len(tag_id)) if tag_id else None
    if tag is None:
        raise LocalProtocolError("TagId must not be empty")
    for what, value in (("Interface", interface), ("Protocol", protocol)):
        if value:
            _hex_value(what, value, 2)
    numbers = []
    for what, number in (("Template", template), ("RSSI", rssi)):
        if number is not None and not 0 <= number <= 0xFF:
            raise LocalProtocolError(f"{what} {number} is not one byte (0-255)")
        numbers.append("" if number is None else f"{number:02X}")
    try:
        canonical = normalize_move(move) if move not in _MOVE_CODES else move
    except ValueError as exc:
        raise LocalProtocolError(str(exc)) from None
    _check_text("TagData", tag_data)
    _check_text("TagDetails", tag_details)
    fields = [interface.upper(), protocol.upper(), *numbers, tag,
              "" if canonical is None else _MOVE_CODES[canonical], tag_data, tag_details]
    line = _finish(";".join([SCRDR, *fields]), checksum, line_ending)
    if len(line) - len(line_ending) > MAX_LINE:
        raise LocalProtocolError(f"$SCRDR line would be longer than {MAX_LINE} bytes")
    return line


def greeting_line(checksum: str = "excl", line_ending: str = "\r\n") -> bytes:
    """The empty ``$SCRDR;;;;;;;;*hh`` older firmware sends when a client connects."""
    return _finish(SCRDR + ";" * FIELD_COUNT, checksum, line_ending)
