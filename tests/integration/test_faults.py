"""Fault injection at every link, with real processes: ``sctl router``, the device simulators
and the actors of each TCP type, plus hostile peers from `tests.support.hostile`.

Device side. Each TCP actor (springcore-tcp ``reader``, bus-link ``bus1``, spec-client
``spec1``) reaches its real simulator through a `FaultProxy`, which injects one fault per test:
connection refused, a reset in the middle of a frame, a silent (half-open as seen from the
actor) peer, slowloris (one byte at a time), 10 MB of garbage and valid frames at far more than
the device's rate. For each one the test checks that

- the actor process stays up, and says what happened: the link state and its reason on
  ``evt.<name>.link``, or an error reply naming the cause to the command caught in the fault;
- recovery is automatic: once the proxy passes traffic again, the next tag or command works,
  without anyone restarting anything;
- memory stays bounded: VmRSS of the actor after the fault and the recovery is at most
  `RSS_BOUND` above its value before (the 10 MB of garbage must not be kept).

A 104 master vanishing (RST) right after sending a command leaves the iec104-server up, the
command's outcome published, and the next master's command confirmed.

Bus side: the actors start before the router (nothing they publish is lost), and the router is
killed with ``kill -9`` and restarted while tags flow (nothing lost either); a subscriber frozen
with SIGSTOP overflows its egress queue and catches up from the journal without slowing anyone;
a reader's outbox overflows while the router is down and says so (alarm and counter).

Covered elsewhere, not repeated here: MQTT broker restart
(test_springcore_mqtt::test_broker_killed_and_restarted_actor_recovers), SPEC server killed in
the middle of a reply (test_spec::test_sim_killed_mid_reply_fails_fast_then_watches_come_back),
eviction from the journal before a slow subscriber caught up
(test_bus::test_subscriber_loss_to_eviction_is_counted_and_alarmed).

Limits of the method: the proxy's kernel answers TCP keepalives, so "silent" is a peer that
stops talking, not a host that vanished (that needs packet filtering, i.e. root); keepalive is
what covers the latter (`actors.transports.tcp.set_keepalive`).
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from actors.protocols.spec import Cmd, Message, encode_message
from actors.protocols.spec_types import encode_value
from actors.protocols.springcore import Rejected, ScrdrDecoder, encode_tag_line
from broker.client.bus import Bus
from tests.support import stack as support
from tests.support.hostile import FaultProxy, Raw104Master
from tests.support.mosquitto import Mosquitto
from tests.support.stack import Feed, free_ports, sctl_cmd, subprocess_env, wait_for

pytestmark = pytest.mark.timeout(90)

MiB: Final = 1 << 20
RSS_BOUND: Final = 32 * MiB  # VmRSS growth allowed across one fault and its recovery
GARBAGE: Final = 10 * MiB
OUTBOX_RSS_BOUND: Final = 32 * MiB  # a full outbox of 5 000 small envelopes, with room to spare
IDN: Final = "SCTL,INSTRUMENT-SIM,0,1.0"
CA: Final = 47

SITE: Final = """
[actors.door]
type = "sim-springcore-tcp"
port = {door}
rate = 2.0
tag = "0D0D0D0D"
heartbeat_interval = 0.5

[actors.reader]
type = "springcore-tcp"
host = "127.0.0.1"
port = {reader_proxy}
idle_timeout = 3.0
heartbeat_interval = 0.5
backoff_min = 0.1
backoff_max = 0.5
connect_timeout = 3.0

[actors.inst]
type = "sim-instrument"
port = {inst}
heartbeat_interval = 0.5

[actors.bus1]
type = "bus-link"
host = "127.0.0.1"
port = {bus1_proxy}
timeout = 3.0
max_buffer = 65536
heartbeat_interval = 0.5
backoff_min = 0.1
backoff_max = 0.5
connect_timeout = 3.0

[actors.specsim]
type = "sim-spec-server"
port = {spec}
specname = "faults"
heartbeat_interval = 0.5

[actors.spec1]
type = "spec-client"
host = "127.0.0.1"
port = {spec1_proxy}
watch = ["motor/m0/position"]
timeout = 3.0
hello_timeout = 2.0
heartbeat_interval = 0.5
backoff_min = 0.1
backoff_max = 0.5
connect_timeout = 3.0

[actors.scada]
type = "iec104-server"
ip = "127.0.0.1"
port = {scada}
common_address = 47
allow = ["127.0.0.1"]
command_timeout = 3.0
heartbeat_interval = 0.5
poll_connections = 0.2

[[actors.scada.command]]
ioa = 2000
type = "C_SC_NA_1"
actor = "spec1"
command = "cmd"
args = {{ text = "sleep(1)" }}   # the command runs for 1 s: the master leaves in the middle
"""


def rss(pid: int) -> int:
    """Resident set size of a process, bytes (VmRSS in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class Stack(support.Stack):
    """The processes of the module, the proxies in front of the devices, and a Feed that
    records every ``evt.`` delivery in order."""

    feed: Feed
    proxies: dict[str, FaultProxy]
    scada_port: int

    def link(self, name: str, state: str, after: int,
             reason: Callable[[str], bool] = lambda r: True,
             timeout: float = 20.0) -> dict[str, Any]:
        return self.feed.wait(f"evt.{name}.link",
                              lambda d: d["state"] == state and reason(str(d.get("reason"))),
                              after, timeout, f"{name} link {state}")

    def request(self, actor: str, command: str, *argv: str, timeout: float = 15.0,
                **args: Any) -> dict[str, Any]:
        with_stash = self.feed.bus.request(actor, command, args, timeout=timeout,
                                           argv=list(argv))
        self.feed.poll(0)  # deliveries stashed during the request
        data: dict[str, Any] = with_stash.data
        return data

    def ok(self, actor: str, command: str, *argv: str, **args: Any) -> Any:
        reply = self.request(actor, command, *argv, **args)
        assert reply["status"] == "ok", reply
        return reply["result"]

    def close(self) -> None:
        self.stop()
        for proxy in self.proxies.values():
            proxy.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The door reader and the instrument simulators listen on ports of their choice, and the
    proxies in front of them are made once they said which; the SPEC simulator (port 0 makes
    it scan 6510-6530) and the iec104-server (its ``port`` is what it binds and reports) get
    free ports."""
    spec, scada = free_ports(2)
    ports = {"door": 0, "inst": 0, "spec": spec, "scada": scada,
             "reader_proxy": 0, "bus1_proxy": 0, "spec1_proxy": 0}
    s = Stack(tmp_path_factory.mktemp("faults"), SITE.format(**ports),
              router_extra="egress_hwm = 200")  # a stalled subscriber overflows its queue soon
    s.proxies = {}
    s.scada_port = scada
    try:
        s.start_router()
        s.watch("evt.", name="fault-tester", since=0)
        for sim, kind in (("door", "springcore-tcp"), ("inst", "instrument"),
                          ("specsim", "spec-server")):
            s.start_sim(kind, sim)
        ports["door"], ports["inst"] = s.listening_port("door"), s.listening_port("inst")
        s.proxies = {"reader": FaultProxy(ports["door"]), "bus1": FaultProxy(ports["inst"]),
                     "spec1": FaultProxy(spec)}
        ports.update({f"{name}_proxy": p.port for name, p in s.proxies.items()})
        s.write(SITE.format(**ports))
        for actor in ("reader", "bus1", "spec1", "scada"):
            s.start_actor(actor)
        for actor in ("reader", "bus1", "spec1"):
            s.link(actor, "up", 0, timeout=30.0)
        yield s
    finally:
        s.close()


# --------------------------------------------------------------------------- per actor type


@dataclass(frozen=True)
class Kind:
    """How to drive one actor type: a round trip that proves the link works (`probe`), and
    one exchange that makes the device send a frame (`provoke`: the reply to it)."""

    actor: str
    probe: Callable[[Stack], None]
    provoke: Callable[[Stack], dict[str, Any]]


_tags = iter(range(0x100000, 0x1FFFFF))


def _present(s: Stack) -> dict[str, Any]:
    return s.request("door", "present", f"{next(_tags):08X}")


def _probe_reader(s: Stack) -> None:
    mark = len(s.feed.seen)
    sent = s.ok("door", "present", tag := f"{next(_tags):08X}")
    got = s.feed.wait("evt.reader.tag", lambda d: d["tag_id"] == tag, mark, what=tag)
    assert got["raw"] == sent["sent"].rstrip("\r\n")


def _idn(s: Stack) -> dict[str, Any]:
    return s.request("bus1", "wrnrd_until", "*IDN?\\n", "\\n")


def _probe_bus1(s: Stack) -> None:
    reply = _idn(s)
    assert reply.get("result") == IDN, reply


def _answer(s: Stack) -> dict[str, Any]:
    return s.request("spec1", "cmd", "2*21")


def _probe_spec1(s: Stack) -> None:
    reply = _answer(s)
    assert reply.get("result") == 42, reply


KINDS: Final = {
    "reader": Kind("reader", _probe_reader, _present),
    "bus1": Kind("bus1", _probe_bus1, _idn),
    "spec1": Kind("spec1", _probe_spec1, _answer),
}


# --------------------------------------------------------------------------- the faults


def refused(s: Stack, k: Kind, proxy: FaultProxy, mark: int) -> str:
    proxy.refuse()
    down = s.link(k.actor, "down", mark, lambda r: "refused" in r.lower())
    proxy.accept_again()
    s.link(k.actor, "up", mark)
    return str(down["reason"])


def reset_mid_frame(s: Stack, k: Kind, proxy: FaultProxy, mark: int) -> str:
    proxy.arm_reset()
    reply = k.provoke(s)
    down = s.link(k.actor, "down", mark)
    assert proxy.reset_done
    if k.actor == "reader":  # the half line is reported, not published as a tag
        rejected = s.feed.wait("evt.reader.rejected", after=mark)
        assert "in the middle of a line" in rejected["reason"], rejected
    else:  # the command caught in the reset fails at once, naming the connection
        assert reply["status"] == "error", reply
        assert any(w in reply["error"] for w in ("reset", "lost", "closed")), reply
        assert "Error connecting" not in reply["error"], "an established link is not a connect"
    s.link(k.actor, "up", mark)
    return f"{down['reason']} / {reply.get('error') or 'rejected half line'}"


def silent(s: Stack, k: Kind, proxy: FaultProxy, mark: int) -> str:
    proxy.mode = "silent"
    try:
        if k.actor == "reader":  # a silent reader is noticed by idle_timeout (badges at 2/s)
            what = str(s.link(k.actor, "down", mark, lambda r: "idle_timeout" in r)["reason"])
        else:
            started = time.monotonic()
            reply = k.provoke(s)
            took = time.monotonic() - started
            assert reply["status"] == "error", reply
            assert took < 12, f"the command caught by a silent peer took {took:.1f} s to fail"
            what = str(reply["error"])
    finally:
        proxy.mode = "pass"
    if k.actor == "reader":
        s.link(k.actor, "up", mark)
    return what


def slowloris(s: Stack, k: Kind, proxy: FaultProxy, mark: int) -> str:
    proxy.byte_delay = 0.005
    proxy.mode = "slow"
    try:
        started = time.monotonic()
        k.probe(s)  # a device that dribbles bytes is slow, not broken
        took = time.monotonic() - started
    finally:
        proxy.mode = "pass"
    downs = [d for d in s.feed.events(f"evt.{k.actor}.link", mark) if d["state"] != "up"]
    assert not downs, f"the link went down on a slow but valid device: {downs}"
    return f"round trip {took:.2f} s, link stayed up"


def garbage(s: Stack, k: Kind, proxy: FaultProxy, mark: int) -> str:
    """10 MB of random bytes: the reader reports every line of it, exactly as many as its own
    decoder finds in those bytes (nothing dropped silently, nothing kept); the binary
    protocols drop the connection (framing is lost) and reconnect."""
    noise = random.Random(11).randbytes(GARBAGE) + b"\r\n"
    proxy.inject(noise)
    if k.actor == "reader":
        decoder = ScrdrDecoder()
        decoder.feed(noise)
        want = sum(isinstance(e, Rejected) for e in decoder.events())
        s.feed.until(lambda: len(s.feed.events("evt.reader.rejected", mark)) >= want, 80,
                f"{want} rejected lines")
        s.feed.poll(0.5)
        assert len(s.feed.events("evt.reader.rejected", mark)) == want
        return f"{want} garbage lines, each published as evt.reader.rejected"
    wait_for(lambda: proxy.queued_to_actor() == 0, 60, "connection dropped")
    down = s.link(k.actor, "down", mark)
    s.link(k.actor, "up", mark)
    return str(down["reason"])


def flood(s: Stack, k: Kind, proxy: FaultProxy, mark: int) -> str:
    """Valid frames far faster than the device makes them; every one delivered once."""
    n, rate = 1000, 200.0  # a door reader badges a few times a minute; bursts of 20/s at most
    if k.actor == "bus1":  # an instrument only answers: 10x the polls, all queued at once
        reqs = [s.feed.bus.start_request("bus1", "wrnrd_until", {}, timeout=30.0,
                                    argv=[f"ECHO {i}\\n", "\\n"]) for i in range(200)]
        s.feed.until(lambda: all(r.done for r in reqs), 40, "200 replies")
        got = [r.reply.data.get("result") if r.reply else r.error for r in reqs]
        assert got == [str(i) for i in range(200)], got[:10]
        return "200 concurrent commands answered in order"
    if k.actor == "reader":
        frames = [encode_tag_line(f"{0xF00000 + i:06X}") for i in range(n)]
        key, topic = "tag_id", "evt.reader.tag"
        want = [f"{0xF00000 + i:06X}" for i in range(n)]
    else:
        frames = [encode_message(Message(cmd=Cmd.SV_EVENT, name="motor/m0/position",
                                         data=encode_value(1000 + i)[1])) for i in range(n)]
        key, topic = "value", "evt.spec1.chan"
        want = [str(1000 + i) for i in range(n)]
    start = time.monotonic()
    for i in range(0, n, 20):
        proxy.inject(b"".join(frames[i:i + 20]))
        time.sleep(max(0.0, start + (i + 20) / rate - time.monotonic()))

    def values() -> list[str]:
        return [str(d[key]) for d in s.feed.events(topic, mark) if str(d[key]) in want]
    s.feed.until(lambda: len(values()) >= n, 60, f"{n} frames delivered")
    s.feed.poll(0.5)
    assert values() == want, "lost, duplicated or reordered frames"
    return f"{n} frames at {rate:g}/s delivered once, in order"


FAULTS: Final = {f.__name__: f for f in (refused, reset_mid_frame, silent, slowloris, garbage,
                                         flood)}


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("actor", KINDS)
def test_device_fault_is_reported_and_recovered(stack: Stack, actor: str, fault: str) -> None:
    kind, proxy = KINDS[actor], stack.proxies[actor]
    stack.feed.poll(0)
    s_link = stack.feed.events(f"evt.{actor}.link")
    if not s_link or s_link[-1]["state"] != "up":
        stack.link(actor, "up", len(stack.feed.seen) - 1, timeout=30)  # earlier case left it down
    pid = stack.pid(actor)
    before = rss(pid)
    mark = len(stack.feed.seen)
    what = FAULTS[fault](stack, kind, proxy, mark)
    assert proxy.mode == "pass"
    if fault != "slowloris":
        kind.probe(stack)  # the next round trip works, nobody restarted anything
    assert stack.pid(actor) == pid, f"{actor} was restarted"
    after = rss(pid)
    links = [(d["state"], d.get("reason")) for d in stack.feed.events(f"evt.{actor}.link", mark)]
    print(f"{actor} {fault}: {what}; links {links}; RSS {before / MiB:.1f} -> "
          f"{after / MiB:.1f} MiB")
    assert after - before <= RSS_BOUND, f"RSS grew {(after - before) / MiB:.1f} MiB"


def test_104_master_vanishing_mid_command(stack: Stack) -> None:
    """A master sends a command (a SPEC ``sleep(1)`` through spec1) and resets the connection
    while it runs, five times: the server stays up, each command's outcome is published, and
    the next master's command is confirmed."""
    stack.feed.wait("evt.scada.link", lambda d: d["state"] == "up", timeout=30)
    pid = stack.pid("scada")
    before = rss(pid)
    mark = len(stack.feed.seen)
    for _ in range(5):
        master = Raw104Master(stack.scada_port)
        master.start()
        master.single_command(CA, 2000, True)
        master.vanish()
    stack.feed.until(lambda: len(stack.feed.events("evt.scada.command", mark)) >= 5, 30,
                "5 command outcomes")
    outcomes = stack.feed.events("evt.scada.command", mark)
    print("outcomes of vanished masters' commands:", [d["outcome"] for d in outcomes])
    assert {d["outcome"] for d in outcomes} <= {"confirmed", "negative"}, outcomes
    master = Raw104Master(stack.scada_port)
    try:
        master.start()
        master.single_command(CA, 2000, True)
        assert master.wait_act_con(45, 2000), "the next master's command was refused"
    finally:
        master.close()
    assert stack.pid("scada") == pid
    assert rss(pid) - before <= RSS_BOUND


# --------------------------------------------------------------------------- bus side


def test_router_late_then_killed_no_tag_lost(tmp_path: Path) -> None:
    """The simulator and the reader start before the router (their outboxes hold what they
    publish), then the router is killed with -9 and restarted on its journal file while tags
    flow at 20/s: every tag the simulator sent arrives exactly once."""
    (port,) = free_ports(1)  # both run before any router could tell which port the sim got
    late = support.Stack(tmp_path, f"""
[actors.door]
type = "sim-springcore-tcp"
port = {port}
rate = 20.0
tag = "0A0B0C0D"
heartbeat_interval = 0.5
[actors.reader]
type = "springcore-tcp"
host = "127.0.0.1"
port = {port}
heartbeat_interval = 0.5
backoff_min = 0.1
backoff_max = 0.5
""", router_extra=f'journal_path = "{tmp_path / "journal.bin"}"')
    late.reserve_router_ports()  # the actors start first: the router's ports are fixed now
    bus = Bus(late.site.router, "late-router-tester")
    bus.subscribe("evt.door.sent", since=0)
    bus.subscribe("evt.reader.tag", since=0)
    seen: dict[str, list[tuple[int, str]]] = {"evt.door.sent": [], "evt.reader.tag": []}
    try:
        door = late.start_sim("springcore-tcp", "door")
        reader = late.start_actor("reader")
        time.sleep(3.0)  # both run without a router: tags flow into the reader's outbox
        router = late.start_router()
        assert bus.connect(wait=20.0), "router did not come up"

        def pump(seconds: float) -> None:
            end = time.monotonic() + seconds
            while (left := end - time.monotonic()) > 0:
                for d in bus.poll(min(left, 0.2)):
                    seen[d.topic].append((d.envelope.epoch, d.envelope.data["line"]
                                          if d.topic == "evt.door.sent" else
                                          d.envelope.data["raw"]))
        pump(3.0)
        assert seen["evt.reader.tag"], "no tag from before the router came"
        before = rss(reader.popen.pid)  # type: ignore[union-attr]
        after = before
        router.kill(signal.SIGKILL)
        time.sleep(1.0)
        late.start_router("router2")
        pump(4.0)
        after = rss(reader.popen.pid)  # type: ignore[union-attr]
        stop_at = len(seen["evt.door.sent"])
        assert door.stop() == 0  # the simulator: no more tags
        deadline = time.monotonic() + 30
        while len(seen["evt.reader.tag"]) < stop_at and time.monotonic() < deadline:
            pump(0.2)
        pump(1.0)
    finally:
        bus.close()
        late.stop()
    sent, tags = seen["evt.door.sent"], seen["evt.reader.tag"]
    print(f"sent {len(sent)}, delivered {len(tags)}; reader RSS {before / MiB:.1f} -> "
          f"{after / MiB:.1f} MiB across the router's kill")
    assert len(sent) >= 60
    assert [line.rstrip("\r\n") for _, line in sent] == [raw for _, raw in tags], \
        "tags lost, duplicated or reordered"
    assert after - before <= RSS_BOUND


def test_garbage_while_the_router_is_down_overflows_the_outbox_loudly(tmp_path: Path) -> None:
    """A reader spewing garbage while the router is down: every bad line is an event, so
    8 000 short bad lines overflow the actor's outbox (set to 5 000 envelopes). The oldest
    envelopes are dropped, and once the router is back that is an
    ``outbox_overflow`` on ``sys.alarm`` with the count, the same count in the heartbeat's
    ``outbox_dropped``; the actor's memory stays within the outbox bound and the next tag works."""
    tables = """
[actors.door]
type = "sim-springcore-tcp"
port = {door}
[actors.reader]
type = "springcore-tcp"
host = "127.0.0.1"
port = {proxy}
heartbeat_interval = 0.5
outbox_max_messages = 5000
"""
    site = support.Stack(tmp_path, tables.format(door=0, proxy=0))
    proxy: FaultProxy | None = None
    try:
        router = site.start_router()
        bus = site.client("sys.alarm", "evt.reader.tag", best_effort=("hb.reader",),
                          name="overflow-tester", wait=20.0)
        site.start_sim("springcore-tcp", "door")
        proxy = FaultProxy(site.listening_port("door"))
        site.write(tables.format(door=proxy.target_port, proxy=proxy.port))
        reader = site.start_actor("reader")
        assert reader.popen is not None
        wait_for(lambda: proxy.connections() == 1, 30, "reader connected through the proxy")
        before = rss(reader.popen.pid)
        router.kill(signal.SIGKILL)
        proxy.inject(b"".join(b"%d is not a tag\r\n" % i for i in range(8_000)))
        log = tmp_path / "reader.log"
        wait_for(lambda: log.read_bytes().count(b"outbox full") >= 1, 60, "the outbox full")
        peak = rss(reader.popen.pid)
        site.start_router("router2")
        got: list[tuple[str, dict[str, Any]]] = []

        def seen(topic: str, pred: Callable[[dict[str, Any]], bool]) -> bool:
            got.extend((d.topic, d.envelope.data) for d in bus.poll(0.1))
            return any(t == topic and pred(d) for t, d in got)
        wait_for(lambda: seen("sys.alarm", lambda d: d.get("alarm") == "outbox_overflow"
                              and d.get("source") == "reader"), 60, "the overflow alarm")
        alarm = next(d for t, d in got if t == "sys.alarm" and d.get("alarm") == "outbox_overflow")
        wait_for(lambda: seen("hb.reader", lambda d: d["counters"].get("outbox_dropped", 0)
                              == alarm["dropped_total"]), 30, "outbox_dropped in hb.reader")
        tag = "0A0B0C0D0E"
        wait_for(lambda: bus.request("door", "present", {"tag": tag}, timeout=10.0)
                 .data["status"] == "ok", 60, "the simulator answering")
        wait_for(lambda: seen("evt.reader.tag", lambda d: d["tag_id"] == tag), 60,
                 "the next tag delivered")
        after = rss(reader.popen.pid)
    finally:
        site.stop()
        if proxy is not None:
            proxy.close()
    print(f"outbox overflow: {alarm}; reader RSS {before / MiB:.1f} -> peak {peak / MiB:.1f} "
          f"-> {after / MiB:.1f} MiB")
    assert alarm["dropped"] > 0
    assert peak - before <= OUTBOX_RSS_BOUND


def test_mqtt_actor_killed_events_wait_at_the_broker(tmp_path: Path) -> None:
    """springcore-mqtt killed with -9 while its reader publishes: the badges published while
    it is dead wait in its persistent session at the broker and arrive after the restart, each
    once (with a clean session they were lost without a trace)."""
    with Mosquitto(tmp_path / "mqtt") as broker:
        site = support.Stack(tmp_path, f"""
[actors.mqttreaders]
type = "springcore-mqtt"
port = {broker.port}
devices = ["DA1275B0"]
heartbeat_interval = 0.5
[actors.readers]
type = "sim-springcore-mqtt"
port = {broker.port}
devices = ["DA1275B0"]
""")
        got: list[str] = []
        try:
            site.start_router()
            bus = site.client("evt.mqttreaders.tag", name="mqtt-kill-tester", wait=20.0)
            actor = site.start_actor("mqttreaders", log="actor")
            site.start_sim("springcore-mqtt", "readers", log="sim")

            def present(tag: str) -> bool:
                reply = bus.request("readers", "present", {"tag": tag}, timeout=10.0)
                got.extend(d.envelope.data["tag_id"] for d in bus.poll(0.05))
                return bool(reply.data["status"] == "ok")
            wait_for(lambda: present("0A0000") and "0A0000" in got, 30, "a first badge")
            actor.kill(signal.SIGKILL)
            during = [f"0B{i:04X}" for i in range(20)]
            assert all(present(t) for t in during), "the broker did not take the badges"
            site.start_actor("mqttreaders", log="actor2")
            deadline = time.monotonic() + 30
            while not set(during) <= set(got) and time.monotonic() < deadline:
                got.extend(d.envelope.data["tag_id"] for d in bus.poll(0.2))
            got.extend(d.envelope.data["tag_id"] for d in bus.poll(1.0))
        finally:
            site.stop()
    assert [t for t in got if t in during] == during, f"lost or repeated: {got}"


def test_stalled_subscriber_catches_up_and_does_not_slow_the_actor(stack: Stack) -> None:
    """``sctl sub`` frozen with SIGSTOP while 3 000 tags flood in (far past the router's
    per-subscriber queue, so ZeroMQ drops for it): the reader and other subscribers go on at
    full pace, and once resumed the frozen one prints every tag, in order, once."""
    n = 3000
    stack.link("reader", "up", 0)
    stack.feed.bus.subscribe("sys.router.stats")
    gaps_before = stack.feed.wait("sys.router.stats")["counts"]["egress_gaps"]
    sub = subprocess.Popen(sctl_cmd("-c", str(stack.path), "sub", "evt.reader.tag", "--json",
                                    "--timeout", "80"),
                           env=subprocess_env(), stdout=subprocess.PIPE, text=True)
    assert sub.stdout is not None
    out = sub.stdout
    got: list[str] = []
    try:
        presented: set[str] = set()  # once the subscriber printed one of these, it runs
        deadline = time.monotonic() + 20
        while not presented & set(got):
            assert time.monotonic() < deadline, "sctl sub printed none of our tags"
            presented.add(tag := f"{next(_tags):08X}")
            assert stack.request("door", "present", tag)["status"] == "ok"
            while select.select([out], [], [], 0.3)[0]:
                got.append(json.loads(out.readline())["envelope"]["data"]["tag_id"])
        os.kill(sub.pid, signal.SIGSTOP)
        mark = len(stack.feed.seen)
        want = [f"{0xE00000 + i:06X}" for i in range(n)]
        stack.proxies["reader"].inject(b"".join(encode_tag_line(t) for t in want))
        started = time.monotonic()
        stack.feed.until(lambda: len([d for d in stack.feed.events("evt.reader.tag", mark)
                                 if d["tag_id"] in want]) >= n, 60, "the flood delivered")
        took = time.monotonic() - started
        os.kill(sub.pid, signal.SIGCONT)
        deadline = time.monotonic() + 60
        while want[-1] not in got and time.monotonic() < deadline:
            if select.select([out], [], [], 0.5)[0]:
                got.append(json.loads(out.readline())["envelope"]["data"]["tag_id"])
    finally:
        os.kill(sub.pid, signal.SIGCONT)
        sub.kill()
        sub.wait(10)
    filled = stack.feed.wait("sys.router.stats",
                        lambda d: d["counts"]["egress_gaps"] > gaps_before,
                        what="the router filling the stalled subscriber's gap")["counts"]
    print(f"{n} tags to the live subscriber in {took:.2f} s while the other was stopped; "
          f"router filled {filled['egress_gaps'] - gaps_before} gap(s), "
          f"{filled['egress_missed']} gseqs in all")
    assert [t for t in got if t in want] == want, "the stalled subscriber lost or reordered tags"
