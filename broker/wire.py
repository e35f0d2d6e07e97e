"""The bus protocol between the router and its clients, beyond the envelope itself.

Sockets (endpoints from ``[router]`` in the site file)
------------------------------------------------------
- ``ingress``: the router binds XSUB and subscribes to everything. Clients connect a PUB with
  ``XPUB_NODROP`` set, so a full pipe is reported to the sender (``zmq.Again``) instead of dropped.
  Frames in: ``[topic, body]``.
- ``egress``: the router binds XPUB. Clients connect SUB. Frames out: ``[topic, body, stamp]``,
  stamp = big-endian ``router_epoch:u64, gseq:u64`` (`broker.envelope.pack_stamp`). The router never
  re-encodes a client's body.
- ``query``: the router binds ROUTER. Clients connect DEALER. Request ``[req_id, map]``, reply
  ``[req_id, header_map, topic, body, stamp, topic, body, stamp, ...]`` (maps are msgpack).

Ingress rules
-------------
Each valid envelope with ``seq >= 1`` is journaled once per (src, epoch, seq) and only in seq
order: the router keeps, per (src, epoch), the highest contiguous seq ``hc``. ``seq == hc + 1``
is journaled and forwarded; ``seq <= hc`` is a duplicate (counted, dropped); ``seq > hc + 1`` is
out of order: counted, dropped, a gap is opened (published once on ``sys.router.gap`` with
``state = "open"``) and the sender's resend fills it. A gap still open after ``gap_timeout``
seconds when a later seq arrives is declared lost (``state = "lost"``, the missing range is
skipped) so a sender that dropped from its outbox cannot wedge its own stream. A fresh
(src, epoch) may start at any seq; the router takes the first one it sees as the start.

After each batch the router publishes one ack per source touched on ``ack.<src>``: an envelope
from ``router`` (kind ``system``, seq 0, stamp gseq 0) with ``data = {"epoch": e, "seq": hc}``.

Control probe ``ctl.sync`` (kind ``system``, seq 0, ``data = {"token": str}``) is never journaled
or forwarded. The router answers on ``ack.<src>`` with ``data = {"sync": token, "head": gseq,
"first": gseq, "router_epoch": E, "epoch": e, "seq": hc}`` (hc for the probe's (src, epoch), 0 if
unknown). A client that receives its own token knows both of its paths to the router are live.

Query ops (request maps)
------------------------
``{"op": "state"}``
    header ``{"ok": True, "state": {...}}``: router_epoch, first, last (gseq), journal counters,
    persistent (bool), sources.
``{"op": "since", "gseq": N, "prefixes": [P, ...], "until": U?, "limit": L?, "reason": R?}``
    journaled entries with ``N <= gseq (<= U)`` whose topic `topics.matches` one of the prefixes
    (no prefixes = everything), oldest first. Header ``{"ok": True, "first", "last", "next",
    "more", "evicted", "router_epoch"}``: ``next`` is where to continue, ``more`` says whether to,
    ``evicted`` counts requested gseqs already evicted from the journal (lost to this reader).
    ``reason = "gap"`` tells the router a subscriber missed live messages; it counts them as
    egress drops in ``sys.router.stats``.
``{"op": "last", "prefixes": [P, ...]}``
    the newest journaled entry of every topic matching the prefixes (a last-value cache).

Errors come back as header ``{"ok": False, "error": "..."}``.
"""

from __future__ import annotations

from typing import Any, Final

import msgpack

from broker.errors import BusError

SYNC_TOPIC: Final = "ctl.sync"
OP_STATE: Final = "state"
OP_SINCE: Final = "since"
OP_LAST: Final = "last"
REPLAY_LIMIT: Final = 2000  # entries per `since` reply unless the request asks for fewer
REPLAY_SCAN: Final = 50_000  # journal entries examined per `since` reply, to keep the router live


def pack(obj: dict[str, Any]) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def unpack_map(raw: bytes, what: str) -> dict[str, Any]:
    """Decode a control map; raises BusError on anything that is not a str-keyed map."""
    try:
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as exc:  # garbage from a peer: any msgpack failure means the same
        raise BusError(f"{what} is not valid msgpack: {exc}") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise BusError(f"{what} is not a map with string keys")
    return obj
