"""Backpressure instead of loss (docs/backpressure.md), with a real router process.

- A Bus publishing 200 frames of 4 MiB as fast as `publish_wait` lets it, in a child process
  that reads its own VmRSS: all 200 reach a gap-free subscriber in order, the outbox drops
  nothing, and the publisher's memory stays within its outbox bound plus a margin.
- The router killed: the outbox drops its oldest at the bound and says the router is
  unreachable since when; one ``outbox_overflow`` alarm with that reason once it is back.
- An actor whose device writes as fast as it can, under a router slowed by SIGSTOP/SIGCONT:
  the actor stops reading the device (the stand-in's send blocks), answers ping and keeps its
  heartbeat while paused, and every line the device sent arrives once, in order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Final

import pytest

from actors.protocols.springcore import encode_tag_line
from broker.client.bus import Bus
from broker.client.outbox import HEADROOM
from broker.config import load_site
from broker.wire.errors import BusFull
from tests.support.stack import ROOT, Stack, subprocess_env, wait_for

MiB: Final = 1 << 20
FRAMES: Final = 200
FRAME: Final = 4 * MiB
OUTBOX_BYTES: Final = 32 * MiB  # eight frames
# Beyond the outbox: the frame being encoded and its data, pyzmq's copies of the frames handed
# to ZeroMQ and not yet on the wire, allocator slack.
RSS_MARGIN: Final = 48 * MiB
ROUTER_EXTRA: Final = f"max_message_bytes = {FRAME + 64 * 1024}\n"


def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/self/status")


def publisher_main(site: str, count: int, size: int, outbox_bytes: int) -> None:
    """The child process: publish `count` frames of `size` bytes as fast as the router takes
    them, then print what it measured as one JSON line."""
    bus = Bus(load_site(Path(site)).router, "flood", outbox_max_bytes=outbox_bytes)
    assert bus.connect(wait=15), "no router"
    blob = bytes(range(256)) * (size // 256)
    base = peak = _vm("VmRSS")
    refused = 0
    for i in range(count):
        while True:
            try:
                bus.publish_wait("evt.flood.frame", "event", {"i": i, "blob": blob}, timeout=5)
                break
            except BusFull:  # the router is slow on this machine: keep waiting
                refused += 1
        peak = max(peak, _vm("VmRSS"))
    flushed = bus.flush(120)
    print(json.dumps({"base": base, "peak": peak, "refused": refused, "flushed": flushed,
                      "counters": bus.counters}), flush=True)
    bus.close()


PUBLISHER: Final = ("import sys; from tests.integration.test_backpressure import publisher_main; "
                    "publisher_main(sys.argv[1], *map(int, sys.argv[2:]))")


@pytest.mark.timeout(300)
def test_a_fast_publisher_is_slowed_down_not_dropped(stack: Stack) -> None:
    stack.write(router_extra=ROUTER_EXTRA)
    stack.start_router()
    sink = stack.client("evt.flood.", name="sink")
    child = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, str(stack.path), str(FRAMES), str(FRAME),
         str(OUTBOX_BYTES)], cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    got: list[tuple[int, int]] = []  # (gseq, i)
    try:
        deadline = time.monotonic() + 240
        while len(got) < FRAMES and time.monotonic() < deadline:
            for d in sink.poll(0.2):
                data = d.envelope.data
                assert len(data["blob"]) == FRAME
                got.append((d.gseq, data["i"]))
            if child.poll() is not None and child.returncode != 0:
                break
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    counters = report["counters"]
    print(f"publisher: RSS {report['base'] / MiB:.0f} -> peak {report['peak'] / MiB:.0f} MiB, "
          f"refused {report['refused']}, {counters}")
    assert counters["outbox_dropped"] == 0, counters
    assert report["flushed"], counters
    assert [i for _, i in got] == list(range(FRAMES)), \
        f"{len(got)} of {FRAMES} frames, {sorted(set(range(FRAMES)) - {i for _, i in got})[:20]}"
    gseqs = [g for g, _ in got]
    assert gseqs == sorted(gseqs)
    assert report["peak"] - report["base"] <= OUTBOX_BYTES * (1 + HEADROOM) + RSS_MARGIN


def test_an_unreachable_router_makes_the_outbox_drop_its_oldest_and_say_so(
        stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    router = stack.start_router()
    watcher = stack.client("sys.alarm", name="watcher")
    bus = stack.client(name="overflower", outbox_max_messages=50)
    wait_for(lambda: bus.poll(0.05) is not None and bus.connected, 10, "the PUB connected")
    for i in range(40):  # reachable: within the bound, nothing is refused or dropped
        bus.publish("evt.over.n", "event", {"i": i})
    assert bus.flush(10)
    router.kill()
    wait_for(lambda: bus.poll(0.05) is not None and not bus.connected, 10,
             "the Bus noticing the router is gone")
    with caplog.at_level(logging.WARNING, logger="broker.client.publisher"):
        for i in range(200):
            bus.publish("evt.over.n", "event", {"i": 40 + i})  # never BusFull: unreachable
    assert bus.counters["outbox_dropped"] == 150
    warnings = [r.getMessage() for r in caplog.records if "outbox full" in r.getMessage()]
    assert len(warnings) == 1 and "router unreachable since" in warnings[0], warnings
    stack.start_router("router2")
    assert bus.flush(30), bus.counters
    alarms: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while not alarms and time.monotonic() < deadline:
        alarms += [d.envelope.data for d in watcher.poll(0.2)
                   if d.envelope.data.get("alarm") == "outbox_overflow"]
    for d in watcher.poll(1.0):  # and no second one
        alarms += [d.envelope.data] if d.envelope.data.get("alarm") == "outbox_overflow" else []
    assert len(alarms) == 1, alarms
    alarm = alarms[0]
    assert alarm["source"] == "overflower" and alarm["dropped"] == 150
    assert alarm["connected"] is False and alarm["reason"].startswith("router unreachable since")
    assert "router unreachable since" in alarm["message"]


# -- an actor with a device that floods it -------------------------------------------------------

LINE_DATA: Final = "D" * 4000  # 4 kB lines: the kernel buffers hold hundreds, not millions


def tag_line(i: int) -> bytes:
    return encode_tag_line(f"{i:08X}", tag_data=LINE_DATA)


class FloodDevice:
    """A SpringCore reader stand-in that writes tag lines as fast as its client takes them
    and records when its send blocked (the client stopped reading: TCP's window is shut)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.written = 0  # whole lines sent
        self.blocked = threading.Event()  # a send waited more than BLOCKED seconds
        self.finish = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    BLOCKED: Final = 0.5

    def _run(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                # a small send buffer: the send blocks soon after the client stops reading
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
                conn.settimeout(self.BLOCKED)
                while not self.finish.is_set():
                    line, sent = tag_line(self.written), 0
                    while sent < len(line):
                        try:
                            sent += conn.send(line[sent:])
                        except TimeoutError:
                            self.blocked.set()
                    self.written += 1
                self.done.set()
                conn.settimeout(None)
                conn.recv(1)  # hold the connection until the actor closes it
        except BaseException as exc:  # reported by the test
            self.error = exc
            self.done.set()

    def close(self) -> None:
        self.finish.set()
        self.listener.close()


class Throttle:
    """Slows a process down: SIGSTOP for `stopped` seconds, SIGCONT for `running`, in turn
    (shorter than the ZMTP heartbeat timeout: its peers stay connected)."""

    def __init__(self, pid: int, stopped: float = 1.5, running: float = 0.05) -> None:
        self.pid, self.stopped, self.running = pid, stopped, running
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                os.kill(self.pid, signal.SIGSTOP)
                self._stop.wait(self.stopped)
                os.kill(self.pid, signal.SIGCONT)
                self._stop.wait(self.running)
        except ProcessLookupError:
            pass

    def end(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGCONT)


TABLES: Final = """
[actors.reader]
type = "springcore-tcp"
host = "127.0.0.1"
port = {port}
heartbeat_interval = 0.5
outbox_max_messages = 400
"""


@pytest.mark.timeout(300)
def test_an_actor_pauses_its_device_while_the_router_is_slow(stack: Stack) -> None:
    device = FloodDevice()
    throttle: Throttle | None = None
    try:
        stack.write(TABLES.format(port=device.port), router_extra=ROUTER_EXTRA)
        router = stack.start_router()
        feed = stack.watch("evt.reader.tag", best_effort=("hb.reader",), name="sink")
        stack.start_actor("reader")
        stack.wait_ready("reader")
        assert router.popen is not None
        throttle = Throttle(router.popen.pid)
        assert device.blocked.wait(60), \
            f"the device never blocked ({device.written} lines):\n{stack.output('reader')[-2000:]}"
        heartbeats = feed.wait("hb.reader", lambda d: d["backpressure"]["paused_since"]
                               is not None, after=0, timeout=60, what="a paused heartbeat")
        assert heartbeats["backpressure"]["congested"] is True
        mark = len(feed.seen)
        pong = stack.ping("reader", timeout=60)  # commands and replies pass while paused
        assert pong["state"] == "running"
        feed.wait("hb.reader", after=mark, timeout=60, what="a heartbeat after the ping")
        device.finish.set()
        throttle.end()
        assert device.done.wait(30) and device.error is None, device.error
        written = device.written
        want = [f"{i:08X}" for i in range(written)]
        feed.until(lambda: len(feed.events("evt.reader.tag")) >= written, 180,
                   f"{written} tags")
        feed.drain(0.5)
        tags = [d["tag_id"] for d in feed.events("evt.reader.tag")]
        assert tags == want, f"{len(tags)} tags for {written} lines"
        last = feed.wait("hb.reader", lambda d: d["backpressure"]["paused_since"] is None,
                         after=mark, timeout=30, what="reads resumed")
        assert last["counters"]["outbox_dropped"] == 0, last["counters"]
        assert last["counters"]["device_pauses"] >= 1, last["counters"]
    finally:
        if throttle is not None:
            throttle.end()
        device.close()
