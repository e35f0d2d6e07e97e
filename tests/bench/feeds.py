"""The receiving side of every stack, measured the same way.

Each subscriber hands every body it receives to a `Tally` with the wall-clock arrival time. The
Tally records them during the run and checks them afterwards: it unpacks each body with plain
msgpack (the same work for every stack: the Bus delivers bytes and decodes lazily, so this is
not the library's validating decode) and checks, per sender, that ``data.n`` runs 1, 2, 3 … : a
jump is a loss, a step back a duplicate or reordering. It keeps arrival times (rates) and
``arrival - envelope.ts`` (publish → delivery latency; every process runs on this machine, so
they share the clock).

Stop rule, the same for all: the expected count arrived, or the publishers have all exited and
nothing arrived for `IDLE` seconds, or `timeout` passed. A baseline that drops is thus measured
for what it delivered, and its losses are counted, not waited for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgpack
import zmq

from broker.config import RouterConfig
from tests.bench.common import Proc, percentile

IDLE: Final = 3.0
POLL: Final = 0.1


class Tally:
    """Arrivals of one run, checked after the fact.

    While a run goes, `add` only records ``(body, arrival time)``: a list append, so the
    subscriber's bookkeeping stays off the path being measured, the same for every stack (checking
    each message on arrival, mostly its `msgpack.unpackb`, would take CPU from the stacks under
    test on a 2-core machine the three processes share). `settle` (called by every figure below)
    unpacks what arrived since the last call and checks, per sender, that ``data.n`` runs
    1, 2, 3 ...: a jump is a loss, a step back a duplicate or a reordering. paho appends from
    its own thread; a list append is atomic, and `settle` reads up to the length it saw.
    """

    def __init__(self, keep_latency: bool = False) -> None:
        self.arrivals: list[tuple[bytes | memoryview, float]] = []
        self.first_at = 0.0
        self.last_at = 0.0
        self.keep_latency = keep_latency
        self._skipped = 0  # values of n jumped over: lost
        self._backwards = 0  # n not above the last one of its sender: duplicate or reordered
        self._last: dict[str, int] = {}
        self._latency: list[float] = []  # seconds
        self._settled = 0

    def add(self, body: bytes | memoryview, now: float) -> None:
        if not self.arrivals:
            self.first_at = now
        self.last_at = now
        self.arrivals.append((body, now))

    @property
    def count(self) -> int:
        return len(self.arrivals)

    def settle(self) -> None:
        """Check the arrivals not checked yet."""
        end = len(self.arrivals)
        for body, now in self.arrivals[self._settled:end]:
            src, ts, n = self.fields(body)
            prev = self._last.get(src, 0)
            if n <= prev:
                self._backwards += 1
            else:
                self._skipped += n - prev - 1
                self._last[src] = n
            if self.keep_latency:
                self._latency.append(now - ts)
        self._settled = end

    @staticmethod
    def fields(body: bytes | memoryview) -> tuple[str, float, int]:
        """(src, ts, data.n) of a recorded body."""
        m = msgpack.unpackb(body)
        return m["src"], m["ts"], m["data"]["n"]

    @property
    def backwards(self) -> int:
        self.settle()
        return self._backwards

    @property
    def latency(self) -> list[float]:
        """``arrival - envelope.ts`` per message, in seconds (with `keep_latency`)."""
        self.settle()
        return self._latency

    @property
    def rate(self) -> float:
        """Messages per second between the first and the last arrival."""
        span = self.last_at - self.first_at
        return (self.count - 1) / span if span > 0 and self.count > 1 else 0.0

    def lost(self, expected: int) -> int:
        """Messages not delivered out of `expected` (also counts those never seen at the end)."""
        return max(0, expected - (self.count - self.backwards))

    def latency_ms(self, p: float) -> float:
        return percentile(self.latency, p) * 1000

    def summary(self, expected: int) -> dict[str, Any]:
        return {"delivered": self.count, "lost": self.lost(expected),
                "backwards": self.backwards, "rate": self.rate}


def _done(tally: Tally, expected: int, senders: Sequence[Proc], idle_since: float) -> bool:
    if tally.count >= expected:
        return True
    finished = all(p.popen.poll() is not None for p in senders)
    return finished and time.monotonic() - idle_since > IDLE


def collect(receive: Callable[[Tally], int], tally: Tally, expected: int,
            senders: Sequence[Proc], timeout: float) -> Tally:
    """Call `receive` (one bounded wait + drain, returns how many arrived) until the stop rule."""
    deadline = time.monotonic() + timeout
    idle_since = time.monotonic()
    while time.monotonic() < deadline:
        if receive(tally):
            idle_since = time.monotonic()
        elif _done(tally, expected, senders, idle_since):
            break
        if tally.count >= expected:
            break
    return tally


class BusFeed:
    """The full stack's subscriber: a gapless `Bus` subscription (gap checks, replay)."""

    def __init__(self, router: RouterConfig, prefix: str, name: str = "bench-sub") -> None:
        from broker.client.bus import Bus

        self.bus = Bus(router, name)
        self.bus.subscribe(prefix)
        if not self.bus.connect(wait=20):
            self.bus.close()
            raise RuntimeError("the router did not answer the subscriber's sync")

    def receive(self, tally: Tally) -> int:
        got = self.bus.poll(POLL)
        now = time.time()
        for d in got:
            tally.add(d.body, now)
        return len(got)

    def close(self) -> None:
        self.bus.close()


class ZmqFeed:
    """The baseline's subscriber: a plain SUB (default HWM), no stamps, no replay."""

    def __init__(self, url: str, prefix: str) -> None:
        self.sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        self.sock.connect(url)

    def receive(self, tally: Tally) -> int:
        if not self.sock.poll(int(POLL * 1000)):
            return 0
        n = 0
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return n
            tally.add(frames[1], time.time())
            n += 1

    def close(self) -> None:
        self.sock.close(0)


class MqttFeed:
    """Mosquitto's subscriber: paho-mqtt, QoS 1 subscription, messages counted on paho's
    network thread (that is where paho delivers them)."""

    def __init__(self, port: int, topic: str, tally: Tally) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sctl-bench-sub")
        self.client.max_inflight_messages_set(1000)
        subscribed = threading.Event()
        self.client.on_message = lambda _c, _u, msg: tally.add(bytes(msg.payload), time.time())
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        if not subscribed.wait(10):
            self.close()
            raise RuntimeError("mosquitto did not acknowledge the subscription")
        self._seen = 0

    def receive(self, tally: Tally) -> int:
        time.sleep(POLL)
        new, self._seen = tally.count - self._seen, tally.count
        return new

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
