"""SPEC (certif.com) server-mode wire protocol: sans-IO framing and headers.

Wire layout (``struct svr_head`` of CSS's ``spec_server.h``; every field 32 bits)::

    magic vers size sn sec usec cmd type rows cols len [err: v3+] [flags: v4] name[80]
    header size: v2 124, v3 128, v4 132 bytes; then exactly `len` data bytes

- The byte order is the one in which ``magic`` reads ``0xFEEDFACE``; a server mirrors the
  client's first packet (order and header version) in everything it sends back.
- ``size`` is the header size; ``name`` is always its last 80 bytes (NUL-padded, at most 79
  bytes of text), so a longer future header is parsed by skipping what we do not know.
- ``sn`` matches replies to requests; events carry ``sn = 0``.

`Decoder` does exact-length framing over arbitrary chunks: `feed(bytes)` then `events()` yields
complete `Message` objects. Every buffer is bounded (`MAX_DATA`, `MAX_HEADER`); bytes that cannot
be SPEC raise `RemoteProtocolError` and the decoder stays failed (framing is lost: the owner
drops the connection). `encode_message` builds the bytes of one message and raises
`LocalProtocolError` for values the header cannot carry. Data encodings (strings, ASSOC,
numeric arrays) are in `actors.protocols.spec_types`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Final

from broker.wire.errors import LocalProtocolError, RemoteProtocolError

SV_SPEC_MAGIC: Final = 0xFEEDFACE
NAME_SIZE: Final = 80
PREFIX_SIZE: Final = 12  # magic, vers, size: enough to know the order and the header size
HEADER_SIZES: Final[dict[int, int]] = {2: 124, 3: 128, 4: 132}
FIELDS: Final[dict[int, str]] = {2: "IiIIIIiiIII", 3: "IiIIIIiiIIIi", 4: "IiIIIIiiIIIii"}
MAX_HEADER: Final = 1024  # a larger `size` is not a SPEC header
MAX_DATA: Final = 64 * 1024 * 1024  # default bound on `len`
LITTLE: Final = "<"
BIG: Final = ">"
SV_DELETED: Final = 0x0001  # CSS header value; some clients use 0x1000 (see is_deleted)
SV_DELETED_ALT: Final = 0x1000
U32: Final = 0xFFFFFFFF


class Cmd(IntEnum):
    """``cmd`` codes (spec_server.h)."""

    SV_CLOSE = 1
    SV_ABORT = 2
    SV_CMD = 3
    SV_CMD_WITH_RETURN = 4
    SV_RETURN = 5
    SV_REGISTER = 6
    SV_UNREGISTER = 7
    SV_EVENT = 8
    SV_FUNC = 9
    SV_FUNC_WITH_RETURN = 10
    SV_CHAN_READ = 11
    SV_CHAN_SEND = 12
    SV_REPLY = 13
    SV_HELLO = 14
    SV_HELLO_REPLY = 15


class DataType(IntEnum):
    """``type`` codes (spec_server.h). 0 is what some clients send for 'no data'."""

    SV_NONE = 0
    SV_DOUBLE = 1
    SV_STRING = 2
    SV_ERROR = 3
    SV_ASSOC = 4
    SV_ARR_DOUBLE = 5
    SV_ARR_FLOAT = 6
    SV_ARR_LONG = 7
    SV_ARR_ULONG = 8
    SV_ARR_SHORT = 9
    SV_ARR_USHORT = 10
    SV_ARR_CHAR = 11
    SV_ARR_UCHAR = 12
    SV_ARR_STRING = 13
    SV_ARR_LONG64 = 14
    SV_ARR_ULONG64 = 15


@dataclass(frozen=True, slots=True)
class Message:
    """One SPEC message: header fields as the vendor names them, plus the raw data bytes.

    `cmd` and `type` stay plain ints when the peer sends a code we do not know (the owner
    decides what to do with it); `order` and `vers` are how it was (or will be) framed."""

    cmd: int
    name: str = ""
    data: bytes = b""
    type: int = DataType.SV_STRING
    sn: int = 0
    rows: int = 0
    cols: int = 0
    err: int = 0
    flags: int = 0
    sec: int = 0
    usec: int = 0
    vers: int = 4
    order: str = LITTLE

    def describe(self) -> str:
        """Short text for logs and error messages: ``CHAN_READ var/x sn=7``."""
        try:
            cmd = Cmd(self.cmd).name.removeprefix("SV_")
        except ValueError:
            cmd = f"cmd {self.cmd}"
        return f"{cmd} {self.name or '-'} sn={self.sn}"


def is_deleted(flags: int) -> bool:
    """The SV_DELETED flag, whichever of its two published values the peer uses."""
    return bool(flags & (SV_DELETED | SV_DELETED_ALT))


def encode_message(msg: Message) -> bytes:
    """Header plus data, in `msg.order` and header version `msg.vers`.

    Raises LocalProtocolError for a version other than 2-4, a name that does not fit 79 bytes
    (or contains NUL), or a field outside its 32-bit range."""
    if msg.vers not in HEADER_SIZES:
        raise LocalProtocolError(f"SPEC header version {msg.vers} is not 2, 3 or 4")
    if msg.order not in (LITTLE, BIG):
        raise LocalProtocolError(f"byte order {msg.order!r} is not '<' or '>'")
    try:
        name = msg.name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"SPEC property name is not valid Unicode: {exc}") from None
    if len(name) >= NAME_SIZE or b"\0" in name:
        raise LocalProtocolError(f"SPEC property name {msg.name[:100]!r} is longer than "
                                 f"{NAME_SIZE - 1} bytes or contains NUL")
    if len(msg.data) > U32:
        raise LocalProtocolError(f"{len(msg.data)} data bytes do not fit the u32 len field")
    values = [SV_SPEC_MAGIC, msg.vers, HEADER_SIZES[msg.vers], msg.sn, msg.sec, msg.usec,
              msg.cmd, msg.type, msg.rows, msg.cols, len(msg.data), msg.err, msg.flags]
    fields = FIELDS[msg.vers]
    try:
        head = struct.pack(msg.order + fields, *values[:len(fields)])
    except struct.error as exc:
        raise LocalProtocolError(f"cannot encode SPEC {msg.describe()}: {exc}") from None
    return head + name.ljust(NAME_SIZE, b"\0") + msg.data


def parse_prefix(prefix: bytes) -> tuple[str, int, int]:
    """(order, vers, size) from the first 12 header bytes; RemoteProtocolError if the magic is
    missing or the size cannot be a header of that version."""
    if len(prefix) < PREFIX_SIZE:
        raise RemoteProtocolError(f"SPEC header prefix needs {PREFIX_SIZE} bytes, got "
                                  f"{len(prefix)}", prefix)
    for order in (LITTLE, BIG):
        magic, vers, size = struct.unpack(order + "IiI", prefix[:PREFIX_SIZE])
        if magic == SV_SPEC_MAGIC:
            break
    else:
        raise RemoteProtocolError(
            f"bad SPEC magic {prefix[:4].hex()} (expected feedface in either byte order): "
            "the peer is not a SPEC server/client or the stream lost its framing", prefix)
    if vers < 2:
        raise RemoteProtocolError(f"SPEC header version {vers} is not supported (2 or more)",
                                  prefix)
    least = HEADER_SIZES[min(vers, 4)]
    if not least <= size <= MAX_HEADER:
        raise RemoteProtocolError(f"SPEC header size {size} is impossible for version {vers} "
                                  f"(expected {least} to {MAX_HEADER})", prefix)
    return order, vers, size


def parse_header(header: bytes) -> tuple[Message, int]:
    """A complete header (its `size` bytes) → (Message without data, `len`)."""
    order, vers, size = parse_prefix(header)
    if len(header) != size:
        raise RemoteProtocolError(f"SPEC header is {len(header)} bytes, its size field says "
                                  f"{size}", header)
    known = min(vers, 4)
    fields = struct.unpack(order + FIELDS[known], header[:HEADER_SIZES[known] - NAME_SIZE])
    _, _, _, sn, sec, usec, cmd, type_, rows, cols, length = fields[:11]
    err = fields[11] if known >= 3 else 0
    flags = fields[12] if known >= 4 else 0
    raw_name = header[size - NAME_SIZE:size].split(b"\0", 1)[0]
    name = raw_name.decode("utf-8", errors="replace")
    return Message(cmd=cmd, name=name, type=type_, sn=sn, rows=rows, cols=cols, err=err,
                   flags=flags, sec=sec, usec=usec, vers=vers, order=order), length


class Decoder:
    """Exact-length framing: bytes in (`feed`), complete `Message` objects out (`events`).

    The first message fixes `order` and `vers` (what a server answers in). A later message in
    the other byte order is accepted (each header is parsed by its own magic). After a
    `RemoteProtocolError` the decoder stays failed: every later call raises it again."""

    def __init__(self, max_data: int = MAX_DATA) -> None:
        self.max_data = max_data
        self.order: str | None = None
        self.vers: int | None = None
        self._buf = bytearray()
        self._header: Message | None = None
        self._need = 0  # data bytes of the pending header
        self._failed: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        if self._failed is not None:
            raise self._failed
        self._buf += data

    def events(self) -> Iterator[Message]:
        """Every complete message buffered so far, in order."""
        while True:
            if self._failed is not None:
                raise self._failed
            try:
                msg = self._next()
            except RemoteProtocolError as exc:
                self._failed = exc
                self._buf.clear()
                raise
            if msg is None:
                return
            yield msg

    def _next(self) -> Message | None:
        if self._header is None:
            if len(self._buf) < PREFIX_SIZE:
                return None
            order, vers, size = parse_prefix(bytes(self._buf[:PREFIX_SIZE]))
            if len(self._buf) < size:
                return None
            header, length = parse_header(bytes(self._buf[:size]))
            if length > self.max_data:
                raise RemoteProtocolError(
                    f"SPEC {header.describe()} announces {length} data bytes, more than the "
                    f"bound of {self.max_data}", bytes(self._buf[:size]))
            del self._buf[:size]
            if self.order is None:
                self.order, self.vers = order, vers
            self._header, self._need = header, length
        if len(self._buf) < self._need:
            return None
        data = bytes(self._buf[:self._need])
        del self._buf[:self._need]
        header, self._header = self._header, None
        return replace(header, data=data)
