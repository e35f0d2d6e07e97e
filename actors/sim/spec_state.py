"""The simulated SPEC session's state: variables, data arrays, motors that move over time,
counters, status.

Everything here is plain data plus a clock passed in (`now`), so it is unit-tested without
sockets or sleeps. Every change of a property that a client may watch goes to `notify(prop,
value, deleted)`; the server fans it out as SV_EVENT to the clients registered for that name.

Variables are text (numbers as ``%.15g`` text, as SPEC sends them), associative arrays
(``dict[str, str]``; ``A[]`` holds the motor positions by motor number, ``S[]`` the counter
values by counter number) or data arrays (`actors.sim.spec_arrays`; the live ones, refreshed
by a simulated detector, are read-only).

Motors: ``user = sign * dial + offset``; limits are dial positions. A move runs at `speed`
units per second from where the motor is; `tick(now)` publishes ``position`` and
``dial_position`` while it moves and, when it ends, the last position and only then
``move_done 0`` (pycertifspec depends on that order). Counting ends at the first `tick` (or
`finish_count`) at or after its end, which first publishes the final counter values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from actors.protocols.spec_types import KEY_SEPARATOR, SpecArray, Value, format_number, parse_text
from actors.sim.spec_arrays import ArrayError, DataArray, LiveArray, from_spec

LIMIT: Final = 1e6  # default soft limits, dial units
MOTOR_PARAMS: Final = ("step_size", "base_rate", "slew_rate", "acceleration", "backlash")
ZERO_FLAGS: Final = ("high_lim_hit", "low_lim_hit", "emergency_stop", "motor_fault", "unusable")
SEARCHES: Final = ("home", "home+", "home-", "lim+", "lim-")
COUNT_RATES: Final = (1.0, 1000.0, 250.0)  # counts per second: sec, then mon, then the rest
ALL_MOTORS: Final = "motor/.."
ALL_SCALERS: Final = "scaler/.all./count"
READ_ONLY: Final = ("MOTORS", "COUNTERS", "SPEC", "VERSION", "S")
Stored = str | dict[str, str] | DataArray


class PropertyError(Exception):
    """A property (or command) the simulated SPEC cannot serve; the message names it."""


@dataclass
class Motor:
    mne: str
    number: int
    dial: float = 0.0
    offset: float = 0.0
    sign: int = 1
    low_limit: float = -LIMIT
    high_limit: float = LIMIT
    params: dict[str, float] = field(default_factory=lambda: {
        "step_size": 1000.0, "base_rate": 200.0, "slew_rate": 2000.0, "acceleration": 100.0,
        "backlash": 0.0})
    target: float | None = None  # dial target while moving
    start_dial: float = 0.0
    t0: float = 0.0
    duration: float = 0.0
    set_dial_after: float | None = None  # a home search sets the dial here when it ends

    def dial_at(self, now: float) -> float:
        if self.target is None:
            return self.dial
        if self.duration <= 0 or now >= self.t0 + self.duration:
            return self.target
        progress = max(0.0, now - self.t0) / self.duration
        return self.start_dial + (self.target - self.start_dial) * progress

    def user_at(self, now: float) -> float:
        return self.sign * self.dial_at(now) + self.offset

    def to_dial(self, user: float) -> float:
        return (user - self.offset) / self.sign

    def user_limits(self) -> tuple[float, float]:
        ends = sorted(self.sign * d + self.offset for d in (self.low_limit, self.high_limit))
        return ends[0], ends[1]


class SpecState:
    """Variables, motors and counters of one simulated SPEC process."""

    def __init__(self, specname: str, motors: dict[str, float], counters: list[str],
                 speed: float, notify: Callable[[str, Value, bool], object]) -> None:
        self.specname = specname
        self.speed = speed
        self.notify = notify
        self.motors = {m: Motor(m, i, dial=p) for i, (m, p) in enumerate(motors.items())}
        self.counters = {c: 0.0 for c in counters}
        self.count_end: float | None = None
        self.count_time = 0.0
        self.ready = 1
        self.variables: dict[str, Stored] = {
            "SPEC": specname, "VERSION": "6.sim", "MOTORS": str(len(motors)),
            "COUNTERS": str(len(counters)), "S": {str(i): "0" for i in range(len(counters))},
        }
        self.live: dict[str, LiveArray] = {}
        self.macros: dict[str, Any] = {}  # name → spec_parse.Define, kept by spec_eval
        self.get_angles(0.0)

    # --- variables -------------------------------------------------------------------------

    def get_var(self, name: str) -> Stored:
        if name not in self.variables:
            raise PropertyError(f"variable {name!r} does not exist")
        return self.variables[name]

    def set_var(self, name: str, value: Value | DataArray, *, replace: bool = False) -> None:
        """Assign `value`; a table is merged into an existing associative array (each element
        notified as ``var/NAME[KEY]`` too) unless `replace`; an array becomes a data array."""
        if name in self.live or name in READ_ONLY:
            raise PropertyError(f"{name} is read-only")
        old = self.variables.get(name)
        stored: Stored
        if isinstance(value, dict):
            stored = {} if replace or not isinstance(old, dict) else dict(old)
            stored.update(value)
            for key, item in value.items():
                self.notify(f"var/{name}[{key}]", {key: item}, False)
        elif isinstance(value, SpecArray):
            try:
                stored = from_spec(name, value)
            except ArrayError as exc:
                raise PropertyError(str(exc)) from None
        elif isinstance(value, DataArray):
            stored = value
        else:
            stored = value if isinstance(value, str) else format_number(value)
        self.variables[name] = stored
        self.notify(f"var/{name}", self._value(stored), False)

    def set_element(self, name: str, keys: list[str], text: str) -> None:
        """``NAME[k]`` (or ``NAME[k1][k2]``) = `text`: an element of a data array, else of
        an associative array (created when NAME does not exist)."""
        old = self.variables.get(name)
        if isinstance(old, DataArray):
            try:
                old.set([_number(k, f"{name}[{k}]") for k in keys],
                        _number(text, f"{name}[{']['.join(keys)}]"))
            except ArrayError as exc:
                raise PropertyError(str(exc)) from None
            self.notify(f"var/{name}", old.snapshot(), False)
            return
        if isinstance(old, str) or name in self.live:
            raise PropertyError(f"{name} is not an associative array: "
                                f"{name}[{']['.join(keys)}] cannot be set")
        self.set_var(name, {KEY_SEPARATOR.join(keys): text})

    def delete_var(self, name: str) -> None:
        if name in READ_ONLY or name in self.live:
            raise PropertyError(f"{name} is built in; it cannot be deleted")
        if self.variables.pop(name, None) is None:
            raise PropertyError(f"variable {name!r} does not exist")
        self.notify(f"var/{name}", "", True)

    def _value(self, stored: Stored) -> Value:
        return stored.snapshot() if isinstance(stored, DataArray) else stored

    # --- motors ----------------------------------------------------------------------------

    def motor(self, mne: str) -> Motor:
        found = self.motors.get(mne)
        if found is None:
            raise PropertyError(f"motor {mne!r} does not exist (motors: "
                                f"{', '.join(self.motors) or 'none'})")
        return found

    def motor_by_number(self, number: float) -> Motor:
        for m in self.motors.values():
            if m.number == number:
                return m
        raise PropertyError(f"motor number {format_number(number)} does not exist "
                            f"({len(self.motors)} motors)")

    def get_angles(self, now: float) -> None:
        """SPEC's ``get_angles``: A[] takes the current user positions."""
        self.variables["A"] = {str(m.number): format_number(m.user_at(now))
                               for m in self.motors.values()}

    def start_moves(self, targets: dict[str, float], now: float) -> None:
        """Start every motor of `targets` (user positions) at once; all or none."""
        plan = []
        for mne, user in targets.items():
            m = self.motor(mne)
            if m.target is not None:
                raise PropertyError(f"motor {mne} is already moving")
            dial = m.to_dial(user) if math.isfinite(user) else math.nan
            if not m.low_limit <= dial <= m.high_limit:
                low, high = m.user_limits()
                raise PropertyError(f"motor {mne}: {format_number(user)} is outside the limits "
                                    f"[{format_number(low)}, {format_number(high)}]")
            plan.append((m, dial))
        for m, dial in plan:
            self._start(m, dial, now)

    def _start(self, m: Motor, dial: float, now: float) -> None:
        m.start_dial, m.target, m.t0 = m.dial_at(now), dial, now
        m.duration = abs(dial - m.start_dial) / self.speed
        self.notify(f"motor/{m.mne}/move_done", "1", False)

    def set_limits(self, m: Motor, low: float, high: float) -> None:
        """``set_lm mne low high``: user-unit limits (in either order)."""
        if not (math.isfinite(low) and math.isfinite(high)):
            raise PropertyError(f"motor {m.mne}: limits must be numbers")
        m.low_limit, m.high_limit = sorted((m.to_dial(low), m.to_dial(high)))
        for name in ("low_limit", "high_limit"):
            self.notify(f"motor/{m.mne}/{name}", self._motor_read(m, name, 0.0), False)

    def search(self, m: Motor, how: str, home: float | None, now: float) -> None:
        """``chg_dial(mne, how[, home_pos])``: a home search ends at dial 0 (the simulated
        home switch) and then sets the dial to `home` (if given); a limit search ends at the
        limit in that direction."""
        if how not in SEARCHES:
            raise PropertyError(f"motor {m.mne}: search {how!r} is not one of "
                                f"{', '.join(SEARCHES)}")
        if m.target is not None:
            raise PropertyError(f"motor {m.mne} is moving")
        target = 0.0 if how.startswith("home") else \
            (m.high_limit if how == "lim+" else m.low_limit)
        m.set_dial_after = home if how.startswith("home") else None
        self._start(m, target, now)

    def abort(self, now: float) -> None:
        """^C: every motor stops where it is, counting stops."""
        for m in self.motors.values():
            if m.target is not None:
                m.target = m.dial_at(now)
                m.duration = 0.0
                m.set_dial_after = None
        self.tick(now)
        if self.count_end is not None:
            self.count_end = now
            self.finish_count(now)

    def moving(self) -> bool:
        return any(m.target is not None for m in self.motors.values())

    # --- counters --------------------------------------------------------------------------

    def start_count(self, seconds: float, now: float) -> None:
        if self.count_end is not None:
            raise PropertyError("already counting")
        if not (math.isfinite(seconds) and seconds >= 0):
            raise PropertyError(f"count time {seconds} is not a number of seconds")
        for c in self.counters:
            self.counters[c] = 0.0
        self.count_end, self.count_time = now + seconds, seconds
        self.notify(ALL_SCALERS, "1", False)

    def finish_count(self, now: float) -> bool:
        """End the count if it is over at `now`: the final counter values, then
        ``scaler/.all./count 0``. True if no count runs any more."""
        if self.count_end is None:
            return True
        if now < self.count_end:
            return False
        elapsed = min(self.count_time, now - (self.count_end - self.count_time))
        for i, c in enumerate(self.counters):
            rate = COUNT_RATES[min(i, len(COUNT_RATES) - 1)]
            self.counters[c] = round(elapsed * rate, 3)
            self.notify(f"scaler/{c}/value", format_number(self.counters[c]), False)
        self.variables["S"] = {str(i): format_number(v)
                               for i, v in enumerate(self.counters.values())}
        self.count_end = None
        self.notify(ALL_SCALERS, "0", False)
        return True

    # --- time ------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Publish the progress of moves and counts up to `now`."""
        for m in self.motors.values():
            if m.target is None:
                continue
            done = now >= m.t0 + m.duration
            if done:
                m.dial, m.target = m.target, None
                if m.set_dial_after is not None:
                    m.dial, m.set_dial_after = m.set_dial_after, None
            self.notify(f"motor/{m.mne}/position", format_number(m.user_at(now)), False)
            self.notify(f"motor/{m.mne}/dial_position", format_number(m.dial_at(now)), False)
            if done:
                self.notify(f"motor/{m.mne}/move_done", "0", False)
        self.finish_count(now)

    # --- properties ------------------------------------------------------------------------

    def read(self, prop: str, now: float) -> Value:
        """The value of property `prop` (SV_CHAN_READ); PropertyError if there is none."""
        kind, _, rest = prop.partition("/")
        if kind == "var" and rest:
            return self._read_var(rest, now)
        if kind == "motor":
            mne, _, what = rest.partition("/")
            return self._motor_read(self.motor(mne), what, now)
        if prop == ALL_SCALERS:
            return "1" if self.count_end is not None else "0"
        if kind == "scaler":
            cnt, _, what = rest.partition("/")
            if cnt in self.counters and what == "value":
                return format_number(self.counters[cnt])
        if prop == "status/ready":
            return str(self.ready)
        if prop in ("status/simulate", "status/shell", "status/quit"):
            return "0"
        if prop in ("output/tty", "error"):
            raise PropertyError(f"{prop} carries events only; register it")
        raise PropertyError(f"unknown property {prop!r}")

    def _read_var(self, rest: str, now: float) -> Value:
        name, key = split_element(rest)
        if name in self.live:
            if key is not None:
                raise PropertyError(f"{name} is a data array: read it whole")
            live = self.live[name]
            return live.render(live.frame)
        value = self.get_var(name)
        if key is None:
            return self._value(value)
        if isinstance(value, DataArray):
            keys = key.split(KEY_SEPARATOR)
            try:
                return format_number(value.get([_number(k, f"{name}[{k}]") for k in keys]))
            except ArrayError as exc:
                raise PropertyError(str(exc)) from None
        if not isinstance(value, dict) or key not in value:
            raise PropertyError(f"{name}[{key}] does not exist")
        return {key: value[key]}

    def _motor_read(self, m: Motor, what: str, now: float) -> Value:
        simple: dict[str, float] = {
            "position": m.user_at(now), "dial_position": m.dial_at(now), "offset": m.offset,
            "sign": m.sign, "move_done": 1 if m.target is not None else 0,
            "high_limit": m.high_limit, "low_limit": m.low_limit, **m.params,
            **dict.fromkeys(ZERO_FLAGS, 0),
        }
        if what in ("limits", "search", "start_one", "sync_check"):
            raise PropertyError(f"motor {m.mne}: {what} can be set (or watched), not read")
        if what not in simple:
            raise PropertyError(f"motor {m.mne} has no property {what!r}")
        return format_number(simple[what])

    def write(self, prop: str, value: Value, now: float) -> None:
        """SV_CHAN_SEND of `value` to `prop` (not the start/abort properties: see the server)."""
        kind, _, rest = prop.partition("/")
        if kind == "var" and rest:
            name, key = split_element(rest)
            if key is None:
                self.set_var(name, value)
            else:
                self.set_element(name, key.split(KEY_SEPARATOR), _element_text(value, key,
                                                                               prop))
            return
        if kind == "motor":
            mne, _, what = rest.partition("/")
            self._motor_write(self.motor(mne), what, value, now)
            return
        if prop == ALL_SCALERS:
            seconds = _number(value, prop)
            if seconds:
                self.start_count(abs(seconds), now)
            else:
                self.abort(now)
            return
        raise PropertyError(f"property {prop!r} cannot be set")

    def _motor_write(self, m: Motor, what: str, value: Value, now: float) -> None:
        if what == "sync_check":
            return  # the answer to a question this simulator never asks
        if what in ("limits", "search"):
            words = _text(value, f"motor/{m.mne}/{what}").split()
            if what == "limits" and len(words) == 2:
                self.set_limits(m, _number(words[0], what), _number(words[1], what))
            elif what == "search" and words and len(words) <= 2:
                home = _number(words[1], what) if len(words) == 2 else None
                self.search(m, words[0], home, now)
            else:
                form = "low high" if what == "limits" else "how [home_pos]"
                raise PropertyError(f"motor {m.mne}: {what} takes {form!r}, got "
                                    f"{str(value)[:40]!r}")
            return
        number = _number(value, f"motor/{m.mne}/{what}")
        if m.target is not None and what in ("position", "dial_position", "offset"):
            raise PropertyError(f"motor {m.mne} is moving")
        if what == "position":
            m.offset = number - m.sign * m.dial
        elif what == "dial_position":
            m.dial = number
        elif what == "offset":
            m.offset = number
        elif what in ("high_limit", "low_limit"):
            setattr(m, what, number)
        elif what in MOTOR_PARAMS:
            m.params[what] = number
        else:
            raise PropertyError(f"motor {m.mne} property {what!r} cannot be set")
        for name in ("position", "dial_position", "offset", what):
            self.notify(f"motor/{m.mne}/{name}", self._motor_read(m, name, now), False)


def split_element(rest: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME[KEY]`` (2-D ``NAME[K1][K2]`` keys are joined with SPEC's 0x1C)."""
    if not rest.endswith("]") or "[" not in rest:
        return rest, None
    name, _, keys = rest.partition("[")
    return name, KEY_SEPARATOR.join(keys[:-1].split("]["))


def _element_text(value: Value, key: str, prop: str) -> str:
    """The value for one element: text or a number, or a table holding that element (what
    clients that pack an element write as an associative array send)."""
    if isinstance(value, dict):
        if key in value:
            return value[key]
        if len(value) == 1:
            return next(iter(value.values()))
        raise PropertyError(f"{prop}: the table sent has no element {key!r}")
    return _text(value, prop)


def _text(value: Value, prop: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return format_number(value)
    raise PropertyError(f"{prop}: expected a single value, got an array")


def _number(value: Value | str, prop: str) -> float:
    parsed = parse_text(value) if isinstance(value, str) else value
    if isinstance(parsed, bool) or not isinstance(parsed, int | float):
        raise PropertyError(f"{prop}: expected a number, got {str(value)[:40]!r}")
    return float(parsed)
