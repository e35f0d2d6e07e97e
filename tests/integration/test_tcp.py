"""actors/transports/tcp.py on a real loop: name resolution off the loop thread, connect, refuse."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from actors.core.loop import Loop
from actors.transports.tcp import TcpClient


@pytest.fixture
def loop() -> Iterator[Loop]:
    lp = Loop()
    yield lp
    lp.close()


def run(loop: Loop, until: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:  # type: ignore[operator]
        loop.run_once(max_wait=0.05)


def client(loop: Loop, host: str, port: int, log: list[str]) -> TcpClient:
    return TcpClient(loop, host, port, lambda: log.append("up"),
                     lambda data: log.append(f"data {data!r}"),
                     lambda reason: log.append(f"closed {reason}"))


def test_a_host_name_is_resolved_off_the_loop_and_connects(
        loop: Loop, monkeypatch: pytest.MonkeyPatch) -> None:
    lookups: list[int] = []  # threads that resolved a name (not a numeric address)
    real = socket.getaddrinfo

    def recording(*args: Any, **kw: Any) -> Any:
        if not kw.get("flags", 0) & socket.AI_NUMERICHOST:
            lookups.append(threading.get_ident())
        return real(*args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", recording)
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        log: list[str] = []
        c = client(loop, "localhost", port, log)
        c.connect()
        assert log == []  # nothing decided on the loop thread yet: the name is being resolved
        run(loop, lambda: log)
        assert log == ["up"], log
        assert lookups and threading.get_ident() not in lookups
        conn, _ = server.accept()
        conn.sendall(b"hi")
        run(loop, lambda: len(log) > 1)
        assert log[1] == "data b'hi'"
        c.close()
        conn.close()


def test_unknown_name_and_refused_port_are_reasons_not_exceptions(loop: Loop) -> None:
    log: list[str] = []
    client(loop, "no-such-host.invalid", 4000, log).connect()
    run(loop, lambda: log)
    assert log and log[0].startswith("closed cannot resolve no-such-host.invalid:4000"), log
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    log.clear()
    client(loop, "127.0.0.1", port, log).connect()
    run(loop, lambda: log)
    assert log and "refused" in log[0].lower(), log


def test_a_late_answer_after_close_is_ignored(loop: Loop) -> None:
    log: list[str] = []
    c = client(loop, "localhost", 9, log)
    c.connect()
    c.close()  # before the resolver thread answers
    time.sleep(0.5)
    run(loop, lambda: False, timeout=0.5)
    assert log == []
