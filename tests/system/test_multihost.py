"""Three hosts in network namespaces: the router on one, the actors under supervisord on another,
the operator on a third, and the link between router and actors cut.

Topology (each namespace has its own loopback, addresses and ports)::

    routerhost ns            actors ns                       operator ns
    br0 10.77.0.1/24 ─veth─  eth0 10.77.0.2                  eth0 10.77.0.3
      (`to-a` port)          supervisord (rendered            sctl sub, sctl send
                               --host actors): watchdog,
      `sctl router` bound      reader1 (springcore-tcp) ──lo── readersim (sim, rate tags/s)
      on 10.77.0.1
      (`to-o` port) ─────────────────────────────────────────veth─┘

Every process is real: ``sctl router`` in the router namespace; ``supervisord`` in the actor
namespace on the file ``sctl deploy render --host actors`` wrote (so the watchdog runs there
too); ``sctl sub`` and ``sctl send`` in the operator namespace. The simulator emits a tag every
1/RATE s while the reader is connected to it (over the actor host's loopback), so tags keep
being presented while the router is out of reach. The cut is ``ip link set to-a down`` on the
router's side for `CUT` seconds; the reader's outbox keeps the tag events and resends them when
the router answers again. In the end every tag the simulator wrote (its ``evt.readersim.sent``,
which crossed the same cut) has arrived at the operator exactly once, in order, and the reader
was never restarted (a restart would have lost its outbox).

Skipped only where namespaces cannot be made (not root, or ``ip netns`` refused).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, TypeVar

import pytest

from broker.config import load_site
from cli.ops.supervisord import render
from cli.ops.watchdog import supervisor_proxy
from tests.support.stack import ROOT, SubFeed, sctl_cmd, subprocess_env, wait_for
from tests.system.conftest import BIN

pytestmark = [pytest.mark.system,
              pytest.mark.timeout(120)]  # ~40 s; headroom for a loaded shared machine

CUT: Final = 10.0  # seconds the router host and the actor host are apart
RATE: Final = 5.0  # tags per second from the simulator
SUBNET: Final = "10.77.0"
ROUTER_IP, ACTORS_IP, OPERATOR_IP = f"{SUBNET}.1", f"{SUBNET}.2", f"{SUBNET}.3"
WAIT: Final = 30.0

SITE: Final = """\
# Three hosts: the router on "routerhost", the reader and its simulator on "actors", the
# operator anywhere that reaches {router}. The router binds these addresses, clients connect.
[router]
runs_on = "routerhost"
ingress = "tcp://{router}:7101"
egress = "tcp://{router}:7102"
query = "tcp://{router}:7103"

[supervisor]
sctl = "{sctl}"
{supervisor}

[actors.reader1]
type = "springcore-tcp"
runs_on = "actors"
host = "127.0.0.1"
port = 4000
heartbeat_interval = 0.5
backoff_min = 0.2
backoff_max = 1.0

[actors.readersim]
type = "sim-springcore-tcp"
runs_on = "actors"
port = 4000
rate = {rate}
heartbeat_interval = 0.5
"""


class ActorRestarted(AssertionError):
    """reader1 got a new pid across the cut: the watchdog on its host took it for hung and
    killed it, and the tags in its outbox died with it."""


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


class Hosts:
    """The three namespaces (names unique to this test process) and the veth links."""

    def __init__(self) -> None:
        tag = f"sctl{os.getpid()}"
        self.router, self.actors, self.operator = (f"{tag}r", f"{tag}a", f"{tag}o")
        self.made: list[str] = []

    def build(self) -> None:
        for ns in (self.router, self.actors, self.operator):
            ip("netns", "add", ns)
            self.made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", self.router, "link", "add", "br0", "type", "bridge")
        ip("-n", self.router, "addr", "add", f"{ROUTER_IP}/24", "dev", "br0")
        ip("-n", self.router, "link", "set", "br0", "up")
        for port, ns, addr in (("to-a", self.actors, ACTORS_IP),
                               ("to-o", self.operator, OPERATOR_IP)):
            # made inside the router's namespace: no name in the host's namespace to clash
            ip("-n", self.router, "link", "add", port, "type", "veth", "peer", "name", "eth0",
               "netns", ns)
            ip("-n", self.router, "link", "set", port, "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")

    def link(self, up: bool) -> None:
        """Connect or cut the actor host (its bridge port, on the router's side)."""
        ip("-n", self.router, "link", "set", "to-a", "up" if up else "down")

    def remove(self) -> None:
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


H = TypeVar("H", bound=Hosts)


def built(h: H) -> Iterator[H]:
    """Fixture body: `h` built (skipped where namespaces cannot be made), removed after."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (ip netns add)")
    if shutil.which("ip") is None:
        pytest.skip("the ip tool (iproute2) is missing")
    try:
        h.build()
    except RuntimeError as exc:
        h.remove()
        if not h.made:  # the first `ip netns add` was refused: no namespaces here
            pytest.skip(f"cannot create network namespaces: {exc}")
        raise
    try:
        yield h
    finally:
        h.remove()


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    yield from built(Hosts())


class Procs:
    """Processes started in a namespace; all stopped (SIGTERM, then SIGKILL) at the end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, ns: str, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        env = subprocess_env()
        env["PYTHONUNBUFFERED"] = "1"
        with (self.folder / f"{name}.out").open("ab") as out:
            # `ip netns exec` execs argv: the pid is the program's; its own group for killpg
            popen = subprocess.Popen(["ip", "netns", "exec", ns, *argv], cwd=ROOT, env=env,
                                     stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.started.append((name, popen))
        return popen

    def output(self, name: str) -> str:
        p = self.folder / f"{name}.out"
        return p.read_text(errors="replace") if p.exists() else ""

    def stop(self, popen: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
        if popen.poll() is None:
            os.killpg(popen.pid, signal.SIGTERM)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(popen.pid, signal.SIGKILL)
                popen.wait(10)

    def stop_all(self) -> None:
        for _, popen in reversed(self.started):
            self.stop(popen)


def netns_sctl(ns: str, site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *sctl_cmd("-c", str(site), *args)],
                          cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                          timeout=60)


def test_three_hosts_cut_link_nothing_lost_nothing_duplicated(tmp_path: Path,
                                                               hosts: Hosts) -> None:
    supervisor = ""  # the default watchdog: a cut-off host's actors must not look hung
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    (tmp_path / "var" / "log").mkdir(parents=True)
    site = deploy / "site.toml"
    site.write_text(SITE.format(router=ROUTER_IP, sctl=BIN / "sctl", rate=RATE,
                                supervisor=supervisor),
                    encoding="utf-8")
    conf = deploy / "actors.conf"
    rendered = subprocess.run(sctl_cmd("-c", str(site), "deploy", "render", "--host", "actors"),
                              cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                              timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    programs = [line for line in conf.read_text().splitlines() if line.startswith("[program:")]
    assert programs == ["[program:watchdog]", "[program:reader1]", "[program:readersim]"]

    procs = Procs(tmp_path)
    feed = SubFeed(tmp_path / "sub.out")
    try:
        router = procs.start(hosts.router, "router", sctl_cmd("-c", str(site), "router"))
        sub = procs.start(hosts.operator, "sub", sctl_cmd(
            "-c", str(site), "sub", "evt.reader1.", "evt.readersim.", "--since", "0",
            "--json", "--timeout", "110"))
        supervisord = procs.start(hosts.actors, "supervisord",
                                  [str(BIN / "supervisord"), "-n", "-c", str(conf)])
        rpc = supervisor_proxy(tmp_path / "var" / "supervisor.sock").supervisor
        run_checks(hosts, procs, feed, site, rpc)
        for popen, name in ((router, "router"), (sub, "sub"), (supervisord, "supervisord")):
            assert popen.poll() is None, f"{name} ended: {procs.output(name)[-3000:]}"
    finally:
        try:
            rpc_shutdown(tmp_path / "var" / "supervisor.sock")
        finally:
            procs.stop_all()


def rpc_shutdown(socket_path: Path) -> None:
    if socket_path.exists():
        with contextlib.suppress(Exception):  # it may be gone already; killpg follows
            supervisor_proxy(socket_path).supervisor.shutdown()


def run_checks(hosts: Hosts, procs: Procs, feed: SubFeed, site: Path, rpc: Any) -> None:
    def tags() -> list[dict[str, Any]]:
        return feed.of("evt.reader1.tag")

    def why() -> str:
        return (f"router:\n{procs.output('router')[-2000:]}\nsub:\n"
                f"{procs.output('sub')[-2000:]}\nsupervisord:\n"
                f"{procs.output('supervisord')[-2000:]}")

    # 1. events flow across: actor host -> router host -> operator host
    try:
        wait_for(lambda: len(tags()) >= 3, WAIT, "tags from the actor host at the operator")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{why()}") from None
    reader_pid = rpc.getProcessInfo("reader1")["pid"]

    # 2. a command from the operator host reaches the reader on the actor host
    sent = netns_sctl(hosts.operator, site, "send", "reader1", "accept", "--timeout", "20")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    wait_for(lambda: any(m["envelope"]["data"].get("fields", {}).get("SEQ") == "60"
                         for m in feed.of("evt.readersim.received")),
             WAIT, "the simulated reader received the accept ($SCCMD SEQ=60)")

    # 3. cut the actor host off the router host for CUT seconds while tags keep coming
    hosts.link(up=False)
    cut_at = time.time()
    time.sleep(2.0)  # in-flight messages settle; from here nothing crosses
    seen_in_cut = len(tags())
    time.sleep(CUT - 2.0)  # the cut itself is what is tested: a fixed span of time
    assert len(tags()) == seen_in_cut, "tags crossed a link that was down"
    hosts.link(up=True)
    back_at = time.time()
    if rpc.getProcessInfo("reader1")["pid"] != reader_pid:
        watchdog = procs.folder / "var" / "log" / "watchdog.log"
        raise ActorRestarted(f"reader1 restarted during the cut; watchdog log:\n"
                             f"{watchdog.read_text(errors='replace')[-2000:]}")

    # 4. after it comes back: the backlog arrives; stop the simulator to close the count
    wait_for(lambda: any(m["envelope"]["ts"] > back_at for m in tags()), WAIT,
             "tags made after the link came back")
    rpc.stopProcess("readersim")
    sent_events = feed.of("evt.readersim.sent")

    def complete() -> bool:
        nonlocal sent_events
        sent_events = feed.of("evt.readersim.sent")
        return bool(sent_events) and len(tags()) >= len(sent_events)

    wait_for(complete, WAIT, "every tag the simulator sent to arrive at the operator")
    time.sleep(1.0)  # anything extra (a duplicate) would show up now
    got = tags()
    sent_events = feed.of("evt.readersim.sent")

    in_cut = [m for m in sent_events if cut_at + 1 < m["envelope"]["ts"] < back_at - 1]
    assert len(in_cut) >= RATE * (CUT - 2) / 2, \
        f"only {len(in_cut)} tags were presented during the cut"
    assert len(got) == len(sent_events), (len(got), len(sent_events))
    ids = [(m["envelope"]["epoch"], m["envelope"]["seq"]) for m in got]
    assert len(set(ids)) == len(ids), "a tag event arrived twice"
    assert len({m["envelope"]["epoch"] for m in got}) == 1, "reader1 restarted"
    assert [m["envelope"]["data"]["raw"] for m in got] == \
        [m["envelope"]["data"]["line"].rstrip("\r\n") for m in sent_events]
    gseqs = [m["gseq"] for m in feed.lines()]
    assert gseqs == sorted(set(gseqs)), "the operator's feed is out of order or repeated"
    assert rpc.getProcessInfo("reader1")["pid"] == reader_pid, "reader1 was restarted"


EXAMPLE: Final = ROOT / "deploy" / "examples" / "multihost" / "site.toml"


def programs_on(host: str) -> list[str]:
    text = render(load_site(EXAMPLE), EXAMPLE.parent / f"{host}.conf", host)
    return [line[len("[program:"):-1] for line in text.splitlines()
            if line.startswith("[program:")]


@pytest.mark.timeout(60)
def test_multihost_example_places_each_program_on_its_host() -> None:
    """The documented example loads and renders per host (no namespaces needed)."""
    site = load_site(EXAMPLE)
    assert sorted(site.hosts()) == ["control", "doors"]
    assert site.router.ingress.startswith("tcp://10.10.1.1:")  # reachable, not loopback
    assert programs_on("control") == ["router", "watchdog"]
    assert programs_on("doors") == ["watchdog", "mqttreaders", "reader1", "reader2"]
    heartbeat = 1.0  # the default heartbeat_interval of the example's actors
    assert site.supervision().hung_after * heartbeat > CUT  # rides out the test's outage
