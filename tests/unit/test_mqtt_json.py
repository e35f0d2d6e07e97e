"""The mqtt-bridge's JSON codec (actors.protocols.mqtt_json): topics from templates, bus data
as JSON (binary as base64 or left out), and commands from MQTT payloads; random payloads either
decode or raise our protocol error."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.mqtt_bridge import MqttBridgeActor, parse_rules
from actors.protocols import mqtt_json as mj
from broker.config import load_site
from broker.wire.errors import ConfigError, RemoteProtocolError
from tests.support.stack import ROOT, write_site


@pytest.mark.parametrize(("template", "topic", "expected"), [
    (mj.DEFAULT_TEMPLATE, "evt.reader1.tag", "sctl/reader1/tag"),
    (mj.DEFAULT_TEMPLATE, "evt.spec1.chan.x", "sctl/spec1/chan/x"),
    (mj.DEFAULT_TEMPLATE, "sys.alarm", "sctl/sys/alarm"),
    (mj.DEFAULT_TEMPLATE, "hb.psu1", "sctl/hb/psu1"),
    ("plant/{actor}/{event}", "evt.psu1.volt", "plant/psu1/volt"),
    ("plant/{actor}/{event}", "sys.alarm", "plant/alarm"),  # an empty level is dropped
    ("x/{kind}/{topic}", "evt.a.b", "x/evt/evt/a/b"),
])
def test_mqtt_topic_from_template(template: str, topic: str, expected: str) -> None:
    mj.check_template(template)
    assert mj.mqtt_topic(template, topic) == expected


@pytest.mark.parametrize("template", ["", "a/+/b", "a/#", "$SYS/x", "a/{nope}", "a/{"])
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(ValueError):
        mj.check_template(template)


def test_binary_as_base64_or_omitted_and_non_finite_as_null() -> None:
    data = {"raw": b"\x00\xff", "list": [b"\x01", 1.5, math.nan], "inf": math.inf,
            "nested": {"b": bytearray(b"ab"), "s": "x"}}
    assert mj.to_json(data) == {"raw": "AP8=", "list": ["AQ==", 1.5, None], "inf": None,
                                "nested": {"b": "YWI=", "s": "x"}}
    assert mj.to_json(data, mj.OMIT) == {"list": [None, 1.5, None], "inf": None,
                                         "nested": {"s": "x"}}


def test_envelope_and_data_payloads() -> None:
    fields = {"topic": "evt.a.b", "gseq": 9, "src": "a", "ts": 1.5, "kind": "event",
              "data": {"v": 1}}
    assert json.loads(mj.encode_message(mj.ENVELOPE, mj.BASE64, **fields)) == fields
    assert json.loads(mj.encode_message(mj.DATA, mj.BASE64, **fields)) == {"v": 1}


def test_a_command_decodes_with_every_optional_key() -> None:
    cmd = mj.decode_command("psu1", json.dumps({
        "command": "wrnrd_until", "args": {"timeout": 2}, "argv": ["MEAS?\\n", "\\n"],
        "id": 42, "timeout": 3}).encode())
    assert cmd == mj.MqttCommand("psu1", "wrnrd_until", {"timeout": 2}, ["MEAS?\\n", "\\n"],
                                 "42", 3.0)


@pytest.mark.parametrize(("payload", "reason"), [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"args": {}}', '"command"'),
    (b'{"command": "x", "bogus": 1}', "unknown key 'bogus'"),
    (b'{"command": "x", "args": []}', '"args"'),
    (b'{"command": "x", "argv": [1]}', '"argv"'),
    (b'{"command": "x", "id": true}', '"id"'),
    (b'{"command": "x", "timeout": 0}', '"timeout"'),
    (b"\xff\xfe", "not JSON"),
    (b" " * (mj.MAX_COMMAND_BYTES + 1), "at most"),
])
def test_bad_command_payloads_say_why(payload: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=reason) as info:
        mj.decode_command("psu1", payload)
    assert info.value.raw == payload[:64]


def test_the_id_of_a_refused_payload_is_kept_for_its_reply() -> None:
    assert mj.command_id(b'{"command": 1, "id": "abc"}') == "abc"
    assert mj.command_id(b"garbage") is None


@given(st.binary(max_size=200))
def test_random_payloads_decode_or_raise_our_error(payload: bytes) -> None:
    try:
        cmd = mj.decode_command("a1", payload)
    except RemoteProtocolError:
        return
    assert isinstance(cmd.command, str) and cmd.command


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text()
                    | st.binary(), lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=4), max_leaves=20))
def test_any_bus_data_becomes_json(value: object) -> None:
    for binary in mj.BINARY:
        expected = mj.to_json(value, binary)
        json.dumps(expected, allow_nan=False)
        encoded = mj.encode_message(mj.DATA, binary, topic="evt.a.b", gseq=1, src="a", ts=0.0,
                                    kind="event", data={"v": value})
        assert json.loads(encoded) == mj.to_json({"v": value}, binary)


def test_publish_rules_are_refused_with_their_key_path() -> None:
    with pytest.raises(ConfigError, match=r"actors\.b\.publish\[1\]\.qos: must be 0, 1 or 2"):
        parse_rules([{"topic": "evt."}, {"topic": "evt.x.", "qos": 3}], "actors.b.publish", "")
    with pytest.raises(ConfigError, match=r"publish\[0\]\.mqtt: an MQTT topic"):
        parse_rules([{"topic": "evt.", "mqtt": "a/#"}], "publish", "")
    with pytest.raises(ConfigError, match=r"publish\[0\]\.topic: is required"):
        parse_rules([{"mqtt": "a"}], "publish", "")
    with pytest.raises(ConfigError, match=r"publish\[0\]\.colour: unknown key"):
        parse_rules([{"topic": "evt.", "colour": 1}], "publish", "")
    with pytest.raises(ConfigError, match=r"publish\[0\]\.binary: must be one of"):
        parse_rules([{"topic": "evt.", "binary": "hex"}], "publish", "")


def test_the_documented_example_is_a_valid_bridge(tmp_path: Path) -> None:
    """The TOML block of docs/actors.md's mqtt-bridge section passes the type's own check."""
    text = (ROOT / "docs" / "actors.md").read_text()
    section = text[text.index("## MQTT bridge"):]
    block = section[section.index("```toml") + len("```toml"):section.index("```\n", 10)]
    site = load_site(write_site(tmp_path, block))
    values, problems = MqttBridgeActor.check_table(site.actors["mqtt"])
    assert problems == [] and len(values["publish"]) == 3
