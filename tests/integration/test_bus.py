"""The Bus client against a real router process: the bus's delivery guarantees (at-least-once
ingress, journal and replay, gap-free egress, exactly-once commands), end to end."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from broker.client.bus import Bus, Delivery
from broker.config import load_site
from tests.support.stack import (
    ANY_PORT,
    ROOT,
    Proc,
    Stack,
    sctl_cmd,
    subprocess_env,
    write_site,
)

pytestmark = pytest.mark.timeout(120)


class Collector(threading.Thread):
    """A library subscriber in its own thread (a Bus belongs to one thread)."""

    def __init__(self, site_path: Path, prefix: str, want: int, *, rcvhwm: int = 100_000,
                 slow: float = 0.0, since: int | None = None, timeout: float = 90.0,
                 stop_at: int | None = None) -> None:
        super().__init__(daemon=True)
        self.site = load_site(site_path)
        self.prefix, self.want, self.rcvhwm = prefix, want, rcvhwm
        self.slow, self.since, self.timeout = slow, since, timeout
        self.stop_at = stop_at  # stop once a delivery with data.i == stop_at arrived
        self.got: list[Delivery] = []
        self.ready = threading.Event()
        self.counters: dict[str, int] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            bus = Bus(self.site.router, f"collector-{id(self)}", rcvhwm=self.rcvhwm)
            bus.subscribe(self.prefix, since=self.since)
            assert bus.connect(wait=10), "collector could not sync with the router"
            self.ready.set()
            end = time.monotonic() + self.timeout
            while len(self.got) < self.want and time.monotonic() < end:
                self.got.extend(bus.poll(0.2))
                if self.stop_at is not None and self.stop_at in self.values():
                    break
                if self.slow:
                    time.sleep(self.slow)
            self.counters = dict(bus.counters)
            bus.close()
        except BaseException as exc:  # surfaced by the test thread
            self.error = exc
            self.ready.set()

    def values(self) -> list[int]:
        return [d.envelope.data["i"] for d in self.got]


def connected(site_path: Path, name: str, *prefixes: str) -> Bus:
    """A Bus subscribed to `prefixes` (before connecting) and synced with the router."""
    bus = Bus(load_site(site_path).router, name)
    for prefix in prefixes:
        bus.subscribe(prefix)
    assert bus.connect(wait=10), f"{name} could not sync with the router"
    return bus


def poll_until(bus: Bus, got: list[Delivery], n: int, timeout: float = 5.0) -> None:
    """Add `bus`'s deliveries to `got` until it holds `n` or `timeout` passes."""
    end = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < end:
        got += bus.poll(0.1)


@pytest.fixture
def router_factory(stack: Stack) -> Callable[..., tuple[Path, Proc]]:
    """``router_factory(router_extra)``: the site file and its router process, up."""

    def make(router_extra: str = "") -> tuple[Path, Proc]:
        stack.write(router_extra=router_extra)
        return stack.path, stack.start_router()

    return make


def test_kill_router_mid_stream_loses_nothing(router_factory, tmp_path: Path) -> None:
    """10 000 envelopes; the router is SIGKILLed and restarted (journal file) mid-stream."""
    site_path, router = router_factory(f'journal_path = "{tmp_path / "journal.bin"}"')
    n = 10_000
    sub = Collector(site_path, "evt.load.", n)
    sub.start()
    assert sub.ready.wait(15) and sub.error is None, sub.error
    bus = Bus(load_site(site_path).router, "loader")
    assert bus.connect(wait=10)
    for i in range(n):
        bus.publish("evt.load.n", "event", {"i": i})
        if i % 200 == 0:
            bus.poll(0)
        if i == 3_000:
            router.kill()
            router.start()
    assert bus.flush(60), f"outbox not drained: {bus.outbox_size} left; {bus.counters}"
    bus.close()
    sub.join(60)
    assert sub.error is None, sub.error
    values = sub.values()
    assert len(values) == n, f"got {len(values)}; counters {sub.counters}"
    assert values == list(range(n)), "not exactly once in order"
    assert sub.counters["router_restarts"] >= 1


def test_late_subscriber_gets_history_with_since_0(router_factory) -> None:
    site_path, _ = router_factory()
    bus = Bus(load_site(site_path).router, "early")
    assert bus.connect(wait=10)
    for i in range(25):
        bus.publish("evt.hist.n", "event", {"i": i})
    assert bus.flush(10)
    bus.close()
    out = subprocess.run(
        sctl_cmd("-c", str(site_path), "sub", "evt.hist", "--since", "0", "--count", "25",
                 "--timeout", "20", "--json"),
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [m["envelope"]["data"]["i"] for m in lines] == list(range(25))
    assert all(m["topic"] == "evt.hist.n" and m["gseq"] > 0 for m in lines)


def test_slow_subscriber_with_tiny_hwm_gets_everything(router_factory) -> None:
    site_path, _ = router_factory("egress_hwm = 20\nstats_interval = 0.2")
    n = 3_000
    pad = "x" * 4000  # large bodies overflow the kernel buffers too, so ZeroMQ must drop
    slow = Collector(site_path, "evt.flood.", n, rcvhwm=5, slow=0.002)
    slow.start()
    assert slow.ready.wait(15) and slow.error is None, slow.error
    bus = Bus(load_site(site_path).router, "flooder")
    assert bus.connect(wait=10)
    for i in range(n):
        bus.publish("evt.flood.n", "event", {"i": i, "pad": pad})
        if i % 100 == 0:
            bus.poll(0)
    assert bus.flush(30)
    slow.join(90)
    assert slow.error is None, slow.error
    assert slow.values() == list(range(n))
    assert slow.counters["gaps"] >= 1, "the test did not make the subscriber miss anything"
    assert slow.counters["held_dropped"] >= 0  # live copies dropped past the hold bound are visible
    # the router reports what subscribers missed in its stats
    stats = Collector(site_path, "sys.router.stats", 1)
    stats.start()
    stats.join(20)
    counts = stats.got[0].envelope.data["counts"]
    assert counts["egress_missed"] > 0 and counts["egress_gaps"] >= 1
    bus.close()


def test_publisher_started_before_router_loses_nothing(stack: Stack) -> None:
    stack.reserve_router_ports()  # the publisher connects before any router is there
    site_path = stack.path
    bus = Bus(load_site(site_path).router, "early-bird")
    assert not bus.connect(wait=0.3)  # no router yet: publish must queue, not vanish
    for i in range(50):
        bus.publish("evt.early.n", "event", {"i": i})
    proc = stack.start_router()
    try:
        assert bus.flush(20), bus.counters
        sub = Collector(site_path, "evt.early.", 50, since=0)
        sub.start()
        sub.join(30)
        assert sub.values() == list(range(50))
    finally:
        bus.close()
        proc.stop()


def test_request_times_out_with_clear_error(router_factory) -> None:
    from broker.wire.errors import RequestTimeout

    site_path, _ = router_factory()
    bus = Bus(load_site(site_path).router, "asker")
    assert bus.connect(wait=10)
    start = time.monotonic()
    with pytest.raises(RequestTimeout, match="no reply from nobody"):
        bus.request("nobody", "ping", timeout=1.0)
    assert time.monotonic() - start < 3
    bus.close()


def test_outbox_overflow_is_counted_and_alarmed(router_factory) -> None:
    """Both ends report the loss: the sender its outbox overflow (once per episode, when acks
    flow again), the router (its journal knows the pair) the seqs the sender's sync skipped."""
    site_path, router = router_factory()
    watcher = Collector(site_path, "sys.alarm", 2, timeout=30)
    watcher.start()
    assert watcher.ready.wait(15)
    bus = Bus(load_site(site_path).router, "overflower", outbox_max_messages=50)
    assert bus.connect(wait=10)
    router.kill()  # nothing can be acked now
    for i in range(200):
        bus.publish("evt.over.n", "event", {"i": i})
    assert bus.counters["outbox_dropped"] > 0
    assert bus.counters["alarms"] == 1  # once per episode, not per drop
    router.start()
    assert bus.flush(20)
    watcher.join(20)
    alarms = {d.envelope.data["alarm"]: d.envelope.data for d in watcher.got}
    assert set(alarms) == {"outbox_overflow", "ingress_lost"}, (watcher.counters, bus.counters)
    overflow, lost = alarms["outbox_overflow"], alarms["ingress_lost"]
    assert overflow["source"] == lost["source"] == "overflower"
    assert overflow["dropped"] == bus.counters["outbox_dropped"] == 150
    # the router skips what the sender no longer holds: at most the dropped seqs
    first, last = lost["missing"]
    assert overflow["first_seq"] <= first <= last == overflow["last_seq"]
    bus.close()


def test_router_restart_without_journal_loses_no_unacked_envelope(router_factory) -> None:
    """No journal file: what the old router acked and forwarded may be gone with it, but nothing
    it had not acked may be lost, and a subscriber that joined while traffic flowed keeps
    receiving after the restart (the new gseq numbering is detected, not taken as duplicates)."""
    site_path, router = router_factory()
    bus = Bus(load_site(site_path).router, "loader")
    assert bus.connect(wait=10)
    n, kill_at, last = 4_000, 1_500, 4_499
    sub = Collector(site_path, "evt.load.", 10**9, stop_at=last)
    sub.start()  # subscribes before it connects, while this thread keeps publishing
    acked_at_kill = 0
    kill_at = max(kill_at, 1)
    for i in range(n):
        bus.publish("evt.load.n", "event", {"i": i})
        if i % 100 == 0:
            bus.poll(0)
        if i > kill_at:
            time.sleep(0.0005)  # keep publishing while the new router comes up
        if i == kill_at:  # the router dies with messages in its buffers, unacked
            assert sub.ready.wait(15) and sub.error is None, sub.error
            acked_at_kill = bus._outbox.acked  # seq of i is i + 1
            router.kill()
            router.start()
    assert bus.flush(30), bus.counters
    for i in range(n, last + 1):  # after the restart, with everyone resynchronised
        bus.publish("evt.load.n", "event", {"i": i})
    assert bus.flush(30), bus.counters
    sub.join(60)
    assert sub.error is None, sub.error
    got = set(sub.values())
    # The subscriber starts at the router's head when it connects (after some of the loader's
    # messages); acks already on their way count as not acked here, so only what the
    # subscriber was there for is checked.
    first = sub.values()[0]
    never_acked = {i for i in range(first, n) if i + 1 > acked_at_kill}
    assert never_acked - got == set(), (
        f"lost unacked: {sorted(never_acked - got)[:20]} ({len(never_acked - got)} in all; "
        f"acked at kill {acked_at_kill}); subscriber counters {sub.counters}; "
        f"publisher counters {bus.counters}")
    assert set(range(n, last + 1)) <= got
    bus.close()


def test_publish_refuses_what_the_router_would_refuse_without_using_a_seq(tmp_path: Path) -> None:
    """A refused envelope must not leave a hole in the sender's stream: checked before a seq."""
    from broker.wire.errors import EnvelopeError, TopicError

    site = load_site(write_site(tmp_path, router_extra="max_message_bytes = 1000",
                                endpoints=ANY_PORT))  # never connected
    bus = Bus(site.router, "checker")
    deep: dict[str, object] = {}
    for _ in range(40):
        deep = {"d": deep}
    with pytest.raises(TopicError):
        bus.publish("sys.router.stats", "system", {})
    with pytest.raises(TopicError):
        bus.publish("ack.someone", "system", {})
    with pytest.raises(EnvelopeError, match=r"kind 'event' may not be published on cmd\.x"):
        bus.publish("cmd.x", "event", {})
    with pytest.raises(EnvelopeError, match="max_message_bytes"):
        bus.publish("evt.x.big", "event", {"pad": "x" * 2000})
    with pytest.raises(EnvelopeError, match="nests deeper"):
        bus.publish("evt.x.deep", "event", deep)
    with pytest.raises(EnvelopeError, match=r"rep\.<client>"):
        bus.publish("cmd.x", "command", {}, reply_to="ack.x")
    assert bus.publish("evt.x.ok", "event", {}).seq == 1


def test_subscription_after_connect_survives_a_lost_start_probe(router_factory,
                                                                monkeypatch) -> None:
    site_path, _ = router_factory()
    bus = Bus(load_site(site_path).router, "late-subscriber")
    assert bus.connect(wait=10)
    real_probe = Bus._probe
    dropped = []

    def lossy_probe(self: Bus, now: float) -> None:
        if not dropped:  # the first start probe never reaches the router
            dropped.append(now)
            self._next_sync = now + 0.05
            return
        real_probe(self, now)

    monkeypatch.setattr(Bus, "_probe", lossy_probe)
    bus.subscribe("evt.after.")
    other = Bus(load_site(site_path).router, "talker")
    assert other.connect(wait=10)
    got: list[Delivery] = []
    for i in range(5):
        other.publish("evt.after.n", "event", {"i": i})
        other.flush(5)
        got += bus.poll(0.3)
    poll_until(bus, got, 5, timeout=10)
    assert dropped, "the fault was not injected"
    assert [d.envelope.data["i"] for d in got][-3:] == [2, 3, 4]
    other.close()
    bus.close()


def test_a_raising_request_callback_loses_no_delivery(router_factory) -> None:
    site_path, _ = router_factory()
    bus = connected(site_path, "cb-owner", "evt.cb.")

    def explode(req: object) -> None:
        raise RuntimeError("callback bug")

    bus.start_request("nobody", "ping", timeout=0.3, callback=explode)
    bus.publish("evt.cb.n", "event", {"i": 1})
    got: list[Delivery] = []
    poll_until(bus, got, 1)
    time.sleep(0.4)  # the request's deadline passes; its callback raises inside poll()
    bus.publish("evt.cb.n", "event", {"i": 2})
    poll_until(bus, got, 2)
    assert [d.envelope.data["i"] for d in got] == [1, 2]
    bus.close()


def test_blocking_request_does_not_spin_while_deliveries_wait(router_factory) -> None:
    site_path, _ = router_factory()
    bus = connected(site_path, "spinner", "evt.spin.")
    bus.publish("evt.spin.n", "event", {})
    assert bus.flush(5)  # the delivery now waits in the stash for the next poll()
    cpu, wall = time.process_time(), time.monotonic()
    from broker.wire.errors import RequestTimeout

    with pytest.raises(RequestTimeout):
        bus.request("nobody", "ping", timeout=1.0)
    used, took = time.process_time() - cpu, time.monotonic() - wall
    assert took < 2.0
    assert used < 0.5 * took, f"busy loop: {used:.2f} s CPU in {took:.2f} s"
    assert [d.topic for d in bus.poll(0.5)] == ["evt.spin.n"]
    bus.close()


def test_subscriber_loss_to_eviction_is_counted_and_alarmed(router_factory) -> None:
    """A subscriber that stalls while the journal (5 messages) and both HWMs overflow: what it
    can no longer get is counted as lost and raised on sys.alarm, never silently skipped."""
    site_path, _ = router_factory("journal_max_messages = 5\negress_hwm = 1")
    watcher = connected(site_path, "alarm-watcher", "sys.alarm")
    slow = Bus(load_site(site_path).router, "stalled", rcvhwm=1)
    slow.subscribe("evt.flood.")
    assert slow.connect(wait=10)
    pub = connected(site_path, "flooder")
    for i in range(300):  # while `slow` does not read
        pub.publish("evt.flood.n", "event", {"i": i})
        if i % 20 == 0:
            pub.poll(0.01)
    assert pub.flush(20)
    got: list[Delivery] = []
    end = time.monotonic() + 20
    while time.monotonic() < end and not slow.counters.get("lost"):
        got += slow.poll(0.1)
    lost = slow.counters.get("lost", 0)
    assert lost > 0, slow.counters
    values = [d.envelope.data["i"] for d in got]
    assert values == sorted(values) and len(values) + lost <= 300
    alarms: list[Delivery] = []
    end = time.monotonic() + 10
    while time.monotonic() < end and not alarms:
        slow.poll(0.05)  # its alarm goes out through its own outbox
        alarms += [d for d in watcher.poll(0.05)
                   if d.envelope.data.get("alarm") == "subscriber_lost"]
    assert alarms, "no sys.alarm for the subscriber's loss"
    data = alarms[0].envelope.data
    assert data["source"] == "stalled" and data["lost"] >= 1
    for b in (watcher, slow, pub):
        b.close()
