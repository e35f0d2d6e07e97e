"""The part of the SPEC simulator's language that acts on the session: the command words
(``mv``, ``umv``, ``count``/``ct``, ``get_angles``, ``move_em``, ``wa``, ``getcounts``,
``set_lm``, ``waitmove``, ``waitcount``) and the built-in functions on motors, counters and
the clock (``motor_mne``, ``motor_name``, ``motor_num``, ``cnt_mne``, ``cnt_name``,
``cnt_num``, ``sleep``, ``printf``, ``user``, ``dial``, ``get_lim``, ``chg_dial``).

`CommandWords` is the half of `actors.sim.spec_eval.Interpreter` that holds them: they read
and change `state` at the command's own clock `now` and write to `result`; `_eval` (the
interpreter's) evaluates their argument expressions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from actors.protocols.spec_types import format_number
from actors.sim.spec_builtins import Item, is_text, spec_format, to_number, to_text
from actors.sim.spec_parse import Parser
from actors.sim.spec_state import Motor, SpecState
from actors.sim.spec_syntax import EvalError, Expr

WORDS: Final = frozenset({"mv", "umv", "count", "ct", "get_angles", "move_em", "wa",
                          "getcounts", "set_lm", "waitmove", "waitcount"})


@dataclass
class Result:
    value: Item | None = None  # the last expression's value, or what `return` gave
    printed: list[str] = field(default_factory=list)
    delay: float = 0.0


class CommandWords:
    """Command words and session built-ins, on `state` at the command clock `now`."""

    state: SpecState
    now: float
    result: Result

    def _eval(self, expr: Expr) -> Item:
        raise NotImplementedError

    def word_handlers(self) -> dict[str, Callable[[Parser], None]]:
        return {
            "mv": self._mv, "umv": self._umv, "count": self._count, "ct": self._count,
            "get_angles": lambda p: self.state.get_angles(self.now), "move_em": self._move_em,
            "wa": self._wa, "getcounts": lambda p: self._settle_count(),
            "set_lm": self._set_lm, "waitmove": lambda p: self._wait_move(),
            "waitcount": lambda p: self._settle_count(),
        }

    def _motor_arg(self, parser: Parser, word: str) -> str:
        kind, tok = parser.peek()
        if kind == "name" and tok in self.state.motors:
            parser.take()
            return tok
        if kind == "end":
            raise EvalError(f"{word}: a motor is missing")
        return self.state.motor_by_number(to_number(self._eval(parser.primary()))).mne

    def _mv(self, parser: Parser) -> None:
        mne = self._motor_arg(parser, "mv")
        self.state.start_moves({mne: to_number(self._eval(parser.expr()))}, self.now)

    def _umv(self, parser: Parser) -> None:
        self._mv(parser)
        self._wait_move()

    def _wait_move(self) -> None:
        ends = [m.t0 + m.duration for m in self.state.motors.values() if m.target is not None]
        self.now = max([self.now, *ends])

    def _move_em(self, parser: Parser) -> None:
        wanted = self.state.variables.get("A")
        if not isinstance(wanted, dict):
            raise EvalError("A[] is not an associative array")
        targets: dict[str, float] = {}
        for m in self.state.motors.values():
            text = wanted.get(str(m.number))
            if text is None:
                continue
            target = to_number(text)
            if not math.isclose(target, m.user_at(self.now), abs_tol=1e-12):
                targets[m.mne] = target
        self.state.start_moves(targets, self.now)

    def _count(self, parser: Parser) -> None:
        if parser.peek()[0] == "end":
            raise EvalError("count: give the count time in seconds (count 1)")
        seconds = to_number(self._eval(parser.expr()))
        self._settle_count()
        self.state.start_count(seconds, self.now)
        self.now += max(0.0, seconds) if math.isfinite(seconds) else 0.0

    def _settle_count(self) -> None:
        """Wait (on the command's clock) for a count still running, then read it."""
        end = self.state.count_end
        if end is not None:
            self.now = max(self.now, end)
            self.state.finish_count(self.now)

    def _wa(self, parser: Parser) -> None:
        rows = [f"{m.mne} = {format_number(m.user_at(self.now))}"
                for m in self.state.motors.values()]
        self.result.printed.append("\n".join(rows) + "\n")

    def _set_lm(self, parser: Parser) -> None:
        motor = self.state.motor(self._motor_arg(parser, "set_lm"))
        low = to_number(self._eval(parser.expr()))
        self.state.set_limits(motor, low, to_number(self._eval(parser.expr())))

    # --- built-in functions on the session --------------------------------------------------

    def _builtins(self) -> dict[str, Callable[..., Item]]:
        state = self.state
        return {
            "motor_mne": lambda i: self._motor(i).mne, "motor_name": lambda i: self._motor(i).mne,
            "motor_num": lambda m: float(self._motor(m).number),
            "cnt_mne": self._counter, "cnt_name": self._counter,
            "cnt_num": lambda c: float(list(state.counters).index(self._counter(c))),
            "sleep": self._sleep, "printf": self._printf,
            "user": lambda m, d: self._motor(m).sign * to_number(d) + self._motor(m).offset,
            "dial": lambda m, u: self._motor(m).to_dial(to_number(u)),
            "get_lim": lambda m, f: self._motor(m).high_limit if to_number(f) > 0
            else self._motor(m).low_limit,
            "chg_dial": self._chg_dial,
        }

    def _motor(self, which: Item) -> Motor:
        if isinstance(which, str) and is_text(which):
            return self.state.motor(which)
        return self.state.motor_by_number(to_number(which))

    def _counter(self, which: Item) -> str:
        names = list(self.state.counters)
        if isinstance(which, str) and is_text(which):
            if which not in names:
                raise EvalError(f"counter {which!r} does not exist")
            return which
        number = to_number(which)
        if not (number.is_integer() and 0 <= number < len(names)):
            raise EvalError(f"counter number {format_number(number)} does not exist")
        return names[int(number)]

    def _sleep(self, seconds: Item) -> Item:
        number = to_number(seconds)
        if not (math.isfinite(number) and number >= 0):
            raise EvalError(f"sleep({format_number(number)}): not a time")
        self.now += number
        return 1.0

    def _printf(self, fmt: Item, *args: Item) -> Item:
        self.result.printed.append(spec_format(to_text(fmt), list(args)))
        return 1.0

    def _chg_dial(self, motor: Item, how: Item, home: Item | None = None) -> Item:
        self.state.search(self._motor(motor), to_text(how),
                          None if home is None else to_number(home), self.now)
        return 0.0
