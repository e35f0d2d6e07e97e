"""Soak: every simulator and actor type under a real supervisord, with faults injected on a
seeded random schedule while badges are presented continuously, then every badge accounted for.

Length ``SOAK_SECONDS`` (default 60, at most 300), schedule ``SOAK_SEED`` (default 1): the same
seed gives the same sequence of faults. Faults, one at a time, every 2-5 s: ``kill -9`` of an
actor (the watchdog restarts it), ``kill -STOP`` of an actor for 1 s (below the watchdog's
hung threshold), an instrument fault for 2 s (slow, silent, close_mid, noise, flood), the TCP
reader simulator's ``kick``, ``kill -9`` of the router (supervisord restarts it on its journal
file), ``kill -9`` of Mosquitto (restarted by supervisord), a second instance of a running actor
started by hand (it must exit with status 4, naming where the first runs, having run nothing),
and, as root, a full disk for 3 s: the router's journal lives on its own small tmpfs, which a
ballast file fills (the router must stay up, hold its acknowledgements and resume by itself).

Badges: the TCP door simulator and the MQTT reader simulator (older firmware, whose event
counter lets the actor report what the broker lost) each get a ``present`` with a unique TagId
every 0.2 s. At the end, every badge each simulator produced (``evt.<sim>.sent``, or
``evt.<sim>.lost`` when it could not even send it) is accounted for as

- delivered exactly once (``evt.<reader>.tag``);
- reported lost with a reason: by the simulator (``evt.door.lost``: no client connected), or by
  the reader actor (``evt.reader1.rejected``: a line cut by a disconnect; ``evt.mqttreaders.lost``
  + ``sys.alarm``: a jump in the reader's event counter);
- in flight when its reader actor was killed: sent between 1 s before a ``kill -9`` of that
  actor and its link being up again, and gone with the process (bytes in its socket, or
  received and not yet acknowledged by the router). What reports it is the watchdog's restart
  (``sys.watchdog``) and ``evt.<reader>.link``, not a per-badge event. Counted separately;
  MQTT badges published while the actor is dead wait in its persistent session, so this is
  only the moment of the kill.

Anything else (unaccounted or delivered twice) fails the test. No process may grow: each
program's VmRSS at the end is at most `RSS_GROWTH` above its first sample when the pid is the
same, and no process is above `RSS_MAX`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest

from broker.client.bus import Bus
from broker.client.requests import Request
from tests.support.mosquitto import mosquitto_binary
from tests.support.stack import ROOT, free_ports, sctl_cmd, subprocess_env, wait_for
from tests.system.conftest import SupervisedSite

SOAK_SECONDS: Final = float(os.environ.get("SOAK_SECONDS", "60"))
SOAK_SEED: Final = int(os.environ.get("SOAK_SEED", "1"))
assert 0 < SOAK_SECONDS <= 300, "SOAK_SECONDS must be within 0-300 (the CI bound is 5 min)"

pytestmark = [pytest.mark.system, pytest.mark.timeout(SOAK_SECONDS + 240)]

MiB: Final = 1 << 20
RSS_GROWTH: Final = 40 * MiB
RSS_MAX: Final = 250 * MiB
PRESENT_EVERY: Final = 0.2
IN_FLIGHT_BEFORE: Final = 1.0  # seconds before a reader's kill -9 that a badge may be in it
READERS: Final = {"door": "reader1", "mqtt-sim": "mqttreaders"}
IN_FLIGHT: Final = {  # the fate of a badge caught by its reader actor's kill -9, and why
    "door": "written to reader1's socket around its kill -9 (watchdog restart reported)",
    "mqtt-sim": "in mqttreaders at its kill -9 (acknowledged to the broker, not yet "
                "journaled; watchdog restart reported)"}
ACTORS: Final = ("reader1", "mqttreaders", "spec1", "psu1", "scada")
SIMS: Final = ("door", "mqtt-sim", "spec-sim", "psu-sim", "scada-sim")
DUPLICATE_TARGETS: Final = ("reader1", "psu1", "spec1")
EXIT_DUPLICATE: Final = 4  # `sctl actor NAME` when another instance holds NAME
DUPLICATE_WINDOW: Final = 8.0  # seconds a duplicate gets to be refused and exit
DISK_FULL_FOR: Final = 3.0
JOURNAL_FS_BYTES: Final = 64 * 1024 * 1024
DEVICE: Final = "DA1275B0"

SITE: Final = """
[services.mosquitto]
command = "{mosquitto} -c {{site}}/mosquitto.conf"
priority = 5
check_port = {mqtt}

[actors.door]
type = "sim-springcore-tcp"
port = {door}
[actors.reader1]
type = "springcore-tcp"
host = "127.0.0.1"
port = {door}
backoff_max = 1.0

[actors.mqtt-sim]
type = "sim-springcore-mqtt"
port = {mqtt}
devices = ["{device}"]
variant = "old"
status_interval = 5.0
backoff_max = 1.0
[actors.mqttreaders]
type = "springcore-mqtt"
port = {mqtt}
devices = "+"
backoff_max = 1.0

[actors.spec-sim]
type = "sim-spec-server"
port = {spec}
specname = "soak"
[actors.spec1]
type = "spec-client"
host = "127.0.0.1"
port = {spec}
watch = ["motor/m0/position", "status/ready"]
backoff_max = 1.0

[actors.psu-sim]
type = "sim-instrument"
port = {psu}
[actors.psu1]
type = "bus-link"
host = "127.0.0.1"
port = {psu}
timeout = 2.0
backoff_max = 1.0
[[actors.psu1.poll]]
every = 0.5
command = "wrnrd_until"
args = ['MEAS:VOLT?\\n', '\\n']
event = "voltage"

[actors.scada]
type = "iec104-server"
ip = "127.0.0.1"
port = {iec}
allow = ["127.0.0.1"]
[[actors.scada.point]]
ioa = 100
type = "M_IT_NA_1"
topic = "evt.reader1.tag"
count = true
[[actors.scada.point]]
ioa = 110
type = "M_ME_NC_1"
topic = "evt.psu1.voltage"
field = "result"
[actors.scada-sim]
type = "sim-iec104-master"
host = "127.0.0.1"
port = {iec}
backoff_max = 1.0
"""

MOSQUITTO_CONF: Final = """listener {port} 127.0.0.1
allow_anonymous true
persistence false
log_dest stdout
log_type error
log_type warning
"""


@dataclass
class Fault:
    kind: str
    target: str
    at: float  # Unix time
    undo: Callable[[], None] | None = None
    undo_at: float = 0.0


@dataclass
class Record:
    """What the soak saw on the bus, per topic, in order of delivery."""

    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, topic: str, data: dict[str, Any], ts: float) -> None:
        self.events.setdefault(topic, []).append({**data, "_ts": ts})

    def get(self, topic: str) -> list[dict[str, Any]]:
        return self.events.get(topic, [])


class Soak:
    def __init__(self, site: SupervisedSite, bus: Bus, rng: random.Random,
                 journal_fs: Path | None = None) -> None:
        self.site, self.bus, self.rng = site, bus, rng
        self.journal_fs = journal_fs  # the router journal's own tmpfs (root only), or None
        self.record = Record()
        self.faults: list[Fault] = []
        self.active: Fault | None = None
        self.next_tag = 0
        self.presents: dict[str, list[Request]] = {sim: [] for sim in READERS}
        self.duplicates: list[tuple[str, subprocess.Popen[str], Path]] = []
        self.router_pids: list[int] = []  # the router's pid at each disk-full episode's end

    def pump(self, seconds: float) -> None:
        for d in self.bus.poll(seconds):
            self.record.add(d.topic, d.envelope.data, d.envelope.ts)

    def present(self) -> None:
        self.next_tag += 1
        self.presents["door"].append(self.bus.start_request(
            "door", "present", {"tag": f"5A{self.next_tag:06X}"}, timeout=5.0))
        self.presents["mqtt-sim"].append(self.bus.start_request(
            "mqtt-sim", "present", {"tag": f"5B{self.next_tag:06X}", "device": DEVICE},
            timeout=5.0))

    def pid(self, name: str) -> int:
        return int(self.site.info(name)["pid"])

    def inject(self) -> Fault:
        kinds = ["kill", "kill", "stop", "instrument", "kick", "router", "mosquitto",
                 "duplicate"]
        if self.journal_fs is not None:
            kinds.append("disk")
        kind = self.rng.choice(kinds)
        now = time.time()
        if kind == "duplicate":
            return self.start_duplicate(now)
        if kind == "disk":
            return self.fill_disk(now)
        if kind in ("kill", "stop"):
            target = self.rng.choice(ACTORS)
            pid = self.pid(target)
            if pid == 0:  # still being restarted: the fault is that it is down already
                return Fault("skip", target, now)
            if kind == "kill":
                os.kill(pid, signal.SIGKILL)
                return Fault(kind, target, now)
            os.kill(pid, signal.SIGSTOP)
            return Fault(kind, target, now, lambda: os.kill(pid, signal.SIGCONT), now + 1.0)
        if kind == "instrument":
            name = self.rng.choice(["slow", "silent", "close_mid", "noise", "flood"])
            self.bus.start_request("psu-sim", "fault", {"name": name}, timeout=5.0)
            return Fault(kind, name, now, self.instrument_healed, now + 2.0)
        if kind == "kick":
            self.bus.start_request("door", "kick", {}, timeout=5.0)
            return Fault(kind, "door", now)
        target = "router" if kind == "router" else "mosquitto"
        pid = self.pid(target)
        if pid:
            os.kill(pid, signal.SIGKILL)
        return Fault(kind, target, now)

    def start_duplicate(self, now: float) -> Fault:
        """`sctl actor NAME` by hand while NAME runs under supervisord (settled, link up)."""
        target = self.rng.choice(DUPLICATE_TARGETS)
        info = self.site.info(target)
        if info["statename"] != "RUNNING" or now - info["start"] < 3.0:
            return Fault("skip", target, now)
        out = self.site.folder / f"duplicate-{target}-{len(self.duplicates)}.log"
        with out.open("w") as fh:
            proc = subprocess.Popen(sctl_cmd("-c", str(self.site.site_path), "actor", target),
                                    cwd=ROOT, env=subprocess_env(), stdout=fh,
                                    stderr=subprocess.STDOUT, text=True)
        self.duplicates.append((target, proc, out))

        def settle() -> None:  # a duplicate still running is stopped; the check comes at the end
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        return Fault("duplicate", target, now, settle, now + DUPLICATE_WINDOW)

    def fill_disk(self, now: float) -> Fault:
        """Fill the journal's filesystem with a ballast file; removed DISK_FULL_FOR s later."""
        assert self.journal_fs is not None
        ballast = self.journal_fs / "ballast"
        chunk = bytes(1 << 20)
        with ballast.open("wb", buffering=0) as fh, contextlib.suppress(OSError):
            while True:  # until ENOSPC: the disk is full
                fh.write(chunk)
        pid = self.pid("router")

        def empty() -> None:
            ballast.unlink(missing_ok=True)
            self.router_pids.append(pid)
            self.router_pids.append(self.pid("router"))
        return Fault("disk", "router journal", now, empty, now + DISK_FULL_FOR)

    def instrument_healed(self) -> None:
        self.bus.start_request("psu-sim", "fault", {"name": "none"}, timeout=10.0)

    def run(self, seconds: float) -> None:
        start = time.monotonic()
        next_present = start
        next_fault = start + 3.0
        while (now := time.monotonic()) - start < seconds:
            if now >= next_present:
                self.present()
                next_present += PRESENT_EVERY
            if self.active is not None and self.active.undo and time.time() >= self.active.undo_at:
                self.active.undo()
                self.active = None
            if self.active is None and now >= next_fault:  # one fault at a time
                fault = self.inject()
                self.faults.append(fault)
                self.active = fault if fault.undo else None
                next_fault = now + self.rng.uniform(2.0, 5.0)
            self.pump(0.02)
        if self.active is not None and self.active.undo:
            self.active.undo()


def mount_journal_fs(where: Path) -> Path | None:
    """A small tmpfs for the router's journal, so a ballast file can fill it; None unless root
    (the disk-full fault is then left out, and the soak says so)."""
    where.mkdir(parents=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        print("not root: the soak runs without its disk-full fault")
        return None
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={JOURNAL_FS_BYTES}", "tmpfs",
                           str(where)], capture_output=True, text=True, check=False)
    if done.returncode != 0:  # root without CAP_SYS_ADMIN (a container)
        print(f"cannot mount a tmpfs ({done.stderr.strip()}): the soak runs without its "
              "disk-full fault")
        return None
    return where


def rss_of(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def sample_rss(site: SupervisedSite) -> dict[str, tuple[int, int]]:
    """name → (pid, VmRSS bytes) of every program supervisord runs."""
    return {p["name"]: (p["pid"], rss_of(p["pid"])) for p in site.rpc.getAllProcessInfo()
            if p["pid"]}


def up_again_after(record: Record, reader: str, after: float) -> float:
    """Unix time the reader's link was next up after `after` (its restart's end)."""
    ups = [e["_ts"] for e in record.get(f"evt.{reader}.link")
           if e["state"] == "up" and e["_ts"] > after]
    return min(ups, default=float("inf"))


def _shape(error: str) -> str:
    """An error without its numbers, so that equal causes count together."""
    return re.sub(r"\b\d+\b", "N", re.sub(r"tag \S+ ", "tag T ", error))[:90]


def replies(soak: Soak, sim: str) -> Counter[str]:
    """How the simulator answered the presents: ok, or the error (shape), or nothing."""
    out: Counter[str] = Counter()
    for req in soak.presents[sim]:
        if req.reply is None:
            out[f"no reply ({req.error})"] += 1
        elif req.reply.data["status"] == "ok":
            out["ok"] += 1
        else:
            out[_shape(req.reply.data["error"])] += 1
    return out


def account(soak: Soak, sim: str) -> tuple[Counter[str], list[str]]:
    """Each badge the simulator produced → its fate; the TagIds with no acceptable fate."""
    rec, reader = soak.record, READERS[sim]
    delivered = Counter(t["tag_id"] for t in rec.get(f"evt.{reader}.tag"))
    rejected = " ".join(r.get("raw", "") for r in rec.get(f"evt.{reader}.rejected"))
    lost_ranges = [(x["first_seq"], x["last_seq"]) for x in rec.get(f"evt.{reader}.lost")]
    kills = [(f.at - IN_FLIGHT_BEFORE, up_again_after(rec, reader, f.at))
             for f in soak.faults if f.kind == "kill" and f.target == reader]
    fates: Counter[str] = Counter()
    bad: list[str] = []
    for lost in rec.get(f"evt.{sim}.lost"):
        fates[f"lost, reported by {sim}: {lost['reason']}"] += 1
    for sent in rec.get(f"evt.{sim}.sent"):
        tag = sent.get("tag_id") or json.loads(sent["payload"])["TagId"]
        seq = None if sim == "door" else json.loads(sent["payload"]).get("Sequence")
        n = delivered[tag.upper()]
        if n == 1:
            fates["delivered once"] += 1
        elif n > 1:
            fates["DELIVERED TWICE"] += 1
            bad.append(f"{tag} x{n}")
        elif sim == "door" and tag.upper() in rejected.upper():
            fates[f"lost, reported by {reader}: line cut by a disconnect"] += 1
        elif seq is not None and any(a <= seq <= b for a, b in lost_ranges):
            fates[f"lost, reported by {reader}: event counter jump (+ sys.alarm)"] += 1
        elif any(a <= sent["_ts"] <= b for a, b in kills):
            fates[IN_FLIGHT[sim]] += 1
        else:
            fates["UNACCOUNTED"] += 1
            bad.append(f"{tag} sent at {sent['_ts']:.2f}")
    return fates, bad


def test_soak_every_badge_accounted_for_and_memory_bounded(tmp_path: Path) -> None:
    door, mqtt, spec, psu, iec = free_ports(5)
    site = SupervisedSite(tmp_path / "soak", SITE.format(
        mosquitto=mosquitto_binary(), mqtt=mqtt, door=door, spec=spec, psu=psu, iec=iec,
        device=DEVICE), supervisor="max_restarts = 100",  # random kills are not a crash loop
        journal="../var/journal/journal.bin")
    (site.deploy / "mosquitto.conf").write_text(MOSQUITTO_CONF.format(port=mqtt))
    journal_fs = mount_journal_fs(site.folder / "var" / "journal")
    bus = Bus(site.site.router, "soak-driver")
    for prefix in ("evt.", "sys.alarm"):
        bus.subscribe(prefix)
    try:
        site.start()
        site.wait_link_up([*ACTORS, *SIMS], timeout=60)
        assert bus.connect(wait=20)
        first = sample_rss(site)
        soak = Soak(site, bus, random.Random(SOAK_SEED), journal_fs)
        soak.run(SOAK_SECONDS)

        # the end: everything comes back by itself, then a last badge each shows the way is clear
        site.wait_link_up([*ACTORS, *SIMS], timeout=90)
        for sim, reader in READERS.items():
            tried: set[str] = set()

            def through(sim: str = sim, reader: str = reader, tried: set[str] = tried) -> bool:
                soak.next_tag += 1
                tried.add(tag := f"5C{soak.next_tag:06X}")
                args = {"tag": tag} if sim == "door" else {"tag": tag, "device": DEVICE}
                soak.bus.start_request(sim, "present", args, timeout=3.0)
                soak.pump(1.0)
                return any(t["tag_id"] in tried for t in soak.record.get(f"evt.{reader}.tag"))
            wait_for(through, 60, f"a badge through {sim} → {reader} after the soak")
        soak.pump(3.0)
        last = sample_rss(site)
    finally:
        bus.close()
        site.stop()
        if journal_fs is not None:
            subprocess.run(["umount", "-l", str(journal_fs)], check=False)

    kinds = Counter(f"{f.kind} {f.target}" for f in soak.faults)
    print(f"\nsoak {SOAK_SECONDS:g} s, seed {SOAK_SEED}: {len(soak.presents['door'])} "
          f"presents per simulator, {len(soak.faults)} faults: {dict(sorted(kinds.items()))}")
    missed = sum(x["missed"] for x in soak.record.get("evt.mqttreaders.lost"))
    print(f"mqttreaders reported {missed} event(s) missed in the readers' counter (a present the "
          "simulated reader could not publish consumes a counter value too)")
    alarms = Counter(a.get("alarm", a.get("reason", "?")) for a in soak.record.get("sys.alarm"))
    print(f"sys.alarm: {dict(alarms)}")
    problems: list[str] = []
    for target, proc, out in soak.duplicates:
        said = out.read_text(errors="replace")
        print(f"duplicate {target}: exit {proc.returncode}: {said.strip().splitlines()[-1:]}")
        if proc.returncode != EXIT_DUPLICATE or "already runs" not in said:
            problems.append(f"duplicate {target} exited {proc.returncode}: {said[-300:]!r}")
    disk = [f for f in soak.faults if f.kind == "disk"]
    journal_alarms = [a for a in soak.record.get("sys.alarm")
                      if a.get("alarm") == "journal_write_failed" and a.get("state") != "resolved"]
    print(f"disk-full episodes: {len(disk)}, journal alarms: {len(journal_alarms)}, router pids "
          f"around them: {soak.router_pids}")
    if disk and not journal_alarms:
        problems.append("a full disk raised no journal alarm")
    for before, after in zip(soak.router_pids[::2], soak.router_pids[1::2], strict=True):
        if before != after:
            problems.append(f"the router restarted during a disk-full episode ({before} → {after})")
    print(f"{'simulator':<10} {'badges':>6}  fate")
    for sim in READERS:
        fates, bad = account(soak, sim)
        print(f"{sim:<10} {sum(fates.values()):>6}")
        for fate, n in fates.most_common():
            print(f"{'':<10} {n:>6}  {fate}")
        print(f"{'':<10} presents answered: {dict(replies(soak, sim))}")
        problems += [f"{sim}: {b}" for b in bad]
        assert fates["delivered once"] > 0, f"{sim}: nothing delivered at all"
    print(f"{'program':<12} {'first MiB':>9} {'last MiB':>9}  pid")
    for name, (pid, rss) in sorted(last.items()):
        pid0, rss0 = first.get(name, (0, 0))
        same = pid0 == pid
        print(f"{name:<12} {rss0 / MiB:>9.1f} {rss / MiB:>9.1f}  "
              f"{'same' if same else 'restarted'}")
        if same and rss - rss0 > RSS_GROWTH:
            problems.append(f"{name} grew {(rss - rss0) / MiB:.1f} MiB")
        if rss > RSS_MAX:
            problems.append(f"{name} at {rss / MiB:.1f} MiB")
    assert not problems, problems
