"""The metrics program (``sctl metrics``): Prometheus metrics and the live status page of a site.

One per site, on the router's host unless ``[metrics] runs_on`` says otherwise: everything it
reports comes through the one router (heartbeats, router stats, every host's watchdog view)
or from every host's supervisord (`cli.ops.supervisor_rpc` reaches the remote ones), so one
program sees the whole site, and Prometheus scrapes one target whose series are never
duplicated by a second exporter.

Three threads: the bus thread (this module's `serve`) owns the Bus and feeds `SiteMonitor`; a
supervisord thread polls every host's supervisord each ``poll_interval``; the HTTP server
(`cli.ops.web`) serves each client on a thread of its own. The bus thread never writes to a
client: it hands the page's state to the web hub, where each client takes the latest one, so
a slow or stuck client delays only itself.

`SiteCollector` is a prometheus_client custom collector: each scrape builds the families from
the latest heartbeat of each actor, the latest router stats and the latest watchdog views, so
each counter is the one its owner reports (no counting twice, and a restarted actor's counter
restarts at 0, which Prometheus's ``rate`` handles). Metric names:

========================================  ========  =========================================
name                                      type      from
========================================  ========  =========================================
sctl_actor_up{actor}                      gauge     heartbeat fresh, state running, and
                                                    supervisord runs that pid
sctl_actor_info{actor,type,host,version}  gauge     heartbeat (always 1)
sctl_actor_heartbeat_age_seconds          gauge     heartbeat time (sender's clock) to now
sctl_actor_uptime_seconds                 gauge     heartbeat
sctl_actor_link_state{actor,state}        gauge     1 for the link's state (connecting, up,
                                                    down, idle), 0 for the others
sctl_actor_link_state_seconds             gauge     time in that link state
sctl_actor_events_total                   counter   heartbeat counters.events
sctl_actor_commands_total{outcome}        counter   ok, error, expired (deadline passed, not
                                                    run), duplicate (answered from the cache)
sctl_actor_outbox_messages                gauge     envelopes waiting for the router's ack
sctl_actor_outbox_dropped_total           counter   outbox overflow (router unreachable)
sctl_actor_outbox_fill                    gauge     outbox fill, 0..1 of its tighter bound
sctl_actor_device_paused                  gauge     1 while backpressure pauses device reads
sctl_actor_device_pauses_total            counter   times backpressure paused device reads
sctl_actor_subscriber_lost_total          counter   evicted before its Bus could fetch them
sctl_program_running{program}             gauge     supervisord state RUNNING
sctl_program_alarm{program}               gauge     the watchdog's alarm is raised
sctl_watchdog_restarts_total{program}     counter   the watchdog's restarts of the program
sctl_watchdog_restarts_in_window          gauge     restarts inside restart_window
sctl_router_*                             mixed     sys.router.stats (see `_router`)
sctl_event_latency_seconds{actor}         histogram publish → arrival here of every event
sctl_alarms_total{source,alarm}           counter   sys.alarm messages seen by this program
========================================  ========  =========================================
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

from broker.client.bus import Bus, client_name
from broker.config import SiteConfig
from broker.wire import protocol, topics
from broker.wire.errors import BusError, EnvelopeError
from cli.ops.monitor import LATENCY_BUCKETS, SiteMonitor, now
from cli.ops.supervisor_rpc import Supervisor, SupervisorError, endpoints

log = logging.getLogger(__name__)

LINK_STATES: Final = ("connecting", "up", "down", "idle")
LE: Final = (*map(repr, LATENCY_BUCKETS), "+Inf")  # the histogram's bucket labels
PUSH_EVERY: Final = 0.5  # seconds between two states handed to the page's clients
OLDEST_EVERY: Final = 5.0  # seconds between two look-ups of the journal's oldest entry
M_ARENA_MAX: Final = -8  # glibc's mallopt parameter number
RCVHWM: Final = 5_000  # messages queued here (beyond, the router queues, then drops)
SUBSCRIPTIONS: Final = (f"{topics.EVENT}.", f"{topics.HEARTBEAT}.", f"{topics.SYSTEM}.",
                        f"{topics.LOG}.")


class SiteCollector(Collector):
    """The site's metrics, built at each scrape from what `monitor` holds now."""

    def __init__(self, monitor: SiteMonitor, clock: Callable[[], float] = time.time) -> None:
        self.monitor = monitor
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        m = self.monitor
        wall = self.clock()
        with m.lock:
            yield from self._actors(m, wall)
            yield from self._programs(m, wall)
            yield from self._router(m, wall)
            yield from self._latency(m)
            alarms = CounterMetricFamily("sctl_alarms", "sys.alarm messages this program saw "
                                         "since it started", labels=("source", "alarm"))
            for (source, alarm), count in sorted(m.alarm_counts.items()):
                alarms.add_metric((source, alarm), count)
            yield alarms
            yield CounterMetricFamily("sctl_metrics_deliveries", "messages this program "
                                      "received from the router", value=m.deliveries)

    @staticmethod
    def _actors(m: SiteMonitor, wall: float) -> Iterator[Metric]:
        up = GaugeMetricFamily("sctl_actor_up", "1 when the actor runs: a fresh heartbeat "
                               "saying running, from the process supervisord runs",
                               labels=("actor",))
        info = GaugeMetricFamily("sctl_actor_info", "the actor's type, host and version",
                                 labels=("actor", "type", "host", "version"))
        age = _gauge("sctl_actor_heartbeat_age_seconds", "seconds since the newest heartbeat "
                     "was sent (sender's clock)")
        uptime = _gauge("sctl_actor_uptime_seconds", "the actor process's uptime, as its "
                        "newest heartbeat says")
        link = GaugeMetricFamily("sctl_actor_link_state", "1 for the state the device link is "
                                 "in (connecting, up, down, idle = no link)",
                                 labels=("actor", "state"))
        link_for = _gauge("sctl_actor_link_state_seconds", "seconds the link has been in its "
                          "state")
        events = _counter("sctl_actor_events", "events the actor published")
        commands = CounterMetricFamily("sctl_actor_commands", "commands the actor answered, "
                                       "by outcome", labels=("actor", "outcome"))
        outbox = _gauge("sctl_actor_outbox_messages", "envelopes in the outbox, waiting for "
                        "the router's acknowledgement")
        dropped = _counter("sctl_actor_outbox_dropped", "envelopes the outbox dropped on "
                           "overflow (router unreachable)")
        lost = _counter("sctl_actor_subscriber_lost", "messages the actor's subscriptions "
                        "missed: evicted from the journal before they could be fetched")
        fill = _gauge("sctl_actor_outbox_fill", "outbox fill, 0..1 of its tighter bound "
                      "(device reads pause at 0.75, resume at 0.5)")
        paused = _gauge("sctl_actor_device_paused", "1 while a congested outbox pauses the "
                        "actor's device reads (backpressure)")
        pauses = _counter("sctl_actor_device_pauses", "times a congested outbox paused the "
                          "actor's device reads")
        for name in m.actor_names():
            up.add_metric((name,), 1.0 if m.actor_up(name, wall) else 0.0)
            beat = m.beats.get(name)
            if beat is None:
                continue
            d = beat.data
            info.add_metric((name, str(d.get("type") or ""), str(d.get("host") or ""),
                             str(d.get("version") or "")), 1.0)
            age.add_metric((name,), max(0.0, wall - beat.ts))
            if isinstance(d.get("uptime"), int | float):
                uptime.add_metric((name,), float(d["uptime"]))
            state_of = (d.get("link") or {}).get("state")
            since = (d.get("link") or {}).get("since")
            if state_of in LINK_STATES:
                for state in LINK_STATES:
                    link.add_metric((name, state), 1.0 if state == state_of else 0.0)
                if isinstance(since, int | float) and since > 0:
                    link_for.add_metric((name,), max(0.0, wall - since))
            for family, key in ((events, "events"), (outbox, "outbox"),
                                (dropped, "outbox_dropped"), (lost, "lost")):
                value = beat.counter(key)
                if value is not None:
                    family.add_metric((name,), value)
            for outcome, value in _outcomes(beat.counter).items():
                commands.add_metric((name, outcome), value)
            pressure = d.get("backpressure")
            if isinstance(pressure, dict):
                if isinstance(pressure.get("fill"), int | float):
                    fill.add_metric((name,), float(pressure["fill"]))
                paused.add_metric((name,), 0.0 if pressure.get("paused_since") is None else 1.0)
                pauses.add_metric((name,), beat.counter("device_pauses") or 0)
        yield from (up, info, age, uptime, link, link_for, events, commands, outbox, dropped,
                    lost, fill, paused, pauses)

    @staticmethod
    def _programs(m: SiteMonitor, wall: float) -> Iterator[Metric]:
        running = GaugeMetricFamily("sctl_program_running", "1 when supervisord reports the "
                                    "program RUNNING", labels=("program",))
        for name, prog in sorted(m.programs.items()):
            running.add_metric((name,), 1.0 if prog.info["statename"] == "RUNNING" else 0.0)
        sup = GaugeMetricFamily("sctl_supervisor_up", "1 when the supervisord answered its "
                                "last poll", labels=("supervisor",))
        for label, error in sorted(m.supervisors.items()):
            sup.add_metric((label,), 0.0 if error else 1.0)
        alarm = GaugeMetricFamily("sctl_program_alarm", "1 while the watchdog's alarm for the "
                                  "program is raised (left stopped after too many restarts, "
                                  "or supervisord gave up on it)", labels=("program",))
        restarts = CounterMetricFamily("sctl_watchdog_restarts", "restarts of the program by "
                                       "the watchdog since the watchdog started",
                                       labels=("program", "host"))
        window = GaugeMetricFamily("sctl_watchdog_restarts_in_window", "restarts inside the "
                                   "watchdog's restart_window (at max_restarts it gives up)",
                                   labels=("program", "host"))
        for name, (host, entry) in sorted(m.watchdog_programs(wall).items()):
            alarm.add_metric((name,), 1.0 if entry.get("alarm") else 0.0)
            restarts.add_metric((name, host), int(entry.get("total_restarts") or 0))
            window.add_metric((name, host), int(entry.get("restarts") or 0))
        age = GaugeMetricFamily("sctl_watchdog_view_age_seconds", "seconds since the "
                                "watchdog of the host last published its view",
                                labels=("host",))
        for host, (ts, _) in sorted(m.watchdogs.items()):
            age.add_metric((host,), max(0.0, wall - ts))
        yield from (running, sup, alarm, restarts, window, age)

    @staticmethod
    def _router(m: SiteMonitor, wall: float) -> Iterator[Metric]:
        yield GaugeMetricFamily("sctl_router_up", "1 when the router's stats are fresh "
                                "(3 stats intervals)", value=1.0 if m.router_up(wall) else 0.0)
        data = m.router.data
        if not data:
            return
        c = data.get("counts") or {}
        j = data.get("journal") or {}
        bad = c.get("bad") or {}
        yield GaugeMetricFamily("sctl_router_stats_age_seconds", "seconds since the newest "
                                "router stats", value=max(0.0, wall - m.router.ts))
        for name, doc, value in (
                ("ingress_messages", "envelopes received on ingress", c.get("received")),
                ("egress_messages", "messages published on egress", c.get("sent")),
                ("journaled_messages", "envelopes journaled", c.get("journaled")),
                ("duplicates", "duplicate envelopes dropped", c.get("duplicates")),
                ("fenced", "envelopes refused because another instance holds the sender's "
                 "name", c.get("fenced")),
                ("gaps_lost", "ingress sequence gaps declared lost", c.get("gaps_lost")),
                ("journal_evicted", "journal entries evicted by its bounds", j.get("evicted")),
                ("egress_missed", "messages subscribers asked for after their eviction",
                 c.get("egress_missed")),
                ("replies_dropped", "query answers dropped", c.get("replies_dropped"))):
            if isinstance(value, int):
                yield CounterMetricFamily(f"sctl_router_{name}", doc, value=value)
        bad_family = CounterMetricFamily("sctl_router_bad_input", "ingress input refused as "
                                         "bad, by reason", labels=("reason",))
        for reason, count in sorted((bad.get("by_reason") or {}).items()):
            bad_family.add_metric((str(reason),), int(count))
        yield bad_family
        span = m.journal_span()
        for name, doc, value in (
                ("journal_messages", "entries the journal holds", j.get("messages")),
                ("journal_bytes", "bytes of bodies the journal holds", j.get("bytes")),
                ("journal_max_messages", "journal bound by count", j.get("max_messages")),
                ("journal_max_bytes", "journal bound by bytes", j.get("max_bytes")),
                ("journal_file_bytes", "size of the journal file", j.get("file_bytes")),
                ("journal_span_seconds", "time from the journal's oldest entry to its newest",
                 span),
                ("journal_first_gseq", "gseq of the oldest entry", data.get("first")),
                ("journal_last_gseq", "gseq of the newest entry", data.get("last")),
                ("gaps_open", "ingress gaps waiting for a resend", c.get("gaps_open")),
                ("subscribers", "egress subscribers", data.get("subscribers")),
                ("journal_blocked", "1 while the journal cannot be written (its stats then "
                 "stop: watch sctl_router_stats_age_seconds too)", j.get("blocked")),
                ("journal_free_bytes", "free space where the journal file is",
                 j.get("free_bytes")),
                ("sources", "senders the router tracks", data.get("sources"))):
            if isinstance(value, int | float):  # a bool (journal_blocked) counts as 0/1
                yield GaugeMetricFamily(f"sctl_router_{name}", doc, value=float(value))

    @staticmethod
    def _latency(m: SiteMonitor) -> Iterator[Metric]:
        family = HistogramMetricFamily("sctl_event_latency_seconds", "time from an event's "
                                       "publication (its envelope ts, sender's clock) to its "
                                       "arrival at the metrics program", labels=("actor",))
        # the samples HistogramMetricFamily.add_metric makes, without its per-bucket list
        # building: this family is half of a scrape's samples
        name = family.name
        append = family.samples.append
        for actor_name, hist in sorted(m.latency.items()):
            total = 0
            for le, count in zip(LE, hist.counts, strict=True):
                total += count
                append(Sample(f"{name}_bucket", {"actor": actor_name, "le": le}, total))
            append(Sample(f"{name}_count", {"actor": actor_name}, total))
            append(Sample(f"{name}_sum", {"actor": actor_name}, hist.sum))
        yield family


def _gauge(name: str, doc: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=("actor",))


def _counter(name: str, doc: str) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=("actor",))


def _outcomes(counter: Callable[[str], int | None]) -> dict[str, int]:
    """Commands by outcome from an actor's counters. Its ``command_errors`` include the
    expired ones (refused, not run), which are their own outcome here, so that the outcomes
    add up to the commands answered."""
    errors, expired = counter("command_errors"), counter("command_expired")
    out = {"ok": counter("command_ok"), "duplicate": counter("command_duplicates"),
           "expired": expired,
           "error": None if errors is None else max(0, errors - (expired or 0))}
    return {k: v for k, v in out.items() if v is not None}


def registry(monitor: SiteMonitor, clock: Callable[[], float] = time.time) -> CollectorRegistry:
    """The registry /metrics serves: the site's metrics and this process's own (memory, CPU,
    open files: prometheus_client's process and platform collectors)."""
    from prometheus_client import PlatformCollector, ProcessCollector

    reg = CollectorRegistry(auto_describe=False)
    reg.register(SiteCollector(monitor, clock))
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    return reg


# --- the program ----------------------------------------------------------------------------


class SupervisorPoller(threading.Thread):
    """Polls every supervisord of the site each `interval`; a change of program state calls
    `on_change` (the bus thread then pushes the page at once)."""

    def __init__(self, site: SiteConfig, monitor: SiteMonitor, interval: float,
                 on_change: Callable[[], None]) -> None:
        super().__init__(name="supervisord-poller", daemon=True)
        self.clients = [Supervisor(ep, timeout=min(2.0, max(0.5, 4 * interval)))
                        for ep in endpoints(site)]
        self.monitor = monitor
        self.interval = interval
        self.on_change = on_change
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            started = time.monotonic()
            self.poll()
            self.stopping.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def poll(self) -> None:
        for i, client in enumerate(self.clients):
            infos: list[dict[str, Any]] | None
            try:
                infos, error = client.processes(), None
            except SupervisorError as exc:
                infos, error = None, str(exc)
                # a fresh connection next time: the failed one may be half-used
                self.clients[i] = Supervisor(client.endpoint, client.timeout)
            label = client.endpoint.label
            with self.monitor.lock:
                answered = self.monitor.supervisors.get(label, "") is None
                known = label in self.monitor.supervisors
                changed = self.monitor.supervisor(label, infos, error, time.time())
            if error and (answered or not known):
                log.warning("%s", error)
            elif not error and known and not answered:
                log.info("%s answers again", client.endpoint.where)
            if changed:
                self.on_change()


class BusSide:
    """The bus thread's work: deliveries into the monitor, the journal's oldest entry, and
    what was journaled before this program started (read back once the router answers)."""

    def __init__(self, site: SiteConfig, monitor: SiteMonitor) -> None:
        self.monitor = monitor
        self.bus = Bus(site.router, client_name("metrics"), rcvhwm=RCVHWM)
        for prefix in SUBSCRIPTIONS:
            self.bus.subscribe(prefix, gapless=False)  # a view: best effort, never a replay
        self.loaded = False
        self._oldest_at = 0.0

    def step(self, timeout: float) -> None:
        got = self.bus.poll(timeout)
        if not self.loaded and self.bus.synced:
            self._read_back()
        if got:
            wall, mono = now()
            with self.monitor.lock:
                self.monitor.feed(got, wall, mono)
            self._oldest()

    def _read_back(self) -> None:
        """The newest heartbeat of every actor, watchdog view, router stats, event of every
        topic and alarm that the journal holds: the page and the metrics are complete at
        once, not after the first heartbeat period."""
        self.loaded = True
        try:
            _, items = self.bus.query({"op": protocol.OP_LAST, "prefixes": [
                *SUBSCRIPTIONS[:3], topics.ALARM]}, 5.0)
        except BusError as exc:
            log.warning("cannot read back the journal's newest messages: %s", exc)
            return
        wall, mono = now()
        with self.monitor.lock:
            self.monitor.feed(sorted(items, key=lambda d: d.gseq), wall, mono, live=False)
        self._oldest()

    def _oldest(self) -> None:
        """Look up the time of the journal's oldest entry when it moved (at most every
        `OLDEST_EVERY`): the journal's span is how far back a replay can reach."""
        m = self.monitor
        first = m.router.data.get("first") if m.router.data else None
        mono = time.monotonic()
        if not isinstance(first, int) or mono - self._oldest_at < OLDEST_EVERY or (
                m.router.oldest is not None and m.router.oldest[0] == first):
            return
        self._oldest_at = mono
        try:
            _, items = self.bus.query({"op": protocol.OP_SINCE, "gseq": first, "limit": 1},
                                      1.0)
            if items:
                with m.lock:
                    m.journal_oldest(items[0].gseq, items[0].envelope.ts)
        except (BusError, EnvelopeError) as exc:
            log.debug("journal's oldest entry: %s", exc)


def few_malloc_arenas() -> None:
    """glibc gives every thread that allocates its own malloc arena, and keeps it: with a
    thread per HTTP client that is a few MiB of resident memory for nothing. Two arenas
    serve this program's threads well (``mallopt(M_ARENA_MAX)``; nothing happens elsewhere
    than on glibc)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, 2)


def serve(site: SiteConfig, address: tuple[str, int], token: str | None,
          poll_interval: float, stop: Callable[[], bool]) -> int:
    """Process body of ``sctl metrics``: bind, then loop until `stop()`. Exit status 1 when the
    address cannot be bound (supervisord tries again)."""
    from cli.ops.web import WebServer

    few_malloc_arenas()
    monitor = SiteMonitor(site)
    reg = registry(monitor)
    host, port = address
    try:
        server = WebServer(host, port, token, monitor, reg)
    except OSError as exc:
        log.error("metrics not started: cannot listen on %s:%d: %s", host, port,
                  exc.strerror or exc)
        return 1
    # tests and tools that asked for port 0 read the port from this line
    log.info("metrics up: %s (status page; Prometheus metrics at /metrics%s)", server.url,
             ", token required" if token else "")
    side = BusSide(site, monitor)
    wake = threading.Event()
    poller = SupervisorPoller(site, monitor, poll_interval, wake.set)
    server.start()  # answers at once: with the router down, the page says so
    poller.start()
    side.bus.connect(wait=2.0)
    pushed = 0.0
    try:
        while not stop():
            side.step(0.1)
            mono = time.monotonic()
            if (wake.is_set() or mono - pushed >= PUSH_EVERY) and server.hub.clients:
                wake.clear()
                pushed = mono
                server.hub.publish(server.status_json())
    finally:
        poller.stopping.set()
        server.stop()
        side.bus.close()
    log.info("metrics stopped")
    return 0
