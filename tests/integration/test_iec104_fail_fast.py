"""A 104 command for a target actor known to be down gets its negative ACT_CON at once, not after
``command_timeout``: a real router, the iec104-server and its target as ``sctl`` processes, and
a real `c104.Client` master (`tests.integration.test_iec104.Master`, which reads the ACT_CON
APDUs off the wire).

The c104 tests run in a child pytest of their own (`test_fail_fast_in_its_own_process`), for the
reason tests/integration/test_iec104_isolated.py gives: the c104 2.2.1 client has crashed its
process in rare runs. No ``from __future__ import annotations`` here: c104 checks callback
signatures as strings.

``command_timeout`` is 10 s, so "at once" is asserted as "in less than half of it": a margin no
loaded machine eats, that the old behaviour (an answer after the timeout) cannot meet. The
elapsed times are printed for the report, not judged finer.
"""

import os
import signal
import time
from typing import Any

import pytest

from tests.integration.test_iec104 import SITE, Collector, Master, free_104_port
from tests.integration.test_iec104_isolated import run_in_child
from tests.support.stack import Stack

CHILD = os.environ.get("SCTL_C104_CHILD") == "1"
COMMAND_TIMEOUT = 10.0
SITE_FAST = SITE.replace("command_timeout = 1.5", f"command_timeout = {COMMAND_TIMEOUT}")
assert SITE_FAST != SITE


@pytest.mark.skipif(CHILD, reason="the child runs the c104 tests themselves")
@pytest.mark.timeout(650)
def test_fail_fast_in_its_own_process() -> None:
    print(run_in_child("-s", "-k", "not in_its_own_process", __file__)[-6000:])


def outcomes(events: Collector, n: int, what: str) -> list[dict[str, Any]]:
    """The first `n` outcome events of scada's 104 commands, once they are all in."""
    events.wait(lambda c: len(c.data("evt.scada.command")) >= n, what=f"{what}: event")
    return events.data("evt.scada.command")[:n]


def negative_at_once(master: Master, events: Collector, what: str, expected: str,
                     seen: int) -> None:
    """A command for door1 (the `seen` + 1st) is answered negatively in less than half the
    timeout, and the outcome event says why."""
    elapsed, positive = master.command(2000, True, timeout=2 * COMMAND_TIMEOUT)
    print(f"{what}: {'positive' if positive else 'negative'} ACT_CON after {elapsed:.3f} s "
          f"(command_timeout {COMMAND_TIMEOUT:g} s)")
    assert not positive, f"{what}: positive ACT_CON for a target that is down"
    assert elapsed < COMMAND_TIMEOUT / 2, f"{what}: negative only after {elapsed:.3f} s"
    event = outcomes(events, seen + 1, what)[seen]
    print(f"{what}: {event['error']}")
    assert event["outcome"] == "negative" and event["command"] == "accept", event
    assert event["error"].startswith(f"door1 is down: {expected}"), event


@pytest.mark.skipif(not CHILD, reason="runs in its own pytest process")
def test_a_command_for_a_target_that_is_down_is_negative_at_once(stack: Stack) -> None:
    stack.write(SITE_FAST.format(port=free_104_port(), allow='["127.0.0.1"]', delay=0.2))
    stack.start_router()
    site = stack.site
    bus = stack.client(name="tester", wait=10.0)
    events = Collector(bus, "evt.scada.command", "hb.door1", "hb.scada", "log.scada")
    stack.start_actor("scada")
    stack.wait_ready("scada")
    master = Master(int(site.actors["scada"].settings["port"])).start()
    try:
        assert master.wait_open(), "master never reached OPEN"
        # door1 never ran: known once scada has listened for three (default) intervals
        while stack.ping("scada")["uptime"] < 4.0:
            time.sleep(0.2)
        negative_at_once(master, events, "never started", "never seen since this process", 0)

        # running: the command goes to door1 and is confirmed after its reply
        door = stack.start_actor("door1")
        stack.wait_ready("door1")
        events.wait(lambda c: any(h["state"] == "running" for h in c.data("hb.door1")),
                    what="door1 running")
        elapsed, positive = master.command(2000, True, timeout=2 * COMMAND_TIMEOUT)
        print(f"running: {'positive' if positive else 'negative'} ACT_CON after "
              f"{elapsed:.3f} s")
        assert positive, f"negative ACT_CON for a running target: " \
                         f"{outcomes(events, 2, 'running')[-1]}"
        assert outcomes(events, 2, "running")[-1]["outcome"] == "confirmed"

        # stopped cleanly: its last heartbeat said "stopping"
        assert door.stop() == 0
        negative_at_once(master, events, "stopped", "stopping since ", 2)
        negative_at_once(master, events, "still stopped", "stopping since ", 3)

        # killed: no last words, silent for more than three of its intervals (0.5 s)
        door = stack.start_actor("door1")
        stack.wait_ready("door1")
        assert door.popen is not None
        pid = door.popen.pid
        # scada judges from the heartbeats it receives: the new process's must be on the bus
        events.wait(lambda c: any(h["pid"] == pid and h["state"] == "running"
                                  for h in c.data("hb.door1")), what="door1 running again")
        elapsed, positive = master.command(2000, True, timeout=2 * COMMAND_TIMEOUT)
        assert positive, f"negative ACT_CON after {elapsed:.3f} s for a restarted target: " \
                         f"{outcomes(events, 5, 'restarted')[-1]}"
        assert outcomes(events, 5, "restarted")[-1]["outcome"] == "confirmed"
        door.kill(signal.SIGKILL)
        time.sleep(3 * 0.5 + 2.5)  # three of its intervals, and room for a loaded machine
        negative_at_once(master, events, "killed", "no heartbeat for ", 5)
    finally:
        master.stop()

    # counted in scada's heartbeat; one WARNING per episode (never seen, stopped, killed)
    events.wait(lambda c: any(h["counters"].get("commands_target_down") == 4
                              for h in c.data("hb.scada")), what="the counter at 4")
    warnings = [r["message"] for r in events.data("log.scada") if "door1 is down" in r["message"]]
    assert len(warnings) == 3, warnings
