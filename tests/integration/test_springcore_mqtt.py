"""springcore-mqtt end to end, every part real and a separate process: a Mosquitto broker
(tests.support.mosquitto), the router, the simulator (``sctl sim springcore-mqtt`` with two
virtual readers) and the actor (``sctl actor mqttreaders``, devices "+"); the test talks to
them through the bus, ``sctl send``, and a paho client of its own for hostile payloads."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from broker.client.bus import Bus, Delivery
from tests.integration.test_actor import collect, drain, result
from tests.support import stack as support
from tests.support.mosquitto import (  # noqa: F401  (the fixtures)
    Mosquitto,
    logs_on_failure,
    mosquitto,
    mosquitto_factory,
)
from tests.support.stack import Proc

B0, B1 = "DA1275B0", "DA1275B1"
PREFIX = "springcard/springcore"
TABLES = """
[actors.mqttreaders]
type = "springcore-mqtt"
port = {port}
devices = "+"
heartbeat_interval = 0.5
backoff_min = 0.2
backoff_max = 1.0
command_timeout = 10.0

[actors.readers]
type = "sim-springcore-mqtt"
port = {port}
devices = ["{b0}", "{b1}"]
backoff_min = 0.2
backoff_max = 1.0
"""


class Stack(support.Stack):
    """Router, actor and simulator of the test, the broker they share, a Bus client."""

    bus: Bus
    broker: Mosquitto
    actor: Proc
    sim: Proc

    def request(self, actor: str, cmd: str, **args: Any) -> Any:
        return self.bus.request(actor, cmd, args, timeout=20.0)

    def readers_online(self, *devices: str) -> bool:
        seen = result(self.request("mqttreaders", "readers"))
        return all(seen.get(d, {}).get("state") == "online" for d in devices)

    def wait(self, pred: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            self.bus.poll(0.2)


@pytest.fixture(autouse=True)
def process_logs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    """A failed test shows the logs of the router, actor, simulator and Mosquitto."""
    with logs_on_failure(request, tmp_path):
        yield


@pytest.fixture
def stack(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[Stack]:  # noqa: F811
    s = Stack(tmp_path, TABLES.format(port=mosquitto.port, b0=B0, b1=B1))
    s.broker = mosquitto
    try:
        s.start_router()
        s.bus = s.client("evt.mqttreaders.", "evt.readers.", "log.mqttreaders")
        s.actor = s.start_actor("mqttreaders", log="actor")
        s.sim = s.start_sim("springcore-mqtt", "readers", log="sim")
        s.wait(lambda: s.readers_online(B0, B1), "both readers online at the actor")
        yield s
    finally:
        s.stop()


def events(got: list[Delivery], topic: str) -> list[dict[str, Any]]:
    return [d.envelope.data for d in got if d.topic == topic]


def tags(got: list[Delivery]) -> list[dict[str, Any]]:
    return events(got, "evt.mqttreaders.tag")


def test_tags_from_two_readers_and_accept_reaches_exactly_one(stack: Stack) -> None:
    assert result(stack.request("readers", "present", tag="04AA01", device=B0))["device"] == B0
    stack.request("readers", "present", tag="04BB02", device=B1, format="scrdr",
                  move="insert")
    stack.request("readers", "present", tag="04CC03", device=B1, variant="old")
    got = collect(stack.bus, lambda g: len(tags(g)) >= 3)
    by_id = {t["tag_id"]: t for t in tags(got)}
    assert {k: by_id[k]["device"] for k in by_id} == {"04AA01": B0, "04BB02": B1, "04CC03": B1}
    assert (by_id["04BB02"]["interface"], by_id["04BB02"]["move"]) == ("13", "insert")
    assert (by_id["04AA01"]["interface"], by_id["04CC03"]["seq"]) == ("13.56", 1)

    sent = stack.sctl("send", "mqttreaders", "accept", f"device={B1}", "--json")
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["result"]["payload"] == '{"Sequence":"60"}'
    got = collect(stack.bus, lambda g: len(events(g, "evt.readers.received")) >= 1)
    got += drain(stack.bus, 1.0)
    (received,) = events(got, "evt.readers.received")
    assert (received["device"], received["payload"], received["decoded"]) == \
        (B1, '{"Sequence":"60"}', {"Sequence": "60"})

    ambiguous = stack.sctl("send", "mqttreaders", "accept")
    assert ambiguous.returncode == 1 and "device=ID is required" in ambiguous.stderr
    assert f"{B0} (online), {B1} (online)" in ambiguous.stderr
    unknown = stack.request("mqttreaders", "deny", device="DEADBEEF").data
    assert unknown["status"] == "error" and "'DEADBEEF' is never seen" in unknown["error"]
    bad = stack.request("mqttreaders", "leds", hex8="123", device=B0).data
    assert bad["status"] == "error" and "8 hex digits" in bad["error"]
    assert "internal error" not in bad["error"]


def test_scrdr_commands_and_raw(stack: Stack) -> None:
    raw = result(stack.request("mqttreaders", "raw", fields="SEQ=61;BUZZ=0064", device=B0))
    assert raw["payload"] == "$SCCMD;SEQ=61;BUZZ=0064\r\n"
    result(stack.request("mqttreaders", "buzz", ms=100, device=B0))
    got = collect(stack.bus, lambda g: len(events(g, "evt.readers.received")) >= 2)
    first, second = events(got, "evt.readers.received")
    assert (first["format"], first["decoded"]) == ("scrdr", {"SEQ": "61", "BUZZ": "0064"})
    assert (second["format"], second["decoded"]) == ("json", {"Buzzer": "0064"})


def test_broker_killed_and_restarted_actor_recovers(stack: Stack) -> None:
    stack.broker.kill()
    got = collect(stack.bus, lambda g: any(e["state"] == "down"
                                          for e in events(g, "evt.mqttreaders.link")))
    refused = stack.request("mqttreaders", "accept", device=B0).data
    assert refused["status"] == "error"
    assert f"broker 127.0.0.1:{stack.broker.port} is not connected (down for" in \
        refused["error"]
    stack.broker.start()  # same port
    got = collect(stack.bus, lambda g: any(e["state"] == "up"
                                          for e in events(g, "evt.mqttreaders.link")),
                  timeout=30.0)
    stack.wait(lambda: result(stack.request("readers", "ping"))["link"]["state"] == "up",
               "simulated readers reconnected")
    stack.request("readers", "present", tag="04DD04", device=B0)
    got = collect(stack.bus, lambda g: len(tags(g)) >= 1, timeout=20.0)
    assert [(t["tag_id"], t["device"]) for t in tags(got)] == [("04DD04", B0)]
    assert stack.actor.popen is not None and stack.actor.popen.poll() is None


def publish_raw(broker: Mosquitto, payloads: list[tuple[str, bytes]]) -> None:
    """Publish with a plain paho client (QoS 1, waiting for each PUBACK)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="hostile-test-client")
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for topic, payload in payloads:
            client.publish(topic, payload, qos=1).wait_for_publish(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()


def test_malformed_payloads_are_reported_and_the_actor_keeps_working(stack: Stack) -> None:
    evt = f"{PREFIX}/{B0}/rdr/evt"
    bad = [(evt, b'{"TagId":"04'), (evt, b'{"TagId":"04","Template":"one"}'),
           (evt, b"\x00\xff\xfe binary"), (evt, b'["not", "an", "object"]'),
           (f"{PREFIX}/{B0}/status", b'{"State":42}')]
    publish_raw(stack.broker, [*bad, (evt, b'{"TagId":"0499","NewField":{"x":1}}')])
    # Each warning reaches log.<name> one loop turn after the payload that caused it, so under
    # load the good tag can come first; 30 s like the other waits of this module. On a timeout
    # the actor's own log says whether the warnings were logged at all (bus side vs actor side).
    try:
        got = collect(stack.bus, lambda g: len(events(g, "log.mqttreaders")) >= len(bad)
                      and len(tags(g)) >= 1, timeout=30.0)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nactor log:\n{stack.actor.output()}") from None
    warnings = [e["message"] for e in events(got, "log.mqttreaders")]
    assert all(e["level"] == "WARNING" for e in events(got, "log.mqttreaders"))
    for needle in ("malformed JSON", "Template must be an integer", "not UTF-8",
                   "expected a JSON object", "State must be a string"):
        assert any(needle in w and B0 in w for w in warnings), (needle, warnings)
    assert [t["tag_id"] for t in tags(got)] == ["0499"]  # unknown fields are ignored
    stack.request("readers", "present", tag="04EE05", device=B0)
    got = collect(stack.bus, lambda g: len(tags(g)) >= 1)
    assert tags(got)[0]["tag_id"] == "04EE05"
    counters = result(stack.request("mqttreaders", "ping"))
    assert counters["state"] == "running"
    assert stack.actor.popen is not None and stack.actor.popen.poll() is None


def test_reader_last_will_marks_it_offline(stack: Stack) -> None:
    stack.sim.kill()  # SIGKILL: no MQTT DISCONNECT, the broker publishes the Last Wills
    got = collect(stack.bus, lambda g: len([e for e in events(g, "evt.mqttreaders.device")
                                            if e["state"] == "offline"]) >= 2)
    offline = {e["device"]: e["status"] for e in events(got, "evt.mqttreaders.device")
               if e["state"] == "offline"}
    assert offline == {B0: "offline,dead", B1: "offline,dead"}
    refused = stack.request("mqttreaders", "wink", device=B0).data
    assert refused["status"] == "error" and f"reader '{B0}' is offline" in refused["error"]


def test_a_jump_in_the_readers_event_counter_is_reported_as_lost(stack: Stack) -> None:
    """Older firmware numbers its events ("Sequence"): events 2 and 3 never reached the broker
    (say, the reader's own link was down). The actor cannot get them back, so it says so."""
    evt = f"{PREFIX}/{B1}/rdr/evt"
    publish_raw(stack.broker, [
        (evt, b'{"Sequence":1,"Interface":"13.56","Protocol":"NFC-A","Template":1,"TagId":"01"}'),
        (evt, b'{"Sequence":4,"Interface":"13.56","Protocol":"NFC-A","Template":1,"TagId":"04"}'),
        (evt, b'{"Sequence":5,"Interface":"13.56","Protocol":"NFC-A","Template":1,"TagId":"05"}'),
    ])
    got = collect(stack.bus, lambda g: len(tags(g)) >= 3 and
                  len(events(g, "evt.mqttreaders.lost")) >= 1, timeout=30.0)
    assert [t["seq"] for t in tags(got)] == [1, 4, 5]
    lost = events(got, "evt.mqttreaders.lost")
    assert len(lost) == 1
    assert {k: lost[0][k] for k in ("device", "missed", "first_seq", "last_seq")} == {
        "device": B1, "missed": 2, "first_seq": 2, "last_seq": 3}
    counters = result(stack.request("mqttreaders", "ping"))
    assert counters["state"] == "running"


# -- backpressure: a congested Bus leaves the readers' events at the broker ----------------------

BADGES = 300  # below Mosquitto's max_queued_messages (1000): the broker holds every one
CONGESTED = """
[actors.mqttreaders]
type = "springcore-mqtt"
port = {port}
devices = "+"
keepalive = 1
heartbeat_interval = 0.5
backoff_min = 0.2
backoff_max = 1.0
outbox_max_messages = 100
"""


def badge(device: str, n: int) -> tuple[str, bytes]:
    """Reader event `n` of `device` (older firmware: numbered, so a gap is reported lost)."""
    body = {"Sequence": n, "Interface": "13.56", "Protocol": "NFC-A", "Template": 1,
            "TagId": f"{device}{n:04X}"}
    return f"{PREFIX}/{device}/rdr/evt", json.dumps(body).encode()


@pytest.mark.timeout(300)
def test_a_congested_bus_leaves_the_badges_at_the_broker_none_lost_none_twice(
        tmp_path: Path, mosquitto: Mosquitto) -> None:  # noqa: F811
    """The router slowed down (SIGSTOP/SIGCONT) while two readers publish QoS 1 badges faster
    than it journals them: the actor stops reading the broker (paused heartbeat) instead of
    filling its outbox, not one badge while a pause lasts (Mosquitto sends its whole queue once
    the first acknowledgements come, so only the client can hold it back), keeps its MQTT
    connection (keepalive 1 s: the pings go on during the pause), and once the router is back
    every badge arrives exactly once, in order per reader, with nothing dropped from the
    outbox."""
    from tests.integration.test_backpressure import Throttle

    stack = support.Stack(tmp_path, CONGESTED.format(port=mosquitto.port))
    throttle: Throttle | None = None
    try:
        router = stack.start_router()
        feed = stack.watch("evt.mqttreaders.", best_effort=("hb.mqttreaders",))
        stack.start_actor("mqttreaders", log="actor")
        feed.wait("evt.mqttreaders.link", lambda d: d["state"] == "up", timeout=30,
                  what="the broker link up")
        assert router.popen is not None
        throttle = Throttle(router.popen.pid)
        publish_raw(mosquitto, [badge(d, n) for n in range(1, BADGES // 2 + 1)
                                for d in (B0, B1)])
        feed.wait("hb.mqttreaders", lambda d: d["backpressure"]["paused_since"] is not None,
                  timeout=60, what="a heartbeat with the device reads paused")
        feed.drain(5.0)  # paused (with pauses between), keepalive pings due meanwhile
        throttle.end()
        feed.until(lambda: len(feed.events("evt.mqttreaders.tag")) >= BADGES, 120,
                   f"{BADGES} tags")
        last = feed.wait("hb.mqttreaders", lambda d: d["backpressure"]["paused_since"] is None
                         and d["counters"]["outbox"] < 50, after=len(feed.seen), timeout=30,
                         what="reads resumed")
        feed.drain(1.0)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nactor log:\n{stack.output('actor')[-3000:]}") from None
    finally:
        if throttle is not None:
            throttle.end()
        stack.stop()
    got = feed.events("evt.mqttreaders.tag")
    for device in (B0, B1):
        assert [t["seq"] for t in got if t["device"] == device] == \
            list(range(1, BADGES // 2 + 1)), f"reader {device}: lost, repeated or reordered"
    assert len(got) == BADGES
    assert feed.events("evt.mqttreaders.lost") == []
    assert last["counters"]["outbox_dropped"] == 0, last["counters"]
    assert last["counters"]["device_pauses"] >= 1, last["counters"]
    downs = [e for e in feed.events("evt.mqttreaders.link") if e["state"] == "down"]
    assert downs == [], f"the broker connection dropped during the pause: {downs}"
    read_while_paused: dict[float, list[int]] = {}  # tags counted, per pause (its start)
    for hb in feed.events("hb.mqttreaders"):
        if hb["backpressure"]["paused_since"] is not None:
            read_while_paused.setdefault(hb["backpressure"]["paused_since"], []).append(
                hb["counters"]["tags"])
    assert read_while_paused, "no paused heartbeat"
    assert all(len(set(counts)) == 1 for counts in read_while_paused.values()), \
        f"badges read from the broker during a pause: {read_while_paused}"


# -- the router away: what the outbox drops comes again from the broker ---------------------------

REDELIVERED = 40  # the broker sends 20 before the first acknowledgement: more than the outbox
AWAY = """
[actors.mqttreaders]
type = "springcore-mqtt"
port = {port}
devices = "+"
heartbeat_interval = 0.5
backoff_min = 0.2
backoff_max = 1.0
outbox_max_messages = 10
"""


def newer_badge(device: str, n: int) -> tuple[str, bytes]:
    """Reader event `n` of `device`, newer firmware (no event counter: redelivered badges come
    after later ones, and a counter would report that as a loss)."""
    body = {"Interface": "13.56", "Protocol": "NFC-A", "Template": 1,
            "TagId": f"{device}{n:04X}"}
    return f"{PREFIX}/{device}/rdr/evt", json.dumps(body).encode()


@pytest.mark.timeout(300)
def test_badges_the_outbox_dropped_while_the_router_was_away_come_again_from_the_broker(
        tmp_path: Path, mosquitto: Mosquitto) -> None:  # noqa: F811
    """The router killed: the actor goes on reading (nothing to pause for) and its outbox (10
    messages) drops the oldest events, loudly; their MQTT messages stay unacknowledged. The
    broker sends those again only at a new connection, so once the router is back and
    acknowledges, the actor reconnects (persistent session): every badge arrives."""
    stack = support.Stack(tmp_path, AWAY.format(port=mosquitto.port))
    wanted = {f"{B0}{n:04X}" for n in range(1, REDELIVERED + 1)}
    try:
        router = stack.start_router()
        feed = stack.watch("evt.mqttreaders.")
        stack.start_actor("mqttreaders", log="actor")
        feed.wait("evt.mqttreaders.link", lambda d: d["state"] == "up", timeout=30,
                  what="the broker link up")
        router.kill()
        publish_raw(mosquitto, [newer_badge(B0, n) for n in range(1, REDELIVERED + 1)])
        support.wait_for(lambda: "router unreachable since" in stack.output("actor"), 30,
                         "the outbox dropping the oldest")
        stack.start_router("router2")
        feed.until(lambda: {t["tag_id"] for t in feed.events("evt.mqttreaders.tag")} >= wanted,
                   60, f"{REDELIVERED} badges")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nactor log:\n{stack.output('actor')[-3000:]}") from None
    finally:
        stack.stop()
    log = stack.output("actor")
    assert "were not journaled: reconnecting, so that the broker sends them again" in log, \
        log[-3000:]
