"""SPEC arrays: SPEC simulator → ``spec-client`` actor → router → subscriber, with the
simulator's live data arrays: the 1024 x 1024 ``ushort`` image ``var/IMG`` at 1 Hz and the
4096-channel ``ulong`` spectrum ``var/MCA`` at 10 Hz, both watched by the actor.

Processes: the router (``max_message_bytes`` 4 MiB: one image event is 2 MiB of data), the
simulator (``publish_updates``: each frame it sends is also announced as
``evt.specsim.update {var, frame, t}``, ``t`` taken before the frame is rendered and sent), the
actor, and this process: a `Bus` subscribed to the announcements and to ``evt.spec1.chan``,
connected before the actor starts. Every array event carries its frame number in its first
elements; latency = the subscriber's arrival time - ``t`` of that frame's announcement (the
whole path: render, TCP, the actor's decoding and publishing, the router's journal and
fan-out, the subscriber's gap check). A frame announced and not delivered is lost. The actor's
CPU is its user + system time over the measured window divided by the window. Beside them:
what one image costs through msgpack (pack and unpack, in this process) in the binary layout
and as nested lists of numbers (the layout without binary data).
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from typing import Any, Final

from tests.bench.common import (
    BenchError,
    Figure,
    Procs,
    Scale,
    cpu_seconds,
    free_ports,
    percentile,
)

DRAIN: Final = 1.5  # seconds of listening after the window (an image in flight still counts)
WARMUP: Final = 2.0  # seconds after the first array event before the window opens


def spec_site(procs: Procs) -> Any:
    (port,) = free_ports(1)
    return procs.site(
        f'[actors.specsim]\ntype = "sim-spec-server"\nport = {port}\n'
        f'specname = "bench"\npublish_updates = true\n'
        f'[actors.spec1]\ntype = "spec-client"\nhost = "127.0.0.1"\nport = {port}\n'
        f'watch = ["var/MCA", "var/IMG"]\n',
        router="max_message_bytes = 4194304\n")


@dataclass
class _Run:
    sent: dict[tuple[str, int], float] = field(default_factory=dict)  # frame → announced at
    got: dict[tuple[str, int], float] = field(default_factory=dict)  # frame → arrived at
    cpu: float = float("nan")  # the actor's CPU, fraction of one core


def run(scale: Scale) -> list[Figure]:
    from broker.client.bus import Bus

    seconds = scale.pick(60.0, 8.0)
    with Procs() as procs:
        site = spec_site(procs)
        procs.router(site)
        procs.sctl(site.path, "actor", "specsim", name="specsim")
        bus = Bus(site.router, "bench-spec")
        bus.subscribe("evt.specsim.update")
        bus.subscribe("evt.spec1.chan")
        if not bus.connect(wait=20):
            raise BenchError("the router did not answer the subscriber")
        try:
            actor = procs.sctl(site.path, "actor", "spec1", name="spec1")
            result = _record(bus, actor.pid, seconds)
        finally:
            bus.close()
    return _figures(result)


def _record(bus: Any, pid: int, seconds: float) -> _Run:
    """Announcements of the window, arrivals until the drain ends, the actor's CPU."""
    result = _Run()
    start = _first_array(bus, 30.0) + WARMUP
    end = start + seconds
    cpu_start: tuple[float, float] | None = None
    cpu_end: tuple[float, float] | None = None
    while (now := time.monotonic()) < end + DRAIN:
        if cpu_start is None and now >= start:
            cpu_start = (cpu_seconds(pid), now)
        if cpu_end is None and now >= end:
            cpu_end = (cpu_seconds(pid), now)
        deliveries = bus.poll(0.05)
        arrived = time.time()
        for d in deliveries:
            data = d.envelope.data
            if d.topic == "evt.specsim.update":
                if start <= now < end:
                    result.sent[(data["var"], data["frame"])] = data["t"]
            elif "value" in data:
                var = data["chan"].removeprefix("var/")
                result.got[(var, _frame(data["value"]))] = arrived
    if cpu_start is None or cpu_end is None:
        raise BenchError("the measured window did not complete")
    result.cpu = (cpu_end[0] - cpu_start[0]) / (cpu_end[1] - cpu_start[1])
    return result


def _first_array(bus: Any, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(d.topic == "evt.spec1.chan" and "value" in d.envelope.data
               for d in bus.poll(0.1)):
            return time.monotonic()
    raise BenchError(f"no array event from spec1 within {timeout:g} s")


def _frame(value: dict[str, Any]) -> int:
    """The frame number a live array carries in its first elements (see actors.sim.spec_arrays)."""
    order = value["dtype"][0] if value["dtype"][0] in "<>" else "<"
    if value["dtype"][1:] == "u2":
        low, high = struct.unpack_from(order + "HH", value["data"])
        return int(low + 65536 * high)
    return int(struct.unpack_from(order + "I", value["data"])[0])


def _figures(result: _Run) -> list[Figure]:
    figures: list[Figure] = []
    lost = 0
    for var, label in (("IMG", "IMG 1024x1024 u2 1 Hz"), ("MCA", "MCA 4096 u4 10 Hz")):
        frames = [k for k in result.sent if k[0] == var]
        if not frames:
            raise BenchError(f"no {var} frame announced in the measured window")
        latency = [result.got[k] - result.sent[k] for k in frames if k in result.got]
        lost += len(frames) - len(latency)
        key = var.lower()
        figures += [
            Figure(f"spec_{key}_p50_ms", f"SPEC {label}: sim → sub p50",
                   percentile(latency, 50) * 1000, "ms", None, "",
                   f"{len(latency)} of {len(frames)} frames"),
            Figure(f"spec_{key}_p99_ms", f"SPEC {label}: p99", percentile(latency, 99) * 1000,
                   "ms", 100.0, "low"),
            Figure(f"spec_{key}_max_ms", f"SPEC {label}: max", percentile(latency, 100) * 1000,
                   "ms"),
        ]
    return [*figures,
            Figure("spec_frames_lost", "SPEC arrays: frames lost", lost, "frames", 0, "low"),
            Figure("spec_actor_cpu_pct", "SPEC arrays: spec-client actor CPU", result.cpu * 100,
                   "%", 25.0, "low"),
            *_encoding()]


def _encoding() -> list[Figure]:
    """One image through msgpack (pack, then unpack) as binary and as nested lists of numbers,
    in this process: what the layout itself costs."""
    import msgpack

    from actors.protocols.spec_types import to_bus
    from actors.sim.spec_arrays import LiveImage

    image = LiveImage("IMG", 1024, 1024, 1.0, 0.0).render(1)
    t0 = time.perf_counter()
    binary = msgpack.packb({"value": to_bus(image)})
    msgpack.unpackb(binary)
    t1 = time.perf_counter()
    items = image.items
    nested = msgpack.packb({"value": [list(items[r * 1024:(r + 1) * 1024])
                                      for r in range(1024)], "shape": [1024, 1024]})
    msgpack.unpackb(nested)
    t2 = time.perf_counter()
    note = f"{len(binary) / 2**20:.1f} MiB binary, {len(nested) / 2**20:.1f} MiB as lists"
    return [Figure("spec_img_binary_ms", "SPEC image pack+unpack, binary", (t1 - t0) * 1000,
                   "ms", None, "", note),
            Figure("spec_img_lists_ms", "SPEC image pack+unpack, nested lists",
                   (t2 - t1) * 1000, "ms")]
