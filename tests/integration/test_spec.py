"""SPEC end to end with real processes: ``sctl router``, ``sctl sim spec-server`` and ``sctl
actor`` of type spec-client, talking over loopback; the simulator is also driven directly over
a socket with the codec, in both byte orders and header versions 2, 3 and 4."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.protocols.spec import BIG, LITTLE, Cmd, DataType, Decoder, Message, encode_message
from actors.protocols.spec_types import decode_value
from broker.client.bus import Bus, Delivery
from broker.wire.envelope import Envelope
from tests.support import stack as support
from tests.support.stack import ROOT, Proc, free_port, sctl_cmd, subprocess_env, wait_for

SIM = "spec-sim"
ACTOR_TABLE = """
[actors.spec1]
type = "spec-client"
{where}
watch = ["motor/m0/position", "motor/m0/move_done", "status/ready"]
heartbeat_interval = 0.3
backoff_min = 0.05
backoff_max = 0.3
connect_timeout = 5.0
hello_timeout = 1.0
timeout = 5.0
"""


class SpecSocket:
    """A blocking SPEC client built on the codec, for driving the simulator directly."""

    def __init__(self, port: int, order: str = LITTLE, vers: int = 4) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.order, self.vers = order, vers
        self.decoder = Decoder()
        self.got: list[Message] = []

    def send(self, cmd: Cmd, name: str = "", data: bytes = b"", sn: int = 0,
             kind: int = DataType.SV_STRING) -> None:
        self.sock.sendall(encode_message(Message(cmd=cmd, name=name, data=data, sn=sn,
                                                 type=kind, vers=self.vers, order=self.order)))

    def wait(self, pred: Callable[[Message], bool], timeout: float = 5.0) -> Message:
        deadline = time.monotonic() + timeout
        while True:
            for i, msg in enumerate(self.got):
                if pred(msg):
                    return self.got.pop(i)
            left = deadline - time.monotonic()
            assert left > 0, f"no matching message; got {[m.describe() for m in self.got]}"
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            assert chunk, "simulator closed the connection"
            self.decoder.feed(chunk)
            self.got += list(self.decoder.events())

    def reply(self, sn: int) -> Message:
        return self.wait(lambda m: m.cmd == Cmd.SV_REPLY and m.sn == sn)

    def close(self) -> None:
        self.sock.close()


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def result(reply: Envelope) -> Any:
    assert reply.data["status"] == "ok", reply.data
    return reply.data["result"]


def collect(bus: Bus, done: Callable[[list[Delivery]], bool],
            timeout: float = 15.0) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while not done(got):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; got {[(d.topic, d.envelope.data) for d in got]}"
        got += bus.poll(min(left, 0.2))
    return got


def link_is_up(bus: Bus) -> bool:
    try:
        reply = bus.request("spec1", "ping", timeout=3.0)
    except Exception:  # the actor may not be on the bus yet
        return False
    return bool(reply.data["status"] == "ok" and reply.data["result"]["link"]["state"] == "up")


class Stack(support.Stack):
    """Router, simulator and spec1 (its link up), and a Bus client watching spec1's events."""

    def __init__(self, tmp: Path, sim_port: int, actor_where: str, specname: str) -> None:
        super().__init__(tmp, ACTOR_TABLE.format(where=actor_where))
        self.sim_port = sim_port
        self.specname = specname

    def start(self) -> Stack:
        self.start_router()
        self.sim = self.start_spec()
        self.actor = self.start_actor("spec1")
        self.bus = self.client("evt.spec1.")
        wait_for(lambda: link_is_up(self.bus), 20.0, "spec1 link up")
        return self

    def start_spec(self) -> Proc:
        proc = self.start_sim("spec-server", SIM, "--set", f"port={self.sim_port}", "--set",
                              f'specname="{self.specname}"', "--set", "speed=20.0", log="sim")
        if self.sim_port:
            wait_for(lambda: port_open(self.sim_port), 15.0, "simulator listening")
        return proc


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Simulator on the first free port of 6510-6530; the actor finds it by specname."""
    name = f"t{os.getpid()}"
    s = Stack(tmp_path_factory.mktemp("spec"), 0, f'specname = "{name}"', name)
    try:
        yield s.start()
    finally:
        s.stop()


def sim_port_of(stack: Stack) -> int:
    info = result(stack.bus.request(SIM, "clients", timeout=5.0))
    assert info, "the actor is not connected to the simulator"
    peers = result(stack.bus.request("spec1", "ping", timeout=5.0))
    assert peers["link"]["state"] == "up"
    reason = peers["link"]["reason"]
    return int(reason.rsplit(":", 1)[1].split(" ")[0])


# --- through the actor -----------------------------------------------------------------------


def test_found_by_specname_scan_and_cmd_returns_the_value(stack: Stack) -> None:
    port = sim_port_of(stack)
    assert 6510 <= port <= 6530
    assert result(stack.bus.request("spec1", "cmd", argv=["1+1"], timeout=10.0)) == 2
    assert result(stack.bus.request("spec1", "func", {"name": "motor_mne", "args": 1},
                                    timeout=10.0)) == "m1"
    assert result(stack.bus.request("spec1", "func", argv=["motor_mne", "1", "timeout=5"],
                                    timeout=10.0)) == "m1"
    # a second argument word must not silently become the timeout
    two = stack.bus.request("spec1", "func", argv=["motor_mne", "1", "2"], timeout=10.0)
    assert two.data["status"] == "error" and "timeout only by name" in two.data["error"]


def test_missing_variable_read_is_an_error_reply_naming_it(stack: Stack) -> None:
    reply = stack.bus.request("spec1", "read", argv=["var/no_such_thing"], timeout=10.0)
    assert reply.data["status"] == "error"
    assert "var/no_such_thing" in reply.data["error"] and "does not exist" in reply.data["error"]
    bad = stack.bus.request("spec1", "write", argv=["status/ready", "1"], timeout=10.0)
    assert bad.data["status"] == "error" and "cannot be set" in bad.data["error"]


def test_write_read_watch_assoc(stack: Stack) -> None:
    bus = stack.bus
    assert result(bus.request("spec1", "write", {"chan": "var/cfg", "value": {"a": 1, "b": "x"}},
                              timeout=10.0))["written"]
    assert result(bus.request("spec1", "read", argv=["var/cfg"], timeout=10.0)) == \
        {"a": "1", "b": "x"}
    assert result(bus.request("spec1", "watch", argv=["var/cfg"], timeout=10.0))["watching"]
    bus.request("spec1", "write", {"chan": "var/cfg[c]", "value": 7}, timeout=10.0)
    got = collect(bus, lambda g: any(d.topic == "evt.spec1.chan" and d.envelope.data["chan"]
                                     == "var/cfg" and "c" in d.envelope.data["value"]
                                     for d in g))
    assert got
    assert result(bus.request("spec1", "unwatch", argv=["var/cfg"], timeout=10.0)) == \
        {"chan": "var/cfg", "watching": False}
    refused = bus.request("spec1", "watch", argv=["var/absent"], timeout=10.0)
    assert refused.data["status"] == "error" and "var/absent" in refused.data["error"]
    assert "var/absent" not in result(bus.request("spec1", "watches", timeout=10.0))


def test_watched_move_gives_positions_then_move_done_0(stack: Stack) -> None:
    bus = stack.bus
    req = bus.start_request("spec1", "move", {"motor": "m0", "position": 3.0}, timeout=30.0)
    got = collect(bus, lambda g: req.done and any(
        d.envelope.data.get("chan") == "motor/m0/move_done" and d.envelope.data["value"] == 0
        for d in g), timeout=30.0)
    assert req.reply is not None and result(req.reply) == {"motor": "m0", "target": 3.0,
                                                           "position": 3}
    chans = [(d.envelope.data["chan"], d.envelope.data["value"]) for d in got
             if d.topic == "evt.spec1.chan" and d.envelope.data["chan"].startswith("motor/m0")]
    positions = [v for c, v in chans if c == "motor/m0/position"]
    assert len(positions) >= 2 and positions[-1] == 3  # moved over time, ended at the target
    done = [i for i, (c, _) in enumerate(chans) if c == "motor/m0/move_done"]
    assert chans[done[0]][1] == 1 and chans[done[-1]][1] == 0
    last_position = max(i for i, (c, _) in enumerate(chans) if c == "motor/m0/position")
    assert last_position < done[-1]  # the final move_done 0 comes after the last position


# --- the simulator on the wire ---------------------------------------------------------------


@pytest.mark.parametrize("order", [LITTLE, BIG])
@pytest.mark.parametrize("vers", [2, 3, 4])
def test_simulator_answers_in_the_clients_order_and_version(stack: Stack, order: str,
                                                            vers: int) -> None:
    client = SpecSocket(sim_port_of(stack), order, vers)
    try:
        client.send(Cmd.SV_HELLO, "test", sn=1)
        hello = client.wait(lambda m: m.cmd == Cmd.SV_HELLO_REPLY)
        assert (hello.order, hello.vers, hello.sn) == (order, vers, 1)
        assert hello.name == stack.specname and decode_value(hello) == stack.specname
        client.send(Cmd.SV_CMD_WITH_RETURN, data=b"1+1", sn=2, kind=0)  # no NUL, like SB
        assert decode_value(client.reply(2)) == "2"
        client.send(Cmd.SV_FUNC_WITH_RETURN, data=b"motor_mne\x000\x00", sn=3)  # CSS form
        assert decode_value(client.reply(3)) == "m0"
        client.send(Cmd.SV_CHAN_READ, "var/missing", sn=4)
        err = client.reply(4)
        assert err.type == DataType.SV_ERROR and err.order == order
        assert err.err != 0 or vers == 2  # v2 headers have no err field
        assert "missing" in str(decode_value(err))
        client.send(Cmd.SV_CHAN_READ, "var/A", sn=5)
        assert set(decode_value(client.reply(5))) == {"0", "1"}  # type: ignore[arg-type]
        client.send(Cmd.SV_REGISTER, "motor/m1/position")
        event = client.wait(lambda m: m.cmd == Cmd.SV_EVENT and m.name == "motor/m1/position")
        assert (event.order, event.vers, event.sn) == (order, vers, 0)
    finally:
        client.close()


def test_simulator_synchronised_move_event_order(stack: Stack) -> None:
    client = SpecSocket(sim_port_of(stack), BIG, 4)
    try:
        for chan in ("motor/m1/position", "motor/m1/move_done"):
            client.send(Cmd.SV_REGISTER, chan)
            client.wait(lambda m, c=chan: m.name == c)  # type: ignore[misc]
        client.send(Cmd.SV_CHAN_SEND, "motor/../prestart_all")
        client.send(Cmd.SV_CHAN_SEND, "motor/m1/start_one", b"-1\0")
        client.send(Cmd.SV_CHAN_SEND, "motor/../start_all")
        names: list[tuple[str, str]] = []
        while ("motor/m1/move_done", "0") not in names:
            msg = client.wait(lambda m: m.cmd == Cmd.SV_EVENT, timeout=10.0)
            names.append((msg.name, str(decode_value(msg))))
        assert names[0] == ("motor/m1/move_done", "1")
        assert names[-2] == ("motor/m1/position", "-1")
        client.send(Cmd.SV_CHAN_SEND, "motor/nope/start_one", b"1\0", sn=9)
        assert "nope" in str(decode_value(client.reply(9)))
    finally:
        client.close()


def test_simulator_drops_a_client_that_sends_garbage(stack: Stack) -> None:
    with socket.create_connection(("127.0.0.1", sim_port_of(stack)), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert s.recv(100) == b""  # closed by the simulator, which keeps serving
    assert link_is_up(stack.bus)


# --- the simulator dies mid-reply ------------------------------------------------------------


@pytest.fixture
def fixed_stack(tmp_path: Path) -> Iterator[Stack]:
    """The simulator on a port of ours, so that its restart listens there again (its port 0
    means the first free port of 6510-6530, not one the OS picks)."""
    port = free_port()
    s = Stack(tmp_path, port, f"port = {port}", "fixed")
    try:
        yield s.start()
    finally:
        s.stop()


def test_sim_killed_mid_reply_fails_fast_then_watches_come_back(fixed_stack: Stack) -> None:
    stack = fixed_stack
    send = subprocess.Popen(
        sctl_cmd("-c", str(stack.path), "send", "spec1", "cmd", "sleep(60)", "--timeout", "40"),
        cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        collect(stack.bus, lambda g: any(d.envelope.data.get("chan") == "status/ready" and
                                         d.envelope.data["value"] == 0 for d in g), 20.0)
        killed = time.monotonic()
        stack.sim.kill(signal.SIGKILL)
        out, _ = send.communicate(timeout=20)
        took = time.monotonic() - killed
    finally:
        if send.poll() is None:
            send.kill()
    text = out.decode()
    assert send.returncode == 1, text
    assert f"connection to SPEC 127.0.0.1:{stack.sim_port} lost" in text, text
    assert "while waiting for the reply to cmd 'sleep(60)'" in text, text
    assert took < 15, f"the pending send took {took:.1f} s to fail"
    down = stack.bus.request("spec1", "cmd", argv=["1+1"], timeout=10.0)
    assert down.data["status"] == "error" and "SPEC link to 127.0.0.1" in down.data["error"]

    stack.sim = stack.start_spec()  # same port
    got = collect(stack.bus, lambda g: any(
        d.topic == "evt.spec1.link" and d.envelope.data["state"] == "up" for d in g), 30.0)
    up = next(i for i, d in enumerate(got) if d.topic == "evt.spec1.link"
              and d.envelope.data["state"] == "up")
    if not any(d.envelope.data.get("chan") == "motor/m0/position" for d in got[up:]):
        collect(stack.bus, lambda g: any(d.envelope.data.get("chan") == "motor/m0/position"
                                         for d in g), 15.0)  # the re-registration's event
    watches = result(stack.bus.request(SIM, "clients", timeout=10.0))[0]["watches"]
    assert {"motor/m0/position", "motor/m0/move_done", "status/ready"} <= set(watches)
    assert result(stack.bus.request("spec1", "cmd", argv=["2*21"], timeout=10.0)) == 42
