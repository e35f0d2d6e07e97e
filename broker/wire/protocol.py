"""The bus protocol between the router and its clients, beyond the envelope itself.

Sockets (endpoints from ``[router]`` in the site file)
------------------------------------------------------
- ``ingress``: the router binds XSUB and subscribes to everything. Clients connect a PUB with
  ``XPUB_NODROP`` set, so a full pipe is reported to the sender (``zmq.Again``) instead of dropped.
  Frames in: ``[topic, body]``.
- ``egress``: the router binds XPUB. Clients connect SUB. Frames out: ``[topic, body, stamp]``,
  stamp = big-endian ``router_epoch:u64, gseq:u64`` (`broker.wire.envelope.pack_stamp`). The router
  never re-encodes a client's body.
- ``query``: the router binds ROUTER. Clients connect DEALER. Request ``[req_id, map]``, reply
  ``[req_id, header_map, topic, body, stamp, topic, body, stamp, ...]`` (maps are msgpack).

Ingress rules
-------------
Checks, in this order; the first that fails refuses the message as bad (reasons below):
frame count, topic, body size (checked before any decoding), envelope (`envelope.decode`), then
for ``ctl.sync`` the probe rules (below), else reserved topic/src, kind against topic, seq 0.

Sequencing. Per (src, epoch) the router keeps ``hc``, the highest seq up to which every seq has
been journaled, refused or declared lost. A valid envelope with ``seq >= 1``:

- unknown (src, epoch) (never seen, or forgotten: a router restart without ``journal_path``, or
  one of the oldest pairs evicted from the table of the `journal.MAX_SOURCES` most recently
  active): ``seq == 1`` starts the pair (hc = 0, then as below). Any other seq is dropped
  (counted as ``unknown_source``) and the router asks the sender to re-sync with a transient
  ``ack.<src>`` ``data = {"epoch": e, "seq": 0, "resync": True}`` (at most one per pair per
  0.25 s). The sender must then send a ``ctl.sync`` probe with ``next`` and, once answered,
  resend every unacked envelope. A pair also starts at a probe's ``next`` (below).
- ``seq == hc + 1``: journaled (gseq stamped), forwarded, hc = seq.
- ``seq <= hc``: a duplicate: counted, dropped, acked.
- ``seq > hc + 1``: out of order: counted, dropped, acked with the unchanged hc; a gap is opened
  (published once on ``sys.router.gap`` with ``state = "open"``) and the sender's resend fills
  it. Once the gap is ``gap_timeout`` seconds old, the next early seq declares the missing
  range lost (``state = "lost"``, hc skips it) so a sender that dropped from its outbox cannot
  wedge its own stream. Only the seqs below the *lowest* early seq seen during the episode are
  skipped (the sender showed it still holds that one, so its resend must not be refused); the
  arriving seq is then accepted if it is next, or opens a new gap. If that lowest early seq
  has arrived meanwhile (or is next), nothing is skipped and the timeout starts over.

A pair's hc never goes down. With ``journal_path`` it survives a router restart, however it
rose (an entry, a refusal, a probe's ``next``, a lost range).

Refused envelopes use up their seq. A refused message whose ``src``, ``epoch`` and ``seq`` can
be read is sequenced exactly as above -- seq 1 starts an unknown pair, ``hc + 1`` raises hc,
an early seq opens or extends a gap, a duplicate is acked, an unknown pair at seq > 1 is asked
to re-sync -- but nothing is journaled or forwarded. The sender learns of the refusal only from
``sys.router.bad``; the ack covers the seq, so it must neither resend nor re-number a refused
envelope. Not consumed: seq 0, src ``router``, and bodies where the three cannot be read. For a
body refused before decoding (``too_large``) or that fails `envelope.decode`, the router reads
them from the head of the body without decoding the rest: the body must be a msgpack map and
they must be among its first 16 keys, ``src`` a valid name, ``epoch`` and ``seq`` ints in
0..2^63-1. Encoders must therefore write ``src``, ``epoch`` and ``seq`` before ``data`` (the
encoder in `broker.wire.envelope` writes v, id, src, epoch, seq, ts, kind, data, then the command
and reply keys).

Gap reports (journaled, src ``router``): ``data = {"src", "epoch", "expected": hc + 1 when it
opened, "got": the early seq that opened it, "state": "open" | "filled" | "lost"}``; "filled"
once ``expected .. got - 1`` have all arrived or been refused; "lost" adds ``"missing": [first,
last]`` (first <= last, first is hc + 1 when declared).

``seq == 0`` is only for ``ctl.sync``: any other unsequenced envelope is refused as bad.

Acks. After each batch the router publishes one ack per source touched on ``ack.<src>``: an
envelope from ``router`` (kind ``system``, seq 0, stamp gseq 0) with ``data = {"epoch": e,
"seq": hc}``; it acknowledges every seq <= hc of that epoch. Accepted, refused, duplicate and
early seqs all touch their source, so a resend is always answered. A batch's frames go out
only after its journal records are written (and fsynced when configured): nothing is forwarded
or acked that a router crash could lose. A sender filters acks by its own epoch (``ack.<src>``
may carry acks for an earlier incarnation of the same src).

Control probe ``ctl.sync`` (kind ``system``, seq 0, ``data = {"token": str, "next": int}``) is
never journaled or forwarded. ``next`` (optional, but a sequencing sender should always send it)
is the oldest seq the sender still holds: its oldest unacked envelope, or, with nothing
unacked, the seq it will assign next. Nothing below ``next`` will ever come again, so before
answering the router applies it: an unknown pair starts there (hc = next - 1); a known pair with
hc < next - 1 has ``hc + 1 .. next - 1`` declared lost (``sys.router.gap`` state "lost" with
``missing`` that range; ``expected``/``got`` of the gap open for that pair, else hc + 1 and
next) and hc = next - 1; otherwise nothing changes. A ``next`` that is not an int in
1..2^63-1 is ignored. The router answers on ``ack.<src>`` with ``data = {"sync": token,
"head": gseq, "first": gseq, "router_epoch": E, "origin": O, "epoch": e, "seq": hc}`` (hc for the
probe's (src, epoch) after ``next`` was applied, 0 if still unknown; O as below). A client that
receives its own token knows both of its paths to the router are live. The answer is queued
behind everything the same publisher sent before the probe, so it is also a barrier: those
messages have been journaled (or refused) and forwarded. A probe with src ``router`` is refused
(``reserved``); a malformed one (``sync``) uses up its seq if that is not 0, like any refusal.

Commands and replies. A command is kind ``command`` on ``cmd.<actor>``, with ``reply_to`` a
``rep.<client>`` topic (a valid topic under ``rep.``; anything else fails `envelope.decode`:
``invalid``) and optionally ``deadline``. The actor answers with kind ``reply`` on that topic,
``corr`` = the command's ``id``. A retried command keeps its ``id`` (new seq): the actor runs it
at most once and answers a duplicate from its reply cache.

A correct sender, in short: a new epoch at every process start; seqs 1, 2, 3 ... in send order;
connect PUB (``XPUB_NODROP``) to ingress and a SUB subscribed to ``ack.<src>`` to egress
(compare the topic exactly: the prefix also matches ``ack.<src>0``); probe ``ctl.sync`` with
``token`` and ``next`` until the answer with its token arrives (a new PUB drops until it has
the router's subscription); send only after that; keep every envelope until an ack of its
epoch with ``seq`` >= its seq; resend the unacked ones, oldest first, after a timeout without
acks and after every (re-)sync answer; on a ``resync`` request probe again (with ``next``)
before resending. Seqs are never reused or renumbered, refused or not.

Refused as bad (counted by reason, logged, reported on ``sys.router.bad``): ``frames`` (not 2
frames), ``topic`` (not UTF-8 or not a valid topic), ``too_large`` (body over
``max_message_bytes``), ``msgpack``, ``wrong_type``, ``missing_key``, ``invalid`` (what
`envelope.decode` refuses, e.g. data nested deeper than `envelope.MAX_DEPTH`), ``kind``
(``cmd.*`` must be kind command and a command must be on ``cmd.*``; ``rep.*`` reply, ``hb.*``
heartbeat, ``log.*`` log), ``reserved`` (``ack.*``, ``sys.router.*``, ``ctl.*`` other than
``ctl.sync``, or src ``router``), ``seq`` (0 outside a probe), ``sync`` (a malformed probe).
Report ``data = {"reason", "error", "topic" (printable), "excerpt" (hex of the first 64 body
bytes), "size", "frames", "count" (for this reason so far), "suppressed"}``; at most 10 reports
per second, ``suppressed`` counts those skipped since the last one.

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

``{"op": "claim", "name": N, "epoch": E, "host": H, "pid": P, "ttl": T}``
    ask for the lease of bus name ``N`` for incarnation ``E`` (see `broker.router.leases` and
    docs/leases.md). Header ``{"ok": True, "granted": bool, "holder": {"name", "epoch", "host",
    "pid", "since", "ttl", "generation"}, "generation", "router_epoch"}``; ``holder`` is the
    claimant when granted, else the instance that holds the name. Granted when the name is
    free, its lease expired, or ``E`` holds it already (a renewal). ``ttl`` (seconds, clamped to
    0.2 .. 3600) is how long the lease lasts without traffic from (N, E): every ingress message
    of that pair renews it. With ``[router.security]`` the asking key must be one that may
    publish as ``N``.
``{"op": "release", "name": N, "epoch": E}``
    free the name if ``E`` holds it (a clean stop). Header ``{"ok": True, "released": bool}``.
``{"op": "leases"}``
    header ``{"ok": True, "leases": {name: holder + "expires_in"}, "router_epoch"}``.

Fencing. While ``N`` is held by epoch ``E``, a sequenced message (seq >= 1) with src ``N`` and
another epoch is refused before sequencing: not journaled, not forwarded, its seq not used up,
counted as ``fenced``, reported (rate-limited) on ``sys.router.denied`` with ``reason``
"fenced" and the holder, and answered with a transient ``ack.<N>`` ``data = {"epoch": e,
"fenced": seq, "holder": {...}, "reason": str}``. ``ctl.sync`` probes are answered as usual.
Grants, refusals, releases, expiries, regains, replacements and restorations (a router
restarted on its journal file restores the leases it held, see docs/leases.md) are journaled on
``sys.router.lease``
(``data = {"event", "name", "epoch", "host", "pid", "since", "ttl", "generation",
"claimant"?, "previous"?}``).

Errors come back as header ``{"ok": False, "error": "..."}``.
"""

from __future__ import annotations

from typing import Any, Final

import msgpack

from broker.wire.errors import BusError

SYNC_TOPIC: Final = "ctl.sync"
OP_STATE: Final = "state"
OP_SINCE: Final = "since"
OP_LAST: Final = "last"
OP_CLAIM: Final = "claim"
OP_RELEASE: Final = "release"
OP_LEASES: Final = "leases"
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
