"""The fast paths of the bus hot loop give exactly what the general paths give.

Every fast path here exists for speed only and must not change behaviour or the wire format:
`envelope.Encoder` against ``make(...).encode()`` (same bytes, same errors), the pooled
`envelope.new_id` and the Encoder's own pool, the per-thread `Packer` of `Envelope.encode`,
`_check_data`'s one-pass accept against its full check, `_unchecked` envelopes against the
dataclass's, `decode`'s one-pass check of the common map against its general path,
`Stream.take_next` against `Stream.on_live`, `Egress`'s cached subscription matches, and the
router query's prefix `matcher` against `topics.matches`.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import os
import pickle
import re
from collections import defaultdict
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.client.delivery import Delivery
from broker.client.egress import Egress
from broker.client.requests import Requests
from broker.client.stream import Stream
from broker.router.query import matcher
from broker.wire import envelope, topics
from broker.wire.envelope import Encoder, Envelope, make
from broker.wire.errors import EnvelopeError
from tests.unit.test_envelope import maps

U63 = 2**63 - 1
HEX_ID = re.compile(r"[0-9a-f]{32}")

scalars = (st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats()
           | st.text(max_size=8) | st.binary(max_size=8))
# Also what an envelope must refuse: datetimes, the msgpack timestamp and ext types (a Packer
# packs them, the router refuses them), objects msgpack cannot pack, non-str keys.
odd = st.sampled_from([datetime.datetime(2026, 1, 1), msgpack.Timestamp(1, 0),
                       msgpack.ExtType(5, b"x"), object(), {1, 2}, 2**70])


class Key(str):
    """A str subclass: a valid data key that is not of type str."""


values = st.recursive(
    scalars | odd,
    lambda inner: st.lists(inner, max_size=3) | st.lists(inner, max_size=3).map(tuple)
    | st.dictionaries(st.text(max_size=4) | st.integers(0, 3), inner, max_size=3),
    max_leaves=10,
)
keys = st.text(max_size=6) | st.integers(0, 3) | st.text(max_size=2).map(Key)
datas = st.none() | st.dictionaries(keys, values, max_size=4)


def deep(levels: int) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for _ in range(levels):
        data = {"d": data}
    return data


def outcome(call: Any) -> tuple[str, Any]:
    try:
        return "ok", call()
    except EnvelopeError as exc:
        return "error", HEX_ID.sub("<id>", str(exc))


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from([*sorted(envelope.KINDS), "bogus"]),
       seq=st.integers(-1, 2**64), data=datas)
def test_encoder_builds_what_make_and_encode_build(kind: str, seq: int, data: Any) -> None:
    encoder = Encoder("reader1", 7)
    got = outcome(lambda: encoder.build(seq, kind, data))
    if got[0] == "ok":
        env, body = got[1]
        assert HEX_ID.fullmatch(env.id)
        again = make("reader1", 7, seq, kind, data, id=env.id, ts=env.ts)
        assert env == again
        assert body == again.encode() == msgpack.packb(env.to_map(), use_bin_type=True)
        assert envelope.decode(body).encode() == body  # bytes: data may hold a NaN
    else:
        assert outcome(lambda: make("reader1", 7, seq, kind, data).encode()) == got


@pytest.mark.parametrize("data", [deep(envelope.MAX_DEPTH), deep(envelope.MAX_DEPTH + 1),
                                  {"t": [datetime.datetime(2026, 1, 1)]}, {1: "x"},
                                  {"x": 2**64}, {"x": object()}])
def test_encoder_limits_are_those_of_make(data: dict[Any, Any]) -> None:
    fast = outcome(lambda: Encoder("a", 1).build(1, "event", data)[1])
    general = outcome(lambda: make("a", 1, 1, "event", data).encode())
    assert fast[0] == general[0]
    if fast[0] == "error":
        assert fast == general


@settings(max_examples=300, deadline=None)
@given(data=st.dictionaries(keys, values, max_size=4))
def test_check_data_fast_pass_decides_like_the_full_check(data: dict[Any, Any]) -> None:
    """The one-pass accept of `_check_data` accepts only what `_refuse_data` accepts, and what
    it turns down gets `_refuse_data`'s error."""
    assert outcome(lambda: envelope._check_data(data)) == outcome(
        lambda: envelope._refuse_data(data))


@pytest.mark.parametrize("value", [msgpack.Timestamp(1, 0), msgpack.ExtType(5, b"x"),
                                   [{"t": msgpack.Timestamp(0, 5)}], (msgpack.ExtType(0, b""),),
                                   (deep(envelope.MAX_DEPTH),)])
def test_the_publisher_refuses_what_the_router_refuses(value: Any) -> None:
    """A Packer packs these, and `decode` (the router) refuses the bytes: the sender refuses
    them first, whatever the path."""
    data = {"x": value}
    raw = msgpack.packb({**make("a", 1, 1, "event").to_map(), "data": data}, use_bin_type=True)
    with pytest.raises(EnvelopeError):
        envelope.decode(raw)
    with pytest.raises(EnvelopeError, match="timestamp/datetime or nests deeper"):
        Encoder("a", 1).build(1, "event", data)
    with pytest.raises(EnvelopeError, match="timestamp/datetime or nests deeper"):
        make("a", 1, 1, "event", data)


def test_a_tuple_in_data_is_packed_as_a_list() -> None:
    _, body = Encoder("a", 1).build(1, "event", {"x": (1, (2, "b"))})
    assert envelope.decode(body).data == {"x": [1, [2, "b"]]}


def test_unchecked_envelopes_are_envelopes_like_the_dataclass_builds() -> None:
    env = envelope._unchecked("m1", "a", 1, 2, 3.5, "event", {"x": 1}, 1)
    assert type(env) is Envelope
    assert env == Envelope(id="m1", src="a", epoch=1, seq=2, ts=3.5, kind="event", data={"x": 1})
    assert repr(env) == repr(Envelope(id="m1", src="a", epoch=1, seq=2, ts=3.5, kind="event",
                                      data={"x": 1}))
    assert dataclasses.replace(env, seq=3).seq == 3
    assert copy.deepcopy(env) == pickle.loads(pickle.dumps(env)) == env
    with pytest.raises(dataclasses.FrozenInstanceError):
        env.corr = "x"  # type: ignore[misc]


def test_encoder_takes_the_general_path_for_commands_replies_and_extra_fields() -> None:
    encoder = Encoder("reader1", 7)
    cmd, body = encoder.build(3, "command", {"command": "wink"}, reply_to="rep.sctl-x",
                              deadline=5.0)
    assert (cmd.kind, cmd.reply_to, cmd.deadline) == ("command", "rep.sctl-x", 5.0)
    assert envelope.decode(body) == cmd
    rep, _ = encoder.build(4, "reply", {"status": "ok"}, corr="abc")
    assert rep.corr == "abc"
    with pytest.raises(EnvelopeError, match="a reply needs corr"):
        encoder.build(5, "reply", {})
    mine, _ = encoder.build(6, "event", {}, id="given-id", ts=12.5)
    assert (mine.id, mine.ts) == ("given-id", 12.5)


def test_encoder_refuses_a_bad_sender_once_at_creation() -> None:
    with pytest.raises(EnvelopeError, match="src"):
        Encoder("not a name", 1)
    with pytest.raises(EnvelopeError, match="out of range"):
        Encoder("a", -1)


def test_envelopes_from_the_encoder_stay_frozen() -> None:
    env, _ = Encoder("a", 1).build(1, "event", {"x": 1})
    with pytest.raises(AttributeError):
        env.seq = 2  # type: ignore[misc]


def test_a_failed_encode_leaves_the_reused_packer_clean() -> None:
    encoder = Encoder("a", 1)
    with pytest.raises(EnvelopeError, match="not msgpack-native"):
        encoder.build(1, "event", {"x": 2**64})
    with pytest.raises(EnvelopeError, match="not msgpack-native"):
        Envelope(id="m", src="a", epoch=1, seq=1, ts=1.0, kind="event",
                 data={"x": object()}).encode()
    env, body = encoder.build(2, "event", {"x": 1})
    assert envelope.decode(body) == env


def test_new_ids_are_distinct_hex_across_pool_refills() -> None:
    ids = [envelope.new_id() for _ in range(3 * 256 + 5)]
    assert len(set(ids)) == len(ids)
    assert all(HEX_ID.fullmatch(i) for i in ids)


def assert_child_repeats_no_id(take: Any) -> None:
    """Eight ids from `take()` in a forked child and eight in the parent share none (a pool
    the child kept would hand out what the parent hands out next)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, "".join(take() for _ in range(8)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        child = fh.read().decode()
    os.waitpid(pid, 0)
    parent = [take() for _ in range(8)]
    assert len(child) == 8 * 32
    assert not {child[i:i + 32] for i in range(0, len(child), 32)} & set(parent)


def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    envelope.new_id()  # the pool is filled
    assert_child_repeats_no_id(envelope.new_id)


def test_a_forked_child_does_not_repeat_the_ids_of_its_parents_encoder() -> None:
    encoder = Encoder("a", 1)
    encoder.build(1, "event", {})  # the encoder's own pool is filled
    assert_child_repeats_no_id(lambda: encoder.build(1, "event", {})[0].id)


def general_decode(raw: bytes) -> Envelope:
    """`envelope.decode` with its fast path switched off."""
    fast = envelope._decode_plain
    envelope._decode_plain = lambda obj, raw: None
    try:
        return envelope.decode(raw)
    finally:
        envelope._decode_plain = fast


def decode_outcome(decoder: Any, raw: bytes) -> tuple[str, Any]:
    try:
        return "ok", decoder(raw)
    except EnvelopeError as exc:
        return "error", (str(exc), exc.args[1:])


@settings(max_examples=400, deadline=None)
@given(m=maps | st.fixed_dictionaries({  # the eight keys, exact types, values near the limits
    "v": st.sampled_from([1, 2]), "id": st.sampled_from(["", "m1", "x" * 129]),
    "src": st.sampled_from(["a", "router", "bad name"]), "epoch": st.integers(-1, 2**64 - 1),
    "seq": st.integers(-1, 2**64 - 1), "ts": st.floats() | st.integers(-5, 5),
    "kind": st.sampled_from([*sorted(envelope.KINDS), "x"]),
    "data": st.dictionaries(st.text(max_size=3) | st.integers(0, 2), st.integers(), max_size=2)}))
def test_decode_fast_path_decides_like_the_general_path(m: dict[Any, Any]) -> None:
    try:
        raw = msgpack.packb(m, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return
    assert decode_outcome(envelope.decode, raw) == decode_outcome(general_decode, raw)


def test_decode_fast_path_refuses_bools_and_keeps_int_ts() -> None:
    good = make("a", 1, 1, "event", {}).to_map()
    for key in ("v", "epoch", "seq", "ts"):
        raw = msgpack.packb({**good, key: True}, use_bin_type=True)
        with pytest.raises(EnvelopeError, match=f"key '{key}' has type bool"):
            envelope.decode(raw)
    env = envelope.decode(msgpack.packb({**good, "ts": 5}, use_bin_type=True))
    assert type(env.ts) is float and env.ts == 5.0


# --- gap-free egress: the in-order fast path --------------------------------------------------


def stream_state(s: Stream[Delivery]) -> tuple[Any, ...]:
    return (s.expected, s.router_epoch, s.origin, s.held, s.duplicates, s.gaps, s.filled,
            s.lost, s.resets, s.held_dropped, s.wanted())


# (router epoch, gseq): now and then a second epoch (a router restart), which holds everything
# of it unverified until a replay answer
lives = st.lists(st.tuples(st.integers(1, 12).map(lambda e: 2 if e == 12 else 1),
                           st.integers(1, 12)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(start=st.none() | st.integers(1, 4), feed=lives, replay_at=st.integers(0, 40))
def test_take_next_then_on_live_equals_on_live(start: int | None, feed: list[tuple[int, int]],
                                               replay_at: int) -> None:
    """Live items (epoch 1 or 2, gseqs with gaps, duplicates, reordering) and one replay
    answer: feeding them through `take_next` first changes nothing that `on_live` decides."""
    plain: Stream[Delivery] = Stream(max_held=5)
    fast: Stream[Delivery] = Stream(max_held=5)
    if start is not None:
        plain.start_at(start, 1, 1)
        fast.start_at(start, 1, 1)
    for i, (epoch, gseq) in enumerate(feed):
        if i == replay_at:
            items = [Delivery("evt.a", b"", 1, g) for g in range(1, 6)]
            assert plain.on_replay(items, 6, 0, 1, 1, 1) == fast.on_replay(items, 6, 0, 1, 1, 1)
        d = Delivery("evt.a", b"", epoch, gseq)
        want = plain.on_live(d)
        got = [d] if fast.take_next(d) else fast.on_live(d)
        assert [x.gseq for x in got] == [x.gseq for x in want]
        assert stream_state(fast) == stream_state(plain)


def make_egress() -> tuple[Egress, dict[str, int]]:
    counters: dict[str, int] = defaultdict(int)
    requests = Requests("me", "rep.me", lambda *a, **k: None, counters)
    return Egress("me", "rep.me", counters, requests), counters


def test_wants_follows_new_subscriptions_after_caching_a_miss() -> None:
    egress, _ = make_egress()
    egress.subscribe("evt.a", False, None, False)
    assert (egress.wants("evt.a.x"), egress.wants("evt.b.x"), egress.gapless) == (
        True, False, False)
    egress.subscribe("evt.b", True, None, False)
    assert (egress.wants("evt.b.x"), egress.gapless) == (True, True)
    egress.subscribe("evt.a", False, None, False)  # a best-effort one does not undo gapless
    assert egress.gapless


def test_in_order_live_deliveries_keep_counters_and_route_by_topic() -> None:
    egress, counters = make_egress()
    egress.subscribe("evt.a", True, None, False)
    egress.on_synced({"head": 9, "origin": 1}, 1)
    out: list[Delivery] = []
    for g, topic in ((10, "evt.a.x"), (11, "evt.b.x"), (12, "evt.a.y")):
        egress.on_live(Delivery(topic, b"", 1, g), out, True)
    assert [d.gseq for d in out] == [10, 12]
    assert counters["delivered"] == 2
    egress.on_live(Delivery("evt.a.z", b"", 1, 14), out, True)  # a gap: the slow path counts it
    assert counters["gaps"] == 1 and len(out) == 2


# --- the router's query: the prefix matcher -----------------------------------------------------

# few, short segments, so that prefixes and topics share segments and prefixes of segments
topic_names = st.lists(st.sampled_from(["a", "b", "ab"]), min_size=1, max_size=3).map(".".join)
prefix_names = st.just("") | topic_names | topic_names.map(lambda t: t + ".")


@settings(max_examples=300, deadline=None)
@given(prefixes=st.none() | st.lists(prefix_names, max_size=3), topic=topic_names)
def test_query_matcher_matches_like_topics_matches(prefixes: list[str] | None,
                                                   topic: str) -> None:
    """`matcher` (None or [] = everything) agrees with `topics.matches` against any prefix."""
    want = not prefixes or any(topics.matches(topic, p) for p in prefixes)
    assert matcher(prefixes)(topic) == want
