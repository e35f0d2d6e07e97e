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

Tolerated on input, never sent: one trailing NUL after a numeric array (``len`` one more than
the elements need, as chess-pyspec's client and server send it), and string arrays as
``rows*cols`` NUL-terminated strings of any length, optionally followed by one more NUL (the
layout of chess-pyspec and of the qxrd server).

Decoded values are `Value`: ``str``, ``float`` (SV_DOUBLE), ``dict[str, str]`` (ASSOC; a 2-D key
``a[k1][k2]`` keeps SPEC's ``k1 + "\\x1c" + k2``) or `SpecArray`. A numeric `SpecArray` keeps
the wire bytes as they came (no per-element conversion: a 1024 x 1024 image stays 2 MiB of
bytes); `to_bus` gives them to the bus as ``{"dtype", "shape", "data"}`` (numpy's layout), and
`from_plain` turns what the bus and JSON carry (that layout, lists, tables, text, numbers) back
into something `encode_value` sends. Bad bytes raise `RemoteProtocolError`; values we cannot
encode raise `LocalProtocolError`.
"""

from __future__ import annotations

import array
import math
import struct
import sys
from collections.abc import Sequence
from typing import Any, Final

from actors.protocols.spec import BIG, LITTLE, DataType, Message
from broker.wire.errors import LocalProtocolError, RemoteProtocolError

ELEMENTS: Final[dict[int, str]] = {  # numeric array type → struct (and array module) code
    DataType.SV_ARR_DOUBLE: "d", DataType.SV_ARR_FLOAT: "f", DataType.SV_ARR_LONG: "i",
    DataType.SV_ARR_ULONG: "I", DataType.SV_ARR_SHORT: "h", DataType.SV_ARR_USHORT: "H",
    DataType.SV_ARR_CHAR: "b", DataType.SV_ARR_UCHAR: "B", DataType.SV_ARR_LONG64: "q",
    DataType.SV_ARR_ULONG64: "Q",
}
NUMPY_KINDS: Final[dict[str, str]] = {  # struct code → numpy type code (without byte order)
    "d": "f8", "f": "f4", "i": "i4", "I": "u4", "h": "i2", "H": "u2", "b": "i1", "B": "u1",
    "q": "i8", "Q": "u8",
}
TYPE_OF_DTYPE: Final[dict[str, int]] = {NUMPY_KINDS[code]: t for t, code in ELEMENTS.items()}
KEY_SEPARATOR: Final = "\x1c"  # between the two keys of a 2-D associative array element
NATIVE: Final = LITTLE if sys.byteorder == "little" else BIG


class SpecArray:
    """A SPEC data array, ``rows x cols`` in row-major order.

    Numeric arrays hold their raw bytes (`data`, in byte order `order`): built from the wire
    with ``data=`` (checked against the shape, nothing converted) or from numbers with `items`
    (packed, checked against the type). `items` unpacks on demand. String arrays
    (SV_ARR_STRING) hold their strings in `items`. Two arrays are equal when type, shape and
    elements are, whatever their byte orders."""

    __slots__ = ("_items", "cols", "data", "order", "rows", "type")

    def __init__(self, type: int, rows: int, cols: int, items: Sequence[Any] | None = None,
                 *, data: bytes | None = None, order: str = LITTLE) -> None:
        if type not in ELEMENTS and type != DataType.SV_ARR_STRING:
            raise LocalProtocolError(f"type {type} is not a SPEC array type")
        if rows < 0 or cols < 0:
            raise LocalProtocolError(f"array shape {rows} x {cols} is negative")
        self.type, self.rows, self.cols, self.order = type, rows, cols, order
        self._items: tuple[Any, ...] | None = None
        if type == DataType.SV_ARR_STRING or data is None:
            self._items = tuple(items or ())
            if rows * cols != len(self._items):
                raise LocalProtocolError(f"array of {len(self._items)} items is not "
                                         f"{rows} x {cols}")
        if type == DataType.SV_ARR_STRING:
            self.data = b""
        elif data is not None:
            if len(data) != rows * cols * struct.calcsize(ELEMENTS[type]):
                raise LocalProtocolError(f"{len(data)} bytes are not a {rows} x {cols} "
                                         f"{DataType(type).name}")
            self.data = data
        else:
            self.data = _pack(type, self._items or (), order)

    @property
    def code(self) -> str:
        """The struct / array-module code of one element ("" for string arrays)."""
        return ELEMENTS.get(self.type, "")

    @property
    def items(self) -> tuple[Any, ...]:
        if self._items is None:
            self._items = tuple(self.native())
        return self._items

    def native(self) -> array.array[Any]:
        """The elements as an `array.array` in this machine's byte order (numeric only)."""
        values = array.array(self.code, self.data)
        if self.order != NATIVE:
            values.byteswap()
        return values

    def in_order(self, order: str) -> bytes:
        """The raw bytes in byte order `order` (swapped only when it differs)."""
        if order == self.order or self.type == DataType.SV_ARR_STRING or \
                struct.calcsize(self.code) == 1:
            return self.data
        values = array.array(self.code, self.data)
        values.byteswap()
        return values.tobytes()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SpecArray):
            return NotImplemented
        if (self.type, self.rows, self.cols) != (other.type, other.rows, other.cols):
            return False
        if self.type == DataType.SV_ARR_STRING:
            return self.items == other.items
        return self.in_order(LITTLE) == other.in_order(LITTLE)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SpecArray({DataType(self.type).name}, {self.rows} x {self.cols})"


def _pack(kind: int, items: Sequence[Any], order: str) -> bytes:
    try:
        return struct.pack(f"{order}{len(items)}{ELEMENTS[kind]}", *items)
    except struct.error as exc:
        raise LocalProtocolError(f"array items do not fit {DataType(kind).name}: "
                                 f"{exc}") from None


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
        # no data bytes, yet a consumer would build `rows` empty rows (up to 2^32: memory
        # exhaustion); SPEC cannot declare a zero-size array, an empty 1-D one is 1 x 0
        raise RemoteProtocolError(f"SPEC array {msg.rows} x 0 in {msg.describe()}: an empty "
                                  "array has at most 1 row", data[:64])
    if kind in ELEMENTS:
        return _decode_numeric(msg)
    if kind == DataType.SV_ARR_STRING:
        return _decode_strings(msg)
    if kind == DataType.SV_DOUBLE:
        if len(data) != 8:
            raise RemoteProtocolError(f"SV_DOUBLE needs 8 bytes, got {len(data)}", data)
        return float(struct.unpack(msg.order + "d", data)[0])
    raise RemoteProtocolError(f"unknown SPEC data type {kind} in {msg.describe()}", data)


def is_error(msg: Message | None) -> bool:
    """An SV_ERROR reply, or one with a non-zero ``err`` (what clients check)."""
    return msg is not None and (msg.type == DataType.SV_ERROR or msg.err != 0)


def error_text(msg: Message | None) -> str:
    """The message of an error reply (its text, else its code)."""
    if msg is None:
        return "no reply"
    try:
        value = decode_value(msg)
    except RemoteProtocolError:
        value = msg.data[:80].decode("utf-8", errors="replace")
    return (value if isinstance(value, str) else str(value)) or f"error code {msg.err}"


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
    need = msg.rows * msg.cols * struct.calcsize(ELEMENTS[msg.type])
    data = msg.data
    if len(data) == need + 1 and data[-1] == 0:  # one trailing NUL (chess-pyspec adds it)
        data = data[:-1]
    if len(data) != need:
        raise RemoteProtocolError(
            f"SPEC {DataType(msg.type).name} {msg.rows} x {msg.cols} needs {need} bytes, got "
            f"{len(msg.data)} (in {msg.describe()})", msg.data[:64])
    order = msg.order if msg.order in (LITTLE, BIG) else LITTLE
    return SpecArray(msg.type, msg.rows, msg.cols, data=data, order=order)


def _decode_strings(msg: Message) -> SpecArray:
    kind, data, count = msg.type, msg.data, msg.rows * msg.cols
    if len(data) == count:  # fixed-width rows of `cols` bytes, each cut at its first NUL
        rows = [data[r * msg.cols:(r + 1) * msg.cols] for r in range(msg.rows)] \
            if msg.cols else []
        return SpecArray(kind, len(rows), 1 if rows else 0,
                         tuple(_text(row.split(b"\0", 1)[0]) for row in rows))
    parts = data.split(b"\0")  # `count` NUL-terminated strings, maybe one more NUL
    if data.endswith(b"\0\0") and len(parts) == count + 2:
        parts = parts[:-1]
    if not data.endswith(b"\0") or len(parts) != count + 1:
        raise RemoteProtocolError(
            f"SPEC string array {msg.rows} x {msg.cols} needs {count} bytes (fixed-width "
            f"rows) or {count} NUL-terminated strings, got {len(data)} bytes (in "
            f"{msg.describe()})",
            data[:64])
    return SpecArray(kind, msg.rows, msg.cols, tuple(_text(p) for p in parts[:-1]))


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


def encode_array(value: SpecArray, order: str = LITTLE) -> bytes:
    if value.type == DataType.SV_ARR_STRING:
        raise LocalProtocolError("sending SV_ARR_STRING is not supported (its layout differs "
                                 "between SPEC clients)")
    return value.in_order(order)


# --- the bus form ------------------------------------------------------------------------------

def to_bus(value: Value) -> Any:
    """The msgpack-native form of `value` for an envelope: text that reads as a number becomes
    that number, tables stay tables of strings, a numeric array becomes ``{"dtype": "<u2",
    "shape": [rows, cols], "data": bytes}`` (the wire bytes, not copied element by element;
    ``numpy.frombuffer(data, dtype).reshape(shape)`` reads it), a string array a list of its
    strings (a list of rows when both dimensions exceed 1)."""
    if isinstance(value, str):
        return parse_text(value)
    if not isinstance(value, SpecArray):
        return value
    if value.type == DataType.SV_ARR_STRING:
        items = list(value.items)
        if value.rows > 1 and value.cols > 1:
            return [items[r * value.cols:(r + 1) * value.cols] for r in range(value.rows)]
        return items
    order = value.order if struct.calcsize(value.code) > 1 else "|"
    return {"dtype": order + NUMPY_KINDS[value.code], "shape": [value.rows, value.cols],
            "data": value.data}


def is_bus_array(value: Any) -> bool:
    """Whether `value` is the ``{"dtype", "shape", "data"}`` layout of `to_bus`."""
    return isinstance(value, dict) and value.keys() == {"dtype", "shape", "data"} and \
        isinstance(value["data"], bytes | bytearray | memoryview)


def from_plain(value: Any) -> Value:
    """What the bus or JSON carries → a value `encode_value` sends: the array layout of
    `to_bus`; a list of numbers (SV_ARR_DOUBLE 1 x N) or of equal-length lists of numbers
    (rows x cols); a table (SV_ASSOC: values as text, a nested table gives 2-D keys); text and
    numbers as they are. LocalProtocolError says what does not fit."""
    if is_bus_array(value):
        return _from_bus_array(value)
    if isinstance(value, list):
        return _from_list(value)
    if isinstance(value, dict):
        return _from_table(value)
    if isinstance(value, bool | int):
        return format_number(value)
    if isinstance(value, str | float):
        return value
    raise LocalProtocolError(f"cannot send {type(value).__name__} to SPEC (text, numbers, "
                             "tables, lists of numbers or arrays only)")


def _from_bus_array(value: dict[str, Any]) -> SpecArray:
    dtype, shape, data = value["dtype"], value["shape"], bytes(value["data"])
    kind = TYPE_OF_DTYPE.get(str(dtype)[1:]) if isinstance(dtype, str) else None
    order = {"<": LITTLE, ">": BIG, "|": LITTLE, "=": NATIVE}.get(str(dtype)[:1])
    if kind is None or order is None:
        raise LocalProtocolError(f"array dtype {dtype!r} is not one SPEC has (a byte order "
                                 f"<, > or | and one of {', '.join(TYPE_OF_DTYPE)})")
    if not (isinstance(shape, list | tuple) and len(shape) in (1, 2) and
            all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise LocalProtocolError(f"array shape {shape!r} is not [cols] or [rows, cols]")
    rows, cols = (1, shape[0]) if len(shape) == 1 else (shape[0], shape[1])
    return SpecArray(kind, rows, cols, data=data, order=order)


def _from_list(value: list[Any]) -> SpecArray:
    rows = value if value and all(isinstance(r, list) for r in value) else [value]
    width = len(rows[0])
    flat: list[float] = []
    for row in rows:
        if len(row) != width:
            raise LocalProtocolError("the rows of a 2-D array must have the same length")
        for item in row:
            if isinstance(item, bool) or not isinstance(item, int | float):
                raise LocalProtocolError(f"a list for SPEC must hold numbers only (or rows of "
                                         f"numbers), not {item!r:.40}")
            flat.append(float(item))
    return SpecArray(DataType.SV_ARR_DOUBLE, len(rows), width, flat)


def _from_table(value: dict[Any, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, item in value.items():
        name = prefix + (key if isinstance(key, str) else format_number(key))
        if isinstance(item, dict) and not prefix:
            out.update(_from_table(item, name + KEY_SEPARATOR))
        elif isinstance(item, str):
            out[name] = item
        elif isinstance(item, int | float):
            out[name] = format_number(item)
        else:
            raise LocalProtocolError(f"table value {item!r:.40} for key {name!r} is not text "
                                     "or a number (SPEC tables hold strings)")
    return out
