"""Big binary payloads through the whole path on real sockets: a Bus publisher, the router with
its journal in a file, live gap-free subscribers, replay from memory and from the file.

Bodies of `ZERO_COPY_MIN` bytes or more are never copied into new bytes on the way: the router
journals and forwards the ZeroMQ frame they arrived in, and the subscriber's Delivery is a view
of the frame it received. What arrives must still be exactly what was published, in order.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.client.bus import Bus, Delivery
from broker.client.delivery import ZERO_COPY_MIN
from broker.config import RouterConfig, load_site
from tests.integration.test_router import RunningRouter
from tests.support.stack import ANY_PORT, write_site

MIB = 1024 * 1024
SIZES = (100, 70_000, 4 * MIB, 300, 16 * MIB, 2 * MIB)  # 16 MiB: the default's whole frame


@pytest.fixture
def router_cfg(tmp_path: Path) -> RouterConfig:
    site = write_site(tmp_path, endpoints=ANY_PORT,
                      router_extra='journal_path = "journal.bin"\nstats_interval = 3600.0\n')
    return load_site(site).router


@pytest.fixture
def running(router_cfg: RouterConfig) -> Iterator[RunningRouter]:
    r = RunningRouter(router_cfg)
    yield r
    if r.thread.is_alive():
        r.stop()


def payloads() -> list[bytes]:
    return [os.urandom(64) + bytes(n - 64) if n > 64 else os.urandom(n) for n in SIZES]


def receive(bus: Bus, count: int, timeout: float = 30.0) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += [d for d in bus.poll(0.1) if d.topic.startswith("evt.det1.")]
    assert len(got) == count, f"{len(got)} of {count} arrived"
    return got


def check(got: list[Delivery], sent: list[bytes]) -> None:
    assert [d.envelope.data["n"] for d in got] == list(range(1, len(sent) + 1))
    for d, p in zip(got, sent, strict=True):
        assert d.envelope.data["p"] == p


def test_big_events_arrive_whole_in_order_and_replay_from_memory_and_file(
        running: RunningRouter, router_cfg: RouterConfig) -> None:
    cfg = running.cfg
    viewer = Bus(cfg, "viewer")
    viewer.subscribe("evt.det1.")
    assert viewer.connect(wait=10)
    det = Bus(cfg, "det1")
    assert det.connect(wait=10)
    sent = payloads()
    for n, p in enumerate(sent, 1):
        det.publish("evt.det1.frame", "event", {"n": n, "p": p})
    assert det.flush(30)
    live = receive(viewer, len(sent))
    check(live, sent)
    # zero-copy on the way: the big ones are views of frames, in the journal and at the viewer
    assert [isinstance(d.body, memoryview) for d in live] == [n >= ZERO_COPY_MIN for n in SIZES]
    journal = running.router.journal
    held = [journal.entry(d.gseq)[1] for d in live]
    assert [isinstance(b, memoryview) for b in held] == [n >= ZERO_COPY_MIN for n in SIZES]
    assert [bytes(b) for b in held] == [bytes(d.body) for d in live]
    assert running.router.bad == {k: 0 for k in running.router.bad}

    late = Bus(cfg, "late")  # a replay from the journal in memory (query socket)
    late.subscribe("evt.det1.", since=live[0].gseq)
    assert late.connect(wait=10)
    replayed = receive(late, len(sent))
    check(replayed, sent)
    assert [isinstance(d.body, memoryview) for d in replayed] == \
        [n >= ZERO_COPY_MIN for n in SIZES]
    for bus in (viewer, det, late):
        bus.close()

    running.stop()  # a new router on the same file: the entries come back from the disk
    again = RunningRouter(router_cfg)
    try:
        reader = Bus(again.cfg, "reader")
        reader.subscribe("evt.det1.", since=live[0].gseq)
        assert reader.connect(wait=10)
        check(receive(reader, len(sent)), sent)
        reader.close()
    finally:
        again.stop()


def test_a_body_over_max_message_bytes_is_refused_by_the_publisher_first(
        running: RunningRouter) -> None:
    from broker.wire.errors import EnvelopeError

    det = Bus(running.cfg, "det1")
    assert det.connect(wait=10)
    limit = running.cfg.max_message_bytes
    assert limit == 16 * MIB + 64 * 1024  # the default fits a 16 MiB frame and its envelope
    with pytest.raises(EnvelopeError, match="max_message_bytes"):
        det.publish("evt.det1.frame", "event", {"n": 1, "p": bytes(limit)})
    det.publish("evt.det1.frame", "event", {"n": 1, "p": bytes(16 * MIB)})
    assert det.flush(30)
    det.close()
