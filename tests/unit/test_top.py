"""`sctl top`'s view of the feed, without sockets."""

from __future__ import annotations

from typing import Any

from broker.wire.envelope import make
from broker.wire.errors import EnvelopeError
from cli.ops.top import MAX_TOPICS, TopView, percentile, render


def test_rates_latency_heartbeats_router_and_alarms() -> None:
    view = TopView(window=10.0)
    view.started = 0.0
    for i in range(50):  # 5 events/s for 10 s, each 2 ms old on arrival
        t = i * 0.2
        e = make(src="reader1", kind="event", data={"tag_id": "04"}, epoch=1, seq=i + 1)
        view.feed("evt.reader1.tag", lambda e=e: e, t, e.ts + 0.002)
    hb = make(src="reader1", kind="heartbeat", epoch=1, seq=60, data={
        "state": "running", "link": {"state": "down", "since": 100.0, "reason": "refused"},
        "counters": {"outbox_dropped": 3, "held_dropped": 1, "log_suppressed": 2}})
    view.feed("hb.reader1", lambda: hb, 9.9, 130.0)
    stats = make(src="router", kind="system", epoch=1, seq=61, data={
        "rates": {"in": 5.0, "out": 5.0}, "subscribers": 2, "journal": {"evicted": 7},
        "counts": {"gaps_lost": 4, "gaps_open": 0, "bad": {"total": 1}, "egress_missed": 0}})
    view.feed("sys.router.stats", lambda: stats, 9.9, 130.0)
    alarm = make(src="watchdog-local", kind="system", epoch=1, seq=62,
                 data={"program": "reader1", "reason": "stopped after 5 restarts"})
    view.feed("sys.alarm", lambda: alarm, 9.9, 130.0)
    wd = make(src="watchdog-local", kind="system", epoch=1, seq=63, data={
        "programs": {"reader1": {"total_restarts": 5, "alarm": "stopped after 5 restarts"}}})
    view.feed("sys.watchdog.local", lambda: wd, 9.9, 130.0)
    snap = view.snapshot(10.0, 130.0)
    a = snap["actors"]["reader1"]
    assert a["link"] == "down" and a["link_for"] == 30 and a["dropped"] == 4
    assert a["log_suppressed"] == 2 and a["restarts"] == 5
    assert a["events_per_s"] == 5.0
    assert snap["topics"][0] == {"topic": "evt.reader1.tag", "per_s": 5.0}
    assert 1.5 < snap["latency_ms"]["p50"] < 2.5 and snap["latency_ms"]["n"] == 50
    assert snap["router"]["gaps_lost"] == 4 and snap["router"]["evicted"] == 7
    text = render(snap)
    assert "LOST gaps 4" in text and "reader1" in text and "ALARM" in text
    assert "stopped after 5 restarts" in text


def test_window_forgets_and_memory_is_bounded() -> None:
    view = TopView(window=2.0)
    view.started = 0.0
    e = make(src="x", kind="event", data={}, epoch=1, seq=1)
    view.feed("evt.x.a", lambda: e, 0.5, e.ts)
    assert view.snapshot(10.0, e.ts)["topics"] == []  # older than the window
    for i in range(MAX_TOPICS + 10):
        view.feed(f"log.t{i}", lambda: e, 11.0, e.ts)
    assert len(view.buckets) <= MAX_TOPICS + 1 and "(other)" in view.buckets


def test_undecodable_bodies_are_counted_not_fatal() -> None:
    view = TopView()

    def bad() -> Any:
        raise EnvelopeError("garbage")

    view.feed("evt.x.y", bad, 1.0, 1.0)
    assert view.undecodable == 1
    assert percentile([], 0.5) is None and percentile([1.0, 2.0, 3.0], 0.5) == 2.0
