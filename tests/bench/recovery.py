"""Figure 5: recovery under a real supervisord (with its watchdog), as deployed.

The site (router with its journal file, the door simulator, the ``springcore-tcp`` reader) is
written to a temp folder, rendered with ``sctl deploy render`` and run by ``supervisord -n``
(`tests.system.conftest.SupervisedSite`, the system tests' harness).

- **actor**: ``kill -9`` the reader; the figure is the time from the kill until the restarted
  reader's ``evt.reader.link`` says ``up`` (a new epoch: the restarted process) on the bus.
- **router**: a `Bus` publishes 200 events/s, another one subscribes; ``kill -9`` the router;
  the figure is the time from the kill until the first delivery from the new router epoch, and
  the loss is every ``n`` of 1..sent not delivered once, in order, by the end.
"""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path
from typing import Any, Final

from broker.client.bus import Bus
from tests.bench.common import BenchError, Figure, Procs, Scale, free_ports
from tests.bench.feeds import Tally

LOAD_RATE: Final = 200


def supervised(folder: Path) -> Any:
    from tests.system.conftest import SupervisedSite

    (port,) = free_ports(1)
    return SupervisedSite(
        folder,
        f'[actors.door]\ntype = "sim-springcore-tcp"\nport = {port}\n'
        f'[actors.reader]\ntype = "springcore-tcp"\nhost = "127.0.0.1"\nport = {port}\n'
        "backoff_max = 1.0\n")


def actor_restart(site: Any) -> float:
    bus = Bus(site.site.router, "bench-recovery-link")
    bus.subscribe("evt.reader.link")
    if not bus.connect(wait=20):
        raise BenchError("the supervised router did not answer")
    try:
        old_pid = site.info("reader")["pid"]
        os.kill(old_pid, signal.SIGKILL)
        killed = time.monotonic()
        while time.monotonic() - killed < 30:
            for d in bus.poll(0.05):
                # the old process is dead: an "up" now comes from its successor
                if d.envelope.data.get("state") == "up":
                    took = time.monotonic() - killed
                    if site.info("reader")["pid"] == old_pid:
                        raise BenchError("link up from the killed reader's pid")
                    return took
    finally:
        bus.close()
    raise BenchError("the killed reader's link did not come back up within 30 s")


def router_recovery(site: Any, seconds: float) -> tuple[float, int, Tally]:
    router = site.site.router
    sub = Bus(router, "bench-recovery-sub")
    sub.subscribe("evt.load.n")
    pub = Bus(router, "bench-recovery-pub")
    if not (sub.connect(wait=20) and pub.connect(wait=20)):
        raise BenchError("the supervised router did not answer")
    tally = Tally()
    resumed = float("nan")
    try:
        old_epoch = pub.router_epoch
        sent = 0
        start = time.monotonic()
        killed = 0.0
        while time.monotonic() - start < seconds:
            while sent < int((time.monotonic() - start) * LOAD_RATE):
                sent += 1
                pub.publish("evt.load.n", "event", {"n": sent})
            if not killed and time.monotonic() - start > seconds / 3:
                os.kill(site.info("router")["pid"], signal.SIGKILL)
                killed = time.monotonic()
            pub.poll(0)
            for d in sub.poll(0.002):
                if killed and math.isnan(resumed) and d.router_epoch != old_epoch:
                    resumed = time.monotonic() - killed
                tally.add(d.body, time.time())
        deadline = time.monotonic() + 30
        while tally.count < sent and time.monotonic() < deadline:
            pub.poll(0.01)
            for d in sub.poll(0.01):
                tally.add(d.body, time.time())
    finally:
        pub.close()
        sub.close()
    return resumed, sent, tally


def run(scale: Scale) -> list[Figure]:
    with Procs() as procs:
        site = supervised(procs.folder / "site")
        procs.callback(site.stop)
        site.start()
        site.wait_link_up(["door", "reader"], timeout=60)
        restart = actor_restart(site)
        resumed, sent, tally = router_recovery(site, scale.pick(9.0, 4.5))
    lost = tally.lost(sent) + tally.backwards
    return [
        Figure("actor_restart_s", "actor kill -9 → link up again (supervisord)", restart, "s",
               3.0, "low"),
        Figure("router_recovery_s", "router kill -9 → delivery resumed", resumed, "s", 2.0,
               "low", f"{LOAD_RATE} ev/s: {tally.count}/{sent} delivered"),
        Figure("router_recovery_lost", "router kill -9: lost or out of order", lost, "msgs", 0,
               "low"),
    ]
