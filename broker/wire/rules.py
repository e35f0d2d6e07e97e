"""Topic rules of the ingress contract: which kinds a topic accepts, and what only the router
may send.

A topic's rule is decided once per distinct topic (`topic_rule`); `refusal` applies it to a
decoded envelope (reserved topic or src, kind against topic, seq 0). The router refuses what
`refusal` names; the publisher refuses the same before it spends a seq, so a message the router
would refuse never leaves the sender. `passing_kinds` is the same rule as a set, for hot paths
that decide with one lookup.
"""

from __future__ import annotations

from typing import Any, Final

from broker.wire import envelope, protocol, topics
from broker.wire.errors import TopicError

NORMAL: Final = 0
SYNC: Final = 1
RESERVED: Final = 2  # only the router publishes here (ack.*, sys.router.*), or ctl.* but sync
ROUTER_SRC: Final = "router"  # the router's own src: no peer may send with it
_RESERVED_PREFIXES: Final = ("ack", "sys.router", "ctl")
_KIND_OF_ROOT: Final = {"cmd": "command", "rep": "reply", "hb": "heartbeat", "log": "log"}

# (src, epoch, seq, kind, data) of a valid envelope
Fields = tuple[str, int, int, str, dict[str, Any]]
# (topic, kind the topic requires or None, NORMAL/SYNC/RESERVED)
TopicRule = tuple[str, str | None, int]


def topic_rule(tframe: bytes) -> TopicRule:
    """Decide the rules for one topic frame; raises TopicError if it is not a valid topic."""
    try:
        topic = tframe.decode()
    except UnicodeDecodeError:
        raise TopicError("topic is not UTF-8") from None
    topics.check_topic(topic)
    special = NORMAL
    if topic == protocol.SYNC_TOPIC:
        special = SYNC
    elif any(topics.matches(topic, p) for p in _RESERVED_PREFIXES):
        special = RESERVED
    return topic, _KIND_OF_ROOT.get(topic.split(".", 1)[0]), special


def refusal(rule: TopicRule, f: Fields) -> tuple[str, str] | None:
    """(reason, error) when a valid envelope other than a sync probe breaks a topic or seq
    rule of `broker.wire.protocol`, else None."""
    topic, need, special = rule
    src, kind, seq = f[0], f[3], f[2]
    if special == RESERVED or src == ROUTER_SRC:
        return "reserved", f"{topic} / src {src!r} is the router's own"
    if kind != need and (need is not None or kind == "command"):
        return "kind", (f"kind {kind!r} on topic {topic}"
                        f" (expects {need or 'anything but command'})")
    if seq == 0:
        return "seq", "seq 0 is only for ctl.sync probes"
    return None


def passing_kinds(rule: TopicRule) -> frozenset[str]:
    """The kinds `refusal` lets through on this rule's topic (a sequenced envelope, src not
    the router's): empty for reserved and sync topics. Lets the router decide the common
    envelope with one set lookup, once the rule is cached."""
    _, need, special = rule
    if special != NORMAL:
        return frozenset()
    return frozenset({need}) if need is not None else envelope.KINDS - {"command"}
