"""SPEC data encodings: what the `data` bytes of a message mean for each ``type`` code.

======================  ==================================================================
type                    data
======================  ==================================================================
SV_STRING, SV_ERROR     text plus one NUL (``len`` counts it); numbers as ``%.15g`` text
SV_ASSOC                ``key\\0value\\0 ... key\\0value\\0`` then one more ``\\0``
SV_ARR_* (numeric)      ``rows*cols`` elements, raw, row-major, in the message byte order,
                        no NUL; ``len`` must be exactly ``rows*cols*element size``
SV_ARR_STRING           ``rows`` fixed-width rows of ``cols`` bytes, each cut at its first NUL
                        (decoded as a ``rows x 1`` array of strings)
SV_DOUBLE               one 8-byte double (not sent by SPEC itself; accepted for completeness)
0 (no type)             what some clients send with command text: read as a string
======================  ==================================================================

Decoded values are `Value`: ``str``, ``float`` (SV_DOUBLE), ``dict[str, str]`` (ASSOC; a 2-D key
``a[k1][k2]`` keeps SPEC's ``k1 + "\\x1c" + k2``) or `SpecArray`. Bad bytes raise
`RemoteProtocolError`; values we cannot encode raise `LocalProtocolError`.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any, Final

from actors.protocols.spec import BIG, LITTLE, DataType, Message
from broker.wire.errors import LocalProtocolError, RemoteProtocolError

ELEMENTS: Final[dict[int, str]] = {  # numeric array type → struct code
    DataType.SV_ARR_DOUBLE: "d", DataType.SV_ARR_FLOAT: "f", DataType.SV_ARR_LONG: "i",
    DataType.SV_ARR_ULONG: "I", DataType.SV_ARR_SHORT: "h", DataType.SV_ARR_USHORT: "H",
    DataType.SV_ARR_CHAR: "b", DataType.SV_ARR_UCHAR: "B", DataType.SV_ARR_LONG64: "q",
    DataType.SV_ARR_ULONG64: "Q",
}
KEY_SEPARATOR: Final = "\x1c"  # between the two keys of a 2-D associative array element


@dataclass(frozen=True, slots=True)
class SpecArray:
    """A SPEC data array: `items` flat in row-major order (numbers, or str for SV_ARR_STRING)."""

    type: int
    rows: int
    cols: int
    items: tuple[Any, ...]

    def __post_init__(self) -> None:
        if self.type not in ELEMENTS and self.type != DataType.SV_ARR_STRING:
            raise LocalProtocolError(f"type {self.type} is not a SPEC array type")
        if self.rows < 0 or self.cols < 0 or self.rows * self.cols != len(self.items):
            raise LocalProtocolError(f"array of {len(self.items)} items is not "
                                     f"{self.rows} x {self.cols}")

    def nested(self) -> list[Any]:
        """Rows as lists (a 1 x N or N x 1 array is still two levels: the shape says which)."""
        return [list(self.items[r * self.cols:(r + 1) * self.cols]) for r in range(self.rows)]


Value = str | float | dict[str, str] | SpecArray


def format_number(value: float | int | bool) -> str:
    """Numbers as SPEC sends them: ``%.15g`` (integers exactly, booleans as 0/1)."""
    if isinstance(value, bool | int):
        return str(int(value))
    if not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return f"{value:.15g}"


def parse_text(text: str) -> int | float | str:
    """What a client makes of a SPEC string: an int, else a float, else the text itself."""
    stripped = text.strip()
    try:
        return int(stripped)
    except ValueError:
        pass
    try:
        number = float(stripped)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def decode_value(msg: Message) -> Value:
    """The value carried by `msg` (by its type code). RemoteProtocolError if it is malformed."""
    kind, data = msg.type, msg.data
    if kind in (DataType.SV_STRING, DataType.SV_ERROR, DataType.SV_NONE):
        return _text(data[:-1] if data.endswith(b"\0") else data)
    if kind == DataType.SV_ASSOC:
        return decode_assoc(data)
    if (kind in ELEMENTS or kind == DataType.SV_ARR_STRING) and not msg.cols and msg.rows > 1:
        # no data bytes, yet `nested()` would build `rows` empty lists (up to 2^32: memory
        # exhaustion); SPEC cannot declare a zero-size array, an empty 1-D one is 1 x 0
        raise RemoteProtocolError(f"SPEC array {msg.rows} x 0 in {msg.describe()}: an empty "
                                  "array has at most 1 row", data[:64])
    if kind in ELEMENTS:
        return _decode_numeric(msg)
    if kind == DataType.SV_ARR_STRING:
        if len(data) != msg.rows * msg.cols:
            raise RemoteProtocolError(f"SPEC string array {msg.rows} x {msg.cols} needs "
                                      f"{msg.rows * msg.cols} bytes, got {len(data)}", data)
        if not msg.cols:
            return SpecArray(kind, msg.rows, 0, ())
        rows = [data[r * msg.cols:(r + 1) * msg.cols] for r in range(msg.rows)]
        return SpecArray(kind, msg.rows, 1, tuple(_text(row.split(b"\0", 1)[0]) for row in rows))
    if kind == DataType.SV_DOUBLE:
        if len(data) != 8:
            raise RemoteProtocolError(f"SV_DOUBLE needs 8 bytes, got {len(data)}", data)
        return float(struct.unpack(msg.order + "d", data)[0])
    raise RemoteProtocolError(f"unknown SPEC data type {kind} in {msg.describe()}", data)


def decode_assoc(data: bytes) -> dict[str, str]:
    """``k\\0v\\0...\\0`` plus the terminating NUL → dict. An empty body is an empty array."""
    if data in (b"", b"\0"):
        return {}
    if not data.endswith(b"\0\0"):
        raise RemoteProtocolError("SPEC associative array does not end with its two NULs",
                                  data[-64:])
    parts = data[:-2].split(b"\0")
    if len(parts) % 2:
        raise RemoteProtocolError(f"SPEC associative array has {len(parts)} strings, not "
                                  "key/value pairs", data[:64])
    return {_text(parts[i]): _text(parts[i + 1]) for i in range(0, len(parts), 2)}


def _decode_numeric(msg: Message) -> SpecArray:
    code = ELEMENTS[msg.type]
    count = msg.rows * msg.cols
    need = count * struct.calcsize(code)
    if len(msg.data) != need:
        raise RemoteProtocolError(
            f"SPEC {DataType(msg.type).name} {msg.rows} x {msg.cols} needs {need} bytes, got "
            f"{len(msg.data)} (in {msg.describe()})", msg.data)
    order = msg.order if msg.order in (LITTLE, BIG) else LITTLE
    return SpecArray(msg.type, msg.rows, msg.cols,
                     struct.unpack(f"{order}{count}{code}", msg.data))


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def encode_value(value: Any, order: str = LITTLE) -> tuple[int, bytes, int, int]:
    """(type, data, rows, cols) for `value`: str and numbers → SV_STRING, dict → SV_ASSOC,
    SpecArray → its array type in `order`. LocalProtocolError for anything else."""
    if isinstance(value, SpecArray):
        return value.type, encode_array(value, order), value.rows, value.cols
    if isinstance(value, dict):
        return DataType.SV_ASSOC, encode_assoc(value), 0, 0
    return DataType.SV_STRING, encode_string(value), 0, 0


def encode_string(value: Any) -> bytes:
    if isinstance(value, bool | int | float):
        value = format_number(value)
    if not isinstance(value, str):
        raise LocalProtocolError(f"cannot send {type(value).__name__} {value!r:.80} to SPEC "
                                 "(strings, numbers, tables of strings and arrays only)")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"text for SPEC is not valid Unicode: {exc}") from None
    if b"\0" in raw:
        raise LocalProtocolError(f"SPEC strings cannot contain NUL: {value[:80]!r}")
    return raw + b"\0"


def encode_assoc(value: dict[Any, Any]) -> bytes:
    out = bytearray()
    for key, item in value.items():
        key_bytes = encode_string(key if isinstance(key, str) else format_number(key))
        if key_bytes == b"\0":
            raise LocalProtocolError("SPEC associative array keys cannot be empty")
        out += key_bytes + encode_string(item)
    return bytes(out) + b"\0"


def encode_array(array: SpecArray, order: str = LITTLE) -> bytes:
    if array.type == DataType.SV_ARR_STRING:
        raise LocalProtocolError("sending SV_ARR_STRING is not supported (its layout differs "
                                 "between SPEC clients)")
    try:
        return struct.pack(f"{order}{len(array.items)}{ELEMENTS[array.type]}", *array.items)
    except struct.error as exc:
        raise LocalProtocolError(f"array items do not fit {DataType(array.type).name}: "
                                 f"{exc}") from None


def to_plain(value: Value) -> tuple[Any, list[int] | None]:
    """A bus-friendly (msgpack-native) form and the shape ``[rows, cols]`` for arrays."""
    if isinstance(value, SpecArray):
        return value.nested(), [value.rows, value.cols]
    return value, None
