"""One live instance of an actor across a network partition: two hosts run ``b1``, one after
the other, and the one that comes back from the partition is fenced (docs/leases.md).

Topology (network namespaces made by this test; the router's namespace also holds the
instrument, on a second network that the partition does not touch)::

    routerhost ns                           hostA ns              hostB ns
    br0 10.77.0.1  ─to-a (cut)─ eth0 ...2   sctl actor b1         sctl actor b1 (later),
      sctl router  ─to-o─────────────────────────── eth0 ...3     sctl send, sctl status
    br1 10.78.0.1  ─ia─ eth1 10.78.0.2 (A keeps its instrument link during the cut)
      instrument   ─ib───────────────────────────── eth1 10.78.0.3
      recorder

1. b1 runs on A and holds its name; writes sent from B reach the instrument once each.
2. A is cut off the router (``ip link set to-a down``): the worst case, since A still reaches
   the instrument and keeps running. Once A's lease expired (its ttl, three heartbeats, with
   no traffic), b1 is started on B: granted; writes go through B's instance.
3. The link comes back: A's resent messages are fenced by the router, A is told and exits
   with status 4 naming B's pid; writes sent meanwhile run once. In the end the instrument
   recorded every write exactly once and ``sctl status`` names B's instance as the holder.

Skipped where namespaces cannot be made (not root, or ``ip netns`` refused).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from tests.support.stack import sctl_cmd, wait_for
from tests.system.test_multihost import Hosts, Procs, built, ip, netns_sctl

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]

ROUTER_IP: Final = "10.77.0.1"
INSTRUMENT_IP: Final = "10.78.0.1"
INSTRUMENT_PORT: Final = 4000
EXIT_DUPLICATE: Final = 4
WAIT: Final = 40.0

SITE: Final = """\
[router]
runs_on = "routerhost"
ingress = "tcp://{router}:7201"
egress = "tcp://{router}:7202"
query = "tcp://{router}:7203"

[actors.b1]
type = "bus-link"
host = "{instrument}"
port = {port}
timeout = 5.0
heartbeat_interval = 0.5
backoff_min = 0.1
backoff_max = 0.5
"""


class LeaseHosts(Hosts):
    """`Hosts` (router, ``actors`` = host A, ``operator`` = host B) plus the instrument
    network br1 in the router's namespace, reaching A and B over their own veths."""

    def build(self) -> None:
        super().build()
        ip("-n", self.router, "link", "add", "br1", "type", "bridge")
        ip("-n", self.router, "addr", "add", f"{INSTRUMENT_IP}/24", "dev", "br1")
        ip("-n", self.router, "link", "set", "br1", "up")
        for port, ns, addr in (("ia", self.actors, "10.78.0.2"), ("ib", self.operator,
                                                                   "10.78.0.3")):
            ip("-n", self.router, "link", "add", port, "type", "veth", "peer", "name", "eth1",
               "netns", ns)
            ip("-n", self.router, "link", "set", port, "master", "br1", "up")
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth1")
            ip("-n", ns, "link", "set", "eth1", "up")


@pytest.fixture
def hosts() -> Iterator[LeaseHosts]:
    yield from built(LeaseHosts())


def test_partitioned_holder_is_fenced_and_every_write_runs_once(tmp_path: Path,
                                                                hosts: LeaseHosts) -> None:
    site = tmp_path / "site.toml"
    site.write_text(SITE.format(router=ROUTER_IP, instrument=INSTRUMENT_IP,
                                port=INSTRUMENT_PORT), encoding="utf-8")
    record = tmp_path / "instrument.txt"
    procs = Procs(tmp_path)
    host_a, host_b = hosts.actors, hosts.operator
    sent: list[str] = []

    def send(tag: str, n: int) -> None:
        for i in range(n):
            line = f"OPEN_VALVE-{tag}-{i}"
            done = netns_sctl(host_b, site, "send", "b1", "write", line + "\\n",
                              "--timeout", "20")
            assert done.returncode == 0, done.stdout + done.stderr + why()
            sent.append(line)

    def recorded() -> list[str]:
        text = record.read_text(encoding="utf-8") if record.exists() else ""
        return [line.split(" ", 1)[1] for line in text.splitlines()]

    def status() -> dict[str, Any]:
        done = netns_sctl(host_b, site, "status", "--json", "--timeout", "2")
        try:
            report: dict[str, Any] = json.loads(done.stdout)
        except ValueError:
            return {}
        return report

    def holder() -> dict[str, Any] | None:
        leases = (status().get("router") or {}).get("leases") or {}
        held = leases.get("b1")
        return held if isinstance(held, dict) else None

    def why() -> str:
        return "".join(f"\n--- {name}:\n{procs.output(name)[-2500:]}"
                       for name in ("router", "b1-A", "b1-B", "instrument"))

    try:
        procs.start(hosts.router, "router", sctl_cmd("-c", str(site), "router"))
        procs.start(hosts.router, "instrument", [
            sys.executable, "-m", "tests.integration.test_single_instance", INSTRUMENT_IP,
            str(INSTRUMENT_PORT), str(record)])
        a = procs.start(host_a, "b1-A", sctl_cmd("-c", str(site), "actor", "b1"))
        wait_for(lambda: (holder() or {}).get("pid") == a.pid, WAIT, "b1 on A holding its name")
        send("a", 3)

        # 2. partition A from the router; A keeps its instrument link and keeps running
        hosts.link(up=False)
        wait_for(lambda: holder() is None, WAIT, "A's lease expiring during the partition")
        assert a.poll() is None, why()
        b = procs.start(host_b, "b1-B", sctl_cmd("-c", str(site), "actor", "b1"))
        wait_for(lambda: (holder() or {}).get("pid") == b.pid, WAIT, "b1 on B holding it")
        send("b", 3)

        # 3. heal: A is fenced and exits 4 naming B; writes sent meanwhile still run once
        hosts.link(up=True)
        send("c", 3)
        code = a.wait(timeout=WAIT)
        assert code == EXIT_DUPLICATE, why()
        assert "actor b1 already runs on host" in procs.output("b1-A")
        assert f"(pid {b.pid})" in procs.output("b1-A"), why()
        send("d", 2)

        wait_for(lambda: len(recorded()) >= len(sent), WAIT, "every write at the instrument")
        assert sorted(recorded()) == sorted(sent), (recorded(), sent)
        assert len(set(recorded())) == len(recorded()), "a write reached the instrument twice"
        row = status()["actors"]["b1"]
        assert row["holder"]["pid"] == b.pid and row["pid"] == b.pid, row
        assert b.poll() is None, why()
    finally:
        procs.stop_all()
