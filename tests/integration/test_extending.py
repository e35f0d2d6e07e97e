"""The extension guide's example actor (docs/extending.md) works as written.

The guide's one ``class ThermometerActor`` block is written to a module in a temp folder and run
as ``sctl actor therm1`` (type ``thermometer_example:ThermometerActor``) with a real router,
against a small line-based TCP thermometer on 127.0.0.1. The test talks to it through the Bus:
link up, describe, a reading (reply and event), a refused channel, a query the device holds
(the actor keeps answering ping meanwhile: its loop is not blocked), and a query the device
never answers (error reply, then the link comes back).
"""

from __future__ import annotations

import queue
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.client.requests import Request
from broker.wire.envelope import Envelope
from tests.support.stack import ROOT, Feed, Stack

MODULE = "thermometer_example"
TABLE = """
[actors.therm1]
type = "thermometer_example:ThermometerActor"
host = "127.0.0.1"
port = {port}
heartbeat_interval = 0.2
backoff_min = 0.05
backoff_max = 0.5
connect_timeout = 3.0
answer_timeout = 3.0
"""


def example_code() -> str:
    text = (ROOT / "docs" / "extending.md").read_text(encoding="utf-8")
    blocks: list[str] = [b for b in re.findall(r"```python\n(.*?)```", text, re.S)
                         if "class ThermometerActor" in b]
    assert len(blocks) == 1, "docs/extending.md should hold one ThermometerActor block"
    return blocks[0]


class Thermometer:
    """Answers ``MEAS? N`` with ``20 + N`` (two decimals), one client at a time. Clearing
    `answering` holds the answers back until it is set again; `silent` drops them."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = int(self.listener.getsockname()[1])
        self.queries: queue.Queue[str] = queue.Queue()
        self.answering = threading.Event()
        self.answering.set()
        self.silent = False
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="thermometer")
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self.answering.set()
        self._thread.join(5)
        self.listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with conn, conn.makefile("rb") as lines:
                for raw in lines:
                    query = raw.decode().strip()
                    self.queries.put(query)
                    self.answering.wait(10)
                    if self.silent or self._stop.is_set():
                        continue
                    channel = int(query.split()[1])
                    conn.sendall(f"{20 + channel:.2f}\n".encode())


@pytest.fixture
def device() -> Iterator[Thermometer]:
    server = Thermometer()
    yield server
    server.close()


@pytest.fixture
def feed(tmp_path: Path, device: Thermometer, stack: Stack,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[Feed]:
    """Router and therm1 running (the example module on therm1's Python path), its link up;
    a Feed of therm1's events."""
    (tmp_path / f"{MODULE}.py").write_text(example_code(), encoding="utf-8")
    stack.write(TABLE.format(port=device.port))
    stack.start_router()
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # sctl puts the repo in front of it
    actor = stack.start_actor("therm1")
    feed = stack.watch("evt.therm1.", since=0)  # from the journal's start: the link may be up
    try:
        feed.wait("evt.therm1.link", lambda d: d["state"] == "up", what="therm1 link up")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\ntherm1's log:\n{actor.output()[-3000:]}") from None
    yield feed
    assert actor.stop() == 0, actor.output()


def wait_reply(feed: Feed, request: Request, timeout: float = 10.0) -> Envelope:
    """Pump the bus until `request` has its reply; fails after `timeout`."""
    feed.until(lambda: request.done, timeout, f"the reply to {request.command}")
    assert request.reply is not None, request.error
    return request.reply


def result(reply: Envelope) -> Any:
    assert reply.data["status"] == "ok", reply.data
    return reply.data["result"]


def test_example_actor_replies_and_publishes(feed: Feed, device: Thermometer) -> None:
    bus = feed.bus
    desc = result(bus.request("therm1", "describe", timeout=10.0))
    assert desc["type"] == "thermometer"
    assert desc["doc"].startswith("A line-based TCP thermometer")
    (measure,) = [c for c in desc["commands"] if c["name"] == "measure"]
    assert [(p["name"], p["type"], p.get("default")) for p in measure["params"]] == [
        ("channel", "int", 1)]

    assert result(bus.request("therm1", "measure", argv=["2"], timeout=10.0)) == 22.0
    assert device.queries.get(timeout=5) == "MEAS? 2"
    assert feed.wait("evt.therm1.reading") == {"channel": 2, "celsius": 22.0}

    refused = bus.request("therm1", "measure", {"channel": 9}, timeout=10.0)
    assert refused.data["status"] == "error"
    assert refused.data["error"] == "channel must be 1-4, not 9"


def test_example_actor_does_not_block_while_the_device_is_slow(feed: Feed,
                                                               device: Thermometer) -> None:
    bus = feed.bus
    device.answering.clear()  # the device holds its answer
    pending = bus.start_request("therm1", "measure", {"channel": 3}, timeout=10.0)
    assert device.queries.get(timeout=5) == "MEAS? 3"
    ping = result(bus.request("therm1", "ping", timeout=5.0))  # the loop still serves
    assert ping["link"]["state"] == "up"
    assert not pending.done
    device.answering.set()
    assert result(wait_reply(feed, pending)) == 23.0


def test_example_actor_fails_an_unanswered_query_and_reconnects(feed: Feed,
                                                                device: Thermometer) -> None:
    bus = feed.bus
    mark = len(feed.seen)
    device.silent = True
    started = time.monotonic()
    reply = bus.request("therm1", "measure", timeout=10.0)
    assert reply.data["status"] == "error"
    assert reply.data["error"] == "link to the thermometer lost before it answered"
    assert time.monotonic() - started < 8.0  # answer_timeout, not the sender's deadline
    feed.wait("evt.therm1.link", lambda d: d["state"] == "down"
              and d["reason"] == "no answer within 3 s", after=mark)
    device.silent = False
    feed.wait("evt.therm1.link", lambda d: d["state"] == "up", after=mark)
    assert device.connections >= 2
    assert result(bus.request("therm1", "measure", {"channel": 4}, timeout=10.0)) == 24.0
