"""A real Mosquitto broker for tests: `Mosquitto` (start, stop, kill, restart on the same port)
and the `mosquitto_factory` / `mosquitto` pytest fixtures.

Each broker gets its own config file in a temp folder (``listener PORT 127.0.0.1``,
``allow_anonymous true``, persistence off, log to stderr captured in ``mosquitto.log``); more
config lines (TLS: ``cafile``, ``certfile``, ``keyfile``, ``require_certificate`` ...) go in
`listener_options` (they apply to the listener) or `extra` (global). `start` returns only when the
broker answered a real MQTT CONNECT with a CONNACK, so a test never races the broker's start; a
broker that exits or does not answer within `START_TIMEOUT` fails the test with its log.

A missing binary is a test failure with the install hint, never a skip: the MQTT tests are part
of what the project must show. Use from another test module::

    from tests.support.mosquitto import mosquitto_factory  # noqa: F401  (the fixture)

    def test_x(mosquitto_factory):
        broker = mosquitto_factory()          # or mosquitto_factory(listener_options="...")
        ...broker.port...; broker.kill(); broker.start()   # same port again

`logs_on_failure` prints the process logs (``*.log``) of a failed test's folders: the MQTT
test modules use it in an autouse fixture.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import pytest

from tests.support.stack import free_port

START_TIMEOUT: Final = 15.0  # seconds; the test machine is shared and may be slow
STOP_TIMEOUT: Final = 10.0
INSTALL_HINT: Final = ("the mosquitto MQTT broker binary is missing: run bash scripts/setup.sh "
                       "(installs the Debian mosquitto package)")
_CANDIDATES: Final = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")

# MQTT 3.1.1 CONNECT, clean session, keepalive 60 s, a client id no test uses; CONNACK accepted
# is 20 02 00 00 (session-present flag 0, return code 0).
_PROBE_ID: Final = b"sctl-test-readiness-probe"
_CONNECT: Final = (bytes([0x10, 12 + len(_PROBE_ID), 0, 4]) + b"MQTT"
                   + bytes([4, 2, 0, 60, 0, len(_PROBE_ID)]) + _PROBE_ID)
_CONNACK_OK: Final = bytes([0x20, 2, 0, 0])


def mosquitto_binary() -> str:
    """Path of the mosquitto binary; fails the calling test with the install hint if absent."""
    found = shutil.which("mosquitto") or next(
        (c for c in _CANDIDATES if os.access(c, os.X_OK)), None)
    if found is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return found


class Mosquitto:
    """One mosquitto process on 127.0.0.1:`port` (chosen free when None), restartable on it."""

    def __init__(self, folder: Path | None = None, port: int | None = None,
                 listener_options: str = "", extra: str = "") -> None:
        self.binary = mosquitto_binary()
        self.folder = Path(folder or tempfile.mkdtemp(prefix="mosquitto-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = port or free_port()  # mosquitto cannot report a port it picked
        self.config = self.folder / "mosquitto.conf"
        self.log = self.folder / "mosquitto.log"
        self.config.write_text(
            f"listener {self.port} {self.host}\n"
            f"{listener_options}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            f"{extra}\n", encoding="utf-8")
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> Mosquitto:
        """Start (again, on the same port) and wait until it answers CONNECT with CONNACK."""
        if self.running:
            raise RuntimeError(f"mosquitto on port {self.port} is already running")
        with self.log.open("ab") as fh:
            self.popen = subprocess.Popen([self.binary, "-c", str(self.config)],
                                          stdout=fh, stderr=subprocess.STDOUT)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise AssertionError(f"mosquitto exited with {self.popen.returncode} at start "
                                     f"(port {self.port}); its log:\n{self.output()}")
            if self._answers():
                return self
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"mosquitto on port {self.port} did not accept an MQTT connection "
                             f"within {timeout} s; its log:\n{self.output()}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=2.0) as s:
                s.sendall(_CONNECT)
                reply = b""
                while len(reply) < len(_CONNACK_OK):
                    chunk = s.recv(len(_CONNACK_OK) - len(reply))
                    if not chunk:
                        return False
                    reply += chunk
                return reply == _CONNACK_OK
        except OSError:
            return False

    def stop(self) -> int | None:
        """SIGTERM and wait (SIGKILL if it does not go); the exit code, None if not started."""
        return self._signal(signal.SIGTERM)

    def kill(self) -> int | None:
        """SIGKILL: clients see the connection drop, no clean goodbye, Last Wills fire."""
        return self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> int | None:
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                return self.popen.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return self.popen.wait(timeout=STOP_TIMEOUT)

    def restart(self) -> Mosquitto:
        self.stop()
        return self.start()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """Start brokers with `Mosquitto`'s keyword arguments; all are stopped after the test."""
    brokers: list[Mosquitto] = []

    def start(port: int | None = None, listener_options: str = "", extra: str = "") -> Mosquitto:
        broker = Mosquitto(tmp_path / f"mosquitto{len(brokers)}", port, listener_options, extra)
        brokers.append(broker)
        return broker.start()

    yield start
    for broker in brokers:
        broker.stop()


@pytest.fixture
def mosquitto(mosquitto_factory: Callable[..., Mosquitto]) -> Mosquitto:
    """One running broker on a free loopback port."""
    return mosquitto_factory()


LOG_TAIL: Final = 6000  # characters shown of each process log of a failed test


@contextlib.contextmanager
def logs_on_failure(request: pytest.FixtureRequest, *folders: Path) -> Iterator[None]:
    """For an autouse fixture: if the test fails, print the end of every ``*.log`` under
    `folders` (router, actors, simulator, Mosquitto) after its teardown, which stopped them.
    pytest shows it as "Captured stdout teardown" under the failure, also from xdist workers;
    the temp folders themselves do not last long on a machine where other runs start."""
    failed = request.session.testsfailed  # counted once the test's call phase is reported
    yield
    if request.session.testsfailed == failed:
        return
    for folder in folders:
        for log in sorted(folder.rglob("*.log")):
            text = log.read_text(errors="replace")
            print(f"----- {log} ({len(text)} characters, the last {LOG_TAIL}) -----")
            print(text[-LOG_TAIL:])
