"""Which command targets are known to be down (actors.core.liveness), on a clock the tests hold:
heartbeats in, reasons out; never a refusal without evidence."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from actors.core.liveness import COUNTER, Liveness, heartbeat_name
from broker.client.bus import Delivery
from broker.wire import envelope as envmod

OWN = 0.5  # the owner's heartbeat interval: silent for 0.75 s = not hearing


def hb(state: str = "running", interval: Any = 1.0, **extra: Any) -> dict[str, Any]:
    return {"state": state, "interval": interval, **extra}


def listening(until: float, start: float = 0.0, tracker: Liveness | None = None) -> Liveness:
    """A tracker that heard its own heartbeat every `OWN` seconds from `start` to `until`."""
    t = tracker or Liveness(OWN, "me")
    now = start
    while now <= until + 1e-9:
        t.heard("me", hb(interval=OWN), now)
        now += OWN
    return t


def test_an_actor_silent_for_three_of_its_intervals_is_down() -> None:
    t = Liveness(OWN, "me")
    t.heard("door1", hb(interval=1.0), 0.0)
    listening(3.0, tracker=t)
    assert t.down("door1", 2.9) is None
    assert t.down("door1", 3.0) is None  # exactly three intervals: not yet
    listening(3.5, 3.0, t)
    assert t.down("door1", 3.2) == "no heartbeat for 3.2 s (interval 1 s)"
    t.heard("door1", hb(interval=1.0), 3.5)
    assert t.down("door1", 3.5) is None


def test_the_actors_own_interval_counts() -> None:
    t = listening(10.0)
    t.heard("slow", hb(interval=5.0), 0.0)
    t.heard("fast", hb(interval=0.2), 9.0)
    assert t.down("slow", 10.0) is None  # 10 s < 3 x 5 s
    assert t.down("fast", 10.0) == "no heartbeat for 1.0 s (interval 0.2 s)"


@pytest.mark.parametrize("interval", [None, 0, -1, "2", True, float("nan")])
def test_a_missing_or_bad_interval_is_the_default_one(interval: Any) -> None:
    t = listening(4.0)
    t.heard("odd", {"state": "running", "interval": interval}, 0.0)
    assert t.down("odd", 3.0) is None
    assert t.down("odd", 3.5) == "no heartbeat for 3.5 s (interval 1 s)"


def test_a_stopping_heartbeat_is_down_at_once_and_a_new_one_revives() -> None:
    t = listening(2.0)
    t.heard("door1", hb(), 0.9)
    t.heard("door1", hb("stopping", error="RuntimeError: no port"), 1.0, sent=0.0)
    reason = t.down("door1", 1.0)
    assert reason is not None
    assert reason.startswith("stopping since ") and reason.endswith(
        "(its last heartbeat said so: RuntimeError: no port)")
    t.heard("door1", hb("starting"), 1.5)  # restarted: not down, even while starting
    assert t.down("door1", 1.5) is None


def test_never_seen_is_down_only_three_default_intervals_after_listening_began() -> None:
    t = Liveness(OWN, "me")
    assert t.down("ghost", 100.0) is None  # heard nothing yet: nothing is known
    listening(20.0, start=10.0, tracker=t)
    assert t.down("ghost", 12.9) is None  # our own start-up: never refused
    assert t.down("ghost", 13.5) == \
        "never seen since this process started listening 3.5 s ago (no heartbeat)"


def test_the_owner_is_never_down_to_itself() -> None:
    t = listening(10.0)
    t.heard("me", hb("stopping"), 10.0)
    assert t.down("me", 10.0) is None


def test_while_not_hearing_nobody_is_judged() -> None:
    t = Liveness(OWN, "me")
    t.heard("door1", hb(interval=0.2), 0.0)
    t.heard("valve", hb("stopping"), 0.0)
    listening(2.0, tracker=t)
    assert t.down("door1", 2.0) is not None and t.down("valve", 2.0) is not None
    # nothing heard since 2.0 s, not even our own heartbeat: 0.8 s > 1.5 x 0.5 s, deaf
    assert t.down("door1", 2.8) is None
    assert t.down("valve", 2.8) is None  # even a stopped one: its restart may be what we miss


def test_after_a_break_in_hearing_old_knowledge_is_not_trusted() -> None:
    t = listening(2.0)
    t.heard("door1", hb("stopping"), 1.0)
    t.heard("motor", hb(interval=0.5), 2.0)
    listening(20.0, start=10.0, tracker=t)  # the router was away from 2 s to 10 s
    assert t.down("door1", 10.0) is None  # it may have restarted meanwhile
    assert t.down("motor", 11.5) is None  # three of its intervals to be heard again
    assert t.down("motor", 11.6) == \
        "no heartbeat for 1.6 s since heartbeats were heard again (interval 0.5 s)"
    assert t.down("door1", 13.1) is not None  # never heard in this period, default interval
    t.heard("door1", hb(), 13.2)
    assert t.down("door1", 13.2) is None


def test_seeded_from_the_journal_a_target_already_down_is_known_at_once() -> None:
    t = Liveness(OWN, "me")
    t.seed("door1", hb("stopping"), age=60.0, now=100.0, sent=0.0)
    t.seed("motor", hb(interval=1.0), age=30.0, now=100.0, sent=0.0)
    t.seed("slow", hb(interval=10.0), age=5.0, now=100.0, sent=0.0)
    t.heard("me", hb(interval=OWN), 100.2)
    assert t.down("door1", 100.2) is not None
    assert t.down("motor", 100.2) == "no heartbeat for 30.2 s (interval 1 s)"
    assert t.down("slow", 100.2) is None  # its own interval, from the journal
    assert t.down("ghost", 100.2) is None  # the journal does not know it: grace


def test_refusal_counts_every_one_and_logs_once_per_episode(
        caplog: pytest.LogCaptureFixture) -> None:
    counters: dict[str, int] = {}
    t = Liveness(OWN, "scada", counters)
    assert counters == {COUNTER: 0}
    listening(5.0, tracker=t)
    t.heard("door1", hb("stopping"), 1.0)
    with caplog.at_level(logging.INFO, logger="actors.core.liveness"):
        first = t.refusal("door1", 1.1)
        t.refusal("door1", 1.2)
        t.heard("door1", hb(), 2.0)  # back: the episode ends
        assert t.refusal("door1", 2.0) is None
        t.heard("door1", hb("stopping"), 3.0)
        t.refusal("door1", 3.1)
    assert first is not None and first.startswith("door1 is down: stopping since ")
    assert first.endswith("; command not sent")
    assert counters[COUNTER] == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("door1 is down" in r.getMessage() for r in warnings)
    assert any("door1 is back" in r.getMessage() for r in caplog.records)


def test_deliveries_feed_it_and_other_topics_do_not() -> None:
    t = Liveness(OWN, "me")
    env = envmod.make("door1", 1, 1, "heartbeat", hb("stopping"))
    t.on_delivery(Delivery("hb.door1", env.encode(), 1, 1), 0.0)
    t.on_delivery(Delivery("hb.motor", b"\x00garbage", 1, 2), 0.0)  # ignored, no exception
    t.on_delivery(Delivery("evt.motor.hb", env.encode(), 1, 3), 0.0)
    assert t.down("door1", 0.1) is not None
    assert t.down("motor", 0.1) is None
    assert heartbeat_name("hb.door1") == "door1"
    assert heartbeat_name("hb.") is None and heartbeat_name("hbx.door1") is None
    assert heartbeat_name("hb.a.b") is None
