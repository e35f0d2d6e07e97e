"""broker.wire.envelope and broker.wire.topics: the wire contract."""

from __future__ import annotations

import math
import re
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from broker.wire import envelope, topics
from broker.wire.envelope import Envelope, decode, make, pack_stamp, unpack_stamp
from broker.wire.errors import EnvelopeError, TopicError

U64 = 2**64 - 1
U63 = 2**63 - 1


def base(**over: Any) -> dict[str, Any]:
    """Keyword arguments of a valid event envelope, with overrides."""
    kw: dict[str, Any] = dict(id="m1", src="reader1", epoch=7, seq=1, ts=1700000000.5,
                              kind="event", data={"uid": "04A1B2"})
    kw.update(over)
    return kw


def wire(**over: Any) -> dict[str, Any]:
    """A valid envelope as the msgpack map on the wire, with overrides (None value = drop key)."""
    m = Envelope(**base()).to_map()
    for k, v in over.items():
        if v is None:
            m.pop(k, None)
        else:
            m[k] = v
    return m


def packed(m: Any) -> bytes:
    return msgpack.packb(m, use_bin_type=True)  # type: ignore[no-any-return]


# --- round trip -------------------------------------------------------------------------------


def test_event_round_trip() -> None:
    env = Envelope(**base(data={"uid": "04A1B2", "n": 3, "raw": b"\x00\xff", "x": [1.5, None],
                                "nested": {"ok": True}}))
    raw = env.encode()
    assert isinstance(raw, bytes)
    back = decode(raw)
    assert back == env
    assert back.encode() == raw


def test_command_and_reply_round_trip() -> None:
    cmd = make("sctl-host-1", 3, 9, "command", {"command": "ping", "args": {}},
               reply_to="rep.sctl-host-1", deadline=1700000005.0)
    assert decode(cmd.encode()) == cmd
    rep = make("reader1", 1, 2, "reply", {"status": "ok", "result": None, "error": ""},
               corr=cmd.id)
    assert decode(rep.encode()) == rep
    assert decode(rep.encode()).corr == cmd.id


def test_wire_map_has_exactly_the_documented_keys() -> None:
    env = Envelope(**base())
    assert msgpack.unpackb(env.encode()) == {
        "v": 1, "id": "m1", "src": "reader1", "epoch": 7, "seq": 1, "ts": 1700000000.5,
        "kind": "event", "data": {"uid": "04A1B2"},
    }
    cmd = Envelope(**base(kind="command", reply_to="rep.c1", deadline=5.0))
    m = msgpack.unpackb(cmd.encode())
    assert m["reply_to"] == "rep.c1" and m["deadline"] == 5.0
    assert "corr" not in m


def test_make_fills_id_and_ts() -> None:
    a = make("a", 1, 1, "heartbeat")
    b = make("a", 1, 2, "heartbeat")
    assert a.id != b.id
    assert len(a.id) == 32 and int(a.id, 16) >= 0
    assert a.data == {}
    assert a.ts > 1.6e9
    c = make("a", 1, 3, "log", {"msg": "x"}, id="fixed", ts=12.0)
    assert (c.id, c.ts) == ("fixed", 12.0)


def test_new_id_is_32_hex_chars() -> None:
    ids = {envelope.new_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 32 and set(i) <= set("0123456789abcdef") for i in ids)


def test_integer_ts_and_deadline_on_the_wire_become_floats() -> None:
    env = decode(packed(wire(ts=1700000000, kind="command", reply_to="rep.c", deadline=5)))
    assert env.ts == 1700000000.0 and isinstance(env.ts, float)
    assert env.deadline == 5.0 and isinstance(env.deadline, float)


def test_none_optional_keys_on_the_wire_mean_absent() -> None:
    env = decode(packed(wire(corr=None) | {"corr": None, "reply_to": None, "deadline": None}))
    assert env.corr is None and env.reply_to is None and env.deadline is None


def test_expired() -> None:
    cmd = Envelope(**base(kind="command", reply_to="rep.c", deadline=100.0))
    assert not cmd.expired(now=100.0)
    assert cmd.expired(now=100.1)
    assert not Envelope(**base(kind="command", reply_to="rep.c")).expired(now=1e12)
    assert not Envelope(**base()).expired(now=1e12)
    assert Envelope(**base(kind="command", reply_to="rep.c", deadline=1.0)).expired()


# --- validation on construction ---------------------------------------------------------------


@pytest.mark.parametrize(("over", "needle"), [
    ({"v": 2}, "schema version 2 is not supported"),
    ({"id": ""}, "id must be 1-128 characters"),
    ({"id": "x" * 129}, "id must be 1-128 characters"),
    ({"src": "reader.1"}, "src 'reader.1' is not usable"),
    ({"src": ""}, "is not usable"),
    ({"src": "a b"}, "is not usable"),
    ({"epoch": -1}, "out of range"),
    ({"seq": -1}, "out of range"),
    ({"epoch": U63 + 1}, "out of range"),
    ({"seq": U63 + 1}, "out of range"),
    ({"ts": math.inf}, "ts is not a finite number"),
    ({"ts": math.nan}, "ts is not a finite number"),
    ({"kind": "evt"}, "kind 'evt' is not one of"),
    ({"kind": "Event"}, "is not one of"),
    ({"data": {1: "x"}}, "data keys must be strings"),
])
def test_invalid_fields(over: dict[str, Any], needle: str) -> None:
    with pytest.raises(EnvelopeError, match=re.escape(needle)):
        Envelope(**base(**over))


def test_limits_are_inclusive() -> None:
    Envelope(**base(id="x" * 128, src="s" * 64, epoch=U63, seq=U63))
    Envelope(**base(epoch=0, seq=0))  # seq 0 = unsequenced control message


@pytest.mark.parametrize("kind", sorted(envelope.KINDS))
def test_every_kind_is_accepted_with_its_fields(kind: str) -> None:
    extra: dict[str, Any] = {}
    if kind == "reply":
        extra["corr"] = "c1"
    if kind == "command":
        extra["reply_to"] = "rep.c1"
    env = Envelope(**base(kind=kind, **extra))
    assert decode(env.encode()) == env


@pytest.mark.parametrize(("over", "needle"), [
    ({"kind": "reply"}, "a reply needs corr"),
    ({"kind": "reply", "corr": ""}, "a reply needs corr"),
    ({"kind": "event", "corr": "c1"}, "corr is only for replies, not event"),
    ({"kind": "command", "reply_to": "rep.c", "corr": "c1"}, "corr is only for replies"),
    ({"kind": "command"}, "a command needs reply_to"),
    ({"kind": "command", "reply_to": ""}, "a command needs reply_to"),
    ({"kind": "command", "reply_to": "rep..c"}, "reply_to: topic 'rep..c' has a bad segment"),
    ({"kind": "command", "reply_to": "rep.c."}, "reply_to: "),
    ({"kind": "command", "reply_to": "ack.c"}, "is not a rep.<client> topic"),
    ({"kind": "command", "reply_to": "rep.c", "deadline": math.inf}, "deadline is not a finite"),
    ({"kind": "command", "reply_to": "rep.c", "deadline": math.nan}, "deadline is not a finite"),
    ({"kind": "event", "reply_to": "rep.c"}, "reply_to and deadline are only for commands"),
    ({"kind": "heartbeat", "deadline": 5.0}, "only for commands, not heartbeat"),
    ({"kind": "reply", "corr": "c", "reply_to": "rep.c"}, "only for commands, not reply"),
])
def test_kind_specific_fields(over: dict[str, Any], needle: str) -> None:
    with pytest.raises(EnvelopeError) as info:
        Envelope(**base(**over))
    assert needle in str(info.value)


def test_non_native_data_fails_to_encode_with_envelope_error() -> None:
    env = Envelope(**base(data={"x": object()}))
    with pytest.raises(EnvelopeError, match="not msgpack-native"):
        env.encode()
    with pytest.raises(EnvelopeError, match="not msgpack-native"):
        Envelope(**base(data={"x": 2**64})).encode()


# --- decode errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "needle"), [
    (b"", "not valid msgpack"),
    (b"\xc1", "not valid msgpack"),  # never-used msgpack byte
    (b"\x81\xa1v", "not valid msgpack"),  # truncated map
    (packed(wire()) + b"\x00", "not valid msgpack"),  # trailing data
    (packed([1, 2]), "body is a msgpack list, not a map"),
    (packed("hello"), "body is a msgpack str, not a map"),
    (packed(None), "not a map"),
    (packed(wire(id=None)), "missing key 'id'"),
    (packed(wire(data=None)), "missing key 'data'"),
    (packed(wire(v=True)), "key 'v' has type bool"),
    (packed(wire(seq=True)), "key 'seq' has type bool"),
    (packed(wire(epoch=1.0)), "key 'epoch' has type float"),
    (packed(wire(ts="now")), "key 'ts' has type str"),
    (packed(wire(ts=False)), "key 'ts' has type bool"),
    (packed(wire(id=b"m1")), "key 'id' has type bytes"),
    (packed(wire(data=[1])), "key 'data' has type list"),
    (packed(wire(kind=1)), "key 'kind' has type int"),
    (packed(wire(corr=5)), "key 'corr' has type int"),
    (packed(wire(deadline="soon")), "key 'deadline' has type str"),
    (packed(wire() | {"extra": 1}), "unknown keys ['extra']"),
    (packed(wire() | {1: 1}), "unknown keys ['1']"),
    (packed(wire(v=2)), "schema version 2"),
    (packed(wire(kind="bogus")), "kind 'bogus'"),
    (packed(wire(data={1: 2})), "data keys must be strings"),
    (packed(wire(src="a.b")), "is not usable"),
    (packed(wire(seq=-5)), "out of range"),
    (packed(wire(epoch=U64)), "out of range"),
    (packed(wire(kind="reply")), "a reply needs corr"),
    (packed(wire(data={"x": msgpack.ExtType(5, b"ab")})), "extension type 5 is not allowed"),
    (msgpack.packb(wire(src=b"\xff\xfe"), use_bin_type=False), "not valid msgpack"),  # bad UTF-8
])
def test_decode_errors(raw: bytes, needle: str) -> None:
    with pytest.raises(EnvelopeError) as info:
        decode(raw)
    assert needle in str(info.value)
    assert info.value.raw == raw[:64]


def test_decode_error_keeps_only_a_prefix_of_the_bytes() -> None:
    raw = packed(wire(data={"blob": b"x" * 1000}, kind="nope"))
    with pytest.raises(EnvelopeError) as info:
        decode(raw)
    assert info.value.raw == raw[:64]


def test_envelope_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        decode(b"\xc1")


def test_decode_refuses_the_timestamp_extension() -> None:
    raw = packed(wire(data={"t": msgpack.Timestamp(1, 0)}))
    with pytest.raises(EnvelopeError):
        decode(raw)


# --- stamp --------------------------------------------------------------------------------------


def test_stamp_is_16_bytes_big_endian() -> None:
    stamp = pack_stamp(1, 2)
    assert stamp == b"\x00" * 7 + b"\x01" + b"\x00" * 7 + b"\x02"
    assert unpack_stamp(stamp) == (1, 2)
    assert unpack_stamp(pack_stamp(U64, 0)) == (U64, 0)
    assert struct.unpack(">QQ", pack_stamp(123456789, 987654321)) == (123456789, 987654321)


@pytest.mark.parametrize("n", [0, 1, 15, 17, 32])
def test_stamp_of_wrong_length(n: int) -> None:
    with pytest.raises(EnvelopeError, match=f"stamp is {n} bytes, expected 16"):
        unpack_stamp(b"\x01" * n)


@given(st.integers(0, U64), st.integers(0, U64))
def test_stamp_round_trip(router_epoch: int, gseq: int) -> None:
    stamp = pack_stamp(router_epoch, gseq)
    assert len(stamp) == 16
    assert unpack_stamp(stamp) == (router_epoch, gseq)


@given(st.integers(0, U64), st.integers(0, U64), st.integers(0, U64))
def test_stamp_bytes_order_like_gseq(epoch: int, a: int, b: int) -> None:
    """Big-endian: comparing stamps as bytes compares (router_epoch, gseq)."""
    assert (pack_stamp(epoch, a) < pack_stamp(epoch, b)) == (a < b)


# --- topics -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("topic", "prefix", "expected"), [
    ("evt.reader1", "evt.reader1", True),
    ("evt.reader1.tag", "evt.reader1", True),
    ("evt.reader1.tag.more", "evt.reader1", True),
    ("evt.reader10.tag", "evt.reader1", False),
    ("evt.reader10", "evt.reader1", False),
    ("evt.reader1", "evt.reader1.tag", False),
    ("evt.reader1.tag", "evt.reader1.", True),
    ("evt.reader1", "evt.reader1.", False),  # trailing dot: plain string prefix
    ("evt.reader10.tag", "evt.reader1.", False),
    ("evt.reader1.tag", "evt.", True),
    ("evt.reader1.tag", "evt", True),
    ("evtx.reader1", "evt", False),
    ("hb.reader1", "evt", False),
    ("evt.reader1.tag", "", True),  # empty prefix matches everything
    ("sys.router.stats", "", True),
    ("sys.router.stats", "sys.router", True),
])
def test_matches(topic: str, prefix: str, expected: bool) -> None:
    assert topics.matches(topic, prefix) is expected


def test_builders() -> None:
    assert topics.event("reader1", "tag") == "evt.reader1.tag"
    assert topics.command("bus1") == "cmd.bus1"
    assert topics.reply("sctl-host-42") == "rep.sctl-host-42"
    assert topics.heartbeat("reader1") == "hb.reader1"
    assert topics.log("reader1") == "log.reader1"
    assert topics.ack("reader1") == "ack.reader1"
    assert topics.router("stats") == topics.ROUTER_STATS == "sys.router.stats"
    with pytest.raises(TopicError, match=r"actor 'a\.b' is not usable"):
        topics.event("a.b", "tag")
    with pytest.raises(TopicError, match="event name"):
        topics.event("a", "")


@pytest.mark.parametrize("name", ["a", "reader1", "bus-link_2", "A" * 64, "0"])
def test_check_name_accepts(name: str) -> None:
    assert topics.check_name(name) == name


@pytest.mark.parametrize("name", ["", "a.b", "a b", "A" * 65, "r\u00e9", "a\n", "a/b", "*"])
def test_check_name_refuses(name: str) -> None:
    with pytest.raises(TopicError, match="is not usable"):
        topics.check_name(name)


@pytest.mark.parametrize("topic", ["", ".", "a.", ".a", "a..b", "a.b c", "a." + "b" * 65,
                                   ".".join(["abcdefgh"] * 29)])
def test_check_topic_refuses(topic: str) -> None:
    with pytest.raises(TopicError):
        topics.check_topic(topic)


def test_check_topic_length_limit_is_in_bytes() -> None:
    ok = ".".join(["a" * 63] * 4)  # 255 bytes
    assert len(ok) == 255
    assert topics.check_topic(ok) == ok
    with pytest.raises(TopicError, match="longer than 255 bytes"):
        topics.check_topic(ok + "b")


@pytest.mark.parametrize("prefix", ["", "evt", "evt.", "evt.reader1", "evt.reader1."])
def test_check_prefix_accepts(prefix: str) -> None:
    assert topics.check_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", [".", "evt..", "evt..x", "evt. x"])
def test_check_prefix_refuses(prefix: str) -> None:
    with pytest.raises(TopicError):
        topics.check_prefix(prefix)


# --- Hypothesis strategies -----------------------------------------------------------------------

segments = st.from_regex(r"[A-Za-z0-9_\-]{1,64}", fullmatch=True)
short_segments = st.from_regex(r"[A-Za-z0-9_\-]{1,12}", fullmatch=True)
valid_topics = st.lists(short_segments, min_size=1, max_size=6).map(".".join)

msgpack_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), U64)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
# Values a valid envelope's data may hold (NaN left out so that == holds after a round trip).
native = st.recursive(
    msgpack_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)


@st.composite
def envelopes(draw: st.DrawFn) -> Envelope:
    kind = draw(st.sampled_from(sorted(envelope.KINDS)))
    extra: dict[str, Any] = {}
    if kind == "reply":
        extra["corr"] = draw(st.text(min_size=1, max_size=40))
    if kind == "command":
        extra["reply_to"] = "rep." + draw(valid_topics)
        extra["deadline"] = draw(st.none() | st.floats(allow_nan=False, allow_infinity=False))
    return Envelope(
        id=draw(st.text(min_size=1, max_size=envelope.MAX_ID_CHARS)),
        src=draw(segments),
        epoch=draw(st.integers(0, U63)),
        seq=draw(st.integers(0, U63)),
        ts=draw(st.floats(allow_nan=False, allow_infinity=False)),
        kind=kind,
        data=draw(st.dictionaries(st.text(max_size=10), native, max_size=5)),
        **extra,
    )


# Anything msgpack can carry, including what an envelope must refuse: NaN, non-string and
# container map keys and, in `any_msgpack_ext` only, extension types (kept apart because they
# would otherwise end most examples at the first extension).
hashable = (st.none() | st.booleans() | st.integers(-(2**63), U64) | st.floats()
            | st.text(max_size=10) | st.binary(max_size=10))


# Map keys: now and then an array, which msgpack decodes to an unhashable list.
map_keys = st.integers(0, 19).flatmap(lambda n: st.tuples(hashable) if n == 7 else hashable)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=4) | st.dictionaries(map_keys, inner, max_size=4)


any_msgpack = st.recursive(hashable, _containers, max_leaves=12)
any_msgpack_ext = st.recursive(
    hashable
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))
    | st.builds(msgpack.Timestamp, st.integers(0, 2**34 - 1), st.integers(0, 999_999_999)),
    _containers,
    max_leaves=6,
)
ENVELOPE_KEYS = sorted({*envelope._REQUIRED, *envelope._OPTIONAL})
key_names = st.sampled_from(ENVELOPE_KEYS) | hashable


@st.composite
def envelope_like_maps(draw: st.DrawFn) -> dict[Any, Any]:
    """Maps close to an envelope: a valid one with some keys dropped, retyped or added."""
    m: dict[Any, Any] = draw(envelopes()).to_map()
    for key in draw(st.lists(st.sampled_from(ENVELOPE_KEYS), max_size=4)):
        action = draw(st.sampled_from(["drop", "retype", "none"]))
        if action == "drop":
            m.pop(key, None)
        elif action == "retype":
            m[key] = draw(any_msgpack | any_msgpack_ext)
        else:
            m[key] = None
    for _ in range(draw(st.integers(0, 2))):
        m[draw(key_names)] = draw(any_msgpack)
    return m


maps = (
    envelope_like_maps()
    | envelope_like_maps()
    # every key present, every value of any type
    | st.fixed_dictionaries({k: any_msgpack for k in envelope._REQUIRED},
                            optional={k: any_msgpack for k in envelope._OPTIONAL})
    | st.dictionaries(key_names, any_msgpack | any_msgpack_ext, max_size=12)
)


def decode_only_envelope_error(raw: bytes) -> Envelope | None:
    """decode() must return an Envelope or raise EnvelopeError; any other exception fails."""
    try:
        env = decode(raw)
    except EnvelopeError as exc:
        assert exc.raw == raw[:64]
        return None
    assert isinstance(env, Envelope)
    return env


# --- properties ------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(envelopes())
def test_property_valid_envelopes_round_trip(env: Envelope) -> None:
    raw = env.encode()
    back = decode(raw)
    assert back == env
    assert back.encode() == raw


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_property_arbitrary_bytes_decode_or_envelope_error(raw: bytes) -> None:
    decode_only_envelope_error(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(envelopes(), st.data())
def test_property_damaged_envelopes_decode_or_envelope_error(env: Envelope, data: Any) -> None:
    raw = bytearray(env.encode())
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[pos] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del raw[pos:pos + data.draw(st.integers(1, 8))]
        else:
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    decode_only_envelope_error(bytes(raw))


@settings(max_examples=500, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(maps, st.sampled_from([True, True, True, False]))  # False: str and bytes both as raw
def test_property_msgpack_maps_decode_or_envelope_error(m: dict[Any, Any], bin_type: bool) -> None:
    try:
        raw = msgpack.packb(m, use_bin_type=bin_type)
    except (TypeError, ValueError, OverflowError):
        assume(False)  # not packable (cannot happen for these strategies, but be safe)
        return
    env = decode_only_envelope_error(raw)
    if env is not None:
        # whatever decode accepts is a valid envelope that encodes again
        assert decode(env.encode()) == env or _has_nan(env.data)


def _has_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_nan(v) for v in value)
    return False


@given(st.lists(short_segments, min_size=1, max_size=5), st.lists(short_segments, max_size=5),
       st.booleans())
def test_property_prefix_matching_is_segment_aligned(
        head: list[str], tail: list[str], dot: bool) -> None:
    prefix = ".".join(head) + ("." if dot else "")
    topic = ".".join(head + tail)
    expected = bool(tail) or not dot
    assert topics.matches(topic, prefix) is expected
    if expected:
        # the ZeroMQ byte subscription delivers at least what matches() accepts
        assert topic.encode().startswith(topics.zmq_prefix(prefix))


@given(valid_topics, st.text(max_size=30))
def test_property_matches_implies_zmq_prefix(topic: str, prefix: str) -> None:
    if topics.matches(topic, prefix):
        assert topic.encode().startswith(topics.zmq_prefix(prefix))


@pytest.mark.parametrize("container", ["list", "dict"])
def test_data_depth_limit_is_exact(container: str) -> None:
    """data is at depth 0; a value may sit at MAX_DEPTH at the deepest, never below it."""
    from broker.wire.envelope import MAX_DEPTH, make

    def nest(levels: int, leaf: object = 1) -> object:
        value: object = leaf
        for _ in range(levels):
            value = [value] if container == "list" else {"k": value}
        return value

    ok = make("a", 1, 1, "event", {"d": nest(MAX_DEPTH - 1)})  # the 1 sits at MAX_DEPTH
    assert decode(ok.encode()) == ok
    with pytest.raises(EnvelopeError, match="nests deeper"):
        make("a", 1, 1, "event", {"d": nest(MAX_DEPTH)})  # the 1 would sit at MAX_DEPTH + 1
    empty = make("a", 1, 1, "event", {"d": nest(MAX_DEPTH - 1, leaf=[])})  # [] at MAX_DEPTH
    assert decode(empty.encode()) == empty
