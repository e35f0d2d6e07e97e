"""The envelope: the msgpack map every bus message carries as its body.

Wire layout of the body, a msgpack map with str keys:

=========  =======  ==========================================================================
key        type     meaning
=========  =======  ==========================================================================
v          int      schema version, always 1
id         str      unique message id (a command keeps its id across retries)
src        str      sender name, a topic segment (actor, ``router``, ``sctl-<host>-<pid>``)
epoch      int      sender incarnation, new at every process start
seq        int      1, 2, 3 ... per (src, epoch) with no holes; 0 = unsequenced control message
ts         float    creation time, Unix seconds
kind       str      event, command, reply, heartbeat, log, system
data       map      payload, str keys, msgpack-native values (no ext types, and not the
                    spec's timestamp type: send times as float Unix seconds)
corr       str      replies only (required): the command's id
reply_to   str      commands only (required): topic the reply goes to
deadline   float    commands only (optional): Unix time after which the command must not run
=========  =======  ==========================================================================

Frames out of the router carry a 16-byte stamp as a third frame: big-endian
``router_epoch:u64, gseq:u64`` (`pack_stamp` / `unpack_stamp`). gseq 0 marks a transient
message that is not journaled (acks, sync markers).

`decode` raises only `EnvelopeError`, whatever the bytes.

Hot path. A publisher builds and encodes one envelope per message, and the general `make` + `encode`
spends most of that on work a steady sender does not need: full validation of fields the sender
fixed once (src, epoch), a new msgpack `Packer` per `packb`, a `getrandom` syscall per id. `Encoder`
is the fast path of one sender: it checks src/epoch once, per envelope only what varies (seq, kind,
data), builds the `Envelope` without validating it a second time (`_unchecked`: plain slot stores,
not 11 frozen-dataclass ``object.__setattr__`` calls) and packs the wire map it builds itself (not
`to_map`) with a `Packer` of its own. It produces exactly what `make(...).encode()` produces (the
same bytes; the same `EnvelopeError` messages) and takes the general path for anything it does not
cover (commands, replies, extra fields). `encode` reuses one `Packer` per thread. Ids are slices of
pre-hexed pools of `os.urandom` bytes (`_IdPool`: one per thread for `new_id`, one per `Encoder`).
`decode` checks the common map (the eight required keys, exact types) in one pass and validates the
envelope once, not twice; every other map takes the general path.
"""

from __future__ import annotations

import math
import os
import struct
import threading
import time
import weakref
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import msgpack

from broker.wire import topics
from broker.wire.errors import EnvelopeError, TopicError

VERSION: Final = 1
KINDS: Final = frozenset({"event", "command", "reply", "heartbeat", "log", "system"})
MAX_ID_CHARS: Final = 128
MAX_U63: Final = 2**63 - 1
MAX_DEPTH: Final = 32
STAMP: Final = struct.Struct(">QQ")

_REQUIRED: Final = {
    "v": int,
    "id": str,
    "src": str,
    "epoch": int,
    "seq": int,
    "ts": (int, float),
    "kind": str,
    "data": dict,
}
_OPTIONAL: Final = {"corr": str, "reply_to": str, "deadline": (int, float)}
# Kinds whose envelopes carry no corr/reply_to/deadline: what `Encoder` builds itself.
PLAIN_KINDS: Final = KINDS - {"command", "reply"}
_ID_BYTES: Final = 16
_ID_POOL_BYTES: Final = _ID_BYTES * 256  # one getrandom call per 256 ids


class _IdPool:
    """128-bit random ids as 32 hex characters, hexed in bulk: one `os.urandom` call and one
    ``hex()`` per 256 ids, then an id is a str slice, cheaper than slicing the bytes and hexing
    each id. Not thread-safe: one per thread (`new_id`) or per `Encoder`."""

    __slots__ = ("__weakref__", "at", "hexed")

    def __init__(self) -> None:
        self.hexed = ""
        self.at = 0
        _pools.add(self)

    def take(self) -> str:
        at = self.at
        if at >= len(self.hexed):
            self.hexed, at = os.urandom(_ID_POOL_BYTES).hex(), 0
        self.at = at + 2 * _ID_BYTES
        return self.hexed[at:at + 2 * _ID_BYTES]


_pools: weakref.WeakSet[_IdPool] = weakref.WeakSet()


def _forget_ids() -> None:
    # A forked child must not hand out the ids its parent's pools will hand out too.
    for pool in list(_pools):
        pool.hexed = ""


os.register_at_fork(after_in_child=_forget_ids)


class _PerThread(threading.local):
    """A `Packer` and an id pool for each thread (neither is safe to share)."""

    def __init__(self) -> None:
        self.pack = msgpack.Packer(use_bin_type=True).pack
        self.ids = _IdPool()


_local = _PerThread()


def new_id() -> str:
    """A 128-bit random id (from os.urandom) as 32 hex characters."""
    return _local.ids.take()


@dataclass(frozen=True, slots=True)
class Envelope:
    id: str
    src: str
    epoch: int
    seq: int
    ts: float
    kind: str
    data: dict[str, Any] = field(default_factory=dict)
    corr: str | None = None
    reply_to: str | None = None
    deadline: float | None = None
    v: int = VERSION

    def __post_init__(self) -> None:
        _validate(self)

    def to_map(self) -> dict[str, Any]:
        m: dict[str, Any] = {
            "v": self.v,
            "id": self.id,
            "src": self.src,
            "epoch": self.epoch,
            "seq": self.seq,
            "ts": self.ts,
            "kind": self.kind,
            "data": self.data,
        }
        if self.corr is not None:
            m["corr"] = self.corr
        if self.reply_to is not None:
            m["reply_to"] = self.reply_to
        if self.deadline is not None:
            m["deadline"] = self.deadline
        return m

    def encode(self) -> bytes:
        """The msgpack body (the bytes of ``msgpack.packb(self.to_map(), use_bin_type=True)``)."""
        return _pack(_local.pack, self.to_map())

    def expired(self, now: float | None = None) -> bool:
        """True when this is a command whose deadline has passed."""
        return self.deadline is not None and (time.time() if now is None else now) > self.deadline


def make(
    src: str,
    epoch: int,
    seq: int,
    kind: str,
    data: dict[str, Any] | None = None,
    **extra: Any,
) -> Envelope:
    """Build an envelope with a fresh id and the current time unless given in `extra`."""
    return Envelope(
        id=_pop(extra, "id", new_id),
        src=src,
        epoch=epoch,
        seq=seq,
        ts=_pop(extra, "ts", time.time),
        kind=kind,
        data={} if data is None else data,
        **extra,
    )


def _pop(extra: dict[str, Any], key: str, default: Any) -> Any:
    value = extra.pop(key, None)
    return default() if value is None else value


def _pack(pack: Any, m: dict[str, Any]) -> bytes:
    """`pack(m)` (a `Packer`'s) with msgpack's refusals as `EnvelopeError`."""
    try:
        return pack(m)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise EnvelopeError(
            f"data of {m['kind']} {m['id']} is not msgpack-native: {exc}") from exc


class Encoder:
    """Builds and encodes the envelopes of one sender (src, epoch), for one thread.

    `build` returns what ``e = make(src, epoch, seq, kind, data, **extra)`` and ``e.encode()``
    return, or raises the same `EnvelopeError`; for a plain envelope (a kind of `PLAIN_KINDS`,
    a dict `data`, no extra fields) it gets there in about a third of the time. It owns its id
    pool and `Packer` (one thread: no `threading.local` look-ups per envelope).
    """

    __slots__ = ("_next_id", "_pack", "epoch", "src")

    def __init__(self, src: str, epoch: int) -> None:
        make(src, epoch, 0, "event")  # src and epoch are checked here, once
        self.src = src
        self.epoch = epoch
        self._next_id = _IdPool().take
        self._pack = msgpack.Packer(use_bin_type=True).pack

    def build(self, seq: int, kind: str, data: dict[str, Any] | None,
              **extra: Any) -> tuple[Envelope, bytes]:
        if data is None:
            data = {}
        if extra or type(data) is not dict or kind not in PLAIN_KINDS:
            general = make(self.src, self.epoch, seq, kind, data, **extra)
            return general, general.encode()
        if not 0 <= seq <= MAX_U63:
            raise EnvelopeError(f"epoch {self.epoch} / seq {seq} out of range 0..2^63-1")
        _check_data(data)
        id_, src, epoch, ts = self._next_id(), self.src, self.epoch, time.time()
        # the map `to_map` builds for these fields, in its key order (the bytes depend on it)
        body = _pack(self._pack, {"v": VERSION, "id": id_, "src": src, "epoch": epoch,
                                  "seq": seq, "ts": ts, "kind": kind, "data": data})
        return _unchecked(id_, src, epoch, seq, ts, kind, data, VERSION), body


# Envelope's slots without its frozen __setattr__; see `_unchecked`.
_Draft = type("_Draft", (), {"__slots__": Envelope.__slots__})


def _unchecked(id_: str, src: str, epoch: int, seq: int, ts: float, kind: str,
               data: dict[str, Any], v: int) -> Envelope:
    """A plain Envelope (no corr, reply_to, deadline) with the fields the dataclass __init__
    sets, minus `_validate`: for callers that validate the fields themselves.

    Filled as a `_Draft` with plain slot stores, much cheaper than the 11 frozen-dataclass
    ``object.__setattr__`` calls, then turned into an Envelope by assigning ``__class__``, which
    CPython allows between classes of the same slot layout.
    """
    env: Any = _Draft()
    env.id = id_
    env.src = src
    env.epoch = epoch
    env.seq = seq
    env.ts = ts
    env.kind = kind
    env.data = data
    env.corr = None
    env.reply_to = None
    env.deadline = None
    env.v = v
    env.__class__ = Envelope
    return env  # type: ignore[no-any-return]


def _refuse_ext(code: int, payload: bytes) -> Any:
    raise EnvelopeError(f"msgpack extension type {code} is not allowed in an envelope")


def decode(raw: bytes | memoryview) -> Envelope:
    """Parse and validate one envelope; raises only EnvelopeError.

    `raw` may be any bytes-like buffer (a memoryview of a received frame): msgpack reads it
    in place, and an error keeps only its first bytes, not the buffer.
    """
    shown = raw if type(raw) is bytes else bytes(raw[:64])
    try:
        # timestamp=3 turns the spec's timestamp ext into datetime, which _check_plain refuses:
        # msgpack never passes that type to ext_hook.
        obj = msgpack.unpackb(raw, raw=False, ext_hook=_refuse_ext, strict_map_key=False,
                              timestamp=3)
    except EnvelopeError as exc:
        raise EnvelopeError(str(exc), shown) from None
    except Exception as exc:  # msgpack raises many types on garbage; all mean "not an envelope"
        raise EnvelopeError(f"not valid msgpack ({type(exc).__name__}: {exc})", shown) from None
    if not isinstance(obj, dict):
        raise EnvelopeError(f"body is a msgpack {type(obj).__name__}, not a map", shown)
    if obj.keys() == _REQUIRED.keys():
        plain = _decode_plain(obj, shown)
        if plain is not None:
            return plain
    for key, typ in _REQUIRED.items():
        if key not in obj:
            raise EnvelopeError(f"missing key {key!r}", shown)
        _check_type(obj, key, typ, shown)
    for key, typ in _OPTIONAL.items():
        if key in obj and obj[key] is not None:
            _check_type(obj, key, typ, shown)
    unknown = set(obj) - _REQUIRED.keys() - _OPTIONAL.keys()
    if unknown:
        raise EnvelopeError(f"unknown keys {sorted(map(str, unknown))}", shown)
    try:
        return Envelope(
            id=obj["id"],
            src=obj["src"],
            epoch=obj["epoch"],
            seq=obj["seq"],
            ts=float(obj["ts"]),
            kind=obj["kind"],
            data=obj["data"],
            corr=obj.get("corr"),
            reply_to=obj.get("reply_to"),
            deadline=None if obj.get("deadline") is None else float(obj["deadline"]),
            v=obj["v"],
        )
    except EnvelopeError as exc:
        raise EnvelopeError(str(exc), shown) from None


def _decode_plain(obj: dict[str, Any], shown: bytes) -> Envelope | None:
    """`decode`'s fast path for the common map: exactly the required keys, each of the exact
    type `_check_type` wants (so no bool, no subclass). The same checks as the general path
    in one pass; None sends anything else down the general path."""
    v, id_, src, epoch, seq = obj["v"], obj["id"], obj["src"], obj["epoch"], obj["seq"]
    ts, kind, data = obj["ts"], obj["kind"], obj["data"]
    if (type(v) is not int or type(id_) is not str or type(src) is not str
            or type(epoch) is not int or type(seq) is not int
            or (type(ts) is not float and type(ts) is not int)
            or type(kind) is not str or type(data) is not dict):
        return None
    env = _unchecked(id_, src, epoch, seq, float(ts), kind, data, v)
    try:
        _validate(env)
    except EnvelopeError as exc:
        raise EnvelopeError(str(exc), shown) from None
    return env


_SCALARS: Final = frozenset({str, int, float, bytes, bool, type(None)})
# What a Packer packs but `decode` refuses: ext types, the spec's timestamp (decoded to a datetime)
_REFUSED: Final = (datetime, msgpack.Timestamp, msgpack.ExtType)


def _check_plain(value: Any, depth: int) -> bool:
    """True when `value` holds only msgpack-native types (no ext type, no timestamp or
    datetime) within MAX_DEPTH. A tuple counts as a list (msgpack packs both as arrays), but
    not the namedtuple ExtType."""
    if depth > MAX_DEPTH:
        return False
    if isinstance(value, dict):
        items: Any = value.values()
    elif isinstance(value, list) or (isinstance(value, tuple)
                                     and not isinstance(value, msgpack.ExtType)):
        items = value
    else:
        return not isinstance(value, _REFUSED)
    if depth == MAX_DEPTH:
        return not items  # any child would sit at MAX_DEPTH + 1
    for v in items:  # noqa: SIM110 - a loop, not all(): per-publish hot path, scalars skip the call
        if type(v) not in _SCALARS and not _check_plain(v, depth + 1):
            return False
    return True


def _check_type(obj: dict[Any, Any], key: str, typ: Any, raw: bytes) -> None:
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, typ):
        raise EnvelopeError(f"key {key!r} has type {type(value).__name__}", raw)


def _validate(env: Envelope) -> None:
    if env.v != VERSION:
        raise EnvelopeError(f"schema version {env.v} is not supported (this is version {VERSION})")
    if not 0 < len(env.id) <= MAX_ID_CHARS:
        raise EnvelopeError(f"id must be 1-{MAX_ID_CHARS} characters")
    try:
        topics.check_name(env.src, "src")
    except TopicError as exc:
        raise EnvelopeError(str(exc)) from None
    if not 0 <= env.epoch <= MAX_U63 or not 0 <= env.seq <= MAX_U63:
        raise EnvelopeError(f"epoch {env.epoch} / seq {env.seq} out of range 0..2^63-1")
    if not math.isfinite(env.ts):
        raise EnvelopeError("ts is not a finite number")
    if env.kind not in KINDS:
        raise EnvelopeError(f"kind {env.kind!r} is not one of {sorted(KINDS)}")
    _check_data(env.data)
    _validate_kind_fields(env)


def _check_data(data: dict[str, Any]) -> None:
    """Raises EnvelopeError unless `data` is a map of str keys to `_check_plain` values.

    Per-publish hot path: one pass over the items accepts the usual data; whatever it does not
    accept goes to `_refuse_data`, whose order of checks picks the error (keys before values).
    """
    if type(data) is dict:
        for k, v in data.items():
            if type(k) is not str or (type(v) not in _SCALARS and not _check_plain(v, 1)):
                break
        else:
            return
    _refuse_data(data)


def _refuse_data(data: dict[str, Any]) -> None:
    """`_check_data`'s full check, which raises the error for what its fast pass turned down."""
    if not isinstance(data, dict):  # the router refuses it ("key 'data' has type ..."): first
        raise EnvelopeError(f"data must be a map, not {type(data).__name__}")
    for k in data:
        if not isinstance(k, str):
            raise EnvelopeError("data keys must be strings")
    if not _check_plain(data, 0):
        # The router's words (`ingress.reason_of` reads sys.router.bad's reason from them); a
        # sender's ExtType gets them too, as decoded data never holds one.
        raise EnvelopeError(f"data holds a timestamp/datetime or nests deeper than {MAX_DEPTH} "
                            "levels")


def _validate_kind_fields(env: Envelope) -> None:
    if env.kind == "reply":
        if not env.corr:
            raise EnvelopeError("a reply needs corr (the command's id)")
    elif env.corr is not None:
        raise EnvelopeError(f"corr is only for replies, not {env.kind}")
    if env.kind == "command":
        if not env.reply_to:
            raise EnvelopeError("a command needs reply_to")
        try:
            topics.check_topic(env.reply_to)
        except TopicError as exc:
            raise EnvelopeError(f"reply_to: {exc}") from None
        if not env.reply_to.startswith(topics.REPLY + "."):
            raise EnvelopeError(f"reply_to {env.reply_to!r} is not a rep.<client> topic")
        if env.deadline is not None and not math.isfinite(env.deadline):
            raise EnvelopeError("deadline is not a finite number")
    elif env.reply_to is not None or env.deadline is not None:
        raise EnvelopeError(f"reply_to and deadline are only for commands, not {env.kind}")


def pack_stamp(router_epoch: int, gseq: int) -> bytes:
    if not (0 <= router_epoch < 2**64 and 0 <= gseq < 2**64):
        raise EnvelopeError(f"stamp values out of range: epoch {router_epoch}, gseq {gseq}")
    return STAMP.pack(router_epoch, gseq)


def unpack_stamp(stamp: bytes) -> tuple[int, int]:
    """(router_epoch, gseq); raises EnvelopeError on a stamp that is not 16 bytes."""
    if len(stamp) != STAMP.size:
        raise EnvelopeError(f"stamp is {len(stamp)} bytes, expected {STAMP.size}", stamp)
    epoch, gseq = STAMP.unpack(stamp)
    return int(epoch), int(gseq)
