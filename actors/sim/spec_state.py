"""The simulated SPEC session's state: variables, motors that move over time, counters, status.

Everything here is plain data plus a clock passed in (`now`), so it is unit-tested without
sockets or sleeps. Every change of a property that a client may watch goes to `notify(prop,
value, deleted)`; the server fans it out as SV_EVENT to the clients registered for that name.

Motors: ``user = sign * dial + offset``. A move runs at `speed` units per second from where the
motor is; `tick(now)` publishes ``position`` and ``dial_position`` while it moves and, when it
ends, the last position and only then ``move_done 0`` (pycertifspec depends on that order).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from actors.protocols.spec_types import SpecArray, Value, format_number, parse_text

LIMIT: Final = 1e6  # default soft limits, user units
MOTOR_PARAMS: Final = ("step_size", "base_rate", "slew_rate", "acceleration", "backlash")
ZERO_FLAGS: Final = ("high_lim_hit", "low_lim_hit", "emergency_stop", "motor_fault", "unusable")
COUNT_RATES: Final = (1.0, 1000.0, 250.0)  # counts per second: sec, then mon, then the rest
ALL_MOTORS: Final = "motor/.."
ALL_SCALERS: Final = "scaler/.all./count"


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

    def dial_at(self, now: float) -> float:
        if self.target is None:
            return self.dial
        if self.duration <= 0 or now >= self.t0 + self.duration:
            return self.target
        return self.start_dial + (self.target - self.start_dial) * (now - self.t0) / self.duration

    def user_at(self, now: float) -> float:
        return self.sign * self.dial_at(now) + self.offset


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
        self.variables: dict[str, Value] = {
            "SPEC": specname, "VERSION": "6.sim", "MOTORS": str(len(motors)),
            "COUNTERS": str(len(counters)),
        }
        self.get_angles(0.0)

    # --- variables -------------------------------------------------------------------------

    def get_var(self, name: str) -> Value:
        if name not in self.variables:
            raise PropertyError(f"variable {name!r} does not exist")
        return self.variables[name]

    def set_var(self, name: str, value: Value) -> None:
        old = self.variables.get(name)
        if isinstance(value, dict):
            merged = dict(old) if isinstance(old, dict) else {}
            merged.update(value)
            self.variables[name] = merged
            for key, item in value.items():
                self.notify(f"var/{name}[{key}]", {key: item}, False)
            value = merged
        else:
            self.variables[name] = value
        self.notify(f"var/{name}", value, False)

    def delete_var(self, name: str) -> None:
        if self.variables.pop(name, None) is None:
            raise PropertyError(f"variable {name!r} does not exist")
        self.notify(f"var/{name}", "", True)

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
            if not math.isfinite(user) or not m.low_limit <= user <= m.high_limit:
                raise PropertyError(f"motor {mne}: {format_number(user)} is outside the limits "
                                    f"[{format_number(m.low_limit)}, "
                                    f"{format_number(m.high_limit)}]")
            plan.append((m, (user - m.offset) / m.sign))
        for m, dial in plan:
            m.start_dial, m.target, m.t0 = m.dial, dial, now
            m.duration = abs(dial - m.dial) / self.speed
            self.notify(f"motor/{m.mne}/move_done", "1", False)

    def abort(self, now: float) -> None:
        """^C: every motor stops where it is, counting stops."""
        for m in self.motors.values():
            if m.target is not None:
                m.target = m.dial_at(now)
                m.duration = 0.0
        self.tick(now)
        if self.count_end is not None:
            self.count_end = now
            self.tick(now)

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

    def _count_values(self, elapsed: float) -> None:
        for i, c in enumerate(self.counters):
            rate = COUNT_RATES[min(i, len(COUNT_RATES) - 1)]
            self.counters[c] = round(elapsed * rate, 3)
            self.notify(f"scaler/{c}/value", format_number(self.counters[c]), False)

    # --- time ------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Publish the progress of moves and counts up to `now`."""
        for m in self.motors.values():
            if m.target is None:
                continue
            done = now >= m.t0 + m.duration
            if done:
                m.dial, m.target = m.target, None
            self.notify(f"motor/{m.mne}/position", format_number(m.user_at(now)), False)
            self.notify(f"motor/{m.mne}/dial_position", format_number(m.dial_at(now)), False)
            if done:
                self.notify(f"motor/{m.mne}/move_done", "0", False)
        if self.count_end is not None and now >= self.count_end:
            self._count_values(min(self.count_time, now - (self.count_end - self.count_time)))
            self.count_end = None
            self.notify(ALL_SCALERS, "0", False)

    # --- properties ------------------------------------------------------------------------

    def read(self, prop: str, now: float) -> Value:
        """The value of property `prop` (SV_CHAN_READ); PropertyError if there is none."""
        kind, _, rest = prop.partition("/")
        if kind == "var" and rest:
            name, key = _split_element(rest)
            value = self.get_var(name)
            if key is None:
                return value
            if not isinstance(value, dict) or key not in value:
                raise PropertyError(f"{name}[{key}] does not exist")
            return {key: value[key]}
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

    def _motor_read(self, m: Motor, what: str, now: float) -> Value:
        simple: dict[str, float] = {
            "position": m.user_at(now), "dial_position": m.dial_at(now), "offset": m.offset,
            "sign": m.sign, "move_done": 1 if m.target is not None else 0,
            "high_limit": m.high_limit, "low_limit": m.low_limit, **m.params,
            **dict.fromkeys(ZERO_FLAGS, 0),
        }
        if what not in simple:
            raise PropertyError(f"motor {m.mne} has no property {what!r}")
        return format_number(simple[what])

    def write(self, prop: str, value: Value, now: float) -> None:
        """SV_CHAN_SEND of `value` to `prop` (not the start/abort properties: see the server)."""
        kind, _, rest = prop.partition("/")
        if kind == "var" and rest:
            name, key = _split_element(rest)
            if isinstance(value, SpecArray):
                self.set_var(name, value)
            elif key is not None:
                self.set_var(name, {key: _scalar(value, prop)})
            else:
                self.set_var(name, value)
            return
        if kind == "motor":
            mne, _, what = rest.partition("/")
            self._motor_write(self.motor(mne), what, _number(value, prop), now)
            return
        if prop == ALL_SCALERS:
            seconds = _number(value, prop)
            if seconds:
                self.start_count(abs(seconds), now)
            else:
                self.abort(now)
            return
        raise PropertyError(f"property {prop!r} cannot be set")

    def _motor_write(self, m: Motor, what: str, number: float, now: float) -> None:
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


def _split_element(rest: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME[KEY]`` (2-D ``NAME[K1][K2]`` keys are joined with SPEC's 0x1C)."""
    if not rest.endswith("]") or "[" not in rest:
        return rest, None
    name, _, keys = rest.partition("[")
    return name, "\x1c".join(keys[:-1].split("]["))


def _scalar(value: Value, prop: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return format_number(value)
    raise PropertyError(f"{prop}: an element takes a single value")


def _number(value: Value, prop: str) -> float:
    parsed = parse_text(value) if isinstance(value, str) else value
    if isinstance(parsed, bool) or not isinstance(parsed, int | float):
        raise PropertyError(f"{prop}: expected a number, got {str(value)[:40]!r}")
    return float(parsed)
