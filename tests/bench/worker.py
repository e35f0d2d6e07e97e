"""Load generators, each its own process: ``python -m tests.bench.worker ROLE 'JSON args'``.

A publisher must not share a process (and a GIL) with the subscriber that measures it, so every
sending side runs here. Each role prints one JSON object on stdout when it is done (what it sent,
how long it took, what it saw dropped); `tests.bench.common.Proc.result` reads it.

Roles:
- ``bus-pub``: the full stack's sender, a `Bus` with its outbox. ``rate`` 0 publishes as fast as
  the outbox window allows (``window`` unacked envelopes at most, so the bounded outbox never
  overflows: an overflow would be a loss); ``rate`` > 0 paces to that many per second for
  ``seconds``. Ends with a flush: every envelope acked by the router. Reports the CPU time it
  used publishing (``cpu_s``, all threads: ZeroMQ's I/O thread too) and that of its own thread.
  Sets glibc's malloc thresholds as an actor process does (`broker.memory.tune_malloc`).
- ``zmq-pub``: the baseline's sender, a plain PUB with the same envelope bodies, no outbox.
- ``zmq-proxy``: the baseline's broker, `zmq.proxy` between an XSUB and an XPUB; runs until
  killed.
- ``mqtt-pub``: paho-mqtt publishing the same bodies with QoS 1, at most ``inflight``
  unacknowledged, waiting for every PUBACK at the end.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Final

import msgpack
import zmq

from broker.config import load_site
from broker.wire import envelope as envmod

SETTLE: Final = 1.0  # plain PUB has no handshake: time for the subscription to reach it
PACE_TICK: Final = 0.001
STALL: Final = 30.0  # seconds without a PUBACK: Mosquitto's run is reported as stalled
BATCH: Final = 500  # publishes between two reads of the acks


def body(src: str, epoch: int, n: int, payload: bytes) -> bytes:
    """The envelope every stack carries, ``data = {"n": n, "p": payload}``, built the way a plain
    pyzmq or paho program would build it: one `msgpack.packb` of the map, no validation (the Bus's
    own Encoder validates; putting the library's general `make` in a baseline publisher's loop
    would slow the baseline by its whole per-message cost and flatter the ratios). The bytes have
    the envelope's layout: `envelope.decode` accepts them (checked at start-up)."""
    packed: bytes = _pack({"v": envmod.VERSION, "id": os.urandom(16).hex(), "src": src,
                           "epoch": epoch, "seq": n, "ts": time.time(), "kind": "event",
                           "data": {"n": n, "p": payload}})
    return packed


_pack = msgpack.Packer(use_bin_type=True).pack


def _check_body(src: str, epoch: int, payload: bytes) -> None:
    env = envmod.decode(body(src, epoch, 1, payload))
    if env.data != {"n": 1, "p": payload} or (env.src, env.epoch, env.seq) != (src, epoch, 1):
        raise SystemExit("the plain body is not the envelope it should be")


def due(start: float, rate: float, limit: int) -> int:
    """How many messages a sender pacing at `rate`/s from `start` should have sent by now."""
    return limit if rate <= 0 else min(limit, int((time.monotonic() - start) * rate))


def pump(bus: Any, timeout: float) -> None:
    """One turn of an event loop around `bus`, the way an actor's loop drives it: its own
    `zmq.Poller` over `Bus.pollables`, a wait rounded *up* to whole milliseconds (bounded by
    `Bus.next_deadline`), then `Bus.handle`. (`Bus.poll(timeout)` would do the same, but
    it returns only with deliveries or at the timeout; the publisher must get back to
    publishing as soon as its acks are read.)"""
    poller = zmq.Poller()
    for sock, flags in bus.pollables():
        poller.register(sock, flags)
    wait = max(0.0, min(time.monotonic() + timeout, bus.next_deadline()) - time.monotonic())
    bus.handle(dict(poller.poll(math.ceil(wait * 1000))))


def bus_pub(a: dict[str, Any]) -> dict[str, Any]:
    from broker.client.bus import Bus
    from broker.memory import tune_malloc

    tune_malloc()  # as an actor process does
    site = load_site(a["site"])
    bus = Bus(site.router, a["name"])
    if not bus.connect(wait=20):
        raise SystemExit(f"{a['name']}: the router did not answer")
    rate = float(a.get("rate", 0))
    count = int(a["count"]) if rate <= 0 else int(rate * float(a["seconds"]))
    window = int(a.get("window", 20_000))
    tick = float(a.get("tick", PACE_TICK))  # many paced publishers: wake less often
    payload = bytes(int(a["size"]))
    topic = a["topic"]
    start = time.monotonic()
    cpu, main_cpu = time.process_time(), time.thread_time()
    sent = 0
    while sent < count:
        # the outbox only grows while publishing: its room is looked at once a batch
        target = min(due(start, rate, count), sent + BATCH, sent + window - bus.outbox_size)
        publish = bus.publish
        while sent < target:
            sent += 1
            publish(topic, "event", {"n": sent, "p": payload})
        # acks are read only while polling: poll between batches, wait only when nothing is due
        room = bus.outbox_size < window and sent < due(start, rate, count)
        pump(bus, 0 if room else tick)
    published = time.monotonic() - start
    flushed = bus.flush(60.0)
    result = {"sent": sent, "publish_s": published, "flush_s": time.monotonic() - start,
              "flushed": flushed, "cpu_s": time.process_time() - cpu,
              "main_thread_cpu_s": time.thread_time() - main_cpu, **{k: bus.counters[k] for k in (
                  "outbox_dropped", "resent", "router_restarts")}}
    bus.close()
    return result


def zmq_pub(a: dict[str, Any]) -> dict[str, Any]:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 5000)
    pub.connect(a["url"])
    time.sleep(SETTLE)
    payload = bytes(int(a["size"]))
    rate = float(a.get("rate", 0))
    count = int(a["count"]) if rate <= 0 else int(rate * float(a["seconds"]))
    topic = a["topic"].encode()
    epoch = time.time_ns() // 1000
    _check_body("plain", epoch, payload)
    start = time.monotonic()
    sent = 0
    while sent < count:
        target = due(start, rate, count)
        while sent < target:
            sent += 1
            pub.send_multipart((topic, body("plain", epoch, sent, payload)))
        if sent < count:
            time.sleep(PACE_TICK)
    elapsed = time.monotonic() - start
    pub.close()
    ctx.term()
    return {"sent": sent, "publish_s": elapsed}


def zmq_proxy(a: dict[str, Any]) -> dict[str, Any]:
    ctx = zmq.Context()
    xsub = ctx.socket(zmq.XSUB)
    xsub.bind(a["ingress"])
    xpub = ctx.socket(zmq.XPUB)
    xpub.bind(a["egress"])
    print(json.dumps({"bound": True}), flush=True)
    zmq.proxy(xsub, xpub)  # until SIGTERM
    return {}


def mqtt_pub(a: dict[str, Any]) -> dict[str, Any]:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sctl-bench-pub")
    client.max_inflight_messages_set(int(a.get("inflight", 1000)))
    client.max_queued_messages_set(0)
    acked = [0]
    client.on_publish = lambda *_: acked.__setitem__(0, acked[0] + 1)
    client.connect("127.0.0.1", int(a["port"]))
    client.loop_start()
    time.sleep(SETTLE)
    count = int(a["count"])
    payload = bytes(int(a["size"]))
    _check_body("mqtt", 1, payload)
    window = int(a.get("inflight", 1000))

    def acked_up_to(n: int) -> bool:
        """Wait until `n` messages are acked; False when acks stop for `STALL` seconds."""
        last, since = acked[0], time.monotonic()
        while acked[0] < n:
            if acked[0] != last:
                last, since = acked[0], time.monotonic()
            elif time.monotonic() - since > STALL:
                return False
            time.sleep(PACE_TICK / 4)
        return True

    start = time.monotonic()
    sent = 0
    # paho's own queue beyond the in-flight window stalled in trials: keep within the window
    while sent < count and acked_up_to(sent - window):
        sent += 1
        client.publish(a["topic"], body("mqtt", 1, sent, payload), qos=1)
    published = time.monotonic() - start
    acked_up_to(sent)
    result = {"sent": sent, "acked": acked[0], "publish_s": published,
              "flush_s": time.monotonic() - start}
    client.loop_stop()
    client.disconnect()
    return result


ROLES: Final = {"bus-pub": bus_pub, "zmq-pub": zmq_pub, "zmq-proxy": zmq_proxy,
                "mqtt-pub": mqtt_pub}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ROLES:
        print(f"usage: python -m tests.bench.worker {{{','.join(ROLES)}}} 'JSON'",
              file=sys.stderr)
        return 2
    print(json.dumps(ROLES[argv[0]](json.loads(argv[1]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
