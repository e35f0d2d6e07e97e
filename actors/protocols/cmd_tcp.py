r"""Pyrame ``cmd_tcp`` semantics, sans-IO: argument decoding, result encoding, and the receive
side of a link (a bounded buffer with at most one pending read).

Everything a caller sends arrives as text (the Pyrame XML protocol passed every argument as a raw
string; ``sctl send`` does the same), so this module turns text into wire bytes and wire bytes
into text:

=============== ==============================================================================
writes          escape-decoded like Python 2 ``str.decode('string_escape')`` (`unescape`):
                ``\n \r \t \a \b \f \v \\ \' \"``, ``\xNN``, octal ``\NNN``, backslash-newline
                removed; an unknown escape such as ``\e`` is sent literally (backslash, ``e``)
``*_bin_*``     plain per-byte hex, high nibble first (`decode_hex` / `encode_hex`): either case
                in, lowercase out; odd length and non-hex pairs are refused with the original's
                wording, and nothing is sent
text reads      every NUL, CR and LF removed, anywhere (`strip_text`), then UTF-8 with
                undecodable bytes shown as ``\xNN`` (the escape a write accepts back)
``eot``         split on ``,`` first, then each item unescaped (`parse_eot`): ``\r\n,\r`` is two
                items; a literal comma is ``\x2c``
timeouts        ``undef`` or empty = the link default (`parse_timeout`)
=============== ==============================================================================

The receive side (`Receiver`) owns the bytes that came from the device and are not consumed yet.
A read (`ReadExact`, `ReadUntil`, `Expect`) takes bytes from the front of that buffer and leaves
whatever follows its match for the next read, exactly as the original left them in the socket
(``read_until E`` on ``__TEST__`` gives ``__T``; a following ``read 4`` gives ``ST__``). How the
bytes were chunked on the way never changes a result. The buffer is bounded (`MAX_BUFFER` by
default): a peer that sends more than that without completing the read (a flood without the eot,
or bytes nobody asked for) is a `RemoteProtocolError`, never unbounded growth.

Result wordings that scripts written for Pyrame match on are kept: ``Pattern found``, ``TCP link
at <ip>:<port> is not responding <- timed out``, ``Timeout waiting for EOT character``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from broker.wire.errors import LocalProtocolError, RemoteProtocolError

DEFAULT_TIMEOUT: Final = 60.0  # seconds, Pyrame's socket.setdefaulttimeout(60)
UNDEF: Final = "undef"
MAX_BUFFER: Final = 1 << 20  # bytes held from the device before the link gives up
PATTERN_FOUND: Final = "Pattern found"
EOT_NEEDED: Final = "End Of Transmission (eot) parameter needed"
EOT_TIMEOUT: Final = "Timeout waiting for EOT character"
STRIPPED: Final = b"\0\r\n"

_SIMPLE_ESCAPES: Final[dict[int, bytes]] = {
    ord("\\"): b"\\", ord("'"): b"'", ord('"'): b'"', ord("a"): b"\a", ord("b"): b"\b",
    ord("f"): b"\f", ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("v"): b"\v",
    ord("\n"): b"",  # backslash-newline: a line continuation, nothing is sent
}
_OCTAL: Final = frozenset(b"01234567")
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")


# --- arguments --------------------------------------------------------------------------------


def unescape(text: str) -> bytes:
    """The bytes a write sends for `text` (Python 2 ``string_escape``; the same output as
    ``codecs.escape_decode`` without its deprecation warnings). Characters beyond ASCII are sent
    as UTF-8, as the original received them. Raises LocalProtocolError for a ``\\x`` without two
    hex digits or a trailing lone backslash (the original's wording)."""
    raw = text.encode("utf-8")
    if b"\\" not in raw:
        return raw
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c != 0x5C:
            out.append(c)
            i += 1
            continue
        if i + 1 == n:
            raise LocalProtocolError("Trailing \\ in string")
        e = raw[i + 1]
        if e in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[e]
            i += 2
        elif e in _OCTAL:
            j = i + 1
            while j < n and j < i + 4 and raw[j] in _OCTAL:
                j += 1
            out.append(int(raw[i + 1:j], 8) & 0xFF)
            i = j
        elif e == ord("x"):
            digits = raw[i + 2:i + 4]
            if len(digits) < 2 or not all(d in _HEX for d in digits):
                raise LocalProtocolError(f"invalid \\x escape at position {i}")
            out.append(int(digits, 16))
            i += 4
        else:  # unknown escape: both characters go out as they are
            out += raw[i:i + 2]
            i += 2
    return bytes(out)


def decode_hex(text: str) -> bytes:
    """``*_bin_*`` input: two hex digits per byte, either case. Raises LocalProtocolError with
    the original's messages (``data must have a length multiple of 2. Current length: 3``,
    ``invalid literal for int() with base 16: 'zz'``). Unlike the original's ``int(pair, 16)``,
    a pair such as ``+f`` or `` f`` is refused too."""
    if len(text) % 2:
        raise LocalProtocolError(
            f"data must have a length multiple of 2. Current length: {len(text)}")
    for i in range(0, len(text), 2):
        pair = text[i:i + 2]
        if not (pair.isascii() and all(ord(c) in _HEX for c in pair)):
            raise LocalProtocolError(f"invalid literal for int() with base 16: {pair!r}")
    return bytes.fromhex(text)


def encode_hex(data: bytes) -> str:
    """``*_bin_*`` output: lowercase, no separators, nothing stripped."""
    return data.hex()


def strip_text(data: bytes) -> str:
    """A text read's result: NUL, CR and LF removed anywhere, then decoded."""
    kept = data.translate(None, STRIPPED)
    return kept.decode("utf-8", errors="backslashreplace")


def parse_eot(text: str) -> tuple[bytes, ...]:
    """The eot list of ``read_until``: split on ``,``, then each item unescaped. Raises
    LocalProtocolError for ``""``/``undef`` (the original's wording) and for an empty item
    (``a,,b``), which the original would match after any first byte."""
    if text in ("", UNDEF):
        raise LocalProtocolError(EOT_NEEDED)
    items = tuple(unescape(item) for item in text.split(","))
    for k, item in enumerate(items):
        if not item:
            raise LocalProtocolError(f"eot item {k + 1} of {text!r} is empty (write a literal "
                                     "comma as \\x2c)")
    return items


def parse_timeout(text: str | float, default: float) -> float:
    """Seconds for one call: ``undef`` or empty means `default` (the link's ``timeout``)."""
    if isinstance(text, str) and text.strip() in ("", UNDEF):
        return default
    try:
        value = float(text)
    except (ValueError, TypeError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise LocalProtocolError(f"timeout must be a positive number of seconds or 'undef', "
                                 f"got {text!r}")
    return value


def parse_count(text: str | float, limit: int = MAX_BUFFER) -> int:
    """``bytes_to_read`` of ``read``: a whole number from 0 to `limit`."""
    try:
        if isinstance(text, str):
            value = int(text.strip())
        elif isinstance(text, int) or text.is_integer():
            value = int(text)
        else:
            raise ValueError
    except ValueError:
        raise LocalProtocolError(f"bytes_to_read must be a whole number, got {text!r}") from None
    if not 0 <= value <= limit:
        raise LocalProtocolError(f"bytes_to_read must be from 0 to {limit}, got {value}")
    return value


def parse_pattern(text: str) -> bytes:
    """An ``expect`` pattern: unescaped like a write. Empty and NUL-containing patterns are
    refused: expect skips NUL bytes, so the original matched those only by accident (its
    window starts filled with NULs)."""
    pattern = unescape(text)
    if not pattern:
        raise LocalProtocolError("expect needs a non-empty pattern")
    if b"\0" in pattern:
        raise LocalProtocolError("an expect pattern cannot contain NUL bytes (expect skips them)")
    return pattern


# --- reads ------------------------------------------------------------------------------------


@dataclass
class ReadExact:
    """``read n``: exactly `n` bytes (the original's docstring says "up to"; it waits for n)."""

    n: int

    def step(self, buf: bytearray) -> bytes | None:
        if len(buf) < self.n:
            return None
        out = bytes(buf[:self.n])
        del buf[:self.n]
        return out

    def timeout_reason(self, seen: int, peer: str) -> str:
        return f"TCP link at {peer} is not responding <- timed out"


@dataclass
class ReadUntil:
    """``read_until eot``: up to the first point where the data ends with an eot item; that item
    (the first in list order among those ending there) is removed from the result, bytes after
    it stay in the buffer. `_scanned` remembers how far earlier calls looked, so feeding one
    byte at a time costs no rescans."""

    eots: Sequence[bytes]
    _scanned: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if not self.eots or not all(self.eots):
            raise LocalProtocolError(EOT_NEEDED)

    def step(self, buf: bytearray) -> bytes | None:
        best_end, best_len = -1, 0
        for eot in self.eots:
            at = buf.find(eot, max(0, self._scanned - len(eot) + 1))
            if at >= 0 and (best_end < 0 or at + len(eot) < best_end):
                best_end, best_len = at + len(eot), len(eot)
        if best_end < 0:
            self._scanned = len(buf)
            return None
        out = bytes(buf[:best_end - best_len])
        del buf[:best_end]
        return out

    def timeout_reason(self, seen: int, peer: str) -> str:
        if seen:
            return EOT_TIMEOUT
        return f"TCP link at {peer} is not responding <- timed out"


@dataclass
class Expect:
    """``expect pattern``: plain bytes (not a regex), NUL bytes skipped; everything read up to
    and including the match is discarded, bytes after it stay; the result is the pattern. Bytes
    that cannot be part of a match are dropped as they arrive, so a long wait holds at most
    ``len(pattern) - 1`` of them."""

    pattern: bytes
    _tail: bytes = field(default=b"", repr=False)

    def step(self, buf: bytearray) -> bytes | None:
        window = self._tail + bytes(buf).replace(b"\0", b"")
        at = window.find(self.pattern)
        if at < 0:
            keep = len(self.pattern) - 1
            self._tail = window[len(window) - keep:] if keep else b""
            del buf[:]
            return None
        needed = at + len(self.pattern) - len(self._tail)  # non-NUL bytes of buf to consume
        end = 0
        while needed:
            if buf[end]:
                needed -= 1
            end += 1
        del buf[:end]
        return self.pattern

    def timeout_reason(self, seen: int, peer: str) -> str:
        if seen:
            return f"Pattern not found in {seen} bytes <- timed out"
        return f"TCP link at {peer} is not responding <- timed out"


Read = ReadExact | ReadUntil | Expect


class Receiver:
    """The receive side of one connection: bytes not consumed yet, at most one pending read.

    `feed(data)` returns the raw result when the pending read completes; `begin(read)` starts a
    read and returns its result at once if the buffer already holds it. `seen` counts the bytes
    that arrived during the pending read (timeout wording). Raises RemoteProtocolError when the
    buffer would exceed `limit`; the caller drops the connection (framing is lost) and `reset`s.
    """

    def __init__(self, limit: int = MAX_BUFFER) -> None:
        self.limit = limit
        self.buffer = bytearray()
        self.read: Read | None = None
        self.seen = 0

    def begin(self, read: Read) -> bytes | None:
        if self.read is not None:
            raise LocalProtocolError("a read is already pending on this link")
        self.read, self.seen = read, 0
        return self._step()

    def feed(self, data: bytes) -> bytes | None:
        self.buffer += data
        if self.read is not None:
            self.seen += len(data)
        return self._step()

    def abort(self) -> None:
        """The pending read gave up (timeout): what it had read is discarded, like the
        original's partial data; bytes still to come stay for the next read."""
        self.buffer.clear()
        self.read = None

    def reset(self) -> None:
        """A new connection: nothing from the old one survives."""
        self.buffer.clear()
        self.read = None
        self.seen = 0

    def _step(self) -> bytes | None:
        read = self.read
        result = read.step(self.buffer) if read is not None else None
        if result is not None:
            self.read = None
        if len(self.buffer) > self.limit:
            what = ("without an eot" if isinstance(read, ReadUntil) and result is None
                    else "that no read asked for")
            raise RemoteProtocolError(f"peer sent more than {self.limit} bytes {what}",
                                      bytes(self.buffer[:64]))
        return result


# --- the data functions -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Function:
    """One data function of cmd_tcp: how its write is encoded, what its read waits for, how
    the result is shown, and its parameters in order (the last, ``timeout``, is optional)."""

    write: str | None  # "escaped" or "bin"
    read: str | None  # "exact", "until" or "expect"
    hex_out: bool
    params: tuple[str, ...]


FUNCTIONS: Final[dict[str, Function]] = {
    "write": Function("escaped", None, False, ("data",)),
    "write_bin": Function("bin", None, False, ("data",)),
    "read": Function(None, "exact", False, ("bytes_to_read", "timeout")),
    "read_bin": Function(None, "exact", True, ("bytes_to_read", "timeout")),
    "read_until": Function(None, "until", False, ("eot", "timeout")),
    "read_bin_until": Function(None, "until", True, ("eot", "timeout")),
    "wrnrd": Function("escaped", "exact", False, ("data", "bytes_to_read", "timeout")),
    "wrnrd_bin": Function("bin", "exact", True, ("data", "bytes_to_read", "timeout")),
    "wrnrd_until": Function("escaped", "until", False, ("data", "eot", "timeout")),
    "wrnrd_bin_until": Function("bin", "until", True, ("data", "eot", "timeout")),
    "expect": Function(None, "expect", False, ("pattern", "timeout")),
}


@dataclass(frozen=True, slots=True)
class Call:
    """A data function call, checked and encoded: what to send, what to wait for, how long."""

    function: str
    write: bytes | None
    read: Read | None
    hex_out: bool
    timeout: float

    def result(self, raw: bytes | None) -> str:
        """What the caller gets back for the bytes the read consumed."""
        if self.read is None:
            return "ok"
        if isinstance(self.read, Expect):
            return PATTERN_FOUND
        assert raw is not None
        return encode_hex(raw) if self.hex_out else strip_text(raw)


def plan_call(function: str, args: Sequence[str | int | float], default_timeout: float,
              limit: int = MAX_BUFFER) -> Call:
    """Check and encode one call of `function` with positional `args` (its `params` in order;
    a missing timeout is ``undef``). Raises LocalProtocolError naming what is wrong; nothing
    has been sent then."""
    spec = FUNCTIONS.get(function)
    if spec is None:
        raise LocalProtocolError(f"unknown function {function!r} (functions: "
                                 f"{', '.join(FUNCTIONS)})")
    optional = 1 if spec.params[-1] == "timeout" else 0
    if not len(spec.params) - optional <= len(args) <= len(spec.params):
        raise LocalProtocolError(f"{function} takes {', '.join(spec.params)}"
                                 f"{' (timeout optional)' if optional else ''}, got "
                                 f"{len(args)} argument(s)")
    values = dict(zip(spec.params, args, strict=False))
    write = None
    if spec.write == "escaped":
        write = unescape(str(values["data"]))
    elif spec.write == "bin":
        write = decode_hex(str(values["data"]))
    read: Read | None = None
    if spec.read == "exact":
        read = ReadExact(parse_count(values["bytes_to_read"], limit))
    elif spec.read == "until":
        read = ReadUntil(parse_eot(str(values["eot"])))
    elif spec.read == "expect":
        read = Expect(parse_pattern(str(values["pattern"])))
    timeout = parse_timeout(values.get("timeout", UNDEF), default_timeout)
    return Call(function, write, read, spec.hex_out, timeout)
