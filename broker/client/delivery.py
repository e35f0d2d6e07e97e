"""What the router hands a Bus client: live deliveries and query answers.

Both egress paths carry the same entry, ``[topic, body, stamp]`` (see `broker.wire.protocol`): the
SUB socket one per message, a query answer (after its header map) any number of them. Both become a
`Delivery`, so the live path and the replay path of `broker.client.egress` merge one kind of item.
The envelope is decoded lazily: subscribers that filter by topic never pay for it.

`query` is the one-shot blocking request of `Bus.query`. It opens a DEALER of its own for each
call: the Bus's DEALER carries the replay requests, whose answers must not be mixed up with it.
"""

from __future__ import annotations

from typing import Any, Final

import zmq

from broker.wire import envelope as envmod
from broker.wire import protocol
from broker.wire.envelope import Envelope
from broker.wire.errors import BusError, EnvelopeError

# Live bodies from this size are delivered as a memoryview of the ZeroMQ frame they arrived in
# rather than copied into bytes (below it a copy is cheaper than the view).
ZERO_COPY_MIN: Final = 64 * 1024


class Delivery:
    """One message from the router. The envelope is decoded on first access.

    `body` is the envelope's msgpack bytes; a live body of `ZERO_COPY_MIN` bytes or more is a
    memoryview of the received frame instead (no copy: a 4 MiB image is not copied on its
    way to `envelope`). Both are bytes-like: msgpack, hashing aside, slicing and ``bytes()``
    treat them alike.
    """

    __slots__ = ("_env", "body", "gseq", "router_epoch", "topic")

    def __init__(self, topic: str, body: bytes | memoryview, router_epoch: int,
                 gseq: int) -> None:
        self.topic = topic
        self.body = body
        self.router_epoch = router_epoch
        self.gseq = gseq
        self._env: Envelope | None = None

    @property
    def envelope(self) -> Envelope:
        if self._env is None:
            self._env = envmod.decode(self.body)
        return self._env

    def __repr__(self) -> str:
        return f"Delivery({self.topic!r}, gseq={self.gseq})"


def parse_reply(frames: list[bytes]) -> tuple[dict[str, Any], list[Delivery]]:
    """Split a query answer into its header map and (topic, body, stamp) entries."""
    if not frames:
        raise BusError("empty answer from the query socket")
    header = protocol.unpack_map(frames[0], "query answer header")
    rest = frames[1:]
    if len(rest) % 3:
        raise BusError(f"query answer has {len(rest)} entry frames, not a multiple of 3")
    items: list[Delivery] = []
    for i in range(0, len(rest), 3):
        try:
            epoch, gseq = envmod.unpack_stamp(rest[i + 2])
            items.append(Delivery(rest[i].decode(), rest[i + 1], epoch, gseq))
        except (UnicodeDecodeError, EnvelopeError) as exc:
            raise BusError(f"bad entry in query answer: {exc}") from None
    return header, items


def query(context: zmq.Context[Any], url: str, request: dict[str, Any],
          timeout: float) -> tuple[dict[str, Any], list[Delivery]]:
    """`Bus.query`: raises BusError when the router does not answer or refuses."""
    s: zmq.Socket[bytes] = context.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    try:
        s.connect(url)
        s.send_multipart((b"q", protocol.pack(request)))
        if not s.poll(int(timeout * 1000)):
            raise BusError(f"router query socket {url} did not answer within {timeout:g} s — "
                           f"is the router running?")
        frames = s.recv_multipart()
    finally:
        s.close(0)
    header, items = parse_reply(frames[1:])
    if not header.get("ok"):
        raise BusError(f"router refused {request.get('op')}: {header.get('error')}")
    return header, items
