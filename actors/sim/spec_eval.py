"""A small evaluator for the command text SPEC clients send: enough SPEC for the documented
clients, and safe by construction (its own tokenizer and recursive-descent parser, no Python
``eval``/``exec`` of client text).

Grammar (statements separated by ``;`` or newlines, optionally inside ``{ }``)::

    statement  := NAME ("[" expr "]")* "=" expr          assignment (A[m] = 3 names motor m)
                | "mv" | "umv" motor expr                 start a move (returns at once)
                | "print" expr ("," expr)*                text to output/tty
                | "count" | "ct" expr                     count for expr seconds (reply waits)
                | "get_angles" | "move_em" | "wa"         A[] ← positions, move to A[], list
                | "unglobal" NAME                          delete a variable (DELETED event)
                | expr                                    its value is the command's result
    expr       := comparison with + - * / % and unary -, numbers, "strings", names,
                  NAME[expr], calls: motor_mne(i) motor_name(i) cnt_mne(i) cnt_name(i)
                  motor_num(m) sleep(t) int(x) abs(x) sqrt(x)

Values are numbers (float) or strings; a motor mnemonic evaluates to its motor number (as in
SPEC, so ``A[m0]`` is element 0). ``sleep`` and ``count`` do not block: they add to `delay`,
the time the server waits before replying. Errors raise `EvalError` with the reason.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from actors.protocols.spec_types import format_number, parse_text
from actors.sim.spec_state import PropertyError, SpecState

MAX_TEXT: Final = 64 * 1024
TOKEN: Final = re.compile(r"""
    (?P<ws>[ \t\r]+) | (?P<nl>[\n;]) |
    (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?) |
    (?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*') |
    (?P<name>[A-Za-z_][A-Za-z0-9_]*) |
    (?P<op>==|!=|<=|>=|&&|\|\||[-+*/%()=\[\],{}<>!])
""", re.VERBOSE)
ESCAPES: Final = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'", "0": "\0"}
Item = float | str


class EvalError(Exception):
    """Command text the simulator cannot run; the message says where and why."""


@dataclass
class Result:
    value: Item | None = None  # the last expression statement's value
    printed: list[str] = field(default_factory=list)
    delay: float = 0.0


def tokenize(text: str) -> list[tuple[str, str]]:
    if len(text) > MAX_TEXT:
        raise EvalError(f"command text of {len(text)} characters is too long")
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if m is None:
            raise EvalError(f"syntax error at {text[pos:pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append((kind, m.group()))
    out.append(("end", ""))
    return out


class Interpreter:
    """Runs command text against a `SpecState` at time `now` (one call per command)."""

    def __init__(self, state: SpecState, now: float) -> None:
        self.state = state
        self.now = now
        self.result = Result()
        self._toks: list[tuple[str, str]] = []
        self._i = 0
        self._commands: dict[str, Callable[[], None]] = {
            "mv": self._mv, "umv": self._mv, "print": self._print, "count": self._count,
            "ct": self._count, "get_angles": lambda: state.get_angles(self.now),
            "move_em": self._move_em, "wa": self._wa, "unglobal": self._unglobal,
        }

    def run(self, text: str) -> Result:
        self._toks, self._i = tokenize(text), 0
        try:
            while self._peek()[0] != "end":
                self._statement()
        except PropertyError as exc:
            raise EvalError(str(exc)) from None
        except RecursionError:  # "((((..." or "----...1" nested deeper than Python's stack
            raise EvalError("expression nested too deeply") from None
        except ArithmeticError as exc:  # overflow and the like: an error reply, not a crash
            raise EvalError(f"arithmetic error: {exc}") from None
        return self.result

    # --- tokens ----------------------------------------------------------------------------

    def _peek(self, ahead: int = 0) -> tuple[str, str]:
        return self._toks[min(self._i + ahead, len(self._toks) - 1)]

    def _take(self) -> tuple[str, str]:
        tok = self._peek()
        self._i += 1
        return tok

    def _expect(self, text: str) -> None:
        kind, got = self._take()
        if got != text or kind == "str":
            raise EvalError(f"expected {text!r}, got {got or 'end of text'!r}")

    def _at(self, text: str) -> bool:
        kind, got = self._peek()
        return got == text and kind in ("op", "nl")

    # --- statements ------------------------------------------------------------------------

    def _statement(self) -> None:
        kind, word = self._peek()
        if kind == "nl" or word in ("{", "}"):
            self._i += 1
            return
        if kind == "name" and word in self._commands and self._peek(1)[1] not in ("=", "("):
            self._i += 1
            self._commands[word]()
        elif kind == "name" and self._is_assignment():
            self._assign()
        else:
            self.result.value = self._expr()
        if not (self._at(";") or self._at("\n") or self._at("}") or self._peek()[0] == "end"):
            raise EvalError(f"unexpected {self._peek()[1]!r}")

    def _is_assignment(self) -> bool:
        depth, j = 0, 1
        while True:
            kind, tok = self._peek(j)
            if kind == "end" or kind == "nl":
                return False
            if tok == "[":
                depth += 1
            elif tok == "]":
                depth -= 1
            elif depth == 0:
                return tok == "=" and kind == "op"
            j += 1

    def _assign(self) -> None:
        name = self._take()[1]
        keys: list[str] = []
        while self._at("["):
            self._i += 1
            keys.append(self._key(self._expr()))
            self._expect("]")
        self._expect("=")
        value = self._expr()
        if name in self.state.motors or name in ("MOTORS", "COUNTERS", "SPEC", "VERSION"):
            raise EvalError(f"{name} is read-only")
        text = value if isinstance(value, str) else format_number(value)
        if keys:
            self.state.set_var(name, {"\x1c".join(keys): text})
        else:
            self.state.set_var(name, text)

    def _mv(self) -> None:
        kind, word = self._take()
        if kind == "name" and word in self.state.motors:
            mne = word
        else:
            self._i -= 1
            mne = self.state.motor_by_number(self._number(self._primary())).mne
        self.state.start_moves({mne: self._number(self._expr())}, self.now)

    def _move_em(self) -> None:
        wanted = self.state.variables.get("A")
        if not isinstance(wanted, dict):
            raise EvalError("A[] is not an associative array")
        targets: dict[str, float] = {}
        for m in self.state.motors.values():
            text = wanted.get(str(m.number))
            if text is None:
                continue
            target = self._number(parse_text(text))
            if not math.isclose(target, m.user_at(self.now), abs_tol=1e-12):
                targets[m.mne] = target
        self.state.start_moves(targets, self.now)

    def _print(self) -> None:
        items = [self._expr()]
        while self._at(","):
            self._i += 1
            items.append(self._expr())
        self.result.printed.append(" ".join(_text(v) for v in items) + "\n")

    def _count(self) -> None:
        seconds = self._number(self._expr())
        self.state.start_count(seconds, self.now)
        self.result.delay += seconds

    def _wa(self) -> None:
        rows = [f"{m.mne} = {format_number(m.user_at(self.now))}"
                for m in self.state.motors.values()]
        self.result.printed.append("\n".join(rows) + "\n")

    def _unglobal(self) -> None:
        kind, name = self._take()
        if kind != "name":
            raise EvalError(f"unglobal needs a variable name, got {name!r}")
        self.state.delete_var(name)

    # --- expressions -----------------------------------------------------------------------

    def _expr(self) -> Item:
        left = self._sum()
        while self._peek()[1] in ("==", "!=", "<", ">", "<=", ">=") and self._peek()[0] == "op":
            op = self._take()[1]
            right = self._sum()
            left = float(_compare(op, left, right))
        return left

    def _sum(self) -> Item:
        left = self._term()
        while self._at("+") or self._at("-"):
            op = self._take()[1]
            right = self._term()
            if op == "+" and (_is_text(left) or _is_text(right)):
                left = _text(left) + _text(right)
            else:
                a, b = self._number(left), self._number(right)
                left = a + b if op == "+" else a - b
        return left

    def _term(self) -> Item:
        left = self._unary()
        while self._at("*") or self._at("/") or self._at("%"):
            op = self._take()[1]
            a, b = self._number(left), self._number(self._unary())
            if op != "*" and b == 0:
                raise EvalError("divide by zero")
            left = a * b if op == "*" else (a / b if op == "/" else math.fmod(a, b))
        return left

    def _unary(self) -> Item:
        if self._at("-"):
            self._i += 1
            return -self._number(self._unary())
        if self._at("!"):
            self._i += 1
            return float(not self._number(self._unary()))
        return self._primary()

    def _primary(self) -> Item:
        kind, tok = self._take()
        if kind == "num":
            return float(tok)
        if kind == "str":
            return re.sub(r"\\(.)", lambda m: ESCAPES.get(m.group(1), m.group(1)), tok[1:-1])
        if tok == "(" and kind == "op":
            value = self._expr()
            self._expect(")")
            return value
        if kind != "name":
            raise EvalError(f"expected a value, got {tok or 'end of text'!r}")
        if self._at("("):
            return self._call(tok)
        if self._at("["):
            return self._element(tok)
        if tok in self.state.variables:
            stored = self.state.variables[tok]
            if not isinstance(stored, str):
                raise EvalError(f"{tok} is an array; use {tok}[key]")
            parsed = parse_text(stored)
            return float(parsed) if isinstance(parsed, int | float) else stored
        if tok in self.state.motors:
            return float(self.state.motors[tok].number)
        raise EvalError(f"{tok!r} is not a variable, motor or command")

    def _element(self, name: str) -> Item:
        keys: list[str] = []
        while self._at("["):
            self._i += 1
            keys.append(self._key(self._expr()))
            self._expect("]")
        value = self.state.get_var(name)
        key = "\x1c".join(keys)
        if not isinstance(value, dict) or key not in value:
            raise EvalError(f"{name}[{']['.join(keys)}] does not exist")
        parsed = parse_text(value[key])
        return float(parsed) if isinstance(parsed, int | float) else value[key]

    def _call(self, func: str) -> Item:
        self._expect("(")
        args: list[Item] = []
        while not self._at(")"):
            args.append(self._expr())
            if not self._at(")"):
                self._expect(",")
        self._expect(")")
        state = self.state
        one = self._number(args[0]) if len(args) == 1 and not _is_text(args[0]) else None
        if func in ("motor_mne", "motor_name") and one is not None:
            return state.motor_by_number(one).mne
        if func in ("cnt_mne", "cnt_name") and one is not None:
            names = list(state.counters)
            if not (one.is_integer() and 0 <= one < len(names)):
                raise EvalError(f"counter number {format_number(one)} does not exist")
            return names[int(one)]
        if func == "motor_num" and len(args) == 1 and isinstance(args[0], str):
            return float(state.motor(args[0]).number)
        if func == "sleep" and one is not None and math.isfinite(one) and one >= 0:
            self.result.delay += one
            return 1.0
        funcs: dict[str, Callable[[float], float]] = {
            "int": lambda x: float(math.trunc(x)), "abs": abs, "sqrt": math.sqrt}
        if func in funcs and one is not None:
            try:
                return funcs[func](one)
            except (ValueError, OverflowError):
                raise EvalError(f"{func}({format_number(one)}): math domain error") from None
        raise EvalError(f"cannot call {func} with {len(args)} argument(s) "
                        f"({', '.join(_text(a) for a in args)[:80]})")

    def _key(self, value: Item) -> str:
        return value if isinstance(value, str) else format_number(value)

    def _number(self, value: Item | int) -> float:
        return to_number(value)


def _is_text(value: Item) -> bool:
    return isinstance(value, str) and isinstance(parse_text(value), str)


def _text(value: Item) -> str:
    return value if isinstance(value, str) else format_number(value)


def _compare(op: str, a: Item, b: Item) -> bool:
    test = COMPARE[op]
    if _is_text(a) or _is_text(b):
        return test(_text(a), _text(b))
    return test(to_number(a), to_number(b))


def to_number(value: Item | int) -> float:
    """A value as a number; EvalError for text that is not one."""
    if isinstance(value, str):
        parsed = parse_text(value)
        if isinstance(parsed, str):
            raise EvalError(f"{value[:40]!r} is not a number")
        return float(parsed)
    return float(value)


COMPARE: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt,
    "<=": operator.le, ">=": operator.ge,
}
