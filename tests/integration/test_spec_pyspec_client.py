"""A third-party SPEC client against the simulator: chess-pyspec's asyncio `pyspec.Client`
(import name ``pyspec``), driving ``sctl sim spec-server`` over loopback the way its own test
suite drives a real SPEC (connect, variables, associative arrays and their elements, commands
with a return value, the tty, status, motors and synchronised moves, counting, subscriptions,
abort), plus the simulator's data arrays.

Where chess-pyspec departs from SPEC's documented protocol (docs/protocols/spec.md) the
simulator answers what real SPEC answers, and the test says so:
- it sends HELLO with sn >= 1 and an empty name; the simulator replies with the sn it got;
- it sends CHAN_SEND with sn 0, so it never hears of a failure except on the ``error`` channel;
- it adds a NUL after arrays it sends and expects one or none after arrays it receives;
  the simulator sends none (as SPEC does);
- it writes an element ``var/X[k]`` as an associative array holding that one element;
- a timeout of `Client.exec` raises `asyncio.CancelledError` (not `TimeoutError`), after it has
  sent SV_ABORT.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from pyspec import Client, RemoteException
from pyspec._connection.associative_array import AssociativeArray

from actors.protocols.spec import Cmd, DataType, Decoder, Message, encode_message
from actors.protocols.spec_types import SpecArray, decode_value
from actors.sim.spec_arrays import frame_number
from tests.support.stack import Stack

SIM = "pysim"
HOST = "127.0.0.1"
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Run one client session to the end, bounded (a hung peer fails the test, not the job)."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    stack = Stack(Path(tmp_path_factory.mktemp("pyspec-client")))
    try:
        stack.start_router()
        stack.start_sim("spec-server", SIM, "--set", 'specname="pysim"', "--set",
                        'motors={m0 = 2.0, m1 = 300.0}', "--set", "speed=100.0")
        yield stack.listening_port(SIM)
    finally:
        stack.stop()


def test_connect_and_read_the_session_variables(port: int) -> None:
    async def main() -> tuple[Any, Any, Any]:
        async with Client(HOST, port) as client:
            return (await client.var("SPEC").get(), await client.var("MOTORS").get(),
                    await client.var("A").get())
    name, motors, positions = run(main())
    assert (name, motors) == ("pysim", 2)
    assert isinstance(positions, AssociativeArray) and positions.to_dict() == {0: 2, 1: 300}


def test_var_read_write_subscribe_and_missing(port: int) -> None:
    async def main() -> list[Any]:
        async with Client(HOST, port) as client:
            h = client.var("H")
            await h.set(123)
            got = [await h.get()]
            async with client.var("H").subscribed() as watched:
                await watched.set(10)
                async with watched.wait_for_update(124, timeout=5):
                    await client.exec("H = 124")
                got.append(await watched.get())
            with pytest.raises(RemoteException, match="does not exist"):
                await client.var("doesnt_exist").get()
            return got
    assert run(main()) == [123, 124]


def test_commands_with_return_and_the_macros_clients_send(port: int) -> None:
    macro = ("def _ho_MotorList() '{local md[]; for (i=0; i<MOTORS; i++) "
             "{md[motor_mne(i)]=motor_name(i)}; return md}'")
    positions = ("local mpos[]\n for (i=0;i<MOTORS;i++) {\n mpos[motor_mne(i)]=A[i]\n }\n"
                 " return mpos")

    async def main() -> list[Any]:
        async with Client(HOST, port) as client:
            await client.exec(macro)
            return [await client.exec("1+1"), await client.call("motor_mne", 1),
                    (await client.exec("_ho_MotorList()")).to_dict(),
                    (await client.exec(positions)).to_dict()]
    two, mne, motors, where = run(main())
    assert (two, mne, motors) == (2, "m1", {"m0": "m0", "m1": "m1"})
    assert set(where) == {"m0", "m1"}


def test_tty_gives_a_prompt_first_then_what_print_writes(port: int) -> None:
    """The real-SPEC test of chess-pyspec (``print("Hello, world!")``), and the first event
    a client waiting for one after REGISTER output/tty gets: the prompt."""
    async def main() -> list[str]:
        async with Client(HOST, port) as client:
            async with client.output("tty").capture(wait_time=0.2) as lines:
                await client.exec('print("Hello, world!")')
            return list(lines)
    lines = run(main())
    assert lines[0].endswith(".PYSIM> ")
    assert lines[-1] == "Hello, world!\n"


def test_status(port: int) -> None:
    async def main() -> tuple[bool, bool, bool]:
        async with Client(HOST, port) as client:
            status = client.status()
            async with status:
                return (await status.ready.get(), await status.shell.get(),
                        await status.simulate.get())
    assert run(main()) == (True, False, False)


def test_motor_move_and_positions_watched_on_the_way(port: int) -> None:
    async def main() -> tuple[float, float, list[float]]:
        async with Client(HOST, port) as client:
            m0 = client.motor("m0")
            seen: list[float] = []
            async with m0:
                m0.position.on("update", seen.append)
                start = await m0.position.get()
                await m0.move(-start)
                return start, await m0.position.get(), seen
    start, end, seen = run(main())
    assert end == -start and seen and seen[-1] == -start


def test_synchronized_motors(port: int) -> None:
    async def main() -> tuple[float, float]:
        async with Client(HOST, port) as client:
            m0, m1 = client.motor("m0"), client.motor("m1")
            async with m0, m1:
                async with client.synchronized_motors(timeout=20):
                    m0.prepare_move(26)
                    m1.prepare_move(150)
                return await m0.position.get(), await m1.position.get()
    assert run(main()) == (26, 150)


def test_motor_limits_and_home_search(port: int) -> None:
    """chess-pyspec's `Motor.set_limits` and `Motor.search` (CHAN_SEND ``limits`` and
    ``search``); its Motor group registers every motor property it knows at once."""
    async def main() -> tuple[Any, Any, Any]:
        async with Client(HOST, port) as client:
            m1 = client.motor("m1")
            async with m1:
                await m1.set_limits(-10, 400)
                async with m1.moving.wait_for_update(False, timeout=20):
                    await m1.search("home", 2.0)
                return (await client.exec("get_lim(m1, -1)"), await m1.high_limit.get(),
                        await m1.dial_position.get())
    low, high, dial = run(main())
    assert (low, high, dial) == (-10, 400, 2)


def test_associative_arrays_and_their_elements(port: int) -> None:
    """chess-pyspec's real-SPEC tests: ``[1:0]`` literals, then elements written one by one
    (it sends each element as an associative array holding it), then the whole array."""
    async def main() -> list[Any]:
        async with Client(HOST, port) as client:
            await client.exec("__X = [ 1:0 ]")
            x = client.var("__X[1]")
            await x.set("one")
            got = [await x.get()]
            await client.exec("__Y = [1:2:0]")
            y = client.var("__Y[1][2]")
            await y.set("one two")
            got.append(await y.get())
            whole = await client.var("__X").get()
            whole[1, 2] = "three four"
            await client.var("__X").set(whole)
            got.append((await client.var("__X").get())[1, 2])
            return got
    assert run(main()) == ["one", "one two", "three four"]


def test_count_replies_after_the_final_counter_values(port: int) -> None:
    async def main() -> list[Any]:
        async with Client(HOST, port) as client:
            counting = client.count()
            await client.exec("count 0.3")
            got: list[Any] = [await counting.get(), (await client.var("S").get()).to_dict()]
            await client.exec("count 0.2")  # at once: the first count is over
            got.append((await client.var("S").get())[1])
            return got
    counting, first, mon = run(main())
    assert counting is False and first == {0: 0.3, 1: 300, 2: 75} and mon == 200


def test_abort_stops_a_running_command(port: int) -> None:
    async def main() -> tuple[Any, float]:
        async with Client(HOST, port) as client:
            with pytest.raises(asyncio.CancelledError):
                await client.exec("sleep(20)", timeout=0.5)  # pyspec sends SV_ABORT
            started = time.monotonic()
            return await client.exec("2*21"), time.monotonic() - started
    value, took = run(main())
    assert value == 42 and took < 5  # the queue was not held by the aborted sleep


def test_data_arrays_read_watched_and_element_set(port: int) -> None:
    async def main() -> list[Any]:
        async with Client(HOST, port) as client:
            await client.exec("array DARR[4]; DARR[1] = 7")
            got: list[Any] = [await client.var("DARR").get(), await client.var("IMG").get()]
            frames: list[np.ndarray] = []
            async with client.var("MCA").subscribed() as mca:
                mca.on("update", frames.append)
                while len(frames) < 3:
                    await mca.get_next()
            got.append(frames)
            return got
    darr, img, frames = run(main())
    assert darr.tolist() == [0, 7, 0, 0] and darr.dtype == np.float64
    assert img.shape == (1024, 1024) and img.dtype == np.uint16
    assert all(f.shape == (4096,) and f.dtype == np.uint32 for f in frames)
    numbers = [int(f[0]) for f in frames]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)


# --- what chess-pyspec's API does not reach: raw SPEC messages -------------------------------


class Raw:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=10)
        self.decoder = Decoder()
        self.got: list[Message] = []

    def send(self, cmd: Cmd, name: str = "", data: bytes = b"", sn: int = 0) -> None:
        self.sock.sendall(encode_message(Message(cmd=cmd, name=name, data=data, sn=sn)))

    def until(self, pred: Any, timeout: float = 10.0) -> Message:
        deadline = time.monotonic() + timeout
        while True:
            for msg in self.got:
                if pred(msg):
                    self.got.remove(msg)
                    return msg
            left = deadline - time.monotonic()
            assert left > 0, f"nothing matching; got {[m.describe() for m in self.got]}"
            self.sock.settimeout(left)
            chunk = self.sock.recv(1 << 20)
            assert chunk, "the simulator closed the connection"
            self.decoder.feed(chunk)
            self.got += list(self.decoder.events())


def test_a_failed_chan_send_replies_with_its_sn_and_tells_the_error_channel(port: int) -> None:
    raw = Raw(port)
    try:
        raw.send(Cmd.SV_REGISTER, "error")
        raw.send(Cmd.SV_REGISTER, "motor/m0/sync_check")  # registers without an error
        raw.send(Cmd.SV_CHAN_SEND, "motor/m0/bogus", b"1\0", sn=7)
        reply = raw.until(lambda m: m.cmd == Cmd.SV_REPLY)
        assert (reply.sn, reply.type) == (7, DataType.SV_ERROR)
        assert "cannot be set" in str(decode_value(reply))
        error = raw.until(lambda m: m.cmd == Cmd.SV_EVENT and m.name == "error")
        assert decode_value(error) == decode_value(reply)
        raw.send(Cmd.SV_CHAN_READ, "status/ready", sn=8)
        raw.until(lambda m: m.cmd == Cmd.SV_REPLY and m.sn == 8)
        assert not [m for m in raw.got if m.name == "error"]
    finally:
        raw.sock.close()


def test_count_reply_comes_after_the_counters_and_count_0(port: int) -> None:
    raw = Raw(port)
    try:
        for chan in ("scaler/.all./count", "scaler/mon/value"):
            raw.send(Cmd.SV_REGISTER, chan)
            raw.until(lambda m, c=chan: m.name == c)
        raw.send(Cmd.SV_CMD_WITH_RETURN, data=b"count 0.3\0", sn=3)
        order: list[tuple[str, str]] = []
        while not order or order[-1][0] != "reply":
            msg = raw.until(lambda m: m.cmd in (Cmd.SV_EVENT, Cmd.SV_REPLY))
            order.append(("reply" if msg.cmd == Cmd.SV_REPLY else msg.name,
                          str(decode_value(msg))))
        assert order[-3:] == [("scaler/mon/value", "300"), ("scaler/.all./count", "0"),
                              ("reply", "")]
    finally:
        raw.sock.close()


def test_mca_frames_arrive_in_order_without_gaps(port: int) -> None:
    raw = Raw(port)
    try:
        raw.send(Cmd.SV_REGISTER, "var/MCA")
        frames = [decode_value(raw.until(lambda m: m.name == "var/MCA")) for _ in range(6)]
        numbers = [frame_number(f) for f in frames if isinstance(f, SpecArray)]
        assert numbers[1:] == list(range(numbers[1], numbers[1] + 5))
    finally:
        raw.sock.close()
