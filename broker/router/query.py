"""The router's query socket: answers ``state``, ``since`` and ``last`` from the journal, and
the lease ops ``claim``, ``release`` and ``leases`` from the router's `LeaseTable`.

Request and reply framing are specified in `broker.wire.protocol`; this module turns one request
map into the reply frames after the request id (header map, then topic, body, stamp triples). It
never raises on a bad request: anything malformed becomes ``{"ok": False, "error": ...}``.

A reply is bounded three ways so one request cannot stall the router loop or blow its memory: at
most `protocol.REPLAY_SCAN` journal entries examined, at most `protocol.REPLAY_LIMIT` (or the asked
``limit``) entries returned, and at most `REPLY_MAX_BYTES` of bodies (always at least one entry).
``more`` and ``next`` tell the client how to continue.

A claim or release with ``[router.security]`` is allowed only for a name the asking key may
publish as (`LeaseOps.may_use`, given the request's ZAP User-Id): a key cannot take, or free,
another actor's name.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import zmq

from broker.router.journal import Journal
from broker.router.leases import LeaseEvent, LeaseTable, lease_name
from broker.wire import protocol, topics
from broker.wire.envelope import pack_stamp
from broker.wire.errors import BusError, TopicError

REPLY_MAX_BYTES: Final = 8 * 1024 * 1024
MAX_PREFIXES: Final = 256
MAX_HOST_CHARS: Final = 255

Matcher = Callable[[str], bool]


class BadRequestError(BusError):
    """A query the router cannot answer; its message goes back to the client."""


@dataclass
class QueryCounters:
    requests: int = 0
    errors: int = 0
    replay_requests: int = 0  # `since` requests
    replayed: int = 0  # entries sent in `since` replies
    egress_gaps: int = 0  # `since` requests with reason "gap"
    egress_missed: int = 0  # gseqs those requests covered (examined range + evicted)


@dataclass
class LeaseOps:
    """What the lease ops need from the router: its table, a way to publish (journal) the
    table's events, and, with CURVE, whether a key (by User-Id) may use a name."""

    table: LeaseTable
    publish: Callable[[LeaseEvent], None]
    may_use: Callable[[str | None, str], bool] | None = None
    clock: Callable[[], float] = time.monotonic
    blind: Callable[[], bool] = lambda: False  # True while the router reads no ingress


def _everything(topic: str) -> bool:
    return True


def matcher(prefixes: Any) -> Matcher:
    """A fast equivalent of `topics.matches` against any of `prefixes` (None/[] = all)."""
    if prefixes is None:
        return _everything
    if not isinstance(prefixes, list) or not all(isinstance(p, str) for p in prefixes):
        raise BadRequestError("prefixes must be a list of strings")
    if len(prefixes) > MAX_PREFIXES:
        raise BadRequestError(f"at most {MAX_PREFIXES} prefixes per request")
    try:
        for p in prefixes:
            topics.check_prefix(p)
    except TopicError as exc:
        raise BadRequestError(f"bad prefix: {exc}") from None
    if not prefixes or "" in prefixes:
        return _everything
    starts = tuple(p if p.endswith(".") else p + "." for p in prefixes)
    exact = frozenset(p for p in prefixes if not p.endswith("."))
    return lambda topic: topic in exact or topic.startswith(starts)


def _int(req: dict[str, Any], key: str, default: int | None = None, low: int = 0) -> int | None:
    value = req.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise BadRequestError(f"{key} must be an integer >= {low}, got {value!r}")
    return value


class QueryHandler:
    def __init__(self, journal: Journal, router_epoch: int,
                 state: Callable[[], dict[str, Any]]) -> None:
        self.journal = journal
        self.router_epoch = router_epoch
        self.state = state
        self.counters = QueryCounters()
        self.leases: LeaseOps | None = None  # set by the router

    def serve(self, sock: zmq.Socket[bytes], batch: int) -> int:
        """Answer up to `batch` waiting requests on the ROUTER `sock`; returns replies dropped
        (peer gone, with ROUTER_MANDATORY, or its queue full: it retries)."""
        dropped = 0
        secure = self.leases is not None and self.leases.may_use is not None
        for _ in range(batch):
            user = None
            try:
                if secure:  # Frames carry the ZAP User-Id of the key that sent them
                    parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    user = _user_id(parts[-1])
                    frames = [p.bytes for p in parts]
                else:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            req_id = frames[1] if len(frames) > 1 else b""
            if len(frames) != 3:
                reply = self.error(f"a request is 2 frames [req_id, map], got {len(frames) - 1}")
            else:
                reply = self.answer(frames[2], user)
            try:
                # copy=False: a journaled body of 64 KiB or more goes out without a copy (pyzmq
                # still copies the small frames, below its copy_threshold)
                sock.send_multipart([frames[0], req_id, *reply], zmq.NOBLOCK, copy=False)
            except zmq.ZMQError:
                dropped += 1
        return dropped

    def answer(self, raw: bytes, user: str | None = None) -> list[bytes]:
        """Reply frames (header first) for one request body; `user`: the key's ZAP User-Id."""
        self.counters.requests += 1
        try:
            req = protocol.unpack_map(raw, "query request")
            op = req.get("op")
            if op == protocol.OP_STATE:
                return [protocol.pack({"ok": True, "state": self.state()})]
            if op == protocol.OP_SINCE:
                return self._since(req)
            if op == protocol.OP_LAST:
                return self._last(req)
            if op in (protocol.OP_CLAIM, protocol.OP_RELEASE, protocol.OP_LEASES):
                return [protocol.pack(self._lease_op(op, req, user))]
            raise BadRequestError(
                f"unknown op {op!r} (expected {protocol.OP_STATE}, {protocol.OP_SINCE}, "
                f"{protocol.OP_LAST}, {protocol.OP_CLAIM}, {protocol.OP_RELEASE}, "
                f"{protocol.OP_LEASES})")
        except BusError as exc:  # BadRequestError and unpack_map's own complaints
            return self.error(str(exc))

    def error(self, message: str) -> list[bytes]:
        self.counters.errors += 1
        return [protocol.pack({"ok": False, "error": message})]

    def _since(self, req: dict[str, Any]) -> list[bytes]:
        start = _int(req, "gseq")
        if start is None:
            raise BadRequestError("since needs gseq (an integer >= 0)")
        until = _int(req, "until")
        limit = min(_int(req, "limit", protocol.REPLAY_LIMIT, low=1) or 1, protocol.REPLAY_LIMIT)
        match = matcher(req.get("prefixes"))
        reason = req.get("reason")
        j = self.journal
        start = max(start, 1)
        end = j.last if until is None else min(until, j.last)  # inclusive
        evicted = max(0, min(j.first, end + 1) - start)
        pos = max(start, j.first)
        nxt, frames = self._collect(pos, min(end + 1, pos + protocol.REPLAY_SCAN), match, limit)
        count = len(frames) // 3
        c = self.counters
        c.replay_requests += 1
        c.replayed += count
        if reason == "gap":
            c.egress_gaps += 1
            c.egress_missed += (nxt - pos) + evicted
        header = {"ok": True, "first": j.first, "last": j.last, "next": nxt, "more": nxt <= end,
                  "evicted": evicted, "count": count, "router_epoch": self.router_epoch,
                  "origin": j.origin}
        return [protocol.pack(header), *frames]

    def _collect(self, pos: int, stop: int, match: Matcher, limit: int) -> tuple[int, list[bytes]]:
        """Scan [pos, stop): (next gseq to examine, topic/body/stamp frames of the matches)."""
        frames: list[bytes] = []
        size = 0
        epoch = self.router_epoch
        for gseq, topic, body in self.journal.scan(pos, stop):
            if match(topic):
                frames += (topic.encode(), body, pack_stamp(epoch, gseq))
                size += len(body)
                if len(frames) >= 3 * limit or size >= REPLY_MAX_BYTES:
                    return gseq + 1, frames
        return max(pos, stop), frames

    def _last(self, req: dict[str, Any]) -> list[bytes]:
        match = matcher(req.get("prefixes"))
        j = self.journal
        newest = sorted(g for t, g in j.latest() if match(t))
        frames: list[bytes] = []
        size = 0
        for gseq in newest:
            if len(frames) >= 3 * protocol.REPLAY_LIMIT or size >= REPLY_MAX_BYTES:
                break
            topic, body = j.entry(gseq)
            frames += (topic.encode(), body, pack_stamp(self.router_epoch, gseq))
            size += len(body)
        count = len(frames) // 3
        header = {"ok": True, "count": count, "more": count < len(newest), "first": j.first,
                  "last": j.last, "router_epoch": self.router_epoch}
        return [protocol.pack(header), *frames]

    def _lease_op(self, op: str, req: dict[str, Any], user: str | None) -> dict[str, Any]:
        ops = self.leases
        if ops is None:
            raise BadRequestError("this router keeps no leases")
        now = ops.clock()
        if op == protocol.OP_LEASES:
            return {"ok": True, "leases": ops.table.table(now), "router_epoch": self.router_epoch}
        try:
            name = lease_name(req.get("name"), op)
        except TopicError as exc:
            raise BadRequestError(str(exc)) from None
        epoch = _int(req, "epoch", low=1)
        if epoch is None:
            raise BadRequestError(f"{op} needs epoch (an integer >= 1)")
        if ops.may_use is not None and not ops.may_use(user, name):
            raise BadRequestError(f"key {user!r} may not {op} the name {name!r}")
        if op == protocol.OP_RELEASE:
            event = ops.table.release(name, epoch)
            if event is not None:
                ops.publish(event)
            return {"ok": True, "released": event is not None}
        host, ttl = req.get("host"), req.get("ttl")
        if not isinstance(host, str) or len(host) > MAX_HOST_CHARS:
            raise BadRequestError(f"claim needs host (a string of at most {MAX_HOST_CHARS} "
                                  f"characters)")
        pid = _int(req, "pid", 0) or 0
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0:
            raise BadRequestError(f"claim needs ttl (seconds > 0), got {ttl!r}")
        if ops.blind():  # no traffic seen is no sign of death: holders keep their names
            ops.table.hold_all(now)
        machine, replaces = req.get("machine", ""), req.get("replaces")
        if not isinstance(machine, str) or len(machine) > MAX_HOST_CHARS:
            raise BadRequestError(f"claim: machine must be a string of at most "
                                  f"{MAX_HOST_CHARS} characters")
        if replaces is not None and (isinstance(replaces, bool) or not isinstance(replaces, int)):
            raise BadRequestError(f"claim: replaces must be an epoch (an integer), got "
                                  f"{replaces!r}")
        claim = ops.table.claim(name, epoch, host, pid, float(ttl), now, time.time(), machine,
                                replaces)
        for event in claim.events:
            ops.publish(event)
        return {"ok": True, "granted": claim.granted, "holder": claim.lease.holder(now),
                "generation": claim.lease.generation, "router_epoch": self.router_epoch}


def _user_id(frame: zmq.Frame) -> str | None:
    try:
        value = frame.get("User-Id")
    except zmq.ZMQError:
        return None
    return value if isinstance(value, str) else None
