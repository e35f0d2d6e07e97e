"""Device-side TLS with real peers. Every part is a real process: the router, the actors
(``sctl actor``), the simulators (``sctl sim``), Mosquitto; certificates come from a throw-away
CA made with ``openssl`` (tests.support.certs).

- MQTT: Mosquitto gets a TLS listener that requires a client certificate from the test CA (and a
  plain one only for its readiness probe, which speaks plain MQTT; nobody else uses it). The
  ``springcore-mqtt`` actor and the simulator's virtual readers both connect with ``tls = {ca,
  cert, key}``: tags flow reader → broker → actor → bus, a command flows back to the reader. An
  actor that trusts another CA refuses the broker: its link goes down with the TLS reason and
  it keeps running and answering.
- IEC 104: the ``iec104-server`` actor with ``cert``, ``key``, ``ca`` and ``allowed_certs``,
  driven by Python's ``ssl`` sending raw APDUs (tests.support.apdu; the c104 2.2.1 client cannot
  do TLS): STARTDT act → con, a general interrogation → the points fed from the bus. A client
  certificate signed by the same CA but not in ``allowed_certs``, or none at all, is refused,
  and the server keeps serving the allowed one.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.client.bus import Bus, Delivery
from broker.wire.errors import RemoteProtocolError
from tests.integration.test_actor import collect, result
from tests.integration.test_iec104 import free_104_port
from tests.support import apdu
from tests.support.certs import Pair, Pki, pki  # noqa: F401  (the fixture)
from tests.support.mosquitto import (  # noqa: F401  (the fixture)
    Mosquitto,
    mosquitto_factory,
)
from tests.support.stack import Proc, Stack, free_port, wait_for

READER = "DA1275B0"
WAIT = 30.0  # generous: the test machine is shared


def tls_table(ca: Path, client: Pair) -> str:
    return f'tls = {{ ca = "{ca}", cert = "{client.cert}", key = "{client.key}" }}'


def wait_reply(bus: Bus, actor: str, command: str, ok: Callable[[Any], bool], what: str,
               seen: list[Delivery] | None = None) -> Any:
    """Ask `actor` until its result satisfies `ok` (bounded by WAIT); what the bus delivers
    meanwhile is added to `seen`."""
    deadline = time.monotonic() + WAIT
    while True:
        value = result(bus.request(actor, command, {}, timeout=20.0))
        if ok(value):
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}; last: {value}"
        got = bus.poll(0.2)
        if seen is not None:
            seen += got


# --- MQTT over TLS ----------------------------------------------------------------------------

MQTT_TABLES = """
[actors.mqttreaders]
type = "springcore-mqtt"
port = {port}
devices = "+"
heartbeat_interval = 0.5
backoff_min = 0.2
backoff_max = 1.0
command_timeout = 10.0
{actor_tls}

[actors.readers]
type = "sim-springcore-mqtt"
port = {port}
devices = ["{reader}"]
backoff_min = 0.2
backoff_max = 1.0
{sim_tls}
"""


@dataclass
class TlsBroker:
    broker: Mosquitto
    port: int  # its TLS listener


@pytest.fixture
def tls_broker(pki: Pki, mosquitto_factory: Callable[..., Mosquitto]) -> TlsBroker:  # noqa: F811
    """Mosquitto with a TLS listener that requires a client certificate signed by the test CA.
    Its first, plain listener is only for `Mosquitto.start`'s readiness probe (plain MQTT)."""
    port = free_port()  # a second listener: mosquitto names no port it picked
    # Started as root, mosquitto drops to its own user, which cannot read the test's private
    # temp folder; `user` keeps it as whoever runs the tests (root gains nothing it lacked).
    user = pwd.getpwuid(os.geteuid()).pw_name
    broker = mosquitto_factory(extra=(
        f"user {user}\n"
        f"listener {port} 127.0.0.1\n"
        f"cafile {pki.ca.cert}\ncertfile {pki.server.cert}\nkeyfile {pki.server.key}\n"
        "require_certificate true\n"))
    return TlsBroker(broker, port)


def mqtt_site(stack: Stack, port: int, actor_tls: str, sim_tls: str) -> Path:
    return stack.write(MQTT_TABLES.format(port=port, reader=READER,
                                          actor_tls=actor_tls, sim_tls=sim_tls))


def events(got: list[Delivery], topic: str) -> list[dict[str, Any]]:
    return [d.envelope.data for d in got if d.topic == topic]


def test_mqtt_over_tls_tags_flow_and_a_command_reaches_the_reader(
        pki: Pki, tls_broker: TlsBroker, stack: Stack) -> None:  # noqa: F811
    client = tls_table(pki.ca.cert, pki.client)
    mqtt_site(stack, tls_broker.port,
              client, client)
    stack.start_router()
    bus = stack.client("evt.mqttreaders.", "evt.readers.")
    try:
        stack.start_actor("mqttreaders", log="actor")
        stack.start_sim("springcore-mqtt", "readers", log="sim")
        seen: list[Delivery] = []
        wait_reply(bus, "mqttreaders", "readers",
                   lambda r: r.get(READER, {}).get("state") == "online",
                   f"reader {READER} online at the actor over TLS", seen)
        for tag in ("04AA01", "04BB02"):
            result(bus.request("readers", "present", {"tag": tag}, timeout=20.0))
        got = seen + collect(bus, lambda g: len(events(g, "evt.mqttreaders.tag")) >= 2, WAIT)
        assert [t["tag_id"] for t in events(got, "evt.mqttreaders.tag")] == \
            ["04AA01", "04BB02"]
        assert {t["device"] for t in events(got, "evt.mqttreaders.tag")} == {READER}
        assert [e["state"] for e in events(got, "evt.mqttreaders.link")][-1:] == ["up"]

        sent = stack.sctl("send", "mqttreaders", "accept", f"device={READER}")
        assert sent.returncode == 0, sent.stderr
        got = collect(bus, lambda g: len(events(g, "evt.readers.received")) >= 1, WAIT)
        (received,) = events(got, "evt.readers.received")
        assert (received["device"], received["decoded"]) == (READER, {"Sequence": "60"})
    finally:
        bus.close()


def test_mqtt_wrong_ca_link_down_with_tls_reason_no_crash(
        pki: Pki, tls_broker: TlsBroker, stack: Stack) -> None:  # noqa: F811
    mqtt_site(stack, tls_broker.port,
              tls_table(pki.rogue_ca.cert, pki.client), "")
    stack.start_router()
    bus = stack.client("evt.mqttreaders.link")
    try:
        actor = stack.start_actor("mqttreaders", log="actor")
        got = collect(bus, lambda g: any(e["state"] == "down"
                                         for e in events(g, "evt.mqttreaders.link")), WAIT)
        down = next(e for e in events(got, "evt.mqttreaders.link") if e["state"] == "down")
        reason = down["reason"]
        assert f"cannot connect to broker 127.0.0.1:{tls_broker.port}" in reason, reason
        assert "TLS handshake failed" in reason and "certificate verify failed" in reason, \
            reason
        # still alive and answering, the link stays down (paho keeps retrying)
        refused = bus.request("mqttreaders", "accept", {"device": READER}, timeout=20.0).data
        assert refused["status"] == "error" and "is not connected" in refused["error"], refused
        assert actor.popen is not None and actor.popen.poll() is None, actor.output()
        status = stack.sctl("ping", "mqttreaders")
        assert status.returncode == 0, status.stderr
    finally:
        bus.close()


# --- IEC 104 over TLS -------------------------------------------------------------------------

CA_104 = 47
SCADA = """
[actors.scada]
type = "iec104-server"
ip = "127.0.0.1"
port = {port}
common_address = 47
allow = ["127.0.0.1"]
heartbeat_interval = 0.5
cert = "{server.cert}"
key = "{server.key}"
ca = "{ca}"
allowed_certs = ["{client.cert}"]

[[actors.scada.point]]
ioa = 100
type = "M_SP_NA_1"
topic = "evt.door1.state"
field = "open"

[[actors.scada.point]]
ioa = 200
type = "M_ME_NC_1"
topic = "evt.motor1.pos"
field = "position"
"""


class Master:
    """A 104 master over TLS: Python `ssl` and raw APDUs, blocking with a socket timeout."""

    def __init__(self, port: int, ca: Path, client: Pair | None) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=str(ca))
        if client is not None:
            context.load_cert_chain(str(client.cert), str(client.key))
        raw = socket.create_connection(("127.0.0.1", port), timeout=10.0)
        self.sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
        self.reader = apdu.ApduReader()
        self.pending: list[apdu.Apdu] = []
        self.received = 0  # I-frames, for N(R)

    def close(self) -> None:
        self.sock.close()

    def next(self, timeout: float = 15.0) -> apdu.Apdu:
        deadline = time.monotonic() + timeout
        while not self.pending:
            left = deadline - time.monotonic()
            assert left > 0, "no APDU from the 104 server in time"
            self.sock.settimeout(left)
            data = self.sock.recv(4096)
            if not data:
                raise ConnectionError("the 104 server closed the connection")
            self.reader.feed(data)
            self.pending += list(self.reader.apdus())
        frame = self.pending.pop(0)
        if isinstance(frame, apdu.IFrame):
            self.received += 1
        return frame

    def startdt(self) -> None:
        self.sock.sendall(apdu.encode_u(apdu.STARTDT_ACT))
        frame = self.next()
        assert frame == apdu.UFrame(apdu.STARTDT_CON), frame

    def interrogate(self) -> tuple[list[apdu.Asdu], dict[int, Any]]:
        """General interrogation: every ASDU until ACT_TERM; the points by IOA."""
        self.sock.sendall(apdu.encode_i(0, self.received,
                                        apdu.encode_interrogation(CA_104)))
        asdus: list[apdu.Asdu] = []
        while not asdus or asdus[-1].cause != apdu.COT_ACTIVATION_TERM:
            frame = self.next()
            if isinstance(frame, apdu.IFrame):
                asdus.append(frame.asdu)
        self.sock.sendall(apdu.encode_s(self.received))
        points = {o.ioa: o.value for a in asdus if a.cause == apdu.COT_INTERROGATED
                  for o in a.objects}
        return asdus, points


@dataclass
class Scada:
    port: int
    bus: Bus
    actor: Proc


@pytest.fixture
def scada(pki: Pki, stack: Stack) -> Iterator[Scada]:  # noqa: F811
    """The 104 server over TLS, its points fed from the bus."""
    port = free_104_port()
    stack.write(SCADA.format(port=port, server=pki.server, ca=pki.ca.cert, client=pki.client))
    stack.start_router()
    bus = stack.client()
    actor = stack.start_actor("scada")
    wait_reply(bus, "scada", "points", lambda rows: len(rows) == 2, "the 104 server up")
    bus.publish("evt.door1.state", "event", {"open": True})
    bus.publish("evt.motor1.pos", "event", {"position": 12.5})
    wait_reply(bus, "scada", "points",
               lambda rows: [r["value"] for r in rows] == [True, 12.5], "both points fed")
    yield Scada(port, bus, actor)
    bus.close()


def test_104_over_tls_startdt_and_interrogation(pki: Pki, scada: Scada) -> None:  # noqa: F811
    master = Master(scada.port, pki.ca.cert, pki.client)
    try:
        assert master.sock.version() in ("TLSv1.2", "TLSv1.3")
        master.startdt()
        asdus, points = master.interrogate()
    finally:
        master.close()
    assert (asdus[0].type_name, asdus[0].cause, asdus[0].negative) == \
        ("C_IC_NA_1", apdu.COT_ACTIVATION_CON, False)
    assert (asdus[-1].type_name, asdus[-1].cause) == ("C_IC_NA_1", apdu.COT_ACTIVATION_TERM)
    assert {a.common_address for a in asdus} == {CA_104}
    assert points == {100: True, 200: 12.5}
    types = {o.ioa: a.type_name for a in asdus if a.cause == apdu.COT_INTERROGATED
             for o in a.objects}
    assert types == {100: "M_SP_NA_1", 200: "M_ME_NC_1"}


def refused(port: int, ca: Path, client: Pair | None) -> str:
    """Connect and try STARTDT; what stopped it (the server must not answer STARTDT_CON).
    With TLS 1.3 the server judges the client certificate after the client's handshake is
    done, so the refusal may show as an alert on the first read rather than in the handshake."""
    try:
        master = Master(port, ca, client)
    except (ssl.SSLError, ConnectionError) as exc:
        return f"handshake: {exc}"
    try:
        master.startdt()
    except (ssl.SSLError, ConnectionError) as exc:
        return f"after handshake: {exc}"
    finally:
        master.close()
    raise AssertionError(f"the 104 server accepted client certificate {client}")


def handshake_failures(scada: Scada) -> int:
    """lib60870's own account, on the actor's stdout: c104 2.2.1 tells Python nothing of a TLS
    refusal (its on_connect runs at TCP accept, before TLS)."""
    return scada.actor.output().count("TLS: handshake failed")


def test_104_tls_refuses_a_certificate_not_allowed_and_keeps_serving(
        pki: Pki, scada: Scada) -> None:  # noqa: F811
    # signed by the CA, so only the allow-list can refuse it
    assert refused(scada.port, pki.ca.cert, pki.intruder)
    wait_for(lambda: handshake_failures(scada) == 1, WAIT, "the server's handshake failure")
    assert "Check against list of allowed certs" in scada.actor.output()
    assert refused(scada.port, pki.ca.cert, None)  # no client certificate at all
    wait_for(lambda: handshake_failures(scada) == 2, WAIT, "the second handshake failure")
    master = Master(scada.port, pki.ca.cert, pki.client)
    try:
        master.startdt()
        assert master.interrogate()[1] == {100: True, 200: 12.5}
    finally:
        master.close()
    assert handshake_failures(scada) == 2
    assert scada.actor.popen is not None and scada.actor.popen.poll() is None
    assert len(result(scada.bus.request("scada", "points", {}, timeout=20.0))) == 2


# --- the APDU helpers themselves (no sockets) ------------------------------------------------

@given(st.integers(0, 0x7FFF), st.integers(0, 0x7FFF), st.integers(0, 0xFFFF),
       st.integers(0, 0xFF), st.lists(st.integers(1, 64), max_size=4))
def test_apdu_round_trip_whole_or_chunked(send: int, recv: int, ca: int, qoi: int,
                                          cuts: list[int]) -> None:
    wire = (apdu.encode_u(apdu.STARTDT_ACT) + apdu.encode_s(recv)
            + apdu.encode_i(send, recv, apdu.encode_interrogation(ca, qoi)))
    reader = apdu.ApduReader()
    frames: list[apdu.Apdu] = []
    pos = 0
    for cut in [*cuts, len(wire)]:
        reader.feed(wire[pos:pos + cut])
        pos += cut
        frames += list(reader.apdus())
    assert frames[:2] == [apdu.UFrame(apdu.STARTDT_ACT), apdu.SFrame(recv)]
    (i_frame,) = frames[2:]
    assert isinstance(i_frame, apdu.IFrame)
    assert (i_frame.send_seq, i_frame.recv_seq) == (send, recv)
    assert (i_frame.asdu.common_address, i_frame.asdu.objects[0].value) == (ca, qoi)


@given(st.binary(max_size=300))
def test_apdu_reader_random_bytes_decode_or_protocol_error(data: bytes) -> None:
    reader = apdu.ApduReader()
    reader.feed(data)
    with contextlib.suppress(RemoteProtocolError):  # anything else fails the test
        list(reader.apdus())
