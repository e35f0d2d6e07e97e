"""A real router with its journal on a real small filesystem that fills up or is read-only.

Each test mounts a tmpfs of `DISK` (needs root; skipped otherwise, with the reason) in its
folder, puts ``router.journal_path`` on it and runs ``sctl router`` as a process
(`tests.support.stack`). A ballast file takes the free space; removing it gives it back. What
must hold (docs/storage-faults.md):

- the router process stays up (same pid) while its journal cannot be written, says so once
  on ``sys.alarm`` (a transient, gseq 0: the disk cannot take it), in its ``state`` and in
  ``sctl status`` (exit 3), and keeps answering queries;
- publishers go on publishing into their outboxes (nothing is acked meanwhile);
- once the disk takes writes again, the router resumes by itself: every event reaches a
  gap-free subscriber exactly once and in order, a journaled ``sys.alarm`` says the episode
  ended, and a restarted router loads the journal back.

A router started on a full disk, or on a read-only one, comes up blocked and resumes the same
way. Linux refuses ``mount -o remount,ro`` while a file on it is open for writing (the router
holds its journal open), so the read-only case restarts the router on a filesystem remounted
read-only while it was stopped.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from broker.client.bus import Bus, Delivery
from tests.support.stack import Stack

DISK: Final = "24m"
EVENTS: Final = 400
BLOB: Final = 100_000
# The journal's memory bound: small enough that the file (compacted near twice this, plus a
# compaction's temp file) fits the disk once the ballast is gone.
JOURNAL_MAX_BYTES: Final = 4 * 1024 * 1024
ALARM: Final = "journal_write_failed"

pytestmark = pytest.mark.timeout(240)


def _mount_or_skip(folder: Path) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (container without CAP_SYS_ADMIN?): "
                    f"{done.stderr.strip()}")


@pytest.fixture
def disk(tmp_path: Path, stack: Stack) -> Iterator[Path]:
    """A `DISK` tmpfs at tmp_path/disk, unmounted at the end (after the stack stopped: the
    router holds its journal open)."""
    folder = tmp_path / "disk"
    _mount_or_skip(folder)
    try:
        yield folder
    finally:
        stack.stop()
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path, leave: int = 0) -> Path:
    """A ballast file that takes all of `folder`'s filesystem but `leave` bytes."""
    ballast = folder / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    chunk = b"\0" * (1024 * 1024)
    try:
        while (free := _free(folder) - leave) > 0:
            try:
                os.write(fd, chunk[:free])
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    finally:
        os.close(fd)
    return ballast


def _free(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def journal_state(bus: Bus) -> dict[str, Any]:
    journal: dict[str, Any] = bus.state()["journal"]
    return journal


class Clients:
    """The test's Bus clients, pumped in turn from this one thread."""

    def __init__(self, **buses: Bus) -> None:
        self.buses = buses
        self.got: dict[str, list[Delivery]] = {name: [] for name in buses}

    def pump(self, seconds: float = 0.05) -> None:
        for name, bus in self.buses.items():
            self.got[name] += bus.poll(seconds / len(self.buses))

    def until(self, done: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"timed out after {timeout} s: {what}"
            self.pump()

    def alarms(self, name: str = "alarms") -> list[Delivery]:
        return [d for d in self.got[name]
                if d.topic == "sys.alarm" and d.envelope.data.get("alarm") == ALARM]


def _site(stack: Stack, disk: Path) -> None:
    # no sys.router.stats during the test: the journal holds only what the test published
    stack.write(router_extra=f'journal_path = "{disk / "journal.bin"}"\n'
                             f"journal_max_bytes = {JOURNAL_MAX_BYTES}\n"
                             "stats_interval = 3600")


def _event(i: int) -> dict[str, Any]:
    return {"i": i, "blob": (i % 2**32).to_bytes(4, "big") * (BLOB // 4)}


def _events(items: list[Delivery]) -> list[Delivery]:
    return [d for d in items if d.topic == "evt.big.frame"]


def _check_delivered(items: list[Delivery], expected: list[int]) -> None:
    """Each of `expected` once, in that order, with its own body; gseqs rising."""
    got = [d.envelope.data["i"] for d in _events(items)]
    assert got == expected, (f"{len(got)} events, first wrong at "
                             f"{next((k for k, v in enumerate(got) if v != expected[k]), None)}")
    assert all(d.envelope.data["blob"] == _event(d.envelope.data["i"])["blob"]
               for d in _events(items))
    gseqs = [d.gseq for d in _events(items)]
    assert gseqs == sorted(set(gseqs))


def test_disk_fills_under_a_running_router_and_it_resumes(stack: Stack, disk: Path) -> None:
    _site(stack, disk)
    stack.start_router()
    pid = stack.pid("router")
    clients = Clients(alarms=stack.client("sys.alarm", name="alarms"),
                      reader=stack.client("evt.big.", name="reader"),
                      producer=stack.client(name="producer"))
    producer = clients.buses["producer"]
    ballast = fill(disk, leave=2 * 1024 * 1024)  # room for a few events, then full

    for i in range(EVENTS):  # publishing goes on: what the router cannot take waits in the outbox
        producer.publish("evt.big.frame", "event", _event(i))
        clients.pump(0.003)
    clients.until(lambda: clients.alarms(), 30, "the journal alarm")
    alarm = clients.alarms()[0]
    data = alarm.envelope.data
    assert alarm.gseq == 0 and alarm.envelope.src == "router"
    assert (data["reason"], data["errno"], data["path"]) == (
        "No space left on device", "ENOSPC", str(disk / "journal.bin"))
    assert isinstance(data["free_bytes"], int) and data["free_bytes"] < 2 * 1024 * 1024
    journal = journal_state(producer)
    assert journal["blocked"] and journal["reason"] == "No space left on device"
    assert producer.outbox_status()["messages"] > 0  # unacked, kept for the resend
    assert len(_events(clients.got["reader"])) < EVENTS

    status = stack.sctl("status", timeout=60)
    assert status.returncode == 3, status.stdout + status.stderr
    assert "router journal blocked: No space left on device (" in status.stdout

    clients.until(lambda: journal_state(producer)["retries"] >= 4, 30, "retries while blocked")
    assert len(clients.alarms()) == 1  # one alarm for the episode, however many retries
    assert stack.pid("router") == pid

    ballast.unlink()
    try:
        clients.until(lambda: len(_events(clients.got["reader"])) >= EVENTS, 120,
                      "every event after the ballast went")
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}; reader has {len(_events(clients.got['reader']))}, producer outbox "
            f"{producer.outbox_status()}, journal {journal_state(producer)}, reader counters "
            f"{clients.buses['reader'].counters}; router log:\n"
            f"{stack.output('router')[-3000:]}") from None
    clients.until(lambda: len(clients.alarms()) >= 2, 20, "the resolved alarm")
    assert producer.flush(30.0), "the producer's outbox was not acked in full"
    clients.pump(0.5)
    assert stack.pid("router") == pid
    _check_delivered(clients.got["reader"], list(range(EVENTS)))
    resolved = clients.alarms()[1]
    assert resolved.gseq > 0 and resolved.envelope.data["state"] == "resolved"
    assert resolved.envelope.data["held"] >= 1 and resolved.envelope.data["duration"] > 0
    assert len(clients.alarms()) == 2
    assert not journal_state(producer)["blocked"]

    # the journal loads back: a restarted router serves the same entries
    before = producer.state()
    retained = _since(producer, before["first"])
    assert retained and retained[-1][1] == before["last"]
    stack.procs["router"].stop()
    stack.start_router("router2")
    after = producer.state()
    assert (after["origin"], after["first"], after["last"]) == (
        before["origin"], before["first"], before["last"])
    assert _since(producer, before["first"]) == retained


def _since(bus: Bus, first: int) -> list[tuple[str, int, bytes]]:
    out: list[tuple[str, int, bytes]] = []
    gseq = first
    while True:
        header, items = bus.query({"op": "since", "gseq": gseq})
        out += [(d.topic, d.gseq, bytes(d.body)) for d in items]
        if not header["more"]:
            return out
        gseq = int(header["next"])


def _blocked_start(stack: Stack, disk: Path, why: str) -> Clients:
    """Start the router, which comes up blocked (`why` in its up line), and the clients,
    which cannot sync yet: a blocked router reads no ingress, so their handshakes complete
    when it resumes (the subscribers then start from gseq 0, the producer resends)."""
    log = stack.folder / "router.log"
    offset = log.stat().st_size if log.exists() else 0
    proc = stack.start_router()
    up = proc.log.read_bytes()[offset:].decode(errors="replace")
    assert f"journal blocked: journal {disk / 'journal.bin'}" in up and why in up, up
    buses = {}
    for name, prefix in (("reader", "evt.big."), ("alarms", "sys.alarm"), ("producer", "")):
        bus = buses[name] = Bus(stack.site.router, name)
        stack._buses.append(bus)  # closed by stack.stop
        if prefix:
            bus.subscribe(prefix, since=0)
        assert not bus.connect(wait=0.5), f"{name} synced with a blocked router"
    journal = journal_state(buses["producer"])
    assert journal["blocked"] and journal["reason"] == why
    return Clients(**buses)


def _resume(stack: Stack, clients: Clients, n: int, make_room: Any) -> None:
    """Publish `n` events into a blocked router, see nothing come out, make room, see every
    event come out once, and the episode's end journaled on sys.alarm."""
    pid = stack.pid("router")
    for i in range(n):
        clients.buses["producer"].publish("evt.big.frame", "event", _event(i))
        clients.pump(0.003)
    clients.until(lambda: journal_state(clients.buses["producer"])["retries"] >= 3, 30,
                  "retries while blocked")
    assert not _events(clients.got["reader"]) and stack.pid("router") == pid
    make_room()
    clients.until(lambda: len(_events(clients.got["reader"])) >= n, 60,
                  "the events after the resume")
    clients.until(lambda: any(d.envelope.data.get("state") == "resolved"
                              for d in clients.alarms()), 20, "the resolved alarm")
    assert clients.buses["producer"].flush(30.0)
    clients.pump(0.5)
    assert stack.pid("router") == pid
    assert not journal_state(clients.buses["producer"])["blocked"]


def test_router_started_on_a_full_disk_comes_up_blocked_and_resumes(stack: Stack,
                                                                    disk: Path) -> None:
    _site(stack, disk)
    ballast = fill(disk)
    clients = _blocked_start(stack, disk, "No space left on device")
    _resume(stack, clients, 30, ballast.unlink)
    _check_delivered(clients.got["reader"], list(range(30)))
    # the alarm subscriber synced only after the resume: it sees the journaled end
    assert [d.envelope.data["state"] for d in clients.alarms()] == ["resolved"]
    assert (disk / "journal.bin").exists()


def test_read_only_filesystem_blocks_and_resumes(stack: Stack, disk: Path) -> None:
    _site(stack, disk)
    stack.start_router()
    early = stack.client(name="early")
    early.publish("evt.big.frame", "event", _event(-1))
    assert early.flush(10.0)
    stack.procs["router"].stop()
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    try:
        clients = _blocked_start(stack, disk, "Read-only file system")
        _resume(stack, clients, 20, lambda: subprocess.run(
            ["mount", "-o", "remount,rw", str(disk)], check=True))
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=False,
                       capture_output=True)
    _check_delivered(clients.got["reader"], [-1, *range(20)])
