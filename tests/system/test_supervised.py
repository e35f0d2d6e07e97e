"""Restart policy under a real supervisord: dead, hung and crash-looping actors, operator
stops, and a router killed while events flow: the restart policy's cases that need no device."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from broker.client.bus import Bus
from tests.support.echo import EchoServer
from tests.support.stack import wait_for
from tests.system.conftest import SupervisedSite, wait_pid_change

ECHO = "tests.support.actors:EchoActor"


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer().start()
    yield server
    server.close()


def echo_actor(name: str, port: int, extra: str = "") -> str:
    return f'[actors.{name}]\ntype = "{ECHO}"\nport = {port}\nbackoff_max = 1.0\n{extra}\n'


def test_kill_9_actor_is_restarted_with_its_link_up(supervised: Any, echo: EchoServer) -> None:
    site: SupervisedSite = supervised(echo_actor("dev1", echo.port))
    site.wait_link_up(["dev1"])
    old = site.info("dev1")["pid"]
    os.kill(old, signal.SIGKILL)
    took = wait_pid_change(site, "dev1", old, 10)
    site.wait_link_up(["dev1"], timeout=10)
    print(f"restarted in {took:.2f} s")
    assert took < 5.0
    row = site.status()["programs"]["dev1"]
    assert row["restarts"] == 1 and row["alarm"] is None
    assert "exit" in (row.get("exit") or "") or row["supervisor_state"] == "RUNNING"
    out = site.sctl("send", "dev1", "echo", "hello")
    assert out.returncode == 0 and out.stdout.strip() == "hello", out.stderr


def test_hung_actor_is_killed_and_restarted_by_the_watchdog(supervised: Any,
                                                            echo: EchoServer) -> None:
    site: SupervisedSite = supervised(echo_actor("dev1", echo.port,
                                                 "heartbeat_interval = 1.0"))
    site.wait_link_up(["dev1"])
    time.sleep(1.5)  # a few heartbeats from this pid, so the watchdog knows it is alive
    old = site.info("dev1")["pid"]
    stopped = time.monotonic()
    os.kill(old, signal.SIGSTOP)
    try:
        def killed() -> bool:
            info = site.info("dev1")
            return bool(info["pid"] != old)
        wait_for(killed, 10, "the watchdog to kill the hung actor")
        noticed = time.monotonic() - stopped
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(old, signal.SIGKILL)  # never leave a stopped process behind
    print(f"hung actor killed {noticed:.2f} s after SIGSTOP")
    assert noticed <= 3 * 1.0 + 0.6  # 3 heartbeat periods (+ the supervisord poll)
    wait_pid_change(site, "dev1", old, 10)
    site.wait_link_up(["dev1"], timeout=15)
    row = site.status()["programs"]["dev1"]
    assert row["restarts"] == 1
    assert "watchdog" in site.log("watchdog") or "hung" in site.log("watchdog")


def test_crash_loop_ends_stopped_with_an_alarm(supervised: Any, echo: EchoServer) -> None:
    site: SupervisedSite = supervised(
        echo_actor("bad", echo.port, "fail_on_start = true"),
        supervisor="max_restarts = 3\nrestart_window = 120\nrestart_delay_max = 2")
    bus = Bus(site.site.router, "alarm-watcher")
    bus.subscribe("sys.alarm")
    assert bus.connect(wait=10)
    alarms: list[dict[str, Any]] = []
    try:
        def alarmed() -> bool:
            alarms.extend(d.envelope.data for d in bus.poll(0.2))
            return any(a.get("program") == "bad" for a in alarms)
        wait_for(alarmed, 40, "a sys.alarm about the crash-looping actor")
    finally:
        bus.close()
    time.sleep(2.0)  # it stays stopped: no further restarts
    row = site.status()["programs"]["bad"]
    assert row["supervisor_state"] in ("FATAL", "EXITED", "STOPPED")
    assert row["restarts"] == 3
    assert "stopped after 3 restarts" in row["alarm"]
    text = site.sctl("status").stdout
    assert "ALARM bad: stopped after 3 restarts" in text
    # an operator fixes the cause and starts it: the alarm clears (it fails again here, so
    # only check that the start is accepted and counted afresh)
    assert site.rpc.startProcess("bad", False)


def test_operator_stop_is_not_a_failure(supervised: Any, echo: EchoServer) -> None:
    site: SupervisedSite = supervised(echo_actor("dev1", echo.port))
    site.wait_link_up(["dev1"])
    assert site.rpc.stopProcess("dev1", True)
    time.sleep(2.5)  # several watchdog checks
    info = site.info("dev1")
    assert info["statename"] == "STOPPED"
    row = site.status()["programs"]["dev1"]
    assert row["restarts"] == 0 and row["alarm"] is None


def test_router_kill_9_while_events_flow_loses_nothing(supervised: Any) -> None:
    site: SupervisedSite = supervised("")
    router = site.site.router
    sub = Bus(router, "loss-check-sub")
    sub.subscribe("evt.load.n")
    pub = Bus(router, "loss-check-pub")
    assert sub.connect(wait=15) and pub.connect(wait=15)
    received: list[int] = []
    try:
        sent = 0
        start = time.monotonic()
        killed = False
        while time.monotonic() - start < 6.0:  # 200/s for 6 s, router killed at 2 s
            due = int((time.monotonic() - start) * 200)
            while sent < due:
                sent += 1
                pub.publish("evt.load.n", "event", {"n": sent})
            if not killed and time.monotonic() - start > 2.0:
                os.kill(site.info("router")["pid"], signal.SIGKILL)
                killed = True
            pub.poll(0)
            received.extend(d.envelope.data["n"] for d in sub.poll(0.002))
        deadline = time.monotonic() + 30
        while len(received) < sent and time.monotonic() < deadline:
            pub.poll(0.01)
            received.extend(d.envelope.data["n"] for d in sub.poll(0.01))
    finally:
        pub.close()
        sub.close()
    assert killed and site.info("router")["statename"] == "RUNNING"
    missing = sorted(set(range(1, sent + 1)) - set(received))
    assert not missing, f"{len(missing)} of {sent} events lost: {missing[:10]}..."
    assert received == sorted(received), "delivered out of order"
    assert len(received) == sent, "duplicates delivered"


def test_kill_9_reader_tags_during_outage_are_delivered_or_reported_lost(
        supervised: Any) -> None:
    """A SpringCore reader's actor killed: a badge presented meanwhile is not silently lost —
    the device cannot buffer, so the simulator (standing in for the reader) reports it lost;
    badges after the restart arrive."""
    from tests.support.stack import free_port

    port = free_port()
    site: SupervisedSite = supervised(
        f'[actors.door]\ntype = "sim-springcore-tcp"\nport = {port}\n'
        f'[actors.reader]\ntype = "springcore-tcp"\nhost = "127.0.0.1"\nport = {port}\n'
        "backoff_max = 1.0\n")
    site.wait_link_up(["door", "reader"])
    bus = Bus(site.site.router, "outage-check")
    bus.subscribe("evt.reader.tag")
    bus.subscribe("evt.door.lost")
    bus.subscribe("evt.door.sent")
    assert bus.connect(wait=10)
    try:
        old = site.info("reader")["pid"]
        os.kill(old, signal.SIGKILL)
        during = site.sctl("send", "door", "present", "0A0B0C0D")
        took = wait_pid_change(site, "reader", old, 10)
        site.wait_link_up(["reader"], timeout=10)
        print(f"reader back in {took:.2f} s; present during the outage: {during.stdout}"
              f"{during.stderr}")
        assert took < 5.0
        after = site.sctl("send", "door", "present", "0E0F1011")
        assert after.returncode == 0, after.stderr
        seen: dict[str, list[str]] = {"tag": [], "lost": [], "sent": []}

        def accounted() -> bool:
            for d in bus.poll(0.2):
                data = d.envelope.data
                kind = d.topic.rsplit(".", 1)[1]
                seen[kind].append(str(data.get("tag_id") or data.get("tag") or data))
            return any("0E0F1011" in t for t in seen["tag"]) and (
                any("0A0B0C0D" in t for t in seen["tag"] + seen["lost"]))
        wait_for(accounted, 15, "both badges delivered or reported lost")
    finally:
        bus.close()
    if any("0A0B0C0D" in t for t in seen["lost"]):
        assert during.returncode != 0, "a lost badge must not be acknowledged as presented"


def test_status_with_the_router_down_shows_what_supervisord_knows(supervised: Any,
                                                                  echo: EchoServer) -> None:
    site: SupervisedSite = supervised(echo_actor("dev1", echo.port))
    site.wait_link_up(["dev1"])
    assert site.rpc.stopProcess("router", True)
    out = site.sctl("status", "--timeout", "0.5")
    assert out.returncode == 3, out.stderr  # not well: the router is down
    assert "router: DOWN" in out.stdout
    rows = {line.split()[0]: line for line in out.stdout.splitlines()[1:] if line.strip()}
    assert "STOPPED" in rows["router"] and "RUNNING" in rows["dev1"], out.stdout
    report = site.status()
    assert report["router"] is None and report["programs"]["dev1"]["supervisor_state"] == \
        "RUNNING"
    assert report["watchdog"], "the watchdog's view comes from its state file"
