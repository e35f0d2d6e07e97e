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

Gap reports (journaled, src ``router``): ``data = {"src", "epoch", "expected": hc + 1 when it
opened, "got": the early seq that opened it, "state": "open" | "filled" | "lost"}``; "filled"
once ``expected .. got - 1`` have all arrived; "lost" adds ``"missing": [first, last]``. Only the
seqs below the *lowest* early seq seen during the episode are skipped (the sender showed it
still holds that one, so its resend must not be refused); the arriving seq is then accepted if
it is next, or opens a new gap.

``seq == 0`` is only for ``ctl.sync``: any other unsequenced envelope is refused as bad.

After each batch the router publishes one ack per source touched on ``ack.<src>``: an envelope
from ``router`` (kind ``system``, seq 0, stamp gseq 0) with ``data = {"epoch": e, "seq": hc}``.
Duplicates and early seqs touch their source too, so a resend is always answered. A batch's
frames go out only after its journal records are written (and fsynced when configured): nothing
is forwarded or acked that a router crash could lose.

Control probe ``ctl.sync`` (kind ``system``, seq 0, ``data = {"token": str}``) is never journaled
or forwarded. The router answers on ``ack.<src>`` with ``data = {"sync": token, "head": gseq,
"first": gseq, "router_epoch": E, "origin": O, "epoch": e, "seq": hc}`` (hc for the probe's
(src, epoch), 0 if unknown; O as below). A client that receives its own token knows both of its
paths to the router are live. The answer is queued behind everything the same publisher sent
before the probe, so it is also a barrier: those messages have been journaled (or refused) and
forwarded.

Refused as bad (counted by reason, logged, reported on ``sys.router.bad``): ``frames`` (not 2
frames), ``topic`` (not UTF-8 or not a valid topic), ``too_large`` (body over
``max_message_bytes``), ``msgpack``, ``wrong_type``, ``missing_key``, ``invalid`` (what
`envelope.decode` refuses), ``kind`` (``cmd.*`` must be kind command and a command must be on
``cmd.*``; ``rep.*`` reply, ``hb.*`` heartbeat, ``log.*`` log), ``reserved`` (``ack.*``,
``sys.router.*``, ``ctl.*`` other than ``ctl.sync``, or src ``router``), ``seq`` (0 outside a
probe), ``sync`` (a malformed probe). Report ``data = {"reason", "error", "topic" (printable),
"excerpt" (hex of the first 64 body bytes), "size", "frames", "count" (for this reason so far),
"suppressed"}``; at most 10 reports per second, ``suppressed`` counts those skipped since the
last one.

Stamps and restarts: every frame out carries the *current* router epoch, replayed ones too, with
the entry's gseq. With ``journal_path`` set, gseq and the per-(src, epoch) ``hc`` table survive a
restart (gseq continues; resends of journaled seqs are duplicates). Without it gseq restarts at
1 under the new router epoch. ``origin`` (in the sync answer, ``state`` and ``since`` headers)
is the router epoch that started the current gseq numbering: after a router epoch change, the
same origin means gseq continued; a new origin means gseq restarted at 1, so a subscriber
should fetch from ``first`` of the new numbering rather than from the first live gseq it sees.

Query ops (request maps)
------------------------
``{"op": "state"}``
    header ``{"ok": True, "state": {...}}``: router_epoch, first, last (gseq), journal counters,
    persistent (bool), sources, origin; the same map as the data of ``sys.router.stats``. An empty
    journal has ``first == last + 1``.
``{"op": "since", "gseq": N, "prefixes": [P, ...], "until": U?, "limit": L?, "reason": R?}``
    journaled entries with ``N <= gseq (<= U)`` whose topic `topics.matches` one of the prefixes
    (no prefixes = everything), oldest first. Header ``{"ok": True, "first", "last", "next",
    "more", "evicted", "count", "router_epoch", "origin"}``: ``next`` is where to continue
    (everything below it has been examined; ``N`` itself when ``N > last``), ``more`` says
    whether to, ``evicted`` counts requested gseqs already evicted from the journal (lost to
    this reader).
    ``reason = "gap"`` tells the router a subscriber missed live messages; it counts them as
    egress drops in ``sys.router.stats`` (``egress_gaps`` requests, ``egress_missed`` gseqs
    examined or evicted for them). A reply stops at ``REPLAY_SCAN`` entries examined,
    ``min(L, REPLAY_LIMIT)`` entries returned or 8 MiB of bodies, whichever comes first.
``{"op": "last", "prefixes": [P, ...]}``
    the newest journaled entry of every topic matching the prefixes (a last-value cache), in
    gseq order. Header ``{"ok": True, "count", "more", "first", "last", "router_epoch"}``; at
    most ``REPLAY_LIMIT`` entries or 8 MiB (``more`` then says some were left out).

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
