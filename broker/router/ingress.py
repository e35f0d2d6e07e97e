"""What the router checks on every ingress message, made cheap enough for its hot path.

`envelope.decode` is the authority on what a valid envelope is, but building a validated
`Envelope` is the router's largest per-message cost. So `fields` first tries `fast_fields`, a
check that accepts only a *subset* of what `envelope.decode` accepts (plain
events/heartbeats/logs/system messages with no command or reply keys, built from exact msgpack
types, no timestamp ext anywhere, data nested at most `envelope.MAX_DEPTH` deep) and returns
the five fields the router needs. Anything it does not accept goes through `envelope.decode`,
which either accepts it after all or raises the error that is reported. The subset property
(``fast_fields(b) is not None`` implies ``envelope.decode(b)`` succeeds with the same fields) is
a property test in tests/unit/test_ingress.py.

Topic rules (`broker.wire.rules`: `topic_rule`, `refusal`, `passing_kinds`) are shared with
the publisher, which refuses the same messages before they leave; the router caches them per
topic.

Big bodies. The router keeps a body of 64 KiB or more in the ZeroMQ frame it arrived in (a
memoryview, `Body`), and `fields` reads one of `LEAN_MIN` bytes or more with `lean_fields`: the
same checks as `fast_fields`, walking the map without unpacking its bin values (a 4 MiB image
is sliced, not copied). It returns what `fast_fields` returns, bins as memoryviews, or None to
leave the body to `fast_fields` (tests/unit/test_large_payloads.py says so).

`sequence_fields` reads only (src, epoch, seq) from the head of a body, without decoding the
payload: the router uses it on bodies it refuses unread (too large) or that fail `fields`, so
that a refused envelope still uses up its seq (see `broker.wire.protocol`).
"""

from __future__ import annotations

import math
import struct
from io import BytesIO
from typing import Any, Final

import msgpack

from broker.wire import envelope, topics
from broker.wire.errors import EnvelopeError, TopicError
from broker.wire.rules import Fields

_FAST_KINDS: Final = envelope.KINDS - {"command", "reply"}
_KEYS: Final = frozenset({"v", "id", "src", "epoch", "seq", "ts", "kind", "data"})
_MAX_KNOWN_SRC: Final = 10_000
_SEQ_KEYS: Final = frozenset({"src", "epoch", "seq"})
SEQ_MAX_KEYS: Final = 16  # keys examined by sequence_fields (an envelope has at most 11)
_SEQ_LIMIT: Final = 256  # longest str/bin and largest container unpacked (skip() ignores it)
LEAN_MIN: Final = 1024 * 1024  # bodies from this size are read by `lean_fields`, blobs not copied
LEAN_ITEMS: Final = 256  # values `lean_fields` reads before it leaves a body to `fast_fields`
# A body as the router holds it: bytes, or for a big one a memoryview of the ZeroMQ frame it
# arrived in (`broker.router.server`), kept and forwarded without a copy.
Body = bytes | memoryview
_known_src: set[str] = set()  # names that passed topics.check_name


def _src_ok(src: str) -> bool:
    if src in _known_src:
        return True
    try:
        topics.check_name(src, "src")
    except TopicError:
        return False
    if len(_known_src) >= _MAX_KNOWN_SRC:
        _known_src.clear()
    _known_src.add(src)
    return True


# What the fast path's unpackb turns into an object no envelope may hold: the timestamp ext
# (type -1, which msgpack decodes itself, never through ext_hook) and any other ext type.
_REFUSED: Final = (msgpack.Timestamp, msgpack.ExtType)
_VERSION: Final = envelope.VERSION
_MAX_ID: Final = envelope.MAX_ID_CHARS
_MAX_U63: Final = envelope.MAX_U63
_isfinite: Final = math.isfinite
_unpackb: Final = msgpack.unpackb


def _plain(value: Any, depth: int) -> bool:
    """True when containers in `value` nest no deeper than envelope.MAX_DEPTH (data is 0) and
    hold no ext value."""
    if depth > envelope.MAX_DEPTH:
        return False
    if type(value) is dict:
        return all(_plain(v, depth + 1) for v in value.values())
    if type(value) is list:
        return all(_plain(v, depth + 1) for v in value)
    return type(value) not in _REFUSED


def fast_fields(body: Body) -> Fields | None:
    """The fields of a plainly valid envelope, or None to leave the verdict to envelope.decode.

    Shaped for the router's per-message budget: `msgpack.unpackb` with its defaults (keyword
    arguments add a cost to every call; a map key that is not str/bytes raises, an ext value comes
    back as `msgpack.ExtType`/`Timestamp`, and both send the body down the general path),
    module-level constants, and exact type checks ordered so that the common envelope passes
    each once."""
    try:
        obj = _unpackb(body)
    except Exception:  # garbage: envelope.decode will say exactly what is wrong
        return None
    if type(obj) is not dict or obj.keys() != _KEYS:
        return None
    f = _checked(obj)
    if f is None:
        return None
    for key, value in f[4].items():
        if type(key) is not str:
            return None
        t = type(value)
        if t in _REFUSED or ((t is dict or t is list) and not _plain(value, 1)):
            return None
    return f


def _checked(obj: dict[str, Any]) -> Fields | None:
    """The fields of an envelope map with exactly the required keys, if each has the exact type
    and range `envelope.decode` wants (data's values are the caller's to check)."""
    src, epoch, seq, kind, data = obj["src"], obj["epoch"], obj["seq"], obj["kind"], obj["data"]
    v, id_, ts = obj["v"], obj["id"], obj["ts"]
    if (
        type(v) is not int or v != _VERSION
        or type(id_) is not str or not 0 < len(id_) <= _MAX_ID
        or type(src) is not str or (src not in _known_src and not _src_ok(src))
        or type(epoch) is not int or not 0 <= epoch <= _MAX_U63
        or type(seq) is not int or not 0 <= seq <= _MAX_U63
        or (type(ts) is not float and type(ts) is not int) or not _isfinite(ts)
        or type(kind) is not str or kind not in _FAST_KINDS
        or type(data) is not dict
    ):
        return None
    return src, epoch, seq, kind, data


class _Unwalkable(Exception):
    """`lean_fields` leaves this body to `fast_fields` (anything but the plain, short map)."""


_FIXED: Final = {  # type byte -> (width of the value, its struct code), msgpack's fixed-size types
    0xca: (4, ">f"), 0xcb: (8, ">d"), 0xcc: (1, ">B"), 0xcd: (2, ">H"), 0xce: (4, ">I"),
    0xcf: (8, ">Q"), 0xd0: (1, ">b"), 0xd1: (2, ">h"), 0xd2: (4, ">i"), 0xd3: (8, ">q")}
_FIXED_STRUCTS: Final = {t: (w, struct.Struct(c).unpack_from) for t, (w, c) in _FIXED.items()}
_LENGTHS: Final = {  # str/bin/array/map type byte -> (kind, width of its length field)
    0xd9: ("s", 1), 0xda: ("s", 2), 0xdb: ("s", 4), 0xc4: ("b", 1), 0xc5: ("b", 2),
    0xc6: ("b", 4), 0xdc: ("a", 2), 0xdd: ("a", 4), 0xde: ("m", 2), 0xdf: ("m", 4)}
_CONSTANTS: Final = {0xc0: None, 0xc2: False, 0xc3: True}


class _Walk:
    """A msgpack reader over one body that builds what `msgpack.unpackb` builds, except that
    a bin value comes back as a memoryview of the body (not copied), and that it gives up
    (`_Unwalkable`) on anything `fast_fields` would not accept or on more than `LEAN_ITEMS`
    values: the caller then takes the general path."""

    __slots__ = ("at", "budget", "value", "view")

    def __init__(self, body: Body) -> None:
        self.view = memoryview(body).cast("B")
        self.at = 0
        self.budget = LEAN_ITEMS

    def header(self) -> tuple[str, int]:
        """(kind, n) of the next value: kind "s" str, "b" bin, "a" array, "m" map, "v" a value
        already read (then n is unused and the value is in `self.value`)."""
        view, at = self.view, self.at
        self.budget -= 1
        if self.budget < 0 or at >= len(view):
            raise _Unwalkable
        t = view[at]
        self.at = at + 1
        if t <= 0x7f or t >= 0xe0:
            self.value: Any = t if t <= 0x7f else t - 0x100
            return "v", 0
        if t <= 0x8f:
            return "m", t & 0x0f
        if t <= 0x9f:
            return "a", t & 0x0f
        if t <= 0xbf:
            return "s", t & 0x1f
        if t in _CONSTANTS:
            self.value = _CONSTANTS[t]
            return "v", 0
        fixed = _FIXED_STRUCTS.get(t)
        if fixed is not None:
            width, unpack = fixed
            self.value = unpack(self._take(width))[0]
            return "v", 0
        length = _LENGTHS.get(t)
        if length is None:  # ext types, the timestamp, 0xc1: not in a plain envelope
            raise _Unwalkable
        kind, width = length
        return kind, int.from_bytes(self._take(width), "big")

    def _take(self, n: int) -> memoryview:
        at, end = self.at, self.at + n
        if end > len(self.view):
            raise _Unwalkable
        self.at = end
        return self.view[at:end]

    def value_of(self, kind: str, n: int, depth: int) -> Any:
        if kind == "v":
            return self.value
        if kind == "s":
            try:
                return str(self._take(n), "utf-8")
            except UnicodeDecodeError:
                raise _Unwalkable from None
        if kind == "b":
            return self._take(n)
        if n and depth >= envelope.MAX_DEPTH:  # its values would nest too deep
            raise _Unwalkable
        if kind == "a":
            return [self.value_of(*self.header(), depth + 1) for _ in range(n)]
        out: dict[Any, Any] = {}
        for _ in range(n):
            key = self.value_of(*self.header(), depth + 1)
            if isinstance(key, memoryview):
                key = bytes(key)
            elif type(key) is not str:
                raise _Unwalkable  # unpackb takes only str and bytes keys
            out[key] = self.value_of(*self.header(), depth + 1)
        return out


def lean_fields(body: Body) -> Fields | None:
    """`fast_fields` for a big body, without copying its blobs: what it returns (when not None)
    equals what `fast_fields` returns, except that bin values in ``data`` are memoryviews of
    the body (the router reads ``data`` only for sync probes, never for a blob); None leaves
    the body to `fast_fields`.

    `msgpack.unpackb` copies every bin value into a new bytes object (a 4 MiB image is a 4 MiB
    allocation and copy per message); this reader walks the map and slices the bins instead.
    It is written in Python, so it gives up after `LEAN_ITEMS` values: a body that big with so
    many values is decoded by `fast_fields`, whose cost is then in the values, not the blobs.
    """
    walk = _Walk(body)
    try:
        kind, n = walk.header()
        if kind != "m" or n != len(_KEYS):
            return None
        obj: dict[str, Any] = {}
        for _ in range(n):
            key = walk.value_of(*walk.header(), 0)
            if type(key) is not str or key not in _KEYS or key in obj:
                return None
            head = walk.header()
            if key == "data":
                if head[0] != "m":
                    return None
                obj[key] = walk.value_of(*head, 0)
            else:
                obj[key] = walk.value_of(*head, envelope.MAX_DEPTH)  # a scalar, or give up
        if walk.at != len(walk.view):
            return None
    except _Unwalkable:
        return None
    f = _checked(obj)
    if f is None:
        return None
    for key in f[4]:
        if type(key) is not str:
            return None
    return f


def fields(body: Body) -> Fields:
    """The fields the router needs; raises EnvelopeError exactly when envelope.decode does."""
    got = lean_fields(body) if len(body) >= LEAN_MIN else None
    if got is None:
        got = fast_fields(body)
    if got is not None:
        return got
    env = envelope.decode(body)
    return env.src, env.epoch, env.seq, env.kind, env.data


def reason_of(exc: EnvelopeError) -> str:
    """The `sys.router.bad` reason for an envelope.decode error."""
    msg = str(exc)
    if msg.startswith("not valid msgpack") or "extension type" in msg:
        return "msgpack"
    if msg.startswith("missing key"):
        return "missing_key"
    if " has type " in msg or msg.startswith("body is a msgpack"):
        return "wrong_type"
    return "invalid"


def sequence_fields(body: Body) -> tuple[str, int, int] | None:
    """(src, epoch, seq) read from the head of `body`, or None when they cannot be read.

    Only keys are unpacked, and the values of src/epoch/seq; every other value is skipped
    without building objects, and reading stops once all three are found (encoders write them
    before ``data``, so the payload is normally not even scanned). The body is read through a
    file object (`_ViewReader` for a memoryview), so it is never copied whole. Types and
    ranges are those of `envelope.decode`.
    """
    try:
        unpacker = msgpack.Unpacker(
            BytesIO(body) if isinstance(body, bytes) else _ViewReader(body), raw=False,
            max_buffer_size=max(len(body), 1024),
            max_str_len=_SEQ_LIMIT, max_bin_len=_SEQ_LIMIT, max_array_len=_SEQ_LIMIT,
            max_map_len=_SEQ_LIMIT, max_ext_len=_SEQ_LIMIT)
        found = _read_sequence_keys(unpacker, unpacker.read_map_header())
    except Exception:  # garbage, truncated or over a limit: all mean "not readable"
        return None
    if found is None:
        return None
    src, epoch, seq = found["src"], found["epoch"], found["seq"]
    if (type(src) is not str or not _src_ok(src)
            or type(epoch) is not int or not 0 <= epoch <= envelope.MAX_U63
            or type(seq) is not int or not 0 <= seq <= envelope.MAX_U63):
        return None
    return src, epoch, seq


class _ViewReader:
    """A file object over a memoryview: `BytesIO` would copy it whole (it shares only bytes).
    The Unpacker reads it in chunks as it goes, and each chunk comes as bytes (its demand)."""

    def __init__(self, view: memoryview) -> None:
        self._view = view.cast("B")
        self._at = 0

    def read(self, n: int = -1) -> bytes:
        at = self._at
        self._at = len(self._view) if n < 0 else min(len(self._view), at + n)
        return bytes(self._view[at:self._at])


def _read_sequence_keys(unpacker: msgpack.Unpacker, size: int) -> dict[str, Any] | None:
    found: dict[str, Any] = {}
    for _ in range(min(size, SEQ_MAX_KEYS)):
        key = unpacker.unpack()
        if type(key) is str and key in _SEQ_KEYS:
            found[key] = unpacker.unpack()
            if len(found) == len(_SEQ_KEYS):
                return found
        else:
            unpacker.skip()
    return None
