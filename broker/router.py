"""The router process: journals every envelope once, stamps it with a gseq, fans it out.

One thread runs everything through a `zmq.Poller` over four sockets: XSUB ingress, XPUB egress
(subscription messages, counted), ROUTER query (`broker.query`) and an inproc PULL that `stop`
pokes. Ingress is drained in batches of up to `INGRESS_BATCH` messages; per batch the router

1. checks each message once (`broker.ingress`: topic rules, then size before any decoding,
   then the envelope), applies the per-(src, epoch) sequencing of `broker.wire` and journals
   accepted ones; a refused one still uses up its seq (only src/epoch/seq are read from a body
   that is too large or invalid) and raises hc through `Journal.advance`, which the journal
   file keeps too;
2. flushes the journal file (fsync if configured), so nothing below is ever ahead of the disk;
3. publishes the batch's accepted envelopes, then one ``ack.<src>`` per pair it touched.

Bad input is counted by reason, logged with a hex excerpt and reported on ``sys.router.bad``
(reports and their log lines rate-limited together; the next report carries the number
suppressed). Nothing a peer sends can raise out of the loop.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any, Final

import zmq
from zmq.utils.monitor import recv_monitor_message

from broker import envelope, ingress, topics
from broker.config import RouterConfig
from broker.envelope import STAMP
from broker.errors import BusError, EnvelopeError, TopicError
from broker.journal import Journal, SourceKey
from broker.query import QueryHandler

log = logging.getLogger(__name__)

SRC: Final = "router"
INGRESS_BATCH: Final = 1000
QUERY_BATCH: Final = 100
MAX_POLL_S: Final = 0.25  # stop() is also a flag: bound how long a missed wake-up can delay it
XSUB_MAXMSGSIZE: Final = 64 * 1024 * 1024  # hard memory guard; max_message_bytes is the policy
INGRESS_HWM: Final = 10_000
TOPIC_CACHE_MAX: Final = 10_000
BAD_REPORTS_PER_S: Final = 10.0
EXCERPT: Final = 64

_BAD_REASONS: Final = ("frames", "topic", "too_large", "msgpack", "missing_key", "wrong_type",
                       "invalid", "kind", "reserved", "seq", "sync", "internal")
# pyzmq's Python layer costs ~1 us per frame; the router calls the Cython socket methods directly.
_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
_get = zmq.backend.Socket.get
_MORE: Final = int(zmq.SNDMORE | zmq.NOBLOCK)
_LAST: Final = int(zmq.NOBLOCK)


@dataclass(slots=True)
class _Gap:
    expected: int  # first missing seq when the gap opened
    got: int  # the out-of-order seq that opened it
    low: int  # lowest out-of-order seq seen since: the oldest the sender still holds
    opened: float  # monotonic


RESYNC_EVERY_S: Final = 0.25  # at most one resync request per source per this


class _RateLimit:
    """Token bucket: `allow()` is true at most `rate` times per second (burst `rate`)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.at = time.monotonic()
        self.suppressed = 0

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.suppressed += 1
        return False


class Router:
    """Construct, then `run()` in one thread; `stop()` from any thread or a signal handler."""

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.router_epoch = time.time_ns() // 1000
        self.journal = Journal(config.journal_max_messages, config.journal_max_bytes,
                               config.journal_path, config.journal_fsync,
                               origin=self.router_epoch)
        self.endpoints: dict[str, str] = {}
        self._ctx = zmq.Context()
        self._stopping = threading.Event()
        self._wake_url = f"inproc://sctl-router-wake-{id(self):x}"
        self._sockets: list[zmq.Socket[bytes]] = []
        self._opened = False
        self._queries = QueryHandler(self.journal, self.router_epoch, self.state)
        self._own_seq = 0
        self._pending: list[tuple[bytes, bytes, bytes]] = []  # egress frames of this batch
        self._touched: dict[SourceKey, None] = {}  # pairs to ack after this batch
        self._gaps: dict[SourceKey, _Gap] = {}
        self._resync_asked: dict[SourceKey, float] = {}
        self._rules: dict[bytes, ingress.TopicRule] = {}
        self._max_body = config.max_message_bytes
        self._bad_limit = _RateLimit(BAD_REPORTS_PER_S)
        self.counts: dict[str, int] = dict.fromkeys(
            ("received", "journaled", "duplicates", "out_of_order", "gaps_opened", "gaps_lost",
             "gaps_filled", "syncs", "sent", "subscriptions", "unsubscriptions",
             "subscribers", "replies_dropped", "unknown_source"), 0)
        self.bad: dict[str, int] = dict.fromkeys(_BAD_REASONS, 0)
        self._rates = {"in": 0.0, "out": 0.0}
        self._rate_base = (time.monotonic(), 0, 0)
        self._next_stats = time.monotonic() + config.stats_interval

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Load the journal and bind the sockets; raises BusError/OSError naming what failed."""
        if self._opened:
            return
        self.journal.open()
        self._xsub = self._bind(zmq.XSUB, "ingress", {zmq.MAXMSGSIZE: XSUB_MAXMSGSIZE,
                                                      zmq.RCVHWM: INGRESS_HWM})
        self._xsub.send(b"\x01")  # XSUB subscribes by message: everything, for every publisher
        self._xpub = self._bind(zmq.XPUB, "egress", {zmq.SNDHWM: self.config.egress_hwm,
                                                     zmq.XPUB_VERBOSE: 1})
        self._query = self._bind(zmq.ROUTER, "query", {zmq.ROUTER_MANDATORY: 1})
        self._monitor = self._xpub.get_monitor_socket(
            zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self._wake = self._ctx.socket(zmq.PULL)
        self._wake.bind(self._wake_url)
        self._sockets += [self._monitor, self._wake]
        self._poller = zmq.Poller()
        for sock in (self._xsub, self._xpub, self._query, self._monitor, self._wake):
            self._poller.register(sock, zmq.POLLIN)
        self._opened = True
        log.info("router epoch %d up: ingress %s, egress %s, query %s, journal %s (gseq %d..%d)",
                 self.router_epoch, self.endpoints["ingress"], self.endpoints["egress"],
                 self.endpoints["query"], self.journal.path or "in memory",
                 self.journal.first, self.journal.last)

    def _bind(self, kind: int, which: str, options: dict[int, int]) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self._ctx.socket(kind)
        self._sockets.append(sock)
        sock.setsockopt(zmq.LINGER, 0)
        for opt, value in options.items():
            sock.setsockopt(opt, value)
        url = getattr(self.config, which)
        try:
            sock.bind(url)
        except zmq.ZMQError as exc:
            raise BusError(f"cannot bind router.{which} endpoint {url}: {exc.strerror}") from exc
        self.endpoints[which] = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return sock

    def run(self) -> None:
        """Serve until `stop()`; closes everything on the way out, even after an error."""
        try:
            self.open()
            while not self._stopping.is_set():
                self._step()
        finally:
            self.close()

    def stop(self) -> None:
        """Ask the loop to finish; safe from any thread and from signal handlers."""
        self._stopping.set()
        try:
            poke = self._ctx.socket(zmq.PUSH)
        except zmq.ZMQError:  # context already gone: the loop has finished
            return
        try:
            poke.setsockopt(zmq.LINGER, 100)
            poke.connect(self._wake_url)
            poke.send(b"", zmq.NOBLOCK)
        except zmq.ZMQError:  # the flag alone stops the loop within MAX_POLL_S
            pass
        finally:
            poke.close()

    def close(self) -> None:
        """Flush and close; a journal write error still propagates, after the sockets close."""
        was_open, self._opened = self._opened, False
        try:
            if was_open:
                self._finish_batch()
        finally:
            if was_open:
                self._xpub.disable_monitor()
            for sock in self._sockets:
                sock.close(linger=0)
            self._sockets.clear()
            if not self._ctx.closed:
                self._ctx.term()
            self.journal.close()
        if was_open:
            log.info("router epoch %d stopped at gseq %d", self.router_epoch, self.journal.last)

    # -- the loop ----------------------------------------------------------------------------

    def _step(self) -> None:
        wait = min(max(self._next_stats - time.monotonic(), 0.0), MAX_POLL_S)
        events = dict(self._poller.poll(int(wait * 1000)))
        if self._xsub in events:
            self._drain_ingress()
        if self._xpub in events:
            self._read_subscriptions()
        if self._query in events:
            self.counts["replies_dropped"] += self._queries.serve(self._query, QUERY_BATCH)
        if self._monitor in events:
            self._read_monitor()
        if self._wake in events:
            while self._wake.poll(0):
                self._wake.recv()
        if time.monotonic() >= self._next_stats:
            self._publish_stats()
            self._finish_batch()

    def _drain_ingress(self) -> None:
        sock = self._xsub
        n = 0
        while n < INGRESS_BATCH:
            try:
                frames = [_recv(sock, _LAST)]
            except zmq.Again:
                break
            while _get(sock, zmq.RCVMORE):
                frames.append(_recv(sock, _LAST))
            n += 1
            try:
                self._ingest(frames)
            except Exception as exc:  # a bug must not turn one odd message into an outage
                log.exception("router failed on an ingress message")
                self._bad("internal", frames, repr(exc))
        self.counts["received"] += n
        self._finish_batch()

    def _finish_batch(self) -> None:
        """Flush the journal, then publish the batch and acks: the disk is never behind."""
        self.journal.flush()
        sources = self.journal.sources
        for key in self._touched:
            hc = sources.get(key)
            if hc is not None:
                sources.touch(key)
                self._transient(f"ack.{key[0]}", {"epoch": key[1], "seq": hc})
        self._touched.clear()
        sock = self._xpub
        # Without XPUB_NODROP an XPUB drops for a subscriber at its HWM, it never blocks:
        # a slow subscriber loses live messages and refills them with `since`.
        for topic, body, stamp in self._pending:
            _send(sock, topic, _MORE)
            _send(sock, body, _MORE)
            _send(sock, stamp, _LAST)
        self.counts["sent"] += len(self._pending)
        self._pending.clear()

    # -- ingress -----------------------------------------------------------------------------

    def _ingest(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            self._bad("frames", frames, f"{len(frames)} frames, expected 2 (topic, body)")
            return
        tframe, body = frames
        rule = self._rules.get(tframe)
        if rule is None:
            rule = self._rule(frames)
            if rule is None:
                return
        if len(body) > self._max_body:  # before any decoding: a huge body costs nothing more
            self._bad("too_large", frames, f"body of {len(body)} bytes is over "
                      f"max_message_bytes {self._max_body}")
            self._consume_unread(body)
            return
        try:
            f = ingress.fields(body)
        except EnvelopeError as exc:
            self._bad(ingress.reason_of(exc), frames, str(exc))
            self._consume_unread(body)
            return
        topic, need, special = rule
        src = f[0]
        if special == ingress.SYNC and src != SRC:
            self._sync(f, frames)
            return
        refusal = self._refusal(topic, need, special, f)
        if refusal is not None:
            self._bad(refusal[0], frames, refusal[1])
            self._consume(src, f[1], f[2])
        else:
            self._sequence((src, f[1]), f[2], tframe, topic, body)

    def _rule(self, frames: list[bytes]) -> ingress.TopicRule | None:
        """Decide and cache the rule of a topic not seen before; None (reported) if invalid."""
        tframe = frames[0]
        try:
            rule = ingress.topic_rule(tframe)
        except TopicError as exc:
            self._bad("topic", frames, str(exc))
            return None
        if len(self._rules) >= TOPIC_CACHE_MAX:
            self._rules.clear()
        self._rules[tframe] = rule
        return rule

    def _refusal(self, topic: str, need: str | None, special: int,
                 f: ingress.Fields) -> tuple[str, str] | None:
        """(reason, error) when a well-formed envelope breaks an ingress rule, else None."""
        src, kind, seq = f[0], f[3], f[2]
        if special == ingress.RESERVED or src == SRC:
            return "reserved", f"{topic} / src {src!r} is the router's own"
        if kind != need and (need is not None or kind == "command"):
            return "kind", (f"kind {kind!r} on topic {topic}"
                            f" (expects {need or 'anything but command'})")
        if seq == 0:
            return "seq", "seq 0 is only for ctl.sync probes"
        return None

    def _consume_unread(self, body: bytes) -> None:
        """A body refused before it was decoded still uses up its seq, if that can be read."""
        head = ingress.sequence_fields(body)
        if head is not None:
            self._consume(*head)

    def _consume(self, src: str, epoch: int, seq: int) -> None:
        """A refused envelope still uses up its seq, so the sender's stream does not stall:
        it is sequenced like an accepted one, only nothing is journaled or forwarded."""
        if seq > 0 and src != SRC:
            self._sequence((src, epoch), seq)

    def _sequence(self, key: SourceKey, seq: int, tframe: bytes = b"", topic: str = "",
                  body: bytes | None = None) -> None:
        """The per-(src, epoch) ingress rules of `broker.wire`; `body` None: a refused one."""
        hc = self.journal.sources.get(key)
        if hc is None:
            if seq != 1:
                self._ask_resync(key, seq)
                return
            hc = 0
        self._touched[key] = None
        if seq == hc + 1:
            if body is None:
                self.journal.advance(key, seq)
            else:
                self._accept(key, tframe, topic, body, seq)
            if self._gaps:
                self._close_gap(key, seq)
        elif seq <= hc:
            if body is not None:
                self.counts["duplicates"] += 1
        elif self._out_of_order(key, hc, seq):
            self._sequence(key, seq, tframe, topic, body)  # the lost range was skipped: retry

    def _accept(self, key: SourceKey, tframe: bytes, topic: str, body: bytes, seq: int) -> None:
        self.journal.sources.put(key, seq)
        gseq = self.journal.append(topic, body, key[0], key[1], seq)
        self._pending.append((tframe, body, STAMP.pack(self.router_epoch, gseq)))
        self.counts["journaled"] += 1

    def _close_gap(self, key: SourceKey, seq: int) -> None:
        """hc just rose to `seq`: a gap whose missing range that completes is filled."""
        gap = self._gaps.get(key)
        if gap is not None and seq + 1 >= gap.got:
            del self._gaps[key]
            self.counts["gaps_filled"] += 1
            self._report_gap(key, gap, "filled")

    def _out_of_order(self, key: SourceKey, hc: int, seq: int) -> bool:
        """Count/drop an early seq; True when a timed-out gap was just declared lost."""
        gap = self._gaps.get(key)
        if gap is None:
            self.counts["gaps_opened"] += 1
            gap = self._gaps[key] = _Gap(expected=hc + 1, got=seq, low=seq,
                                         opened=time.monotonic())
            self._report_gap(key, gap, "open")
        elif self._gap_timed_out(gap, hc, seq):
            # Skip only up to the oldest seq the sender has shown it still holds: everything
            # from there on is in its outbox and will be resent, so it must not be lost.
            del self._gaps[key]
            self.counts["gaps_lost"] += 1
            self._report_gap(key, gap, "lost", missing=[hc + 1, gap.low - 1])
            self.journal.advance(key, gap.low - 1)
            return True
        self.counts["out_of_order"] += 1
        return False

    def _gap_timed_out(self, gap: _Gap, hc: int, seq: int) -> bool:
        """Note an early seq; True when the gap is to be declared lost up to ``gap.low - 1``
        (always above hc, so hc only ever rises)."""
        gap.low = min(gap.low, seq)
        now = time.monotonic()
        if now - gap.opened < self.config.gap_timeout:
            return False
        if gap.low <= hc + 1:
            # The lowest early seq seen has arrived since, or is next: which later ones the
            # sender still holds is unknown. Skip nothing; the episode starts over from here.
            gap.low, gap.opened = seq, now
            return False
        return True

    def _report_gap(self, key: SourceKey, gap: _Gap, state: str, **extra: Any) -> None:
        data = {"src": key[0], "epoch": key[1], "expected": gap.expected, "got": gap.got,
                "state": state, **extra}
        log.log(logging.INFO if state == "filled" else logging.WARNING,
                "ingress gap %s: %s epoch %d expected seq %d, got %d%s", state, key[0], key[1],
                gap.expected, gap.got, f", missing {extra['missing']}" if extra else "")
        self._publish_own(topics.ROUTER_GAP, data)

    def _ask_resync(self, key: SourceKey, seq: int) -> None:
        """An unknown (src, epoch) not starting at seq 1: this router lost its state (restart
        without journal, evicted pair). Accepting it would turn the sender's resends of older,
        unacked seqs into "duplicates"; instead drop it and ask the sender to sync, which tells
        where its outbox starts."""
        self.counts["unknown_source"] += 1
        now = time.monotonic()
        if now - self._resync_asked.get(key, 0.0) < RESYNC_EVERY_S:
            return
        if len(self._resync_asked) > 10_000:
            self._resync_asked.clear()
        self._resync_asked[key] = now
        log.info("unknown source %s epoch %d sent seq %d: asking it to sync", key[0], key[1], seq)
        self._transient(f"ack.{key[0]}", {"epoch": key[1], "seq": 0, "resync": True})

    def _register(self, key: SourceKey, next_seq: Any) -> None:
        """The sync probe's `next`: the oldest seq the sender still holds. Below it nothing
        will ever come again: start an unknown pair there, or declare the rest lost."""
        if type(next_seq) is not int or not 1 <= next_seq <= envelope.MAX_U63:
            return
        hc = self.journal.sources.get(key)
        if hc is None:
            self.journal.advance(key, next_seq - 1)
        elif hc < next_seq - 1:
            gap = self._gaps.pop(key, None) or _Gap(hc + 1, next_seq, next_seq, time.monotonic())
            self.counts["gaps_lost"] += 1
            self._report_gap(key, gap, "lost", missing=[hc + 1, next_seq - 1])
            self.journal.advance(key, next_seq - 1)

    def _sync(self, f: ingress.Fields, frames: list[bytes]) -> None:
        src, epoch, seq, kind, data = f
        token = data.get("token")
        if kind != "system" or seq != 0 or not isinstance(token, str):
            self._bad("sync", frames, "ctl.sync needs kind system, seq 0 and data.token (str)")
            self._consume(src, epoch, seq)
            return
        self.counts["syncs"] += 1
        self._register((src, epoch), data.get("next"))
        self._transient(f"ack.{src}", {
            "sync": token, "head": self.journal.last, "first": self.journal.first,
            "router_epoch": self.router_epoch, "origin": self.journal.origin, "epoch": epoch,
            "seq": self.journal.sources.get((src, epoch)) or 0})

    def _bad(self, reason: str, frames: list[bytes], error: str) -> None:
        self.bad[reason] += 1
        if not self._bad_limit.allow():
            return
        body = frames[1] if len(frames) == 2 else b"".join(f[:EXCERPT] for f in frames)
        excerpt = body[:EXCERPT].hex()
        topic = frames[0][:120].decode("utf-8", "backslashreplace") if frames else ""
        size = sum(len(f) for f in frames)
        suppressed, self._bad_limit.suppressed = self._bad_limit.suppressed, 0
        log.warning("bad ingress message (%s): %s; topic %r, %d bytes, %d frames, excerpt %s"
                    " (%d similar reports suppressed before this one)", reason, error, topic,
                    size, len(frames), excerpt, suppressed)
        self._publish_own(topics.ROUTER_BAD, {
            "reason": reason, "error": error[:200], "topic": topic, "excerpt": excerpt,
            "size": size, "frames": len(frames), "count": self.bad[reason],
            "suppressed": suppressed})

    # -- the router's own messages -----------------------------------------------------------

    def _publish_own(self, topic: str, data: dict[str, Any]) -> None:
        """A journaled router envelope (src router, its own seq), sent with the batch."""
        self._own_seq += 1
        body = envelope.make(SRC, self.router_epoch, self._own_seq, "system", data).encode()
        gseq = self.journal.append(topic, body, SRC, self.router_epoch, self._own_seq)
        self._pending.append((topic.encode(), body, STAMP.pack(self.router_epoch, gseq)))

    def _transient(self, topic: str, data: dict[str, Any]) -> None:
        """An unjournaled router envelope: seq 0, stamp gseq 0 (acks, sync replies)."""
        body = envelope.make(SRC, self.router_epoch, 0, "system", data).encode()
        self._pending.append((topic.encode(), body, STAMP.pack(self.router_epoch, 0)))

    # -- egress, query, stats ----------------------------------------------------------------

    def _read_subscriptions(self) -> None:
        for _ in range(INGRESS_BATCH):
            try:
                msg = self._xpub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg[:1] == b"\x01":
                self.counts["subscriptions"] += 1
            elif msg[:1] == b"\x00":
                self.counts["unsubscriptions"] += 1

    def _read_monitor(self) -> None:
        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)["event"]
            if event == zmq.EVENT_ACCEPTED:
                self.counts["subscribers"] += 1
            elif event == zmq.EVENT_DISCONNECTED:
                self.counts["subscribers"] = max(0, self.counts["subscribers"] - 1)

    def state(self) -> dict[str, Any]:
        """The router's counters: the data of sys.router.stats and of the `state` query."""
        j, q, c = self.journal, self._queries.counters, self.counts
        return {
            "router_epoch": self.router_epoch, "origin": j.origin, "pid": os.getpid(),
            "first": j.first, "last": j.last, "persistent": j.persistent,
            "journal": {"messages": len(j), "bytes": j.bytes, "max_messages": j.max_messages,
                        "max_bytes": j.max_bytes, "evicted": j.evicted,
                        "persistent": j.persistent, "path": str(j.path or ""),
                        "file_bytes": j.file_bytes},
            "rates": dict(self._rates),
            "counts": {
                "received": c["received"], "journaled": c["journaled"],
                "duplicates": c["duplicates"], "out_of_order": c["out_of_order"],
                "bad": {"total": sum(self.bad.values()),
                        "by_reason": {k: v for k, v in self.bad.items() if v},
                        "suppressed_reports": self._bad_limit.suppressed},
                "gaps_open": len(self._gaps), "gaps_opened": c["gaps_opened"],
                "gaps_lost": c["gaps_lost"], "gaps_filled": c["gaps_filled"],
                "syncs": c["syncs"], "sent": c["sent"],
                "replay_requests": q.replay_requests, "replayed": q.replayed,
                "queries": q.requests, "query_errors": q.errors,
                "replies_dropped": c["replies_dropped"],
                "egress_gaps": q.egress_gaps, "egress_missed": q.egress_missed,
                "subscriptions": c["subscriptions"], "unsubscriptions": c["unsubscriptions"],
            },
            "subscribers": c["subscribers"],
            "sources": len(j.sources),
        }

    def _publish_stats(self) -> None:
        now = time.monotonic()
        at, received, sent = self._rate_base
        dt = max(now - at, 1e-6)
        self._rates = {"in": round((self.counts["received"] - received) / dt, 1),
                       "out": round((self.counts["sent"] - sent) / dt, 1)}
        self._rate_base = (now, self.counts["received"], self.counts["sent"])
        # Gaps of pairs evicted from the source table can never be filled or lost: forget them.
        for key in [k for k in self._gaps if k not in self.journal.sources]:
            del self._gaps[key]
        self._publish_own(topics.ROUTER_STATS, self.state())
        self._next_stats = now + self.config.stats_interval


def serve(config: RouterConfig) -> int:
    """Run a router until SIGTERM/SIGINT: 0 after a clean stop, 1 if it cannot start, 2 on a bug."""
    router = Router(config)
    try:
        router.open()
    except (BusError, OSError, zmq.ZMQError) as exc:
        log.error("router not started: %s", exc)
        router.close()
        return 1

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("router got %s, stopping", signal.Signals(signum).name)
        router.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        router.run()
    except Exception:
        log.exception("router stopped on an unexpected error")
        return 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
