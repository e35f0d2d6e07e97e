"""`Stack`: one test's site on loopback. It starts ``sctl router`` on port 0 and reads the
ports it bound, runs actors and simulators as ``sctl`` processes on that site file, watches the
bus through a `Feed`, and stops everything at the end (the ``stack`` fixture in
tests/conftest.py calls `Stack.stop`)::

    def test_reader(stack: Stack) -> None:
        stack.write(TABLES.format(port=device.port))  # the actor tables
        stack.start_router()                # binds port 0; the site file now names its ports
        feed = stack.watch("evt.reader1.")  # a Bus client recording every delivery
        stack.start_actor("reader1")
        stack.wait_ready("reader1")         # it answers ping
        mark = len(feed.seen)
        ...
        feed.wait("evt.reader1.tag", after=mark)

Router ports. `start_router` writes ``tcp://127.0.0.1:0`` for ingress, egress and query,
waits for the router's "up" log line (documented in broker.router.server), which names the
endpoints it actually bound, and writes those into the site file before anything else reads
it. Starting a router again (``proc.start()``, or `start_router` under another log name)
binds the same endpoints. Only a test whose processes must run before the first router comes
up calls `reserve_router_ports` first: `free_ports` and its small race (a port reserved,
released, and hoped to stay free) are left for that case, and for sites where nothing must
listen at all (`write_site`, "router down" tests).

Device ports: in-process peers (`tests.support.echo.EchoServer`,
`tests.support.hostile.FaultProxy`) bind port 0 and say which port they got. The SpringCore
TCP and instrument simulators on port 0 say it in ``evt.<sim>.listening`` and in their link
reason (`listening_port`); start one, then `write` its port into the tables of the actors
that connect to it. Free ports remain where the binder cannot say: the SPEC simulator (its
port 0 means "scan 6510-6530"), the iec104-server and Mosquitto bind the port they are given.

Processes are `Proc`: a log file in the test's folder, `kill`, `stop`, `start` again. Waits
have deadlines and fail the test with what was seen (`wait_for`, `Feed.wait`), never hang.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from broker.client.bus import Bus
from broker.config import SiteConfig, load_site
from broker.wire.errors import RequestTimeout

ROOT: Final = Path(__file__).resolve().parents[2]
WHICH: Final = ("ingress", "egress", "query")
ANY_PORT: Final = dict.fromkeys(WHICH, "tcp://127.0.0.1:0")
# broker.router.server logs this once its three sockets are bound (LAST_ENDPOINT of each)
ROUTER_UP: Final = re.compile(r"router epoch \d+ up: ingress (\S+), egress (\S+), query (\S+),")
START_TIMEOUT: Final = 20.0  # seconds; the test machine is shared and may be slow


def sctl_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("SCTL_CONFIG", None)
    return env


_HANDED_OUT: set[int] = set()  # ports free_ports has returned in this process


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports, none returned before in this process (two calls in one
    test, e.g. the devices' ports and then the router's, cannot collide while the first ports
    are still unbound). Free when this returns, not when they are used: prefer port 0 wherever
    the binder can report it."""
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            s = socket.socket()
            socks.append(s)  # held open, so the kernel cannot give the same port twice here
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
            if port not in _HANDED_OUT:
                ports.append(port)
        _HANDED_OUT.update(ports)
        return ports
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll `predicate` until true; fail the test (not hang) when `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")


class Proc:
    """A child process (router, actor) that a test can kill, restart and wait on."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args = args
        self.log = log
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        fh = self.log.open("ab")
        self.popen = subprocess.Popen(self.args, cwd=ROOT, env=subprocess_env(),
                                      stdout=fh, stderr=subprocess.STDOUT)
        fh.close()
        return self

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.popen is not None
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        return self.popen.wait(timeout=15)

    def stop(self) -> int | None:
        if self.popen is None or self.popen.poll() is not None:
            return None if self.popen is None else self.popen.returncode
        return self.kill(signal.SIGTERM)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def write_site(folder: Path, extra: str = "", router_extra: str = "",
               endpoints: Mapping[str, str] | None = None) -> Path:
    """``folder/site.toml``: a ``[router]`` on `endpoints` (default: three `free_ports`, for a
    site whose router is never started or is started by someone else), `router_extra` in that
    table, then `extra` (the actor tables)."""
    if endpoints is None:
        endpoints = dict(zip(WHICH, (f"tcp://127.0.0.1:{p}" for p in free_ports(3)),
                             strict=True))
    path = folder / "site.toml"
    path.write_text("[router]\n" + "".join(f'{w} = "{endpoints[w]}"\n' for w in WHICH)
                    + f"{router_extra}\n{extra}\n", encoding="utf-8")
    return path


class Feed:
    """Keeps ``(topic, data)`` of every delivery of `bus` in `seen`; `wait` looks from an index
    on, so a test marks ``len(seen)`` before an action and waits for what follows it."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def poll(self, seconds: float) -> None:
        self.seen += [(d.topic, d.envelope.data) for d in self.bus.poll(seconds)]

    def events(self, topic: str, after: int = 0) -> list[dict[str, Any]]:
        return [data for t, data in self.seen[after:] if t == topic]

    def wait(self, topic: str, pred: Callable[[dict[str, Any]], bool] = lambda d: True,
             after: int = 0, timeout: float = 20.0, what: str = "") -> dict[str, Any]:
        """The first `topic` event from index `after` on that satisfies `pred`."""
        deadline = time.monotonic() + timeout
        while True:
            for data in self.events(topic, after):
                if pred(data):
                    return data
            left = deadline - time.monotonic()
            assert left > 0, (f"no {topic} ({what}) in {timeout} s; saw "
                              f"{[(t, d) for t, d in self.seen[after:]][-15:]}")
            self.poll(min(left, 0.2))

    def until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        """Record deliveries until `done()`; fail the test after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
            self.poll(0.1)

    def drain(self, seconds: float) -> None:
        """Record what arrives in the next `seconds` (to show that nothing more comes)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.poll(left)


class SubFeed:
    """What an ``sctl sub --json`` process wrote to `path` (one message a line), parsed: the
    feed of a subscriber in another process or network namespace."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = self.path.read_text(errors="replace").splitlines(keepends=True)
        # a line still being written has no newline yet
        return [json.loads(line) for line in lines if line.startswith("{")
                and line.endswith("\n")]

    def of(self, topic: str) -> list[dict[str, Any]]:
        return [m for m in self.lines() if m["topic"] == topic]


class Stack:
    """The site file in `folder`, the ``sctl`` processes run on it (`procs`, by log name) and
    the Bus clients of the test; `stop` ends them all, processes in reverse start order."""

    def __init__(self, folder: Path, tables: str = "", router_extra: str = "") -> None:
        self.folder = folder
        self.tables, self.router_extra = tables, router_extra
        self.endpoints: dict[str, str] | None = None  # once a router bound them, or reserved
        self.procs: dict[str, Proc] = {}
        self.feed: Feed | None = None  # the last `watch`
        self._started: list[Proc] = []
        self._buses: list[Bus] = []
        self.path = self.write()

    @property
    def site(self) -> SiteConfig:
        return load_site(self.path)

    def write(self, tables: str | None = None, router_extra: str | None = None) -> Path:
        """Rewrite the site file; `tables` / `router_extra` replace the old ones when given.
        Processes read it when they start: change device ports before starting their actors."""
        if tables is not None:
            self.tables = tables
        if router_extra is not None:
            self.router_extra = router_extra
        return write_site(self.folder, self.tables, self.router_extra,
                          self.endpoints or ANY_PORT)

    def reserve_router_ports(self) -> None:
        """Fix the router's endpoints now (free ports), for processes that must start before
        the first router does; `start_router` then binds exactly these."""
        assert self.endpoints is None, "the router's endpoints are already known"
        self.endpoints = {w: f"tcp://127.0.0.1:{p}" for w, p in zip(WHICH, free_ports(3),
                                                                     strict=True)}
        self.write()

    # -- processes ---------------------------------------------------------------------------

    def spawn(self, name: str, *args: str) -> Proc:
        """``sctl -c SITE ARGS...``, output in ``NAME.log``; stopped by `stop`."""
        proc = Proc(sctl_cmd("-c", str(self.path), *args), self.folder / f"{name}.log").start()
        self.procs[name] = proc
        self._started.append(proc)
        return proc

    def start_router(self, name: str = "router") -> Proc:
        """Start ``sctl router`` and wait for its "up" line. The first one binds port 0 (or the
        reserved ports); its endpoints go into the site file. Later ones bind the same."""
        log = self.folder / f"{name}.log"
        offset = log.stat().st_size if log.exists() else 0
        proc = self.spawn(name, "router")
        bound = self._router_up(proc, offset)
        if self.endpoints is None:
            self.endpoints = bound
            self.write()
        assert bound == self.endpoints, f"router bound {bound}, the site names {self.endpoints}"
        return proc

    def _router_up(self, proc: Proc, offset: int) -> dict[str, str]:
        found: list[re.Match[str]] = []

        def up() -> bool:
            text = proc.log.read_bytes()[offset:].decode(errors="replace")
            match = ROUTER_UP.search(text)
            if match is not None:
                found.append(match)
                return True
            assert proc.popen is not None and proc.popen.poll() is None, \
                f"the router exited ({proc.popen and proc.popen.returncode}):\n{text[-3000:]}"
            return False

        wait_for(up, START_TIMEOUT, f"the router's up line in {proc.log}")
        return dict(zip(WHICH, found[0].groups(), strict=True))

    def start_actor(self, name: str, log: str = "") -> Proc:
        """``sctl actor NAME`` (output in ``LOG.log``, default ``NAME.log``)."""
        return self.spawn(log or name, "actor", name)

    def start_sim(self, kind: str, name: str, *args: str, log: str = "") -> Proc:
        """``sctl sim KIND --name NAME ARGS...`` (``--set key=value`` overrides the table)."""
        return self.spawn(log or name, "sim", kind, "--name", name, *args)

    def pid(self, name: str) -> int:
        """The pid of a process that must still run (fails with its output if it exited)."""
        popen = self.procs[name].popen
        assert popen is not None and popen.poll() is None, \
            f"{name} exited ({None if popen is None else popen.returncode}):\n" \
            f"{self.output(name)[-3000:]}"
        return popen.pid

    def output(self, name: str) -> str:
        proc = self.procs.get(name)
        return proc.output() if proc is not None else ""

    def sctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``sctl -c SITE ARGS...`` run to the end, as an operator's script runs it."""
        return subprocess.run(sctl_cmd("-c", str(self.path), *args), cwd=ROOT,
                              env=subprocess_env(), capture_output=True, text=True,
                              timeout=timeout)

    # -- the bus -----------------------------------------------------------------------------

    def client(self, *prefixes: str, name: str = "tester", since: int | None = None,
               best_effort: Iterable[str] = (), wait: float = 15.0, **options: Any) -> Bus:
        """A Bus subscribed to `prefixes` (gapless, from `since`) and `best_effort` ones
        before it connects; connected, or the test fails with the router's log. `options` go
        to `Bus` (``rcvhwm``, ``identity``, ...); `stop` closes it."""
        bus = Bus(self.site.router, name, **options)
        self._buses.append(bus)
        for prefix in prefixes:
            bus.subscribe(prefix, since=since)
        for prefix in best_effort:
            bus.subscribe(prefix, gapless=False)
        assert bus.connect(wait=wait), \
            f"{name}: no answer from the router in {wait} s:\n{self.output('router')[-3000:]}"
        return bus

    def watch(self, *prefixes: str, name: str = "tester", since: int | None = None,
              best_effort: Iterable[str] = ()) -> Feed:
        """A `Feed` on a new `client` (same arguments); also kept as `self.feed`."""
        self.feed = Feed(self.client(*prefixes, name=name, since=since,
                                     best_effort=best_effort))
        return self.feed

    def ping(self, name: str, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        """The ping result of actor or simulator `name`, asked through the first `client`;
        fails with the process's log when it does not answer within `timeout`."""
        bus = self._buses[0] if self._buses else self.client(name="stack")
        try:
            reply = bus.request(name, "ping", timeout=timeout)
        except RequestTimeout:
            raise AssertionError(f"{name} did not answer ping within {timeout} s:\n"
                                 f"{self.output(name)[-3000:]}") from None
        assert reply.data["status"] == "ok", reply.data
        result: dict[str, Any] = reply.data["result"]
        return result

    def wait_ready(self, *names: str, timeout: float = START_TIMEOUT) -> None:
        """Each actor or simulator in `names` answers ping (its process is up on the bus)."""
        for name in names:
            self.ping(name, timeout)

    def listening_port(self, name: str) -> int:
        """The port simulator `name` listens on. A server's link is its socket, up with the
        reason "listening on HOST:PORT": so a simulator started on port 0 says what it got."""
        link = self.ping(name)["link"]
        found = re.fullmatch(r"listening on \S+:(\d+)", str(link["reason"]))
        assert link["state"] == "up" and found is not None, f"{name} is not listening: {link}"
        return int(found.group(1))

    def stop(self) -> None:
        """Close the buses, then stop the processes, newest first (actors before the router
        they flush to); one that ignores SIGTERM is killed."""
        for bus in self._buses:
            bus.close()
        self._buses.clear()
        for proc in reversed(self._started):
            try:
                proc.stop()
            except subprocess.TimeoutExpired:
                proc.kill()
        self._started.clear()
