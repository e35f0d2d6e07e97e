"""``group = "NAME"`` in actor tables, under a real supervisord: the rendered ``[group:NAME]``
lets supervisorctl act on the whole group with ``NAME:*``, and the watchdog still restarts a
grouped actor that dies (it calls it by its supervisord name, ``NAME:PROGRAM``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.stack import wait_for
from tests.system.conftest import SupervisedSite

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

SIMS = "".join(f'[actors.{name}]\ntype = "sim-instrument"\nport = 0\ngroup = "sims"\n'
               for name in ("psu-a", "psu-b"))


def pids(site: SupervisedSite) -> dict[str, int]:
    return {i["name"]: i["pid"] for i in site.rpc.getAllProcessInfo()
            if i["group"] == "sims" and i["statename"] == "RUNNING"}


def test_a_group_is_restarted_with_its_pattern(supervised: Any) -> None:
    site: SupervisedSite = supervised(SIMS)
    site.wait_link_up(["psu-a", "psu-b"])
    before = pids(site)
    assert set(before) == {"psu-a", "psu-b"}
    ctl = Path(sys.executable).parent / "supervisorctl"
    out = subprocess.run([str(ctl), "-c", str(site.conf), "restart", "sims:*"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    wait_for(lambda: len(pids(site)) == 2 and not set(pids(site).values()) & set(
        before.values()), 20, "both programs of the group running with new pids")
    # a grouped actor that dies is restarted by the watchdog like any other
    victim = pids(site)["psu-a"]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: pids(site).get("psu-a") not in (None, victim), 20,
             "sims:psu-a restarted by the watchdog")
