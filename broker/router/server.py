"""The router process: journals every envelope once, stamps it with a gseq, fans it out.

One thread runs everything through a `zmq.Poller` over four sockets: XSUB ingress, XPUB egress
(subscription messages, counted), ROUTER query (`broker.router.query`) and an inproc PULL that
`stop` pokes. Ingress is drained in batches of up to `INGRESS_BATCH` messages; per batch the
router

1. checks each message once (`broker.router.ingress`: topic rules, then size before any
   decoding, then the envelope), applies the per-(src, epoch) sequencing of
   `broker.wire.protocol` and journals accepted ones; a refused one still uses up its seq (only
   src/epoch/seq are read from a body that is too large or invalid) and raises hc through
   `Journal.advance`, which the journal file keeps too;
2. flushes the journal file (fsync if configured), so nothing below is ever ahead of the disk;
   when the file cannot be written the batch is held and the router is *blocked*: it reads no
   ingress, raises one transient ``sys.alarm``, keeps answering queries and retries with
   backoff until a write succeeds (`_journal_blocked`, docs/storage-faults.md);
3. publishes the batch's accepted envelopes, then one ``ack.<src>`` per pair it touched.

The decisions live in I/O-free parts, and this module carries them out: `broker.router.sequencer`
says whether a seq is next, a duplicate, early, from an unknown pair or ends a lost range (and
keeps the gap state); the router journals, advances hc, publishes the gap reports and sends the
acks and resync requests. Bad input is counted by reason in `broker.router.bad_input`, which also
rate-limits the reports; the router logs each report with its hex excerpt and publishes it on
``sys.router.bad``. `broker.router.stats` builds the ``sys.router.stats`` map. Nothing a peer
sends can raise out of the loop.

Endpoints ending in port ``0`` or ``*`` (``tcp://127.0.0.1:0``) bind a port the OS picks, one
per socket. Once all three are bound the router logs its "up" line at INFO, naming the
endpoints it actually got (ZeroMQ's LAST_ENDPOINT, also in `Router.endpoints`)::

    router epoch 1718000000000000 up: ingress tcp://127.0.0.1:41011, egress
    tcp://127.0.0.1:41013, query tcp://127.0.0.1:41015, journal in memory (gseq 1..0)

(one line). A program that starts a private router on port 0 (the test suite does) waits for
this line, reads the three endpoints from it and gives them to its clients; a restart on those
same endpoints binds the same ports again. Explicit ports are bound as given.

Leases (`broker.router.leases`, docs/leases.md): the query ops ``claim``/``release`` grant a
bus name to one epoch; a sequenced message whose src is held by another epoch is fenced in
`_ingest` before sequencing (not journaled, not forwarded, its seq not used up, the sender told
on ``ack.<src>``, reported on ``sys.router.denied``); each batch renews the leases of the pairs
it touched and expires the rest (`_keep_leases`), and every change is journaled on
``sys.router.lease``. With a journal file, `open` restores the leases held when the last router
stopped once its sockets are bound, before the loop reads a message (`_restore_leases`), so
fencing holds across a restart.

With ``[router.security] curve = true`` (`broker.security`) every socket is a CURVE server,
the router answers ZAP on its own loop (one more socket), and each ingress message is checked
against the key it came with (the ZAP User-Id libzmq attaches to it, read from the first frame)
before anything else is done with it: a refused one is counted, reported on
``sys.router.denied`` and never journaled or forwarded; it uses up its seq only when its src is
one the key may use (a spoofed src must not advance somebody else's stream). Monitors on the
three sockets log failed handshakes with the peer address.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from types import FrameType
from typing import Any, Final, cast

import zmq
from zmq.utils.monitor import recv_monitor_message

from broker import security
from broker.config import RouterConfig
from broker.memory import tune_malloc
from broker.router import ingress
from broker.router.bad_input import BadInput
from broker.router.journal import Journal, SourceKey
from broker.router.journal_file import JournalWriteError
from broker.router.leases import LeaseEvent, LeaseHistory, LeaseTable
from broker.router.query import LeaseOps, QueryHandler
from broker.router.sequencer import GapEvent, GapState, Sequencer, Verdict
from broker.router.stats import COUNTS, Rates, state_map
from broker.wire import envelope, rules, topics
from broker.wire.envelope import STAMP
from broker.wire.errors import BusError, ConfigError, EnvelopeError, TopicError

log = logging.getLogger(__name__)

SRC: Final = rules.ROUTER_SRC
INGRESS_BATCH: Final = 1000
QUERY_BATCH: Final = 100
MAX_POLL_S: Final = 0.25  # stop() is also a flag: bound how long a missed wake-up can delay it
XSUB_MAXMSGSIZE: Final = 64 * 1024 * 1024  # hard memory guard; max_message_bytes is the policy
# Ingress bodies from this size stay in their ZeroMQ Frame (a memoryview of it): journaled,
# checked (`ingress.lean_fields`) and forwarded without a copy. Smaller ones are taken as bytes,
# which is cheaper than a Frame's buffer at that size (ZeroMQ copies them anyway).
ZERO_COPY_MIN: Final = 64 * 1024
INGRESS_HWM: Final = 10_000
TOPIC_CACHE_MAX: Final = 10_000
DENIED_TOPIC: Final = topics.ROUTER_DENIED
FENCE_ACK_EVERY: Final = 0.2  # seconds between fenced acks to one (src, epoch)

_GAP_COUNTS: Final[dict[GapState, str]] = {
    "open": "gaps_opened", "filled": "gaps_filled", "lost": "gaps_lost"}
# pyzmq's Python layer is a noticeable share of the cost of a frame; the router calls the Cython
# socket methods directly.
_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
_MORE: Final = int(zmq.SNDMORE | zmq.NOBLOCK)
_LAST: Final = int(zmq.NOBLOCK)


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
        self._encoder = envelope.Encoder(SRC, self.router_epoch)  # acks: one per batch and pair
        self._pending: list[tuple[bytes, bytes, bytes]] = []  # egress frames of this batch
        self._touched: dict[SourceKey, None] = {}  # pairs to ack after this batch
        self._sequencer = Sequencer(self.journal.sources, config.gap_timeout)
        self._hc_of = self.journal.sources.get  # hot path: one bound method, looked up once
        # topic frame -> (its rule, the kinds that pass it: rules.passing_kinds)
        self._rules: dict[bytes, tuple[rules.TopicRule, frozenset[str]]] = {}
        self._max_body = config.max_message_bytes
        self._bad_input = BadInput()
        self.counts: dict[str, int] = dict.fromkeys(COUNTS, 0)
        self.bad = self._bad_input.counts
        self._rates = Rates()
        self._next_stats = time.monotonic() + config.stats_interval
        self._security = security.security_of(config.security)
        self._keys: security.KeyRing | None = None
        self._user: str | None = None  # ZAP User-Id of the ingress message being handled
        self._denials = security.Denials()
        self._watches: dict[zmq.Socket[bytes], security.HandshakeWatch] = {}
        self._leases = LeaseTable()  # one live instance per name: see broker.router.leases
        self._held = self._leases.held  # hot path: name -> holder epoch
        self.journal.leases_snapshot = self._leases.snapshot  # in every snapshot of the file
        self._lease_ops = self._queries.leases = LeaseOps(
            self._leases, self._lease_event, blind=lambda: self.journal.fault is not None)
        self._fence_acks: dict[SourceKey, float] = {}  # when each fenced pair was last told

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Load the journal and bind the sockets; raises BusError/OSError naming what failed."""
        if self._opened:
            return
        history = LeaseHistory()
        self.journal.open(history.observe)
        curve = self._open_security()
        self._xsub = self._bind(zmq.XSUB, "ingress", {zmq.MAXMSGSIZE: XSUB_MAXMSGSIZE,
                                                      zmq.RCVHWM: INGRESS_HWM, **curve})
        self._xsub.send(b"\x01")  # XSUB subscribes by message: everything, for every publisher
        self._xpub = self._bind(zmq.XPUB, "egress", {zmq.SNDHWM: self.config.egress_hwm,
                                                     zmq.XPUB_VERBOSE: 1, **curve})
        self._query = self._bind(zmq.ROUTER, "query", {zmq.ROUTER_MANDATORY: 1, **curve})
        events = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
        self._monitor = self._xpub.get_monitor_socket(
            security.HANDSHAKE_EVENTS if curve else events)
        self._wake = self._ctx.socket(zmq.PULL)
        self._wake.bind(self._wake_url)
        self._sockets += [self._monitor, self._wake]
        self._poller = zmq.Poller()
        for sock in (self._xsub, self._xpub, self._query, self._monitor, self._wake):
            self._poller.register(sock, zmq.POLLIN)
        if curve:
            self._watch_handshakes()
        # After the binds (a start that fails journals nothing), before the loop reads a message
        self._restore_leases(history)
        self._opened = True
        fault = self.journal.fault  # a full or read-only disk: up, but blocked (_journal_blocked)
        log.info("router epoch %d up: ingress %s, egress %s, query %s, journal %s (gseq %d..%d)"
                 "%s%s", self.router_epoch, self.endpoints["ingress"], self.endpoints["egress"],
                 self.endpoints["query"], self.journal.path or "in memory",
                 self.journal.first, self.journal.last,
                 f", CURVE with keys in {self._security.keys_dir}" if self._security else "",
                 f", journal blocked: {fault.error}" if fault else "")
        if fault is not None:
            self._journal_blocked()
        elif self._pending:  # the restored leases' records: on disk before any query is read
            self._finish_batch()

    def _restore_leases(self, history: LeaseHistory) -> None:
        """With a journal file: hold again every lease it says was held when the last router
        stopped (`LeaseHistory`: its snapshot, then its sys.router.lease records), each until
        now + its ttl, so other epochs of those names stay fenced until the holder claims or
        sends again, or its lease runs out. One WARNING line, one `restored` record each."""
        held, generation = history.result(self.journal.loaded_leases)
        for problem in history.problems:
            log.warning("journal %s: lease record ignored: %s", self.journal.path, problem)
        if history.ignored > len(history.problems):
            log.warning("journal %s: %d more lease records ignored", self.journal.path,
                        history.ignored - len(history.problems))
        events = self._leases.restore(held, generation, time.monotonic())
        if not events:
            if history.records or self.journal.loaded_leases is not None:
                log.info("journal %s: no lease was held when the last router stopped (%d lease "
                         "records read; generations go on from %d)", self.journal.path,
                         history.records, generation)
            return
        names = ", ".join(f"{e.lease.name} (epoch {e.lease.epoch} on {e.lease.host} pid "
                          f"{e.lease.pid}, generation {e.lease.generation})" for e in events[:10])
        log.warning("restored %d lease(s) held when the last router stopped, from journal %s: "
                    "%s%s; other epochs of these names are fenced until each holder claims "
                    "again or its ttl runs out", len(events), self.journal.path, names,
                    f" and {len(events) - 10} more" if len(events) > 10 else "")
        for event in events:
            self._publish_own(topics.ROUTER_LEASE, event.data())

    def _open_security(self) -> dict[int, int | bytes]:
        """With CURVE: load the keys, bind the ZAP handler (before any server socket, or
        libzmq would let every key in) and return the server socket options; else {}."""
        if self._security is None:
            return {}
        try:
            _, secret = security.server_secret(self._security)
            self._keys = security.KeyRing(self._security)
            self._lease_ops.may_use = self._key_may_use
        except (ConfigError, OSError) as exc:
            raise BusError(f"router.security: {exc}") from exc
        self._zap: zmq.Socket[bytes] = self._ctx.socket(zmq.REP)
        self._sockets.append(self._zap)
        self._zap.setsockopt(zmq.LINGER, 0)
        try:
            self._zap.bind(security.ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            raise BusError(f"cannot bind the ZAP handler: {exc.strerror}") from exc
        return {zmq.CURVE_SERVER: 1, zmq.CURVE_SECRETKEY: secret,
                zmq.ZAP_DOMAIN: security.ZAP_DOMAIN}

    def _watch_handshakes(self) -> None:
        """ZAP answers, and monitors that name the peer of every failed handshake."""
        self._poller.register(self._zap, zmq.POLLIN)
        self._watches[self._monitor] = security.HandshakeWatch("egress")
        for which, sock in (("ingress", self._xsub), ("query", self._query)):
            monitor = sock.get_monitor_socket(security.HANDSHAKE_EVENTS)
            self._sockets.append(monitor)
            self._poller.register(monitor, zmq.POLLIN)
            self._watches[monitor] = security.HandshakeWatch(which)

    def _bind(self, kind: int, which: str,
              options: dict[int, int | bytes]) -> zmq.Socket[bytes]:
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
                if self._watches:
                    self._xsub.disable_monitor()
                    self._query.disable_monitor()
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
        fault = self.journal.fault
        if fault is not None:  # blocked: the next write attempt is due then
            wait = min(wait, max(fault.next_try - time.monotonic(), 0.0))
        # rounded up: a wait under 1 ms rounded down to 0 would spin until the stats are due
        events = dict(self._poller.poll(math.ceil(wait * 1000)))
        if self._xsub in events:
            self._drain_ingress()
        if self._xpub in events:
            self._read_subscriptions()
        if self._query in events:
            self.counts["replies_dropped"] += self._queries.serve(self._query, QUERY_BATCH)
        if self._monitor in events:
            self._read_monitor()
        if self._watches:
            self._read_security(events)
        if self._wake in events:
            while self._wake.poll(0):
                self._wake.recv()
        if fault is not None and time.monotonic() >= fault.next_try:
            self._retry_journal()
        if time.monotonic() >= self._next_stats:
            if self.journal.fault is None:
                self._publish_stats()
                self._finish_batch()
            else:  # stats are journaled: none while blocked (`state` queries still answer)
                self._next_stats = time.monotonic() + self.config.stats_interval

    def _drain_ingress(self) -> None:
        sock = self._xsub
        secure = self._keys is not None
        n = 0
        while n < INGRESS_BATCH:
            # Frames, not bytes: a Frame knows whether more follow (a getsockopt(RCVMORE) call
            # costs more) and carries the key it came with.
            try:
                frame = _recv(sock, _LAST, False)
            except zmq.Again:
                break
            if secure:
                self._user = _user_id(frame)
            frames = [frame.bytes]
            while frame.more:
                frame = _recv(sock, _LAST, False)
                # A big body stays in its Frame: journaled and forwarded without a copy. It is
                # typed as bytes for the code below, which reads it only as a buffer (len,
                # slices, msgpack, crc32, file writes, sends).
                frames.append(frame.bytes if len(frame) < ZERO_COPY_MIN
                              else cast(bytes, frame.buffer))
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
        if self.journal.fault is not None:
            return  # blocked: the batch is held until a retry writes it (_retry_journal)
        if self._leases:  # before the flush: the lease events it journals go out with the batch
            self._keep_leases()
        try:
            self.journal.flush()
        except JournalWriteError:
            self._journal_blocked()
            return
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
        cached = self._rules.get(tframe)
        if cached is None:
            cached = self._rule(frames)
            if cached is None:
                return
        rule, passing = cached
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
        src, epoch, seq = f[0], f[1], f[2]
        if self._keys is not None and self._denied(rule[0], f, frames):
            return
        if self._held and seq and self._held.get(src, epoch) != epoch and self._fenced(f, frames):
            return
        if f[3] in passing and seq and src != SRC:  # rules.refusal would say None
            key = (src, epoch)
            if self._hc_of(key) == seq - 1:  # the next seq of a known pair: Verdict.NEXT
                self._touched[key] = None
                self._accept(key, tframe, rule[0], body, seq)
                filled = self._sequencer.took(key, seq)
                if filled is not None:
                    self._report_gap(filled)
            else:
                self._sequence(key, seq, tframe, rule[0], body)
            return
        if rule[2] == rules.SYNC and src != SRC:
            self._sync(f, frames)
            return
        refusal = rules.refusal(rule, f)
        if refusal is not None:
            self._bad(refusal[0], frames, refusal[1])
            self._consume(src, epoch, seq)
        else:
            self._sequence((src, epoch), seq, tframe, rule[0], body)

    def _rule(self, frames: list[bytes]) -> tuple[rules.TopicRule, frozenset[str]] | None:
        """Decide and cache the rule of a topic not seen before; None (reported) if invalid."""
        tframe = frames[0]
        try:
            rule = rules.topic_rule(tframe)
        except TopicError as exc:
            self._bad("topic", frames, str(exc))
            return None
        if len(self._rules) >= TOPIC_CACHE_MAX:
            self._rules.clear()
        cached = self._rules[tframe] = (rule, rules.passing_kinds(rule))
        return cached

    def _consume_unread(self, body: bytes) -> None:
        """A body refused before it was decoded still uses up its seq, if that can be read."""
        head = ingress.sequence_fields(body)
        if head is not None:
            self._consume(*head)

    def _consume(self, src: str, epoch: int, seq: int) -> None:
        """A refused envelope still uses up its seq, so the sender's stream does not stall:
        it is sequenced like an accepted one, only nothing is journaled or forwarded."""
        if seq > 0 and src != SRC and self._may_use(src) \
                and (not self._held or self._held.get(src, epoch) == epoch):  # not fenced
            self._sequence((src, epoch), seq)

    def _sequence(self, key: SourceKey, seq: int, tframe: bytes = b"", topic: str = "",
                  body: bytes | None = None) -> None:
        """Act on the sequencer's verdict (see `broker.router.sequencer`); `body` is None for a
        refused envelope."""
        verdict, gap = self._sequencer.check(key, seq)
        if verdict is Verdict.UNKNOWN:
            self._ask_resync(key, seq)
            return
        self._touched[key] = None
        if gap is not None:
            self._report_gap(gap)
            if verdict is Verdict.LOST:  # hc skips the range just reported; look at seq again
                self.journal.advance(key, gap.missing[-1])
                self._sequence(key, seq, tframe, topic, body)
                return
        if verdict is Verdict.NEXT:
            if body is None:
                self.journal.advance(key, seq)
            else:
                self._accept(key, tframe, topic, body, seq)
            filled = self._sequencer.took(key, seq)
            if filled is not None:
                self._report_gap(filled)
        elif verdict is Verdict.DUPLICATE:
            if body is not None:
                self.counts["duplicates"] += 1
        else:
            self.counts["out_of_order"] += 1

    def _accept(self, key: SourceKey, tframe: bytes, topic: str, body: bytes, seq: int) -> None:
        self.journal.sources.put(key, seq)
        gseq = self.journal.append(topic, body, key[0], key[1], seq)
        # A big body is a memoryview of the Frame it came in (`_drain_ingress`): sending that
        # Frame again hands ZeroMQ the same message buffer (a reference count, not a copy).
        out: Any = body
        if type(out) is memoryview:
            out = out.obj
        self._pending.append((tframe, out, STAMP.pack(self.router_epoch, gseq)))
        self.counts["journaled"] += 1

    def _report_gap(self, gap: GapEvent) -> None:
        self.counts[_GAP_COUNTS[gap.state]] += 1
        log.log(logging.INFO if gap.state == "filled" else logging.WARNING,
                "ingress gap %s: %s epoch %d expected seq %d, got %d%s", gap.state, gap.key[0],
                gap.key[1], gap.expected, gap.got,
                f", missing {list(gap.missing)}" if gap.missing else "")
        self._publish_own(topics.ROUTER_GAP, gap.data())
        if gap.state == "lost":  # each lost gap is one episode: say it where operators look
            self._publish_own(topics.ALARM, {
                "alarm": "ingress_lost", "source": gap.key[0], **gap.data(),
                "message": f"router: {len(gap.missing) or gap.got - gap.expected} message(s) "
                           f"from {gap.key[0]} never arrived (declared lost after "
                           f"gap_timeout)"})

    def _ask_resync(self, key: SourceKey, seq: int) -> None:
        """An unknown (src, epoch) not starting at seq 1: this router lost its state (restart
        without journal, evicted pair); the sender's sync will tell where its outbox starts."""
        self.counts["unknown_source"] += 1
        if not self._sequencer.resync_due(key):
            return
        log.info("unknown source %s epoch %d sent seq %d: asking it to sync", key[0], key[1], seq)
        self._transient(f"ack.{key[0]}", {"epoch": key[1], "seq": 0, "resync": True})

    def _sync(self, f: rules.Fields, frames: list[bytes]) -> None:
        src, epoch, seq, kind, data = f
        token = data.get("token")
        if kind != "system" or seq != 0 or not isinstance(token, str):
            self._bad("sync", frames, "ctl.sync needs kind system, seq 0 and data.token (str)")
            self._consume(src, epoch, seq)
            return
        self.counts["syncs"] += 1
        start = self._sequencer.register((src, epoch), data.get("next"))
        if start is not None:  # before answering: the answer's hc must include `next`
            hc, lost = start
            if lost is not None:
                self._report_gap(lost)
            self.journal.advance((src, epoch), hc)
        self._transient(f"ack.{src}", {
            "sync": token, "head": self.journal.last, "first": self.journal.first,
            "router_epoch": self.router_epoch, "origin": self.journal.origin, "epoch": epoch,
            "seq": self.journal.sources.get((src, epoch)) or 0})

    def _bad(self, reason: str, frames: list[bytes], error: str) -> None:
        report = self._bad_input.refuse(reason, frames, error)
        if report is None:
            return
        log.warning("bad ingress message (%s): %s; topic %r, %d bytes, %d frames, excerpt %s"
                    " (%d similar reports suppressed before this one)", reason, error,
                    report["topic"], report["size"], report["frames"], report["excerpt"],
                    report["suppressed"])
        self._publish_own(topics.ROUTER_BAD, report)

    # -- security ----------------------------------------------------------------------------

    def _may_use(self, src: str) -> bool:
        """Without CURVE any src; with it, only a src the sending key may use."""
        if self._keys is None:
            return True
        key = self._keys.by_name.get(self._user or "")
        return key is not None and self._keys.may_use_src(key, src)

    def _denied(self, topic: str, f: rules.Fields, frames: list[bytes]) -> bool:
        """Check one decoded ingress message against its key; True (and reported) if refused."""
        assert self._keys is not None
        src = f[0]
        verdict = self._keys.refusal(self._user, topic, src)
        if verdict is None:
            return False
        key, reason = verdict
        name = key.name if key is not None else (self._user or "?")
        self._denials.message(name)
        if self._may_use(src) and f[2] > 0:
            # the sender's own stream: its seq is used up and it is told why (Bus logs it)
            self._consume(src, f[1], f[2])
            self._transient(f"ack.{src}", {"epoch": f[1], "denied": f[2], "reason": reason})
        suppressed = self._denials.report(f"key:{name}", time.monotonic())
        if suppressed is not None:
            log.warning("denied: key %r (%s) published %s with src %r: %s (%d similar reports "
                        "suppressed before this one)", name, key.role if key else "unknown",
                        topic, src, reason, suppressed)
            self._publish_own(DENIED_TOPIC, {
                "key": name, "role": key.role if key else None, "topic": topic, "src": src,
                "reason": reason, "size": len(frames[-1]), "count": self._denials.by_key[name],
                "suppressed": suppressed})
        return True

    def _read_security(self, events: dict[Any, int]) -> None:
        assert self._keys is not None
        if self._zap in events:
            for _ in range(QUERY_BATCH):
                try:
                    request = self._zap.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                reply, refused = self._keys.zap_answer(request)
                self._zap.send_multipart(reply)
                if refused is not None:
                    self._refused_handshake(refused)
        for monitor, watch in self._watches.items():
            if monitor not in events:
                continue
            while monitor.poll(0):
                msg = recv_monitor_message(monitor)
                event = int(msg["event"])
                if monitor is self._monitor:
                    self._count_subscriber(event)
                report = watch.event(event, int(msg["value"]))
                if report is not None:
                    self._refused_handshake(report)

    def _refused_handshake(self, report: dict[str, Any]) -> None:
        """A peer that could not connect: logged with its address, reported (rate-limited)."""
        self._denials.handshakes += 1
        host = str(report["peer"]).rsplit(":", 1)[0]  # a reconnecting peer changes port
        suppressed = self._denials.report(f"peer:{host}", time.monotonic())
        if suppressed is None:
            return
        details = ", ".join(f"{k} {v}" for k, v in report.items() if k != "peer")
        log.warning("CURVE handshake refused from %s: %s (%d similar reports suppressed before "
                    "this one)", report["peer"], details, suppressed)
        self._publish_own(DENIED_TOPIC, {"key": None, "handshake": True, **report,
                                         "count": self._denials.handshakes,
                                         "suppressed": suppressed})
        self._finish_batch()

    # -- leases (broker.router.leases) -------------------------------------------------------

    def _fenced(self, f: rules.Fields, frames: list[bytes]) -> bool:
        """A message of a src whose name another epoch holds: refused before sequencing (its
        seq stays unused, so the sender's outbox keeps it), counted, reported, and the sender
        told on ack.<src>. False when the holder's lease has expired (nothing fenced)."""
        src, epoch, seq = f[0], f[1], f[2]
        now = time.monotonic()
        lease = self._leases.holder(src, now)
        if lease is None:
            return False
        self.counts["fenced"] += 1
        holder = lease.holder()
        reason = (f"fenced: {src} is held by epoch {lease.epoch} on {lease.host} pid "
                  f"{lease.pid} since {_clock(lease.since)}; this instance (epoch {epoch}) "
                  f"must not run")
        key = (src, epoch)
        if now - self._fence_acks.get(key, -1.0) >= FENCE_ACK_EVERY:
            if len(self._fence_acks) >= TOPIC_CACHE_MAX:
                self._fence_acks.clear()
            self._fence_acks[key] = now
            self._transient(f"ack.{src}", {"epoch": epoch, "fenced": seq, "holder": holder,
                                           "reason": reason})
        suppressed = self._denials.report(f"fenced:{src}", now)
        if suppressed is not None:
            log.warning("%s (seq %d on %s; %d similar reports suppressed before this one)",
                        reason, seq, frames[0].decode(errors="replace"), suppressed)
            self._publish_own(DENIED_TOPIC, {
                "key": None, "src": src, "epoch": epoch, "seq": seq, "reason": reason,
                "fenced": True, "holder": holder, "topic": frames[0].decode(errors="replace"),
                "size": len(frames[-1]), "count": self.counts["fenced"],
                "suppressed": suppressed})
        return True

    def _keep_leases(self) -> None:
        """Traffic renews: every pair this batch touched extends its lease; then expiry."""
        now = time.monotonic()
        renew = self._leases.renew
        for key in self._touched:
            event = renew(key, now)
            if event is not None:
                self._lease_event(event, flush=False)
        for event in self._leases.expire(now):
            self._lease_event(event, flush=False)

    def _lease_event(self, event: LeaseEvent, flush: bool = True) -> None:
        """Log and journal one lease change on sys.router.lease; a query's event goes out at
        once (`flush`), a batch's with its batch."""
        level = logging.WARNING if event.event in ("refused", "expired") else logging.INFO
        log.log(level, "%s", event.text())
        self._publish_own(topics.ROUTER_LEASE, event.data())
        if flush:
            self._finish_batch()

    def _key_may_use(self, user: str | None, name: str) -> bool:
        """CURVE: whether the key with ZAP User-Id `user` may claim or release `name`."""
        assert self._keys is not None
        key = self._keys.by_name.get(user or "")
        return key is not None and self._keys.may_use_src(key, name)

    # -- the router's own messages -----------------------------------------------------------

    def _publish_own(self, topic: str, data: dict[str, Any]) -> None:
        """A journaled router envelope (src router, its own seq), sent with the batch."""
        self._own_seq += 1
        _, body = self._encoder.build(self._own_seq, "system", data)
        gseq = self.journal.append(topic, body, SRC, self.router_epoch, self._own_seq)
        self._pending.append((topic.encode(), body, STAMP.pack(self.router_epoch, gseq)))

    def _transient(self, topic: str, data: dict[str, Any]) -> None:
        """An unjournaled router envelope: seq 0, stamp gseq 0 (acks, sync replies)."""
        _, body = self._encoder.build(0, "system", data)
        self._pending.append((topic.encode(), body, STAMP.pack(self.router_epoch, 0)))

    # -- storage faults (docs/storage-faults.md) ---------------------------------------------

    def _journal_blocked(self) -> None:
        """The journal cannot be written: hold the batch (not published, not acked), stop
        reading ingress (ZeroMQ's HWMs push back, publishers keep everything in their
        outboxes) and say so once, on sys.alarm, as a transient: the disk cannot take it."""
        fault = self.journal.fault
        assert fault is not None
        with contextlib.suppress(KeyError):
            self._poller.unregister(self._xsub)
        alarm = fault.alarm()
        log.error("%s; holding %d message(s), ingress paused until a write succeeds",
                  alarm["message"], len(self._pending))
        _, body = self._encoder.build(0, "system", alarm)
        _send(self._xpub, topics.ALARM.encode(), _MORE)
        _send(self._xpub, body, _MORE)
        _send(self._xpub, STAMP.pack(self.router_epoch, 0), _LAST)

    def _retry_journal(self) -> None:
        """One write attempt while blocked; on success journal the episode's end, publish
        the held batch and its acks, and read ingress again."""
        ended = self.journal.retry()
        if ended is None:
            return
        resolved = ended.resolved(time.monotonic())
        log.warning("%s after %d retries; ingress resumes", resolved["message"], ended.retries)
        self._publish_own(topics.ALARM, resolved)
        if self._leases:  # no ingress was read: the holders' silence was ours, not theirs
            self._leases.hold_all(time.monotonic())
        self._poller.register(self._xsub, zmq.POLLIN)
        self._finish_batch()

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
        if self._watches:  # CURVE: the egress monitor also feeds its HandshakeWatch
            return
        while self._monitor.poll(0):
            self._count_subscriber(recv_monitor_message(self._monitor)["event"])

    def _count_subscriber(self, event: int) -> None:
        if event == zmq.EVENT_ACCEPTED:
            self.counts["subscribers"] += 1
        elif event == zmq.EVENT_DISCONNECTED:
            self.counts["subscribers"] = max(0, self.counts["subscribers"] - 1)

    def state(self) -> dict[str, Any]:
        """The router's counters: the data of sys.router.stats and of the `state` query."""
        state = state_map(self.router_epoch, self.journal, self.counts, self._bad_input,
                          self._sequencer.open_gaps, self._queries.counters, self._rates.current)
        if self._keys is not None:
            state["denied"] = self._denials.counts()
        state["leases"] = self._leases.table(time.monotonic())
        state["journal"] = {**state["journal"], **self.journal.fault_info()}
        return state

    def _publish_stats(self) -> None:
        now = time.monotonic()
        self._rates.update(now, self.counts["received"], self.counts["sent"])
        self._sequencer.forget_evicted()
        if self._keys is not None:
            self._keys.refresh()  # a revocation takes effect on open connections too
        self._publish_own(topics.ROUTER_STATS, self.state())
        self._next_stats = now + self.config.stats_interval


def _clock(wall: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall))


def _user_id(frame: zmq.Frame) -> str | None:
    try:
        value = frame.get("User-Id")
    except zmq.ZMQError:  # not set: only possible without ZAP, i.e. a bug in our setup
        return None
    return value if isinstance(value, str) else None


def serve(config: RouterConfig) -> int:
    """Run a router until SIGTERM/SIGINT: 0 after a clean stop, 1 if it cannot start, 2 on a bug."""
    tune_malloc()  # big bodies reuse freed memory instead of faulting in new pages
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
