"""The bus-link actor end to end: a real router, the instrument simulator and bus-link actors as
``sctl`` processes on loopback; commands through ``sctl send`` (the CLI contract) or a Bus
client, what reached the instrument read back from the simulator byte for byte."""

from __future__ import annotations

import itertools
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.client.bus import Bus
from broker.wire.envelope import Envelope
from tests.support import stack as support
from tests.support.stack import free_ports, sctl_cmd, subprocess_env, wait_for

SITE = """
[actors.inst]
type = "sim-instrument"
port = {port}
mode = "{mode}"
heartbeat_interval = 0.5

[actors.bus1]
type = "bus-link"
host = "127.0.0.1"
port = {port}
timeout = 5.0
max_buffer = 65536
heartbeat_interval = 0.5
backoff_min = 0.05
backoff_max = 0.2
{poll}

[actors.bus2]
type = "bus-link"
host = "localhost"
port = {port}
connect = "on_demand"
timeout = 5.0
heartbeat_interval = 0.5

[actors.dead]
type = "bus-link"
host = "127.0.0.1"
port = {dead}
connect = "on_demand"
heartbeat_interval = 0.5
"""

POLL = """
[[actors.bus1.poll]]
every = 0.3
command = "wrnrd_until"
args = ["MEAS:VOLT?\\n", "\\n"]
event = "voltage"
"""


class Stack(support.Stack):
    """Router, simulator and link actors of one test, and a Bus client to talk to them."""

    bus: Bus
    port: int  # the instrument simulator's

    def send(self, actor: str, command: str, *args: str, timeout: float = 10.0) -> \
            subprocess.CompletedProcess[str]:
        """``sctl send`` as an operator's script runs it."""
        return self.sctl("send", actor, command, *args, "--timeout", str(timeout),
                         timeout=timeout + 20)

    def request(self, actor: str, command: str, *argv: str, timeout: float = 10.0,
                **args: Any) -> Envelope:
        return self.bus.request(actor, command, args, timeout=timeout, argv=list(argv))

    def ok(self, actor: str, command: str, *argv: str, **args: Any) -> Any:
        reply = self.request(actor, command, *argv, **args)
        assert reply.data["status"] == "ok", reply.data
        return reply.data["result"]

    def received(self) -> bytes:
        return bytes.fromhex(self.ok("inst", "received")["hex"])

    def link_up(self, actor: str = "bus1") -> None:
        wait_for(lambda: self.ok(actor, "ping")["link"]["state"] == "up", 15,
                 f"{actor} link up")

    def one_client(self) -> None:
        wait_for(lambda: len(self.ok("inst", "state")["clients"]) == 1, 10, "one client")


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    made: list[Stack] = []

    def make(mode: str = "scpi", poll: str = "", actors: tuple[str, ...] = ("bus1",)) -> Stack:
        (dead,) = free_ports(1)  # nothing listens there: the refused connect
        stack = Stack(tmp_path, SITE.format(port=0, dead=dead, mode=mode, poll=poll))
        made.append(stack)
        stack.start_router()
        stack.bus = stack.client(name="tester")
        stack.start_sim("instrument", "inst")
        stack.port = stack.listening_port("inst")  # port 0: the one it got
        stack.write(SITE.format(port=stack.port, dead=dead, mode=mode, poll=poll))
        for name in actors:
            stack.start_actor(name)
        stack.wait_ready(*actors)
        return stack

    yield make
    for stack in made:
        stack.stop()


def fresh_connection(stack: Stack) -> None:
    """inval + config: a new connection with nothing left over (Pyrame's tests restarted nc)."""
    assert stack.ok("bus1", "inval") == "ok"
    assert stack.ok("bus1", "config") == f"127.0.0.1,{stack.port}"
    stack.one_client()
    stack.ok("inst", "clear")


# Pyrame's own test vectors (protocol notes, cmd_tcp.md): (peer sends, call words, expected
# stdout, peer must receive)
VECTORS = [
    (b"", [("write", "TEST"), ("write_bin", "544553540a")], ["ok", "ok"], b"TESTTEST\n"),
    (b"TESTTEST\n", [("read", "9")], ["TESTTEST"], b""),
    (b"__TEST__", [("read_until", "E")], ["__T"], b""),
    (b"TESTTEST\n", [("wrnrd", "__TEST__", "9")], ["TESTTEST"], b"__TEST__"),
    (b"__TEST__", [("wrnrd_until", "__TEST__", "E")], ["__T"], b"__TEST__"),
    (b"__TEST__", [("read_bin", "8")], ["5f5f544553545f5f"], b""),
    (b"__TEST__", [("read_bin_until", "E")], ["5f5f54"], b""),
    (b"TESTTEST\n", [("wrnrd_bin", "5f5f544553545f5f", "9")], ["54455354544553540a"],
     b"__TEST__"),
    (b"__TEST__", [("wrnrd_bin_until", "5f5f544553545f5f", "E")], ["5f5f54"], b"__TEST__"),
]


def test_pyrame_vectors_byte_for_byte(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(mode="raw")
    stack.link_up()
    for number, (peer_sends, calls, expected, peer_gets) in enumerate(VECTORS, 1):
        fresh_connection(stack)
        if peer_sends:
            assert stack.ok("inst", "play", peer_sends.hex()) == 1
        for (command, *words), want in zip(calls, expected, strict=True):
            out = stack.send("bus1", command, *words)
            assert (out.returncode, out.stdout) == (0, want + "\n"), (number, out)
        wait_for(lambda p=peer_gets: stack.received() == p, 10, f"vector {number} on the wire")
        if number == 3:  # bytes after the eot stay for the next read
            assert stack.send("bus1", "read", "4").stdout == "ST__\n"
    assert stack.ok("bus1", "inval") == "ok"  # on_start: held closed until config
    held = stack.send("bus1", "read", "1")
    assert (held.returncode, held.stderr) == (
        1, "bus1: tcp: not configured (closed by inval; send config to reopen)\n")
    assert stack.ok("bus1", "ping")["link"]["state"] == "down"


def test_concurrent_sends_never_interleave(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    stack.link_up()
    stack.ok("inst", "fault", "slow", "0.4")
    stack.bus.subscribe("evt.inst.received", gapless=False)
    words = {tag: tag * 2000 for tag in ("a", "b", "c")}  # long writes, many TCP segments
    procs = [subprocess.Popen(sctl_cmd("-c", str(stack.path), "send", "bus1", "wrnrd_until",
                                       f"ECHO {text}\\n", "\\n", "--timeout", "15"),
                              env=subprocess_env(), stdout=subprocess.PIPE, text=True)
             for text in words.values()]
    outs = [p.communicate(timeout=30)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert outs == [text + "\n" for text in words.values()]  # each got its own answer
    lines: list[tuple[float, str]] = []
    deadline = time.monotonic() + 10
    while len(lines) < 3 and time.monotonic() < deadline:
        lines += [(d.envelope.ts, d.envelope.data["line"]) for d in stack.bus.poll(0.2)
                  if d.topic == "evt.inst.received"]
    assert sorted(line for _, line in lines) == sorted(f"ECHO {t}" for t in words.values())
    # whole lines only, and each write reached the instrument after the previous answer (0.4 s)
    times = sorted(ts for ts, _ in lines)
    assert all(later - earlier >= 0.35 for earlier, later in itertools.pairwise(times))


def test_faulty_peer_errors_are_bounded_and_the_link_recovers(
        make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    stack.link_up()
    idn = "SCTL,INSTRUMENT-SIM,0,1.0"

    def idn_call(timeout: str = "undef") -> tuple[Envelope, float]:
        start = time.monotonic()
        reply = stack.request("bus1", "wrnrd_until", "*IDN?\\n", "\\n", timeout, timeout=15)
        return reply, time.monotonic() - start

    stack.ok("inst", "fault", "silent")
    reply, took = idn_call("0.5")
    assert reply.data["error"] == f"tcp: TCP link at 127.0.0.1:{stack.port} is not " \
                                  "responding <- timed out"
    assert 0.4 < took < 4
    stack.ok("inst", "fault", "none")
    assert idn_call()[0].data["result"] == idn

    stack.ok("inst", "fault", "close_mid")
    reply, took = idn_call()
    assert "connection closed by peer" in reply.data["error"] and took < 4, reply.data
    stack.ok("inst", "fault", "none")
    assert idn_call()[0].data["result"] == idn  # waits for the reconnect, then runs

    stack.ok("inst", "fault", "flood")
    reply, took = idn_call()
    assert reply.data["error"].startswith("tcp: peer sent more than 65536 bytes without an eot")
    assert took < 4
    stack.ok("inst", "fault", "none")
    assert idn_call()[0].data["result"] == idn

    stack.ok("inst", "fault", "noise")
    assert idn_call()[0].data["result"] == idn  # NUL and CR stripped from text reads
    stack.ok("inst", "fault", "none")
    bad = stack.send("bus1", "write_bin", "4A4")
    assert (bad.returncode, bad.stderr.strip()) == (
        1, "bus1: tcp: data must have a length multiple of 2. Current length: 3")
    stats = stack.ok("bus1", "ping")
    assert stats["state"] == "running"


def test_poll_publishes_at_its_period_between_commands(
        make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(poll=POLL)
    stack.bus.subscribe("evt.bus1.voltage", gapless=False)
    stack.link_up()
    stack.ok("bus1", "write", "VOLT 2.5\\n")
    got: list[Envelope] = []
    answers = []
    deadline = time.monotonic() + 15
    while len(got) < 5 and time.monotonic() < deadline:
        answers.append(stack.ok("bus1", "wrnrd_until", f"ECHO {len(got)}\\n", "\\n"))
        got += [d.envelope for d in stack.bus.poll(0.1) if d.topic == "evt.bus1.voltage"]
    assert len(got) >= 5 and all(a.isdigit() for a in answers)
    values = [float(e.data["result"]) for e in got if e.data["status"] == "ok"]
    assert len(values) >= 4 and all(abs(v - 2.5) < 0.01 for v in values[-3:])
    gaps = [b.ts - a.ts for a, b in itertools.pairwise(got)]
    assert all(0.1 < g < 1.5 for g in gaps), gaps  # about every 0.3 s, loaded machine


def test_on_demand_config_inval_and_refused_connect(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(actors=("bus2", "dead"))
    assert stack.ok("bus2", "ping")["link"]["state"] == "idle"  # nothing opened at start
    assert stack.ok("bus2", "inval") == "not configured"
    assert stack.ok("bus2", "wrnrd_until", "*IDN?\\n", "\\n") == "SCTL,INSTRUMENT-SIM,0,1.0"
    assert stack.ok("bus2", "ping")["link"]["state"] == "up"
    assert stack.ok("bus2", "config") == f"127.0.0.1,{stack.port}"  # localhost, canonical
    assert stack.ok("bus2", "inval") == "ok"
    assert stack.ok("bus2", "ping")["link"]["state"] == "down"
    assert stack.ok("bus2", "config") == f"127.0.0.1,{stack.port}"
    assert stack.ok("bus2", "write", "ECHO noise\\x00EV\\x00ENT-rest\\n") == "ok"
    assert stack.ok("bus2", "expect", "EVENT") == "Pattern found"  # NULs skipped
    assert stack.ok("bus2", "read_until", "\\n") == "-rest"  # bytes after the match stay
    refused = stack.request("dead", "read", "1")
    assert refused.data["error"].startswith("tcp: Error connecting to 127.0.0.1:"), refused.data
    assert "refused" in refused.data["error"]
