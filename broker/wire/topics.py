"""Topic names: builders, validation and the one matching rule.

Topics are UTF-8, dot-separated segments. A segment is 1-64 characters from
``[A-Za-z0-9_-]`` (actor and client names obey the same rule, so a name can always be put in a
topic). Prefixes used on the bus:

==============================  ======================================================
``evt.<actor>.<name>``          device events
``cmd.<actor>``                 commands to an actor
``rep.<client>``                replies, to the topic named in the command's reply_to
``hb.<actor>``                  heartbeats
``log.<actor>``                 WARNING and above, structured
``ack.<src>``                   router ingress acknowledgements and sync markers
``sys.router.<what>``           router stats, gaps, bad input, refusals, leases
``sys.alarm``                   alarms raised by anyone (outbox overflow, ...)
``ctl.sync``                    ingress-only control probe (never forwarded or journaled)
==============================  ======================================================

Matching (`matches`) is segment aligned: the prefix ``evt.reader1`` matches ``evt.reader1`` and
``evt.reader1.tag`` but not ``evt.reader10.tag``. A prefix that ends with a dot matches as a plain
string prefix, and the empty prefix matches everything. ZeroMQ subscriptions are plain byte
prefixes, so library code subscribes with `zmq_prefix` and then filters with `matches`.
"""

from __future__ import annotations

import re
from typing import Final

from broker.wire.errors import TopicError

MAX_TOPIC_BYTES: Final = 255
_SEGMENT: Final = re.compile(r"[A-Za-z0-9_\-]{1,64}")

EVENT: Final = "evt"
COMMAND: Final = "cmd"
REPLY: Final = "rep"
HEARTBEAT: Final = "hb"
LOG: Final = "log"
ACK: Final = "ack"
SYSTEM: Final = "sys"
ALARM: Final = "sys.alarm"
ROUTER_STATS: Final = "sys.router.stats"
ROUTER_GAP: Final = "sys.router.gap"
ROUTER_BAD: Final = "sys.router.bad"
ROUTER_DENIED: Final = "sys.router.denied"
ROUTER_LEASE: Final = "sys.router.lease"


def check_name(name: str, what: str = "name") -> str:
    """Return `name` if it can be one topic segment, else raise TopicError saying why."""
    if not isinstance(name, str) or not _SEGMENT.fullmatch(name):
        raise TopicError(
            f"{what} {name!r} is not usable: use 1-64 characters from A-Z a-z 0-9 _ - "
            "(no dots or spaces, it becomes one topic segment)"
        )
    return name


def check_topic(topic: str) -> str:
    """Return `topic` if every segment is valid and it fits in MAX_TOPIC_BYTES."""
    if not isinstance(topic, str) or not topic:
        raise TopicError(f"topic {topic!r} is empty or not a string")
    try:
        size = len(topic.encode())
    except UnicodeEncodeError:
        raise TopicError(f"topic {topic!r} is not valid UTF-8 text") from None
    if size > MAX_TOPIC_BYTES:
        raise TopicError(f"topic {topic[:40]!r}... is longer than {MAX_TOPIC_BYTES} bytes")
    for seg in topic.split("."):
        if not _SEGMENT.fullmatch(seg):
            raise TopicError(
                f"topic {topic!r} has a bad segment {seg!r}: segments are 1-64 characters "
                "from A-Z a-z 0-9 _ -"
            )
    return topic


def event(actor: str, name: str) -> str:
    return f"{EVENT}.{check_name(actor, 'actor')}.{check_name(name, 'event name')}"


def command(actor: str) -> str:
    return f"{COMMAND}.{check_name(actor, 'actor')}"


def reply(client: str) -> str:
    return f"{REPLY}.{check_name(client, 'client')}"


def heartbeat(actor: str) -> str:
    return f"{HEARTBEAT}.{check_name(actor, 'actor')}"


def log(actor: str) -> str:
    return f"{LOG}.{check_name(actor, 'actor')}"


def ack(src: str) -> str:
    return f"{ACK}.{check_name(src, 'source')}"


def router(what: str) -> str:
    return f"{SYSTEM}.router.{check_name(what, 'router topic')}"


def matches(topic: str, prefix: str) -> bool:
    """Segment-aligned prefix match (see module docstring)."""
    if not prefix or prefix.endswith("."):
        return topic.startswith(prefix)
    return topic == prefix or topic.startswith(prefix + ".")


def zmq_prefix(prefix: str) -> bytes:
    """The ZeroMQ byte prefix that delivers at least every topic `matches` accepts."""
    return prefix.encode()


def check_prefix(prefix: str) -> str:
    """Validate a subscription prefix: empty, a topic, or a topic followed by one dot."""
    if prefix == "":
        return prefix
    check_topic(prefix[:-1] if prefix.endswith(".") else prefix)
    return prefix
