"""The iec104-server mapping without sockets: config checks with key paths, bus message → point
value, 104 command → bus command, (Hypothesis) value coercion that either gives a value of the
point's kind or raises MappingError, never anything else; and the actor's own settings (allow,
TLS), checked before anything opens."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.iec104_server import _decode_proc_address, _host_of, allowed, parse_allow
from actors.protocols.iec104_map import (
    COMMAND_TYPES,
    DOUBLE_STATES,
    INT16,
    INT32,
    MONITOR_TYPES,
    MappingError,
    PointTable,
    coerce,
    get_path,
    parse_mapping,
)
from actors.registry import create_actor
from broker.config import parse_site
from broker.wire.errors import ConfigError

PATH = "actors.scada"


def point(**kw: Any) -> dict[str, Any]:
    return {"ioa": 100, "type": "M_SP_NA_1", "topic": "evt.door1.state", **kw}


def cmd(**kw: Any) -> dict[str, Any]:
    entry = {"ioa": 2000, "type": "C_SC_NA_1", "actor": "door1", "command": "set", **kw}
    return {k: v for k, v in entry.items() if v is not None}  # None: leave the key out


def error_of(points: Any = None, commands: Any = None, tick: int = 100) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_mapping(points, commands, PATH, tick, "site.toml")
    return info.value


# --- config errors carry the key path ----------------------------------------------------------


@pytest.mark.parametrize(("points", "commands", "path", "words"), [
    ([point(), point(ioa=1, type="M_XX_NA_1")], None, "point[1].type",
     "unknown monitoring type 'M_XX_NA_1'"),
    ([point(type="C_SC_NA_1")], None, "point[0].type", "is a command type"),
    ([point(), point()], None, "point[1].ioa", "duplicate IOA 100 (already used by "
                                                "actors.scada.point[0])"),
    ([point()], [cmd(ioa=100)], "command[0].ioa", "duplicate IOA 100"),
    ([point(report_ms=150)], None, "point[0].report_ms", "multiple of tick_rate_ms 100"),
    ([point(report_ms=-100)], None, "point[0].report_ms", "multiple of tick_rate_ms"),
    ([point(ioa=0)], None, "point[0].ioa", "must be 1..16777215"),
    ([point(ioa=2**24)], None, "point[0].ioa", "must be 1..16777215"),
    ([point(ioa="7")], None, "point[0].ioa", "expected int, got str '7'"),
    ([point(ioa=True)], None, "point[0].ioa", "expected int, got bool"),
    ([{"type": "M_SP_NA_1", "topic": "evt.a"}], None, "point[0].ioa", "is required"),
    ([point(topic="evt..x")], None, "point[0].topic", ""),
    ([point(colour="red")], None, "point[0].colour", "unknown key"),
    ([point(count=True)], None, "point[0].count", "needs a counter type"),
    ([point(type="M_IT_NA_1", count=True, field="n")], None, "point[0].field",
     "takes no field or map"),
    ([point(field="a..b")], None, "point[0].field", "dotted path"),
    ([point(map={"open": 2})], None, "point[0].map.open", "expected on/off"),
    ([point(map={})], None, "point[0].map", "is empty"),
    ([point(match={"chan": {"x": 1}})], None, "point[0].match.chan", "plain value"),
    ([point(type="M_ME_NB_1", map={"hi": 40000})], None, "point[0].map.hi", "-32768 to 32767"),
    ("nope", None, "point", "array of tables"),
    (["nope"], None, "point[0]", "expected a table"),
    (None, [cmd(type="M_SP_NA_1")], "command[0].type", "unknown command type"),
    (None, [cmd(actor="door.1")], "command[0].actor", "not usable"),
    (None, [{"ioa": 1, "type": "C_SC_NA_1", "actor": "d"}], "command[0].command",
     "is required (or give both 'on' and 'off')"),
    (None, [{"ioa": 1, "type": "C_SC_NA_1", "actor": "d", "on": "open"}], "command[0].command",
     "is required"),
    (None, [cmd(type="C_SE_NC_1", on="x")], "command[0].on", "need a single or double"),
    (None, [cmd(command=" ")], "command[0].command", "is empty"),
    (None, [cmd(timeout=-1)], "command[0].timeout", "positive number"),
    (None, [cmd(select="yes")], "command[0].select", "expected bool"),
])
def test_config_errors_name_the_key(points: Any, commands: Any, path: str, words: str) -> None:
    err = error_of(points, commands)
    assert err.path == f"{PATH}.{path}" and words in err.reason
    assert str(err).startswith(f"site.toml: {PATH}.{path}: ")


def test_a_good_mapping_parses() -> None:
    mapping = parse_mapping(
        [point(), point(ioa=101, topic="evt.door1"), point(ioa=102, topic="evt.motor1.pos",
                                                            type="M_ME_NC_1", report_ms=1000),
         point(ioa=103, type="M_IT_TB_1", topic="evt.reader1.tag", count=True)],
        [cmd(), cmd(ioa=2001, type="C_DC_NA_1", command=None, on="close", off="open")],
        PATH, 100)
    assert [p.ioa for p in mapping.points] == [100, 101, 102, 103]
    assert mapping.points[2].report_ms == 1000 and mapping.points[3].count
    # evt.door1 covers evt.door1.state: one subscription, so no message is applied twice
    assert mapping.prefixes() == ["evt.door1", "evt.motor1.pos", "evt.reader1.tag"]


def test_prefixes_are_segment_aligned() -> None:
    mapping = parse_mapping([point(topic="evt.reader1"), point(ioa=2, topic="evt.reader10")],
                            None, PATH, 100)
    assert sorted(mapping.prefixes()) == ["evt.reader1", "evt.reader10"]


# --- bus message -> point value ----------------------------------------------------------------


def table(*points: dict[str, Any]) -> PointTable:
    return PointTable(parse_mapping(list(points), None, PATH, 100).points)


def test_field_match_and_map() -> None:
    t = table(point(ioa=1, type="M_ME_NC_1", topic="evt.motor1", field="pos.deg",
                    match={"chan": "motor/th/position", "ok": True}),
              point(ioa=2, type="M_DP_NA_1", topic="evt.door1", field="lock",
                    map={"locked": "ON", "unlocked": "OFF", "1": "INTERMEDIATE"}))
    updated, errors = t.on_message("evt.motor1.x", {"chan": "motor/th/position", "ok": True,
                                                    "pos": {"deg": "12.5"}}, 1.0)
    assert [(s.spec.ioa, s.value, s.quality) for s in updated] == [(1, 12.5, "good")]
    assert errors == []
    # match is strict: 1 is not true, another channel is not this one, a missing key neither
    for data in ({"chan": "motor/th/position", "ok": 1, "pos": {"deg": 1}},
                 {"chan": "motor/tv/position", "ok": True, "pos": {"deg": 1}},
                 {"ok": True, "pos": {"deg": 1}}):
        assert t.on_message("evt.motor1", data, 2.0) == ([], [])
    assert t.states[1].value == 12.5 and t.states[1].updated == 1.0
    assert t.on_message("evt.motor10", {"chan": "motor/th/position", "ok": True,
                                        "pos": {"deg": 3}}, 2.0) == ([], [])
    (state,), _ = t.on_message("evt.door1.state", {"lock": "locked"}, 3.0)
    assert state.value == "ON" and state.source == "evt.door1.state"
    (state,), _ = t.on_message("evt.door1.state", {"lock": 1}, 3.0)
    assert state.value == "INTERMEDIATE"  # map keys are strings; 1 looks up "1"


def test_bad_values_are_reported_not_applied() -> None:
    t = table(point(ioa=1, type="M_ME_NB_1", topic="evt.a"),
              point(ioa=2, type="M_DP_NA_1", topic="evt.a", field="s", map={"on": "ON"}))
    updated, errors = t.on_message("evt.a", {"value": 40000, "s": "off"}, 1.0)
    assert updated == []
    reasons = {spec.ioa: reason for spec, reason in errors}
    assert "-32768 to 32767" in reasons[1] and "40000" in reasons[1]
    assert "'off'" in reasons[2] and "not in the map" in reasons[2]
    _, errors = t.on_message("evt.a", {"other": 1}, 1.0)
    assert "no field 'value' in the message (data has keys other)" in errors[0][1]
    assert all(s.value is None and s.quality == "invalid" for s in t.states.values())


def test_count_points_count_matching_messages_and_wrap() -> None:
    t = table(point(ioa=5, type="M_IT_NA_1", topic="evt.reader1.tag", count=True,
                    match={"ok": True}))
    for _ in range(3):
        t.on_message("evt.reader1.tag", {"ok": True}, 1.0)
    t.on_message("evt.reader1.tag", {"ok": False}, 1.0)
    assert t.states[5].value == 3
    t.states[5].value = INT32[1]
    t.on_message("evt.reader1.tag", {"ok": True}, 1.0)
    assert t.states[5].value == 0


def test_set_and_rows() -> None:
    t = table(point(ioa=7, type="M_ME_NC_1", topic="evt.a"), point(ioa=3, topic="evt.b"))
    state = t.set(7, "2.5", 10.0, "set by tester")
    assert state.value == 2.5
    with pytest.raises(MappingError, match=r"no monitoring point with IOA 8 \(points: 3, 7\)"):
        t.set(8, 1, 10.0, "x")
    with pytest.raises(MappingError, match="expected a number"):
        t.set(7, "abc", 10.0, "x")
    assert [r["ioa"] for r in t.rows()] == [3, 7]
    assert t.rows()[1] == {"ioa": 7, "type": "M_ME_NC_1", "name": "", "value": 2.5,
                           "quality": "good", "updated": 10.0, "source": "set by tester"}


def test_get_path() -> None:
    assert get_path({"a": {"b": {"c": 1}}}, "a.b.c") == 1
    with pytest.raises(MappingError, match=r"no field 'a.b.c' in the message \(a.b has a int"):
        get_path({"a": {"b": 1}}, "a.b.c")


# --- 104 command -> bus command ----------------------------------------------------------------


def route(**kw: Any) -> Any:
    return parse_mapping(None, [cmd(**kw)], PATH, 100).commands[0]


def test_on_off_choices_and_value_in_args() -> None:
    r = route(command=None, on="accept", off="deny",
              args={"value": "{value}", "note": "ioa 2000 = {value}", "n": 3})
    on = r.call(True)
    assert (on.actor, on.command) == ("door1", "accept")
    assert on.args == {"value": True, "note": "ioa 2000 = True", "n": 3}
    assert r.call(False).command == "deny"
    dc = route(type="C_DC_NA_1", command=None, on="close", off="open")
    assert dc.call("ON").command == "close" and dc.call("OFF").command == "open"
    with pytest.raises(MappingError, match="no bus command for value 'INTERMEDIATE'"):
        dc.call("INTERMEDIATE")
    fallback = route(type="C_DC_NA_1", command="move", on="close")
    assert fallback.call("INTERMEDIATE").command == "move"
    assert fallback.call("ON").command == "close"
    se = route(type="C_SE_NC_1", command="setpoint", args={"target": "{value}"})
    assert se.call(1.5).args == {"target": 1.5}


# --- allowlist and peer decoding -----------------------------------------------------------


def test_allowlist() -> None:
    nets = parse_allow(["127.0.0.1", "10.1.0.0/16", "::1"])
    assert allowed("127.0.0.1", nets) and allowed("10.1.200.3", nets) and allowed("::1", nets)
    assert not allowed("127.0.0.2", nets) and not allowed("10.2.0.1", nets)
    assert allowed("10.1.0.9:2404", nets)  # on_clock_sync style ip:port
    for bad in ([], ["10.0.0.300"], [5], "127.0.0.1"):
        with pytest.raises(ValueError):
            parse_allow(bad)
    with pytest.raises(ValueError):
        allowed("not-an-ip", nets)  # the callback turns this into a refusal


def test_peer_addresses() -> None:
    assert _decode_proc_address("0100007F:1F90", 4) == "127.0.0.1:8080"
    assert _decode_proc_address("00000000000000000000000001000000:0050", 6) == "[::1]:80"
    mapped = "0000000000000000FFFF00000200007F:0050"
    assert _decode_proc_address(mapped, 6) == "127.0.0.2:80"
    assert _host_of("127.0.0.1:49148") == "127.0.0.1" and _host_of("[::1]:5") == "::1"
    assert _host_of("::1") == "::1" and _host_of("10.0.0.1") == "10.0.0.1"


# --- properties ----------------------------------------------------------------------------

KINDS = sorted(set(MONITOR_TYPES.values()) | set(COMMAND_TYPES.values()))
anything = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
                     st.lists(st.integers(), max_size=2), st.dictionaries(st.text(), st.integers(),
                                                                          max_size=2))


def in_kind(kind: str, value: Any) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "double":
        return value in DOUBLE_STATES
    if kind in ("float", "normalized"):
        ok = isinstance(value, float) and math.isfinite(value)
        return ok and (kind == "float" or -1.0 <= value <= 1.0)
    bounds = INT16 if kind == "scaled" else INT32
    return type(value) is int and bounds[0] <= value <= bounds[1]


@given(st.sampled_from(KINDS), anything)
def test_coerce_gives_a_value_of_the_kind_or_mapping_error(kind: str, raw: Any) -> None:
    try:
        value = coerce(kind, raw)
    except MappingError:
        return
    assert in_kind(kind, value)
    assert coerce(kind, value) == value  # a coerced value is a fixed point


@given(st.sampled_from(KINDS), anything)
def test_text_form_round_trips(kind: str, raw: Any) -> None:
    """What the CLI sends (a word) means the same as the value itself."""
    try:
        value = coerce(kind, raw)
    except MappingError:
        return
    assert coerce(kind, str(value)) == value


# --- actor settings: checked before anything opens ---------------------------------------------


def make_actor(tmp_path: Path, **settings: Any) -> Any:
    table = {"type": "iec104-server", "allow": ["127.0.0.1"], "point": [point()], **settings}
    site = parse_site({"actors": {"scada": table}}, tmp_path / "site.toml")
    return create_actor(site, "scada")


@pytest.mark.parametrize(("settings", "path", "words"), [
    ({"allow": []}, "allow", "must list the masters"),
    ({"allow": ["10.0.0.999"]}, "allow", "'10.0.0.999'"),
    ({"tick_rate_ms": 20}, "tick_rate_ms", "at least 50"),
    ({"max_connections": 300}, "max_connections", "0 (no limit) .. 255"),
    ({"common_address": 65535}, "common_address", "broadcast"),
    ({"point": [point(report_ms=250)]}, "point[0].report_ms", "multiple of tick_rate_ms 100"),
    ({"key": "{tmp}/k.pem"}, "key", "no such file"),
    ({"cert": "{tmp}/c.pem"}, "key", "is required with cert"),
    ({"ca": "{tmp}/c.pem"}, "ca", "needs cert"),
])
def test_actor_settings_errors(tmp_path: Path, settings: dict[str, Any], path: str,
                               words: str) -> None:
    (tmp_path / "c.pem").write_text("x")
    settings = {k: v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v
                for k, v in settings.items()}
    with pytest.raises(ConfigError) as info:
        make_actor(tmp_path, **settings)
    assert info.value.path == f"actors.scada.{path}" and words in info.value.reason
    assert info.value.source.endswith("site.toml")


def test_short_float_range() -> None:
    """c104 turns a short float beyond the IEEE single range into inf without an error."""
    assert coerce("float", "3.4e38") == 3.4e38
    for raw in (1e300, "-3.5e38"):
        with pytest.raises(MappingError, match="short float range"):
            coerce("float", raw)
