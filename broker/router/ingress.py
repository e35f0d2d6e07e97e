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

`sequence_fields` reads only (src, epoch, seq) from the head of a body, without decoding the
payload: the router uses it on bodies it refuses unread (too large) or that fail `fields`, so
that a refused envelope still uses up its seq (see `broker.wire.protocol`).
"""

from __future__ import annotations

import math
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


def fast_fields(body: bytes) -> Fields | None:
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
    for key, value in data.items():
        if type(key) is not str:
            return None
        t = type(value)
        if t in _REFUSED or ((t is dict or t is list) and not _plain(value, 1)):
            return None
    return src, epoch, seq, kind, data


def fields(body: bytes) -> Fields:
    """The fields the router needs; raises EnvelopeError exactly when envelope.decode does."""
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


def sequence_fields(body: bytes) -> tuple[str, int, int] | None:
    """(src, epoch, seq) read from the head of `body`, or None when they cannot be read.

    Only keys are unpacked, and the values of src/epoch/seq; every other value is skipped
    without building objects, and reading stops once all three are found (encoders write them
    before ``data``, so the payload is normally not even scanned). The body is read through a
    file object, so it is never copied whole. Types and ranges are those of `envelope.decode`.
    """
    try:
        unpacker = msgpack.Unpacker(
            BytesIO(body), raw=False, max_buffer_size=max(len(body), 1024),
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
