"""The MQTT SpringCore codec (actors/protocols/springcore_json.py) and the springcore-mqtt
settings checks, without sockets: documented examples, both firmware variants, every kind of bad
payload, command encoding (the hex-string Sequence), and Hypothesis properties."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.protocols import springcore
from actors.protocols import springcore_json as sj
from actors.protocols.springcore_tag import TAG_KEYS
from actors.sim.springcore_mqtt import SpringCoreMqttSim
from actors.springcore_mqtt import SpringCoreMqttActor, broker_port
from broker.config import parse_settings
from broker.wire.errors import ConfigError, LocalProtocolError, RemoteProtocolError

PREFIX = "springcard/springcore"
DOC_EVENT = (b'{"Interface":"13.56","Protocol":"NFC-A","Template":1,"TagId":"047DAE02C84080",'
             b'"TagData":"00047DAE02C84080","Uptime":"699:16.850"}')


# --- topics -------------------------------------------------------------------------------------

def test_topics_split_and_subscriptions() -> None:
    assert sj.parse_topic(PREFIX, f"{PREFIX}/DA1275B0/rdr/evt") == sj.Topic("DA1275B0", "rdr/evt")
    assert sj.parse_topic(PREFIX, f"{PREFIX}/DA1275B0/status") == sj.Topic("DA1275B0", "status")
    assert sj.parse_topic(PREFIX, f"{PREFIX}/DA1275B0/meta") == sj.Topic("DA1275B0", "meta")
    for other in (f"{PREFIX}/DA1275B0/ccid/p2r", f"{PREFIX}//rdr/evt", "other/DA/rdr/evt",
                  f"{PREFIX}x/DA/rdr/evt", f"{PREFIX}/DA1275B0"):
        assert sj.parse_topic(PREFIX, other) is None, other
    assert sj.subscriptions(PREFIX, "+") == [f"{PREFIX}/+/rdr/evt", f"{PREFIX}/+/status",
                                             f"{PREFIX}/+/meta"]
    assert len(sj.subscriptions(PREFIX, ["A", "B"])) == 6
    assert sj.topic(PREFIX, "A", sj.CMD_TOPIC) == f"{PREFIX}/A/rdr/cmd"


@pytest.mark.parametrize("prefix", ["", "/a", "a/", "a/+/b", "a/#"])
def test_bad_prefix(prefix: str) -> None:
    with pytest.raises(ValueError):
        sj.check_prefix(prefix)


@pytest.mark.parametrize("device", ["", "a/b", "+", "#", "X" * 25])
def test_bad_device_id(device: str) -> None:
    with pytest.raises(ValueError):
        sj.check_device_id(device)


# --- READER EVENT -------------------------------------------------------------------------------

def test_documented_event_current_firmware() -> None:
    tag = sj.decode_event(DOC_EVENT, "DA1275B0")
    assert tag is not None and tuple(tag) == TAG_KEYS
    assert tag == {"tag_id": "047DAE02C84080", "interface": "13.56", "protocol": "NFC-A",
                   "template": 1, "rssi": None, "move": None, "tag_data": "00047DAE02C84080",
                   "tag_details": None, "checksum": "absent", "raw": DOC_EVENT.decode(),
                   "device": "DA1275B0", "seq": None, "device_time": "699:16.850"}


def test_event_older_firmware_names() -> None:
    payload = (b'{"Sequence":78,"Interface":"13.56","Protocol":"Innovatron","Template":2,'
               b'"Rssi":-60,"TagId":"262BA1B0","State":"Insert/Remove",'
               b'"DateTime":"2021-04-13 10:00:00","Uptime":"1:2.000"}')
    tag = sj.decode_event(payload, "R1")
    assert tag is not None
    assert (tag["seq"], tag["rssi"], tag["move"], tag["template"]) == (78, -60,
                                                                       "insert,remove", 2)
    assert tag["device_time"] == "2021-04-13 10:00:00"  # DateTime wins over Uptime


def test_event_current_names_win_and_unknown_keys_are_ignored() -> None:
    payload = (b'{"TagId":"04","RSSI":-40,"Rssi":-99,"Move":"Insert","State":"Remove",'
               b'"Device":"X","Future":{"a":[1]}}')
    tag = sj.decode_event(payload, "R1")
    assert tag is not None and (tag["rssi"], tag["move"], tag["device"]) == (-40, "insert", "R1")


def test_scrdr_payload_goes_through_the_tcp_codec() -> None:
    line = springcore.encode_tag_line("047DAE02C84080", move="insert", tag_data="00AB")
    tag = sj.decode_event(line, "R2")
    assert tag is not None
    assert (tag["tag_id"], tag["device"], tag["move"], tag["checksum"], tag["interface"]) == \
        ("047DAE02C84080", "R2", "insert", "ok", "13")
    assert sj.decode_event(springcore.greeting_line(), "R2") is None  # "connected", no tag


@pytest.mark.parametrize(("payload", "reason"), [
    (b'{"TagId":"04"', "malformed JSON"),
    (b'["TagId"]', "expected a JSON object"),
    (b'"04"', "expected a JSON object"),
    (b"\xff\xfe\x00\x01", "not UTF-8"),
    (b"   ", "empty payload"),
    (b'{"Interface":"13.56"}', "TagId is missing"),
    (b'{"TagId":""}', "TagId is missing or empty"),
    (b'{"TagId":1234}', "TagId must be a string"),
    (b'{"TagId":"04","Template":"1"}', "Template must be an integer"),
    (b'{"TagId":"04","Template":true}', "Template must be an integer"),
    (b'{"TagId":"04","RSSI":1.5}', "RSSI must be an integer"),
    (b'{"TagId":"04","Move":"Sideways"}', "unknown move"),
    (b'{"TagId":"04","Move":7}', "Move must be a string"),
    (b'{"TagId":"04","Sequence":"78"}', "Sequence must be an integer"),
    (b"$SCRDR;13;01", "$SCRDR payload"),
    (b"[" * 100000, "bound"),
])
def test_bad_events_are_remote_protocol_errors(payload: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        sj.decode_event(payload, "R1")
    assert reason in str(info.value)
    assert info.value.raw == payload[:64]


def test_deep_json_is_an_error_not_a_crash() -> None:
    with pytest.raises(RemoteProtocolError):
        sj.decode_event(b"[" * 60000 + b"]" * 60000, "R1")


# --- STATUS and META ----------------------------------------------------------------------------

def test_status_states() -> None:
    doc = sj.decode_status(b'{"State":"online,ready","Uptime":"145:1860.081"}')
    assert doc == sj.Status("online,ready", True, "145:1860.081", None)
    assert doc.to_data("R1") == {"device": "R1", "state": "online", "status": "online,ready",
                                 "uptime": "145:1860.081", "device_time": None}
    assert sj.decode_status(b'{"State":"online,busy"}').online
    assert not sj.decode_status(b'{"State":"offline"}').online
    dead = sj.decode_status(sj.encode_status(sj.DEAD_STATE))
    assert (dead.online, dead.state, dead.uptime) == (False, "offline,dead", None)


@pytest.mark.parametrize("payload", [b"{}", b'{"State":1}', b'{"State":"sleeping"}', b"x"])
def test_bad_status(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        sj.decode_status(payload)


def test_meta_known_fields_typed_unknown_ignored() -> None:
    meta = sj.decode_meta(b'{"VendorName":"SpringCard","SerialNumber":"DA1275B0","Open":true,'
                          b'"Protocol":"RDR/JSON","Extra":5}')
    assert meta == {"VendorName": "SpringCard", "SerialNumber": "DA1275B0", "Protocol":
                    "RDR/JSON", "Open": True}
    with pytest.raises(RemoteProtocolError, match="Open must be true/false"):
        sj.decode_meta(b'{"Open":"yes"}')


# --- commands -----------------------------------------------------------------------------------

def test_sequence_is_always_a_hex_string() -> None:
    accept = [springcore.seq_command(springcore.SEQ_ACCEPT)]
    assert sj.encode_command(sj.JSON, accept) == b'{"Sequence":"60"}'
    assert sj.encode_command(sj.SCRDR, accept) == b"$SCCMD;SEQ=60\r\n"
    assert sj.encode_command(sj.JSON, [springcore.seq_command(14)]) == b'{"Sequence":"0E"}'
    both = [springcore.leds_command("92929292"), springcore.buzz_command(100)]
    assert sj.encode_command(sj.JSON, both) == b'{"Leds":"92929292","Buzzer":"0064"}'
    assert sj.encode_command(sj.SCRDR, both) == b"$SCCMD;LEDS=92929292;BUZZ=0064\r\n"


@pytest.mark.parametrize(("fmt", "fields", "reason"), [
    (sj.JSON, [("SEQ", "60"), ("BUZZ", "0064")], "cannot be combined"),
    (sj.JSON, [], "needs a sequence"),
    (sj.JSON, [("RELAY", "1")], "no JSON READER COMMAND form"),
    ("xml", [("SEQ", "60")], "not one of json, scrdr"),
])
def test_bad_commands_are_local_protocol_errors(fmt: str, fields: list[tuple[str, str]],
                                                reason: str) -> None:
    with pytest.raises(LocalProtocolError, match=reason):
        sj.encode_command(fmt, fields)


def test_raw_commands() -> None:
    assert sj.encode_raw_command(' { "Sequence" : "61" } ') == b'{"Sequence":"61"}'
    assert sj.encode_raw_command("SEQ=60;BUZZ=0064") == b"$SCCMD;SEQ=60;BUZZ=0064\r\n"
    assert sj.encode_raw_command("$SCCMD;SEQ=0E") == b"$SCCMD;SEQ=0E\r\n"
    for bad in ("{oops", "[1]", "{}", '{"Sequence":"60","Leds":"00000000"}', "SEQ", "=60",
                ""):
        with pytest.raises(LocalProtocolError):
            sj.encode_raw_command(bad)


def test_reader_side_command_decoding() -> None:
    assert sj.decode_command(b'{"Sequence":"60"}') == sj.ReaderCommand("json", {"Sequence": "60"})
    assert sj.decode_command(b"$SCCMD;SEQ=60\r\n") == sj.ReaderCommand("scrdr", {"SEQ": "60"})
    assert sj.decode_command(b"$SCCMD;SEQ=0E").fields == {"SEQ": "0E"}
    for bad in (b"SEQ=60", b"$SCCMD;SEQ", b"\x00\xff", b"[]"):
        with pytest.raises(RemoteProtocolError):
            sj.decode_command(bad)


# --- properties ---------------------------------------------------------------------------------

@given(st.binary(max_size=300))
def test_random_bytes_decode_or_raise_our_error(data: bytes) -> None:
    for decode in (lambda: sj.decode_event(data, "R"), lambda: sj.decode_status(data),
                   lambda: sj.decode_meta(data), lambda: sj.decode_command(data)):
        with contextlib.suppress(RemoteProtocolError):
            decode()


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda kids: st.lists(kids, max_size=3)
                           | st.dictionaries(st.text(max_size=6), kids, max_size=3),
                           max_leaves=8)


@given(st.dictionaries(st.sampled_from(["TagId", "Template", "RSSI", "Rssi", "Move", "State",
                                        "Sequence", "TagData", "Uptime", "X"]), json_values))
def test_any_json_object_decodes_or_raises_our_error(obj: dict[str, Any]) -> None:
    try:
        tag = sj.decode_event(json.dumps(obj).encode(), "R")
    except RemoteProtocolError:
        return
    assert tag is not None and tag["tag_id"] == obj["TagId"] and tuple(tag) == TAG_KEYS


hex_ids = st.text("0123456789ABCDEF", min_size=2, max_size=20)
moves = st.sampled_from([None, "insert", "remove", "insert,remove"])


@given(hex_ids, st.sampled_from(["current", "old"]), moves, st.none() | st.integers(-128, 127),
       st.integers(0, 255), st.integers(0, 10**6))
def test_event_round_trip(tag_id: str, variant: str, move: str | None, rssi: int | None,
                          template: int, counter: int) -> None:
    payload = sj.encode_json_event(tag_id, variant=variant, move=move, rssi=rssi,
                                   template=template, counter=counter, uptime="1:2.003",
                                   date_time="2026-01-02 03:04:05", tag_data="00" + tag_id)
    tag = sj.decode_event(payload, "R9")
    assert tag is not None
    old = variant == "old"
    assert (tag["tag_id"], tag["move"], tag["rssi"], tag["template"], tag["tag_data"]) == \
        (tag_id, move, rssi, template, "00" + tag_id)
    assert tag["seq"] == (counter if old else None)
    assert tag["device_time"] == ("2026-01-02 03:04:05" if old else "1:2.003")
    assert ("Rssi" in json.loads(payload)) == (old and rssi is not None)


@given(st.integers(0, 255))
def test_sequence_code_round_trip(code: int) -> None:
    payload = sj.encode_command(sj.JSON, [springcore.seq_command(code)])
    value = sj.decode_command(payload).fields["Sequence"]
    assert isinstance(value, str) and int(value, 16) == code and len(value) == 2


# --- settings of the actor and the simulator ----------------------------------------------------

def actor_settings(table: dict[str, Any]) -> dict[str, Any]:
    return parse_settings(table, SpringCoreMqttActor.declared_settings(), "actors.r")


def test_actor_settings_defaults() -> None:
    cfg = actor_settings({})
    assert (cfg["devices"], cfg["qos"], cfg["prefix"], cfg["command_format"]) == \
        ("+", 1, PREFIX, "json")
    assert broker_port(cfg) == 1883
    assert broker_port(actor_settings({"tls": {}})) == 8883
    assert broker_port(actor_settings({"tls": {}, "port": 18883})) == 18883


@pytest.mark.parametrize(("table", "path", "reason"), [
    ({"devices": "*"}, "actors.r.devices", 'or "+"'),
    ({"devices": []}, "actors.r.devices", "must not be empty"),
    ({"devices": ["A", "A"]}, "actors.r.devices", "twice"),
    ({"devices": ["A/B"]}, "actors.r.devices", "without '/'"),
    ({"devices": [1]}, "actors.r.devices", "strings"),
    ({"qos": 3}, "actors.r.qos", "0, 1 or 2"),
    ({"command_format": "xml"}, "actors.r.command_format", "json, scrdr"),
    ({"prefix": "a/+"}, "actors.r.prefix", "wildcards"),
    ({"port": 0}, "actors.r.port", "1-65535"),
    ({"tls": {"ca": "/nonexistent/ca.pem"}}, "actors.r.tls", "does not exist"),
    ({"tls": {"pem": "x"}}, "actors.r.tls", "unknown key"),
    ({"tls": {"cert": __file__}}, "actors.r.tls", "go together"),
    ({"brokr": "x"}, "actors.r.brokr", "unknown key"),
])
def test_actor_settings_errors_name_the_key(table: dict[str, Any], path: str,
                                            reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        actor_settings(table)
    assert info.value.path == path and reason in info.value.reason


def test_tls_files_relative_to_the_working_directory(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ca.pem").write_text("x")
    monkeypatch.chdir(tmp_path)
    assert actor_settings({"tls": {"ca": "ca.pem"}})["tls"] == {"ca": "ca.pem"}


def test_sim_settings() -> None:
    declared = SpringCoreMqttSim.declared_settings()
    assert parse_settings({}, declared, "actors.s")["devices"] == ["DA1275B0"]
    with pytest.raises(ConfigError, match="expected a list"):
        parse_settings({"devices": "+"}, declared, "actors.s")
    with pytest.raises(ConfigError, match="current, old"):
        parse_settings({"variant": "new"}, declared, "actors.s")
