"""The SpringCore TCP reader end to end: a real router, the simulator (``sctl sim
springcore-tcp``) and the reader actor (``sctl actor reader``) as separate processes on loopback
ports, watched and driven through a Bus client and, for the CLI contract, ``sctl send``."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import stack as support
from tests.support.stack import ROOT, Feed, Proc, sctl_cmd, subprocess_env

pytestmark = pytest.mark.timeout(90)

TABLES = """
[actors.reader]
type = "springcore-tcp"
host = "127.0.0.1"
port = {port}
heartbeat_interval = 0.3
backoff_min = 0.1
backoff_max = 0.5
connect_timeout = 3.0

[actors.reader2]
type = "springcore-tcp"
host = "127.0.0.1"
port = {port}
backoff_min = 0.5
backoff_max = 1.0

[actors.reader3]
type = "springcore-tcp"
host = "127.0.0.1"
port = {port}
line_ending = ""
idle_timeout = 1.5
backoff_min = 0.1
backoff_max = 0.3

[actors.sim]
type = "sim-springcore-tcp"
port = {port}
"""


class Stack(support.Stack):
    """The site, its processes, and a Feed that records every ``evt.`` and ``hb.reader``
    delivery in order."""

    feed: Feed
    port = 0  # the simulator's, once it listened

    def start_device(self, *sets: str) -> Proc:
        """The simulated reader (``--set`` overrides). The first one listens on a port of its
        choice, which the site then names, for the readers and the simulator's restarts."""
        mark = len(self.feed.seen)
        proc = self.start_sim("springcore-tcp", "sim", *(f"--set={s}" for s in sets))
        listening = self.feed.wait("evt.sim.listening", after=mark,
                                   what=f"sim listening\n{proc.output()}")
        if not self.port:
            self.port = int(listening["port"])
            self.write(TABLES.format(port=self.port))
        return proc

    def start_reader(self, name: str = "reader") -> Proc:
        return self.start_actor(name)

    def link(self, name: str, state: str, after: int = 0) -> dict[str, Any]:
        return self.feed.wait(f"evt.{name}.link", lambda d: d["state"] == state, after,
                              what=f"{name} link {state}")

    def send(self, actor: str, command: str, *argv: str, **args: Any) -> dict[str, Any]:
        reply = self.feed.bus.request(actor, command, args, timeout=15.0, argv=list(argv))
        data: dict[str, Any] = reply.data
        return data


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path, TABLES.format(port=0))  # port 0 until the simulator listened
    try:
        s.start_router()
        s.watch("evt.", best_effort=("hb.reader",))
        yield s
    finally:
        s.stop()


def line_is(line: str) -> Callable[[dict[str, Any]], bool]:
    return lambda d: bool(d["line"] == line)


def ok(reply: dict[str, Any]) -> Any:
    assert reply["status"] == "ok", reply
    return reply["result"]


def test_tag_reaches_the_bus_and_commands_reach_the_reader(stack: Stack) -> None:
    stack.start_device()
    stack.start_reader()
    stack.link("reader", "up")
    mark = len(stack.feed.seen)
    sent = ok(stack.send("sim", "present", "04aabbccdd", data="HELLO"))
    assert sent["sent"].startswith("$SCRDR;13;01;01;;04AABBCCDD;;HELLO;*")
    tag = stack.feed.wait("evt.reader.tag", after=mark)
    assert tag["tag_id"] == "04AABBCCDD" and tag["checksum"] == "ok"
    assert tag["tag_data"] == "HELLO" and tag["raw"] == sent["sent"].rstrip("\r\n")
    stack.feed.drain(0.5)
    assert len(stack.feed.events("evt.reader.tag", mark)) == 1  # exactly one

    # the CLI contract: `sctl send reader accept` reaches the device as $SCCMD;SEQ=60
    out = subprocess.run(sctl_cmd("-c", str(stack.path), "send", "reader", "accept", "--json",
                                  "--timeout", "15"), cwd=ROOT, env=subprocess_env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "$SCCMD;SEQ=60\\r\\n" in out.stdout
    got = stack.feed.wait("evt.sim.received", after=mark)
    assert got == {"line": "$SCCMD;SEQ=60", "fields": {"SEQ": "60"}, "checksum": "absent",
                   "error": None}

    # every command, its exact line in the reply, and what the device received
    for argv, line in ((("wink",), "$SCCMD;SEQ=0E"), (("deny",), "$SCCMD;SEQ=61"),
                       (("seq", "5"), "$SCCMD;SEQ=05"), (("leds", "92929292"),
                                                         "$SCCMD;LEDS=92929292"),
                       (("buzz", "100"), "$SCCMD;BUZZ=0064"),
                       (("raw", "fields=LEDS=92929292;BUZZ=0064"),
                        "$SCCMD;LEDS=92929292;BUZZ=0064")):
        words = [a for a in argv[1:] if "=" not in a]
        named = dict(a.split("=", 1) for a in argv[1:] if "=" in a)
        assert ok(stack.send("reader", argv[0], *words, **named)) == {
            "sent": line + "\r\n", "to": f"127.0.0.1:{stack.port}"}
        stack.feed.wait("evt.sim.received", line_is(line), after=mark)

    bad = stack.send("reader", "seq", "600")
    assert bad["status"] == "error" and "exactly 2 hex digits" in bad["error"]
    assert "internal error" not in bad["error"]
    bad = stack.send("reader", "raw", "LEDS")
    assert bad["status"] == "error" and "is not Field=Value" in bad["error"]


def test_bad_device_input_is_reported_and_the_stream_goes_on(stack: Stack) -> None:
    stack.start_device()
    stack.start_reader()
    stack.link("reader", "up")
    mark = len(stack.feed.seen)
    ok(stack.send("sim", "present", "0411", checksum="bad"))
    ok(stack.send("sim", "emit", "$SCRDR;13;01;01;;NOTHEX;;;*00"))
    ok(stack.send("sim", "emit", "$SCRDR;" + "A" * 70_000))  # over 64 kB
    ok(stack.send("sim", "present", "0422", checksum="excl"))
    last = stack.feed.wait("evt.reader.tag", lambda d: d["tag_id"] == "0422", after=mark)
    assert last["checksum"] == "ok"
    tags = stack.feed.events("evt.reader.tag", mark)
    assert [(t["tag_id"], t["checksum"]) for t in tags] == [("0411", "bad"), ("0422", "ok")]
    rejected = stack.feed.events("evt.reader.rejected", mark)
    assert [r["reason"] for r in rejected] == [
        "TagId 'NOTHEX' is not hex digits",
        "line longer than 65536 bytes: discarded up to its end"]
    assert rejected[1]["raw"].startswith("$SCRDR;AAAA")
    assert ok(stack.send("reader", "ping"))["link"]["state"] == "up"  # no reconnect needed


def test_second_client_is_refused_and_named_busy(stack: Stack) -> None:
    stack.start_device("legacy=true")
    mark = len(stack.feed.seen)
    # no client yet: the tag is not delivered, and says so twice
    lost = stack.send("sim", "present", "0433")
    assert lost["status"] == "error" and "not delivered: no client connected" in lost["error"]
    assert stack.feed.wait("evt.sim.lost", after=mark)["tag_id"] == "0433"
    stack.start_reader()
    stack.link("reader", "up")
    # the legacy greeting is counted as a greeting (heartbeat counters), never a tag
    stack.feed.wait("hb.reader", lambda d: d["counters"]["greetings"] == 1, after=mark)
    assert stack.feed.events("evt.reader.tag", mark) == []

    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as other:
        other.settimeout(10)
        assert other.recv(100) == b""  # accepted and closed at once
    refused = stack.feed.wait("evt.sim.refused", after=mark)["reason"]
    assert refused.startswith("one client at a time: 127.0.0.1:") and "is connected" in refused

    stack.start_reader("reader2")  # a second host: link down with a clear reason, retried
    busy = ("closed by the device right after connect — is another client connected? "
            "the reader accepts one")
    stack.feed.wait("evt.reader2.link", lambda d: d["state"] == "connecting" and d["attempt"] >= 2,
               after=mark, what="reader2 retrying")
    downs = [d for d in stack.feed.events("evt.reader2.link", mark) if d["state"] == "down"]
    assert downs and all(busy in d["reason"] and d["retry_in"] is not None for d in downs)
    assert all(d["state"] != "up" for d in stack.feed.events("evt.reader2.link", mark))
    mark = len(stack.feed.seen)
    ok(stack.send("sim", "present", "0444"))  # the first reader still has it
    assert stack.feed.wait("evt.reader.tag", after=mark)["tag_id"] == "0444"


def test_simulator_restart_link_down_up_and_no_tag_lost(stack: Stack) -> None:
    sim = stack.start_device()
    stack.start_reader()
    stack.link("reader", "up")
    mark = len(stack.feed.seen)
    assert sim.stop() == 0
    down = stack.link("reader", "down", after=mark)
    assert str(stack.port) in down["reason"]
    time.sleep(0.5)  # let it be down for a while, through a few refused reconnects
    refused = stack.send("reader", "accept")
    assert refused["status"] == "error"
    found = re.fullmatch(rf"reader 127\.0\.0\.1:{stack.port} not connected for ([0-9.]+) s "
                         r"\(link (down|connecting); last: .+\); command not sent",
                         refused["error"])
    assert found, refused["error"]
    assert float(found.group(1)) >= 0.5

    mark = len(stack.feed.seen)
    stack.start_device()
    stack.link("reader", "up", after=mark)
    ids = [f"05{i:04X}" for i in range(20)]
    for tag_id in ids:
        ok(stack.send("sim", "present", tag_id))
    stack.feed.wait("evt.reader.tag", lambda d: d["tag_id"] == ids[-1], after=mark)
    assert [t["tag_id"] for t in stack.feed.events("evt.reader.tag", mark)] == ids


def test_bare_commands_mid_line_loss_and_idle_timeout(stack: Stack) -> None:
    stack.start_device()
    stack.start_reader("reader3")  # line_ending "", idle_timeout 1.5 s
    mark = len(stack.feed.seen)
    stack.link("reader3", "up")
    # commands without a terminator, as the official sample sends them, framed by the device
    assert ok(stack.send("reader3", "wink"))["sent"] == "$SCCMD;SEQ=0E"
    assert ok(stack.send("reader3", "accept"))["sent"] == "$SCCMD;SEQ=60"
    stack.feed.wait("evt.sim.received", lambda d: d["line"] == "$SCCMD;SEQ=60", after=mark)
    assert [d["line"] for d in stack.feed.events("evt.sim.received", mark)] == [
        "$SCCMD;SEQ=0E", "$SCCMD;SEQ=60"]

    # the device goes away in the middle of a line: reported, then reconnect
    mark = len(stack.feed.seen)
    ok(stack.send("sim", "emit", "$SCRDR;13;01", ending=""))
    ok(stack.send("sim", "kick"))
    rejected = stack.feed.wait("evt.reader3.rejected", after=mark)
    assert rejected == {"reason": "connection ended in the middle of a line: 12 bytes discarded",
                        "raw": "$SCRDR;13;01"}
    stack.link("reader3", "down", after=mark)
    stack.link("reader3", "up", after=mark)

    # nothing from the reader for idle_timeout: reconnect
    mark = len(stack.feed.seen)
    down = stack.link("reader3", "down", after=mark)
    assert re.fullmatch(r"nothing received from 127\.0\.0\.1:\d+ for [0-9.]+ s "
                        r"\(idle_timeout 1\.5 s\)", down["reason"]), down
    stack.link("reader3", "up", after=mark)
    assert stack.feed.events("evt.reader3.tag", 0) == []


def test_rate_tags_all_delivered_up_to_the_simulator_stopping(stack: Stack) -> None:
    sim = stack.start_device("rate=25.0", "tag='0A0B0C'")
    stack.start_reader()
    stack.link("reader", "up")
    mark = len(stack.feed.seen)
    for _ in range(10):
        stack.feed.wait("evt.reader.tag", after=len(stack.feed.seen))
    assert sim.stop() == 0  # whatever was written before the close is read before the FIN
    stack.link("reader", "down", after=mark)
    stack.feed.drain(1.0)
    sent = stack.feed.events("evt.sim.sent")
    tags = stack.feed.events("evt.reader.tag")
    assert len(sent) >= 10 and {d["tag_id"] for d in sent} == {"0A0B0C"}
    assert [t["raw"] for t in tags] == [d["line"].rstrip("\r\n") for d in sent]
