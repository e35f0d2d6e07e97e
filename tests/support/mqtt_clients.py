"""Mosquitto's own command line clients as test peers: `MqttSub` (``mosquitto_sub``) records
what a real MQTT subscriber receives, `mqtt_pub` (``mosquitto_pub``) publishes one message.

`MqttSub` writes one line per message, ``<receipt time> <topic> <payload>`` (``-F '%U %t
%p'``: Unix time with nanoseconds), to a file in the test's folder; `start` returns once a
probe message it published itself came back, so the subscription is live before the test
acts. A missing binary fails the test with the install hint (Debian package
``mosquitto-clients``, installed by scripts/setup.sh), never a skip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

INSTALL_HINT: Final = ("mosquitto_sub / mosquitto_pub are missing: run bash scripts/setup.sh "
                       "(installs the Debian mosquitto-clients package)")
PROBE_TOPIC: Final = "sctl-test/probe"


def client_binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return found


def mqtt_pub(port: int, topic: str, payload: bytes | str, *, qos: int = 1,
             retain: bool = False, host: str = "127.0.0.1") -> None:
    """Publish one message with ``mosquitto_pub`` (waits for its PUBACK at QoS 1)."""
    data = payload.encode() if isinstance(payload, str) else payload
    args = [client_binary("mosquitto_pub"), "-h", host, "-p", str(port), "-t", topic,
            "-q", str(qos), "-s" if data else "-n"]  # -n: the empty message (clears a retain)
    if retain:
        args.append("-r")
    subprocess.run(args, input=data or None, check=True, timeout=10, capture_output=True)


@dataclass(frozen=True)
class Received:
    at: float  # Unix time of receipt
    topic: str
    payload: str

    def json(self) -> Any:
        return json.loads(self.payload)


class MqttSub:
    """A ``mosquitto_sub`` process subscribed to `topics` (QoS `qos`) until `stop`."""

    def __init__(self, port: int, topics: Sequence[str], out: Path, *, qos: int = 1,
                 host: str = "127.0.0.1", extra: Sequence[str] = ()) -> None:
        self.port, self.host, self.out = port, host, out
        args = [client_binary("mosquitto_sub"), "-h", host, "-p", str(port), "-q", str(qos),
                "-F", "%U %t %p", "-t", PROBE_TOPIC, *extra]
        for topic in topics:
            args += ["-t", topic]
        self.args = args
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> MqttSub:
        with self.out.open("wb") as fh:
            self.popen = subprocess.Popen(self.args, stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.popen.poll() is None, f"mosquitto_sub exited: {self.out.read_text()}"
            mqtt_pub(self.port, PROBE_TOPIC, "probe", qos=0, host=self.host)
            end = time.monotonic() + 0.5
            while time.monotonic() < end:
                if any(m.topic == PROBE_TOPIC for m in self.messages(probes=True)):
                    return self
                time.sleep(0.02)
        raise AssertionError(f"mosquitto_sub on port {self.port} never got its probe")

    def messages(self, probes: bool = False) -> list[Received]:
        if not self.out.exists():
            return []
        out = []
        for line in self.out.read_bytes().decode(errors="replace").splitlines(keepends=True):
            if not line.endswith("\n"):  # still being written
                continue
            at, _, rest = line.rstrip("\n").partition(" ")
            topic, _, payload = rest.partition(" ")
            try:
                stamp = float(at)
            except ValueError:  # a line of its own log
                continue
            if probes or topic != PROBE_TOPIC:
                out.append(Received(stamp, topic, payload))
        return out

    def on(self, topic: str) -> list[Received]:
        return [m for m in self.messages() if m.topic == topic]

    def wait(self, done: Callable[[list[Received]], bool], timeout: float = 20.0,
             what: str = "") -> list[Received]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.messages()
            if done(got):
                return got
            assert time.monotonic() < deadline, \
                f"mosquitto_sub: timed out after {timeout} s waiting for {what}; got " \
                f"{[(m.topic, m.payload[:120]) for m in got][-10:]}"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
