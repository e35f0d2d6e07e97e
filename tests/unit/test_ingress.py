"""The router's ingress checks: the fast path never accepts what envelope.decode refuses."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.router import ingress
from broker.wire import envelope, rules
from broker.wire.errors import EnvelopeError, TopicError

# fixed id and time: test ids are made from these bytes, and pytest-xdist workers compare them
BASE = envelope.make("reader1", 7, 3, "event", {"tag": "A1"}, id="0" * 32,
                     ts=1_700_000_000.5).to_map()

def nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = {"k": value} if i % 2 else [value]
    return value


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(),
    st.builds(msgpack.Timestamp, st.integers(0, 2**32 - 1)),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4)),
    st.text(max_size=140), st.binary(max_size=8),
    st.sampled_from(["reader1", "bad name", "a.b", "", "x" * 65, "rep.c1", *envelope.KINDS]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3),
                   st.dictionaries(st.one_of(st.text(max_size=4), st.integers(-5, 5)), scalars,
                                   max_size=3))
keys = st.sampled_from([*BASE, "corr", "reply_to", "deadline", "extra"])
# Values at the edge of each key's rule, so that near-misses are common, not luck.
EDGES: dict[str, list[Any]] = {
    "v": [1, 2, 0, True, 1.0],
    "id": ["", "x" * 128, "x" * 129, "é"],
    "src": ["a", "a" * 64, "a" * 65, "a.b", "router", "a-b_C9", "é"],
    "epoch": [0, -1, 2**63 - 1, 2**63, True, 1.5],
    "seq": [0, -1, 1, 2**63 - 1, 2**63, False],
    "ts": [0, 1.5, float("nan"), float("inf"), -float("inf"), True, 2**64 - 1],
    "data": [{}, {"a": 1}, {1: "a"}, [], {"a": {1: 2}}, {"t": msgpack.Timestamp(1, 5)},
             {"t": [{"x": msgpack.Timestamp(0, 0)}]}, {"a": nested(32)}, {"a": nested(33)},
             {"a": [nested(31)]}, {"a": [nested(32)]}, {"s": "\xd6\xff"},
             {"e": msgpack.ExtType(5, b"x")}, {"e": [{"x": msgpack.ExtType(0, b"")}]},
             {"k": {b"bytes key": 1}}, {"k": {1: [2]}}],
    "corr": [None, "", "c1"],
    "reply_to": [None, "", "rep.a", "bad topic"],
    "deadline": [None, 1.0, float("nan")],
}


@st.composite
def envelope_maps(draw: st.DrawFn) -> dict[Any, Any]:
    """A valid envelope map with one or two keys removed or changed, mostly to edge values."""
    m: dict[Any, Any] = dict(BASE)
    m["kind"] = draw(st.sampled_from(sorted(envelope.KINDS)))
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2]))):
        key = draw(keys)
        how = draw(st.sampled_from(["edge", "edge", "edge", "any", "drop"]))
        if how == "drop":
            m.pop(key, None)
        elif how == "edge" and key in EDGES:
            m[key] = draw(st.sampled_from(EDGES[key]))
        else:
            m[key] = draw(values)
    return m


def outcome(body: bytes) -> rules.Fields | str:
    try:
        env = envelope.decode(body)
    except EnvelopeError as exc:
        return str(exc)
    return env.src, env.epoch, env.seq, env.kind, env.data


@settings(max_examples=1500, deadline=None)
@given(envelope_maps())
def test_fast_path_accepts_only_what_decode_accepts(m: dict[Any, Any]) -> None:
    body = msgpack.packb(m, use_bin_type=True)
    fast = ingress.fast_fields(body)
    truth = outcome(body)
    if fast is not None:
        assert fast == truth
    if isinstance(truth, str):
        with pytest.raises(EnvelopeError):
            ingress.fields(body)
    else:
        assert ingress.fields(body) == truth


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_escape_as_anything_but_envelope_error(raw: bytes) -> None:
    assert ingress.fast_fields(raw) is None or not isinstance(outcome(raw), str)
    with contextlib.suppress(EnvelopeError):
        ingress.fields(raw)


def test_common_messages_take_the_fast_path() -> None:
    for kind in ("event", "heartbeat", "log", "system"):
        data = {"x": [1, 2.5, "s", None], "m": {"n": {"o": 1}}}
        body = envelope.make("a", 1, 1, kind, data).encode()
        assert ingress.fast_fields(body) == ("a", 1, 1, kind, data)
    cmd = envelope.make("a", 1, 1, "command", {}, reply_to="rep.a").encode()
    assert ingress.fast_fields(cmd) is None and ingress.fields(cmd)[3] == "command"


@pytest.mark.parametrize(("frame", "rule"), [
    (b"evt.r1.tag", ("evt.r1.tag", None, rules.NORMAL)),
    (b"cmd.r1", ("cmd.r1", "command", rules.NORMAL)),
    (b"rep.sctl-h-1", ("rep.sctl-h-1", "reply", rules.NORMAL)),
    (b"ctl.sync", ("ctl.sync", None, rules.SYNC)),
    (b"ctl.other", ("ctl.other", None, rules.RESERVED)),
    (b"ack.r1", ("ack.r1", None, rules.RESERVED)),
    (b"sys.router.stats", ("sys.router.stats", None, rules.RESERVED)),
    (b"sys.routers", ("sys.routers", None, rules.NORMAL)),
    (b"sys.alarm", ("sys.alarm", None, rules.NORMAL)),
])
def test_topic_rules(frame: bytes, rule: rules.TopicRule) -> None:
    assert rules.topic_rule(frame) == rule


@pytest.mark.parametrize("frame", [b"\xff", b"", b"a..b", b"evt.r 1", b"x" * 300])
def test_bad_topics(frame: bytes) -> None:
    with pytest.raises(TopicError):
        rules.topic_rule(frame)


@pytest.mark.parametrize(("body", "reason"), [
    (b"\xc1", "msgpack"),
    (msgpack.packb(msgpack.ExtType(1, b"x")), "msgpack"),
    (msgpack.packb([1]), "wrong_type"),
    (msgpack.packb({**BASE, "seq": "1"}), "wrong_type"),
    (msgpack.packb({k: v for k, v in BASE.items() if k != "id"}), "missing_key"),
    (msgpack.packb({**BASE, "src": "a b"}), "invalid"),
], ids=["c1", "ext", "list", "seq-str", "no-id", "src-space"])  # stable ids: xdist compares them
def test_reasons(body: bytes, reason: str) -> None:
    with pytest.raises(EnvelopeError) as info:
        ingress.fields(body)
    assert ingress.reason_of(info.value) == reason


# -- sequence_fields: src/epoch/seq from the head of a body the router will not decode -------


@settings(max_examples=800, deadline=None)
@given(envelope_maps())
def test_sequence_fields_agree_with_decode(m: dict[Any, Any]) -> None:
    body = msgpack.packb(m, use_bin_type=True)
    truth = outcome(body)
    if not isinstance(truth, str):
        assert ingress.sequence_fields(body) == truth[:3]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_sequence_fields_never_raise(raw: bytes) -> None:
    got = ingress.sequence_fields(raw)
    assert got is None or (isinstance(got[0], str) and got[1] >= 0 and got[2] >= 0)


def test_sequence_fields_read_only_the_head() -> None:
    head = msgpack.packb(BASE, use_bin_type=True)
    assert ingress.sequence_fields(head) == ("reader1", 7, 3)
    # refused by decode, but the seq is readable: nesting too deep, unknown keys, bad kind
    deep: Any = 1
    for _ in range(envelope.MAX_DEPTH + 3):
        deep = [deep]
    for bad in ({**BASE, "data": {"a": deep}}, {**BASE, "x": 1}, {**BASE, "kind": "nope"}):
        body = msgpack.packb(bad, use_bin_type=True)
        with pytest.raises(EnvelopeError):
            envelope.decode(body)
        assert ingress.sequence_fields(body) == ("reader1", 7, 3)
    # the payload after seq is never read: here it is cut off and would not even parse
    cut = msgpack.packb({**BASE, "data": {"big": "x" * 1000}}, use_bin_type=True)[:-500]
    assert ingress.sequence_fields(cut) == ("reader1", 7, 3)
    # the keys may come in any order: a large payload first is skipped, not decoded
    data_first = msgpack.packb({"data": {"l": list(range(5000))}, **BASE}, use_bin_type=True)
    assert ingress.sequence_fields(data_first) == ("reader1", 7, 3)


@pytest.mark.parametrize("body", [
    b"", b"\xc1", msgpack.packb([1, 2, 3]), msgpack.packb("src"),
    msgpack.packb({k: v for k, v in BASE.items() if k != "seq"}),
    msgpack.packb({**BASE, "seq": "3"}), msgpack.packb({**BASE, "seq": True}),
    msgpack.packb({**BASE, "seq": -1}), msgpack.packb({**BASE, "seq": 2**63}),
    msgpack.packb({**BASE, "epoch": 1.0}), msgpack.packb({**BASE, "src": "a b"}),
    msgpack.packb({**BASE, "src": "x" * 300}), msgpack.packb({**BASE, "src": b"reader1"}),
    msgpack.packb({**{f"k{i}": i for i in range(ingress.SEQ_MAX_KEYS)}, **BASE}),
    msgpack.packb({(1,) * 1000: 1, **BASE}),  # a key that is a large array is not unpacked
    msgpack.packb(BASE)[:30],  # cut before seq
])
def test_sequence_fields_unreadable(body: bytes) -> None:
    assert ingress.sequence_fields(body) is None


@pytest.mark.parametrize("topic", [b"evt.r1.tag", b"cmd.r1", b"rep.c1", b"hb.r1", b"log.r1",
                                   b"sys.alarm", b"ack.r1", b"sys.router.gap", b"ctl.sync",
                                   b"ctl.other"])
def test_passing_kinds_is_what_refusal_lets_through(topic: bytes) -> None:
    """The router's shortcut for the common envelope: `kind in passing_kinds(rule)` with a
    sequenced seq and a src other than the router's is exactly `refusal(...) is None` (sync
    topics aside, which the router handles before refusal)."""
    rule = rules.topic_rule(topic)
    passing = rules.passing_kinds(rule)
    for kind in envelope.KINDS:
        accepted = rules.refusal(rule, ("a", 1, 1, kind, {})) is None
        if rule[2] == rules.SYNC:
            assert kind not in passing
        else:
            assert (kind in passing) == accepted, kind
        assert rules.refusal(rule, ("a", 1, 0, kind, {})) is not None
        assert rules.refusal(rule, (rules.ROUTER_SRC, 1, 1, kind, {})) is not None
