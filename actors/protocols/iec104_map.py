"""Feed-to-point mapping of the ``iec104-server`` actor: config checks and the pure logic.

The site file describes what the 104 server exposes, one table per information object::

    [[actors.scada.point]]            # a monitoring point fed from the bus
    ioa = 100
    type = "M_ME_NC_1"
    topic = "evt.motor1.position"     # bus topic prefix (segment aligned, see broker.wire.topics)
    field = "value"                   # dotted path into the envelope's data (default "value")
    match = { chan = "motor/th/position" }   # optional: data fields that must be equal
    map = { open = 1.0, closed = 0.0 }       # optional: received value -> point value
    report_ms = 1000                  # optional periodic transmission (multiple of tick_rate_ms)

    [[actors.scada.point]]
    ioa = 101
    type = "M_IT_NA_1"
    topic = "evt.reader1.tag"
    count = true                      # the point counts matching messages

    [[actors.scada.command]]          # a control point: a 104 command becomes a bus command
    ioa = 2000
    type = "C_SC_NA_1"
    actor = "door1"
    on = "accept"                     # the bus command for value on / off ...
    off = "deny"
    command = "set"                   # ... or one command for every value
    args = { level = "{value}", note = "from scada" }   # "{value}": the received value
    select = false                    # true: select-before-operate
    timeout = 5.0                     # seconds the target has to reply ok (else negative ACT_CON)

Everything is checked before the server starts; each error is a ConfigError with the key path
(``actors.scada.point[2].type: unknown type ...``). Values are kept in a neutral form, so this
module needs no c104 (and is unit-tested without sockets): a *kind* per 104 type says what a
value is — ``bool`` (single point), ``double`` (one of `DOUBLE_STATES`), ``float`` (short
float), ``normalized`` (float in [-1, 1]), ``scaled`` (int16), ``counter`` (int32). The actor
converts the neutral value to c104's objects.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any, Final, NoReturn

from broker.wire import topics
from broker.wire.errors import ConfigError, TopicError

MONITOR_TYPES: Final[dict[str, str]] = {
    "M_SP_NA_1": "bool", "M_SP_TB_1": "bool",
    "M_DP_NA_1": "double", "M_DP_TB_1": "double",
    "M_ME_NA_1": "normalized", "M_ME_TD_1": "normalized",
    "M_ME_NB_1": "scaled", "M_ME_TE_1": "scaled",
    "M_ME_NC_1": "float", "M_ME_TF_1": "float",
    "M_IT_NA_1": "counter", "M_IT_TB_1": "counter",
}
COMMAND_TYPES: Final[dict[str, str]] = {
    "C_SC_NA_1": "bool", "C_SC_TA_1": "bool",
    "C_DC_NA_1": "double", "C_DC_TA_1": "double",
    "C_SE_NA_1": "normalized", "C_SE_TA_1": "normalized",
    "C_SE_NB_1": "scaled", "C_SE_TB_1": "scaled",
    "C_SE_NC_1": "float", "C_SE_TC_1": "float",
}
DOUBLE_STATES: Final = ("INTERMEDIATE", "OFF", "ON", "INDETERMINATE")  # index = DPI 0..3
MAX_IOA: Final = 0xFFFFFF  # 3 octets on the wire
INT16: Final = (-(2**15), 2**15 - 1)
INT32: Final = (-(2**31), 2**31 - 1)
FLOAT32_MAX: Final = 3.4028234663852886e38  # largest finite IEEE 754 single
DEFAULT_FIELD: Final = "value"
VALUE_PLACEHOLDER: Final = "{value}"
_TRUE: Final = frozenset({"true", "1", "on", "yes"})
_FALSE: Final = frozenset({"false", "0", "off", "no"})
_POINT_KEYS: Final = frozenset({"ioa", "type", "topic", "field", "match", "map", "count",
                                "report_ms", "name"})
_COMMAND_KEYS: Final = frozenset({"ioa", "type", "actor", "command", "on", "off", "args",
                                  "select", "timeout", "name"})
_CHOICE_KINDS: Final = frozenset({"bool", "double"})  # kinds whose values can be on / off


class MappingError(ValueError):
    """A value that cannot become a point value (bad type, out of range, no map entry, missing
    field). The actor logs it with the topic and counts it; the message says what to fix."""


# --- values ----------------------------------------------------------------------------------


def coerce(kind: str, raw: Any) -> Any:
    """`raw` (from a bus message, a command argument or a 104 command) as a value of `kind`;
    strings are parsed (``"on"``, ``"1.5"``, ``"0x10"``). Raises MappingError."""
    try:
        return _COERCE[kind](raw)
    except (ValueError, TypeError, OverflowError) as exc:
        shown = repr(raw) if isinstance(raw, str) else f"{type(raw).__name__} {raw!r}"
        raise MappingError(f"expected {_EXPECTED[kind]}, got {shown[:80]}"
                           + (f" ({exc})" if str(exc) else "")) from None


def _bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
        return raw.strip().lower() in _TRUE
    raise ValueError


def _double(raw: Any) -> str:
    if isinstance(raw, bool):
        return "ON" if raw else "OFF"
    if isinstance(raw, int) and 0 <= raw < len(DOUBLE_STATES):
        return DOUBLE_STATES[raw]
    if isinstance(raw, str):
        word = raw.strip().upper()
        if word in DOUBLE_STATES:
            return word
        if word.lower() in _TRUE | _FALSE:
            return "ON" if word.lower() in _TRUE else "OFF"
    raise ValueError


def _number(raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise TypeError
    out = float(raw)
    if not math.isfinite(out):
        raise ValueError("not finite")
    return out


def _short_float(raw: Any) -> float:
    """A short float (IEEE 754 single, M_ME_NC_1 / C_SE_NC_1): c104 silently turns a value
    beyond its range into infinity."""
    out = _number(raw)
    if abs(out) > FLOAT32_MAX:
        raise ValueError(f"out of the short float range +-{FLOAT32_MAX:.7g}")
    return out


def _normalized(raw: Any) -> float:
    out = _number(raw)
    if not -1.0 <= out <= 1.0:
        raise ValueError("out of range -1..1")
    return out


def _integer(raw: Any, bounds: tuple[int, int]) -> int:
    if isinstance(raw, bool):
        raise TypeError
    if isinstance(raw, str):
        text = raw.strip()
        base = 0 if text.lower().lstrip("+-").startswith(("0x", "0o", "0b")) else 10
        try:
            raw = int(text, base)
        except ValueError:
            raw = float(text)
    if isinstance(raw, float):
        if not raw.is_integer():
            raise ValueError("not a whole number")
        raw = int(raw)
    if not isinstance(raw, int):
        raise TypeError
    if not bounds[0] <= raw <= bounds[1]:
        raise ValueError(f"out of range {bounds[0]}..{bounds[1]}")
    return raw


_COERCE: Final[dict[str, Callable[[Any], Any]]] = {
    "bool": _bool, "double": _double, "float": _short_float, "normalized": _normalized,
    "scaled": lambda raw: _integer(raw, INT16), "counter": lambda raw: _integer(raw, INT32),
}
_EXPECTED: Final[dict[str, str]] = {
    "bool": "on/off (true/false, 1/0)",
    "double": "a double-point state (" + ", ".join(DOUBLE_STATES) + ", or true/false)",
    "float": "a number", "normalized": "a number from -1 to 1",
    "scaled": "an integer from -32768 to 32767", "counter": "a 32-bit signed integer",
}


def get_path(data: Mapping[str, Any], path: str) -> Any:
    """``data["a"]["b"]`` for ``"a.b"``; raises MappingError naming the missing part."""
    value: Any = data
    for i, part in enumerate(path.split(".")):
        if not isinstance(value, Mapping) or part not in value:
            where = ".".join(path.split(".")[:i]) or "data"
            raise MappingError(f"no field {path!r} in the message ({where} has "
                               f"{_keys(value)})")
        value = value[part]
    return value


def _keys(value: Any) -> str:
    if isinstance(value, Mapping):
        return "keys " + (", ".join(sorted(map(str, value))[:10]) or "none")
    return f"a {type(value).__name__}, not a table"


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps true apart from 1 (TOML and msgpack both distinguish them)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def map_key(raw: Any) -> str:
    """The ``map`` table key a received value looks up (TOML table keys are strings)."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    return str(raw)


# --- the mapping as configured ---------------------------------------------------------------


@dataclass(frozen=True)
class PointSpec:
    """One ``[[actors.NAME.point]]``: where a monitoring point's value comes from."""

    ioa: int
    type: str
    topic: str
    field: str = DEFAULT_FIELD
    match: Mapping[str, Any] = dc_field(default_factory=dict)
    map: Mapping[str, Any] | None = None
    count: bool = False
    report_ms: int = 0
    name: str = ""

    @property
    def kind(self) -> str:
        return MONITOR_TYPES[self.type]

    def wants(self, topic: str, data: Mapping[str, Any]) -> bool:
        """Whether a bus message on `topic` feeds this point (topic prefix and `match`)."""
        if not topics.matches(topic, self.topic):
            return False
        for path, expected in self.match.items():
            try:
                if not _same(get_path(data, path), expected):
                    return False
            except MappingError:
                return False
        return True

    def value_of(self, data: Mapping[str, Any]) -> Any:
        """The point value a matching message carries (not for `count` points)."""
        raw = get_path(data, self.field)
        if self.map is not None:
            key = map_key(raw)
            if key not in self.map:
                raise MappingError(f"value {raw!r} of field {self.field!r} is not in the map "
                                   f"(keys: {', '.join(sorted(self.map))})")
            return self.map[key]  # checked against the kind at config time
        return coerce(self.kind, raw)


@dataclass(frozen=True)
class BusCall:
    """The bus command one 104 command becomes."""

    actor: str
    command: str
    args: dict[str, Any]


@dataclass(frozen=True)
class CommandRoute:
    """One ``[[actors.NAME.command]]``: which bus command a 104 command becomes."""

    ioa: int
    type: str
    actor: str
    command: str = ""
    on: str = ""
    off: str = ""
    args: Mapping[str, Any] = dc_field(default_factory=dict)
    select: bool = False
    timeout: float = 0.0  # 0: the actor's command_timeout
    name: str = ""

    @property
    def kind(self) -> str:
        return COMMAND_TYPES[self.type]

    def call(self, value: Any) -> BusCall:
        """The bus command for a received command value (already of this route's kind).
        ``{value}`` in `args` is replaced: alone, by the value itself; inside text, by its
        text. Raises MappingError when no command is configured for this value."""
        name = self.command
        if value in (True, "ON") and self.on:
            name = self.on
        elif value in (False, "OFF") and self.off:
            name = self.off
        if not name:
            raise MappingError(f"no bus command for value {value!r} (set 'command', or 'on' "
                               "and 'off')")
        return BusCall(self.actor, name, {k: _fill(v, value) for k, v in self.args.items()})


def _fill(template: Any, value: Any) -> Any:
    if template == VALUE_PLACEHOLDER:
        return value
    if isinstance(template, str) and VALUE_PLACEHOLDER in template:
        return template.replace(VALUE_PLACEHOLDER, str(value))
    return template


@dataclass(frozen=True)
class Mapping104:
    """The whole checked mapping of one server actor."""

    points: tuple[PointSpec, ...]
    commands: tuple[CommandRoute, ...]

    def prefixes(self) -> list[str]:
        """The fewest topic prefixes covering every point's topic: a delivery must reach the
        mapping once, and the actor hands each delivery to every subscription it matches."""
        wanted = sorted({p.topic for p in self.points}, key=len)
        out: list[str] = []
        for prefix in wanted:
            if not any(topics.matches(prefix.rstrip("."), kept) for kept in out):
                out.append(prefix)
        return out


def parse_mapping(points: Any, commands: Any, path: str, tick_rate_ms: int,
                  source: str = "") -> Mapping104:
    """Check the raw ``point`` and ``command`` lists of ``[actors.NAME]`` (at `path`).
    Raises ConfigError with the key path of the first problem."""
    seen: dict[int, str] = {}
    parsed_points = tuple(
        _point(entry, f"{path}.point[{i}]", tick_rate_ms, seen, source)
        for i, entry in enumerate(_entries(points, f"{path}.point", source)))
    parsed_commands = tuple(
        _command(entry, f"{path}.command[{i}]", seen, source)
        for i, entry in enumerate(_entries(commands, f"{path}.command", source)))
    return Mapping104(parsed_points, parsed_commands)


def _entries(raw: Any, path: str, source: str) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(path, f"expected an array of tables ([[{path}]]), got "
                                f"{type(raw).__name__}", source)
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}[{i}]", f"expected a table, got {type(entry).__name__}",
                              source)
    return raw


class _Checker:
    """Reads one table's keys with the key path in every error."""

    def __init__(self, entry: dict[str, Any], path: str, known: frozenset[str],
                 source: str) -> None:
        self.entry, self.path, self.source = entry, path, source
        for key in entry:
            if key not in known:
                self.fail(key, f"unknown key (known keys: {', '.join(sorted(known))})")

    def fail(self, key: str, reason: str) -> NoReturn:
        raise ConfigError(f"{self.path}.{key}", reason, self.source)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if key not in self.entry:
            if default is ...:
                self.fail(key, "is required")
            return default
        value = self.entry[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            self.fail(key, f"expected {names}, got {type(value).__name__} {value!r}")
        return value

    def ioa(self, seen: dict[int, str]) -> int:
        ioa: int = self.get("ioa", int)
        if not 1 <= ioa <= MAX_IOA:
            self.fail("ioa", f"must be 1..{MAX_IOA} (got {ioa})")
        if ioa in seen:
            self.fail("ioa", f"duplicate IOA {ioa} (already used by {seen[ioa]})")
        seen[ioa] = self.path
        return ioa

    def type(self, table: dict[str, str], other: dict[str, str], what: str) -> str:
        name: str = self.get("type", str)
        if name not in table:
            hint = f" ({name} is a {'command' if name in other else 'other'} type)" \
                if name in other else ""
            self.fail("type", f"unknown {what} type {name!r}{hint}; known: "
                              f"{', '.join(table)}")
        return name


def _point(entry: dict[str, Any], path: str, tick_rate_ms: int, seen: dict[int, str],
           source: str) -> PointSpec:
    c = _Checker(entry, path, _POINT_KEYS, source)
    ioa = c.ioa(seen)
    type_name = c.type(MONITOR_TYPES, COMMAND_TYPES, "monitoring")
    kind = MONITOR_TYPES[type_name]
    topic = c.get("topic", str)
    try:
        topics.check_prefix(topic)
    except TopicError as exc:
        c.fail("topic", str(exc))
    count = c.get("count", bool, False)
    if count and kind != "counter":
        c.fail("count", f"count = true needs a counter type (M_IT_NA_1, M_IT_TB_1), not "
                        f"{type_name}")
    if count and ("field" in entry or "map" in entry):
        c.fail("field" if "field" in entry else "map",
               "a count = true point counts messages; it takes no field or map")
    fld = c.get("field", str, DEFAULT_FIELD)
    if not fld or any(not part for part in fld.split(".")):
        c.fail("field", f"must be a dotted path such as 'value' or 'data.temp' (got {fld!r})")
    match = c.get("match", dict, {})
    for key, expected in match.items():
        if isinstance(expected, dict | list):
            c.fail(f"match.{key}", "must be a plain value (string, number or boolean)")
    table = c.get("map", dict, None)
    if table is not None:
        if not table:
            c.fail("map", "is empty")
        table = {str(k): _checked(c, f"map.{k}", kind, v) for k, v in table.items()}
    report_ms = c.get("report_ms", int, 0)
    if report_ms < 0 or report_ms % tick_rate_ms:
        c.fail("report_ms", f"must be 0 (off) or a multiple of tick_rate_ms {tick_rate_ms} "
                            f"(got {report_ms})")
    return PointSpec(ioa, type_name, topic, fld, match, table, count, report_ms,
                     c.get("name", str, ""))


def _checked(c: _Checker, key: str, kind: str, value: Any) -> Any:
    try:
        return coerce(kind, value)
    except MappingError as exc:
        c.fail(key, str(exc))


def _command(entry: dict[str, Any], path: str, seen: dict[int, str],
             source: str) -> CommandRoute:
    c = _Checker(entry, path, _COMMAND_KEYS, source)
    ioa = c.ioa(seen)
    type_name = c.type(COMMAND_TYPES, MONITOR_TYPES, "command")
    actor = c.get("actor", str)
    try:
        topics.check_name(actor, "actor")
    except TopicError as exc:
        c.fail("actor", str(exc))
    names = {key: c.get(key, str, "") for key in ("command", "on", "off")}
    for key, value in names.items():
        if key in entry and not value.strip():
            c.fail(key, "is empty")
    if (names["on"] or names["off"]) and COMMAND_TYPES[type_name] not in _CHOICE_KINDS:
        c.fail("on" if names["on"] else "off",
               f"on/off choices need a single or double command type, not {type_name}")
    if not names["command"] and not (names["on"] and names["off"]):
        c.fail("command", "is required (or give both 'on' and 'off')")
    timeout = c.get("timeout", float, 0.0)
    if timeout < 0 or not math.isfinite(timeout):
        c.fail("timeout", f"must be a positive number of seconds (got {timeout})")
    return CommandRoute(ioa, type_name, actor, names["command"], names["on"], names["off"],
                        c.get("args", dict, {}), c.get("select", bool, False), timeout,
                        c.get("name", str, ""))


# --- runtime state ---------------------------------------------------------------------------


@dataclass
class PointState:
    """What the server holds for one monitoring point: None until the first update (the
    point is then sent with quality invalid)."""

    spec: PointSpec
    value: Any = None
    updated: float | None = None  # Unix time
    source: str = ""

    @property
    def quality(self) -> str:
        return "invalid" if self.updated is None else "good"

    def row(self) -> dict[str, Any]:
        return {"ioa": self.spec.ioa, "type": self.spec.type, "name": self.spec.name,
                "value": self.value, "quality": self.quality, "updated": self.updated,
                "source": self.source}


class PointTable:
    """The monitoring points by IOA; turns bus messages and `set` into point updates."""

    def __init__(self, specs: tuple[PointSpec, ...]) -> None:
        self.states = {s.ioa: PointState(s) for s in specs}

    def on_message(self, topic: str, data: Mapping[str, Any],
                   now: float) -> tuple[list[PointState], list[tuple[PointSpec, str]]]:
        """Apply one bus message: the points it updated, and (point, reason) for points it
        matched but could not update (missing field, value out of range, not in map)."""
        updated: list[PointState] = []
        errors: list[tuple[PointSpec, str]] = []
        for state in self.states.values():
            spec = state.spec
            if not spec.wants(topic, data):
                continue
            try:
                value = self._next_count(state) if spec.count else spec.value_of(data)
            except MappingError as exc:
                errors.append((spec, str(exc)))
                continue
            state.value, state.updated, state.source = value, now, topic
            updated.append(state)
        return updated, errors

    @staticmethod
    def _next_count(state: PointState) -> int:
        """Counters wrap to 0 after INT32 max, as a binary counter reading does."""
        current = state.value if isinstance(state.value, int) else 0
        return 0 if current >= INT32[1] else current + 1

    def set(self, ioa: int, raw: Any, now: float, source: str) -> PointState:
        """Operator `set`: raises MappingError for an unknown IOA or a bad value."""
        state = self.states.get(ioa)
        if state is None:
            known = ", ".join(str(i) for i in sorted(self.states)) or "none"
            raise MappingError(f"no monitoring point with IOA {ioa} (points: {known})")
        state.value = coerce(state.spec.kind, raw)
        state.updated, state.source = now, source
        return state

    def rows(self) -> list[dict[str, Any]]:
        return [self.states[ioa].row() for ioa in sorted(self.states)]
