"""A third-party SPEC server against the ``spec-client`` actor: chess-pyspec's `pyspec.Server`
(import name ``pyspec``) runs in its own process (this module run as a script) and ``sctl actor
spec1`` talks to it over loopback: read, write (also typed as JSON on ``sctl send``), watch,
cmd, func, arrays, ABORT on a command's own timeout, and the server killed and restarted.

chess-pyspec's server departs from SPEC's documented protocol in ways the actor tolerates
because real SPEC clients do:
- HELLO_REPLY carries no name and no data (the actor connects by ``port``, where SPEC clients
  accept any name);
- a numeric array is sent with one NUL after its elements (25 bytes for 1 x 3 doubles) and a
  string array as NUL-terminated strings plus one more NUL, not SPEC's fixed-width rows;
- FUNC must be one string ``f(a, b)`` (the form chess-pyspec's own client sends; SPEC also takes
  ``f\\0a\\0b``); the actor sends ``f(a, b)``;
- it has no ``status/ready``: the actor's barrier read gets an SV_ERROR reply, which still
  proves the requests before it were processed;
- a CHAN_SEND it cannot apply is only logged (nothing reaches the client), and commands are
  literals or calls of its remote functions, not SPEC macros.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.stack import Feed, Proc, Stack, free_port, wait_for

ACTOR = """
[actors.spec1]
type = "spec-client"
host = "127.0.0.1"
port = {port}
watch = ["var/TEMP"]
timeout = 5.0
hello_timeout = 2.0
heartbeat_interval = 0.3
backoff_min = 0.05
backoff_max = 0.3
connect_timeout = 3.0
"""


class PyspecServer:
    """``python -m tests.integration.test_spec_pyspec_server PORT`` as a child process."""

    def __init__(self, folder: Path, port: int) -> None:
        self.port = port
        self.proc = Proc([sys.executable, "-m", "tests.integration.test_spec_pyspec_server",
                          str(port)], folder / "pyspec-server.log")

    def start(self) -> PyspecServer:
        before = self.proc.output().count("serving")  # the log of an earlier run stays
        self.proc.start()
        wait_for(lambda: self.listening(before), 20.0, f"the pyspec server on {self.port}")
        return self

    def listening(self, before: int) -> bool:
        assert self.proc.popen is not None and self.proc.popen.poll() is None, \
            f"the pyspec server exited:\n{self.proc.output()[-3000:]}"
        return self.proc.output().count("serving") > before

    def kill(self) -> None:
        self.proc.kill(signal.SIGKILL)


class Site:
    def __init__(self, folder: Path) -> None:
        self.port = free_port()  # chess-pyspec's Server reports no port it bound
        self.stack = Stack(folder, ACTOR.format(port=self.port))
        self.server = PyspecServer(folder, self.port)

    def start(self) -> Site:
        self.stack.start_router()
        self.server.start()
        self.feed: Feed = self.stack.watch("evt.spec1.")
        self.stack.start_actor("spec1")
        self.feed.wait("evt.spec1.link", lambda d: d["state"] == "up", timeout=20)
        return self

    def request(self, command: str, args: dict[str, Any] | None = None,
                argv: list[str] | None = None, timeout: float = 10.0) -> dict[str, Any]:
        reply = self.feed.bus.request("spec1", command, args or {}, timeout=timeout,
                                      argv=argv or [])
        data: dict[str, Any] = reply.data
        return data

    def result(self, command: str, *argv: str, **args: Any) -> Any:
        data = self.request(command, args, list(argv))
        assert data["status"] == "ok", data
        return data["result"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = Site(Path(tmp_path_factory.mktemp("pyspec-server")))
    try:
        yield s.start()
    finally:
        s.stack.stop()
        s.server.proc.stop()


def array(value: dict[str, Any]) -> np.ndarray:
    """An array event or result as numpy reads it (the README's three lines)."""
    return np.frombuffer(value["data"], dtype=value["dtype"]).reshape(value["shape"])


def test_read_values_and_arrays_with_a_trailing_nul(site: Site) -> None:
    assert site.result("read", "var/TEMP") == 21.5
    assert site.result("read", "var/NAME") == "beamline"
    assert array(site.result("read", "var/ARR")).tolist() == [[1.0, 2.0, 3.0]]  # 25 bytes
    img = site.result("read", "var/IMG16")
    assert img["dtype"] == "<u2" and img["shape"] == [3, 4]
    assert array(img).tolist() == np.arange(12).reshape(3, 4).tolist()
    assert site.result("read", "var/NAMES") == ["ab", "c"]  # variable-length strings
    missing = site.request("read", argv=["var/NOPE"])
    assert missing["status"] == "error" and "not found" in missing["error"]


def test_cmd_and_func(site: Site) -> None:
    assert site.result("cmd", "add(1, 2)") == 3
    assert site.result("func", name="add", args=[40, 2]) == 42
    assert site.result("func", "echo", "'text'") == "text"
    bad = site.request("func", {"name": "nope", "args": [1]})
    assert bad["status"] == "error" and "nope" in bad["error"]


def test_write_json_lists_and_tables_from_the_command_line(site: Site) -> None:
    done = site.stack.sctl("send", "spec1", "write", "var/ARR", "[4, 5, 6]")
    assert done.returncode == 0, done.stderr
    assert array(site.result("read", "var/ARR")).tolist() == [[4.0, 5.0, 6.0]]
    done = site.stack.sctl("send", "spec1", "write", "var/TABLE", '{"a": 1, "b": "x"}')
    assert done.returncode == 0, done.stderr
    assert site.result("read", "var/TABLE") == {"a": "1", "b": "x"}
    assert site.result("func", "kind", "ARR") == "ndarray"  # the server got an array
    bad = site.stack.sctl("send", "spec1", "write", "var/ARR", "[1, 2")
    assert bad.returncode == 1 and "starts like JSON but is not" in bad.stderr
    site.result("write", chan="var/TEXT", value="[literal]")  # by name: the text itself
    assert site.result("read", "var/TEXT") == "[literal]"


def test_watch_gives_the_first_value_then_changes(site: Site) -> None:
    feed = site.feed
    mark = len(feed.seen)
    assert site.result("watch", "var/NAME") == {"chan": "var/NAME", "watching": True}
    feed.wait("evt.spec1.chan", lambda d: d["chan"] == "var/NAME", after=mark)
    site.result("func", "bump")
    feed.wait("evt.spec1.chan", lambda d: d["chan"] == "var/TEMP" and d["value"] == 22.5,
              after=mark)
    site.result("unwatch", "var/NAME")


def test_sub_and_send_show_arrays_as_a_summary_or_base64(site: Site) -> None:
    feed = site.feed
    mark = len(feed.seen)
    site.result("watch", "var/IMG16")
    feed.wait("evt.spec1.chan", lambda d: d["chan"] == "var/IMG16", after=mark)
    count = str(len(feed.events("evt.spec1.chan")))  # all of them are in the journal
    summary = "<array <u2 3x4, 24 bytes, min 0 max 11>"
    text = site.stack.sctl("sub", "evt.spec1.chan", "--since", "0", "--count", count)
    assert text.returncode == 0 and summary in text.stdout, text.stderr
    js = site.stack.sctl("sub", "evt.spec1.chan", "--since", "0", "--count", count, "--json")
    values = [m["envelope"]["data"]["value"] for m in map(json.loads, js.stdout.splitlines())
              if m["envelope"]["data"]["chan"] == "var/IMG16"]
    assert values and values[0]["encoding"] == "base64" and values[0]["shape"] == [3, 4]
    assert np.frombuffer(base64.b64decode(values[0]["data"]), values[0]["dtype"]).tolist() \
        == list(range(12))
    read = site.stack.sctl("send", "spec1", "read", "var/IMG16")
    assert read.returncode == 0 and read.stdout.strip() == summary
    site.result("unwatch", "var/IMG16")


def test_a_command_that_times_out_is_aborted_on_the_server(site: Site) -> None:
    before = site.result("read", "var/ABORTS")
    slow = site.request("func", {"name": "slow", "args": [30], "timeout": 0.5})
    assert slow["status"] == "error" and "sent SV_ABORT" in slow["error"]
    wait_for(lambda: site.result("read", "var/ABORTS") == before + 1, 10.0,
             "the server to count the ABORT")


def test_server_killed_then_restarted(site: Site) -> None:
    feed = site.feed
    mark = len(feed.seen)
    site.server.kill()
    feed.wait("evt.spec1.link", lambda d: d["state"] == "down", after=mark)
    down = site.request("read", argv=["var/TEMP"])
    assert down["status"] == "error" and "SPEC link to 127.0.0.1" in down["error"]
    site.server.start()
    up = len(feed.seen)
    feed.wait("evt.spec1.link", lambda d: d["state"] == "up", after=mark, timeout=30)
    # the watch is registered again: its first value comes with no command of ours
    feed.wait("evt.spec1.chan", lambda d: d["chan"] == "var/TEMP", after=up - 1, timeout=30)
    assert site.result("cmd", "add(2, 3)") == 5


# --- the server process --------------------------------------------------------------------


def serve(port: int) -> None:
    from pyspec._connection.associative_array import AssociativeArray
    from pyspec.server import Server, Variable, remote_function

    class Beamline(Server):
        def __init__(self) -> None:
            self.temp = Variable("TEMP", 21.5)
            self.name_ = Variable("NAME", "beamline")
            self.arr = Variable("ARR", np.array([1.0, 2.0, 3.0]))
            self.img = Variable("IMG16", np.arange(12, dtype=np.uint16).reshape(3, 4))
            self.names = Variable("NAMES", np.array(["ab", "c"]))
            self.table = Variable("TABLE", AssociativeArray())
            self.text = Variable("TEXT", "")
            self.aborts = Variable("ABORTS", 0)
            super().__init__(host="127.0.0.1", port=port)

        @remote_function
        async def add(self, a: Any, b: Any) -> float:
            return float(a) + float(b)

        @remote_function
        async def echo(self, value: Any) -> Any:
            return value

        @remote_function
        async def kind(self, value: Any) -> str:
            return type(value).__name__

        @remote_function
        async def bump(self) -> float:
            self.temp.set(self.temp.get() + 1)
            return float(self.temp.get())

        @remote_function
        async def slow(self, seconds: Any) -> float:
            await asyncio.sleep(float(seconds))
            return 1.0

        async def abort(self) -> None:
            self.aborts.set(self.aborts.get() + 1)
            await super().abort()  # type: ignore[no-untyped-call]

    async def main() -> None:
        async with Beamline() as server:
            print("serving", flush=True)
            await server.serve_forever()

    asyncio.run(main())


if __name__ == "__main__":
    serve(int(sys.argv[1]))
