"""The pure built-in functions of the SPEC simulator's macro language (no state): numbers,
strings, ``printf``-style formatting. The functions that touch motors, counters or the clock
are in `actors.sim.spec_eval`.

`FUNCTIONS` maps a name to (least, most arguments, implementation); arguments arrive as
evaluated values (``float`` or ``str``) and the result is one of those. Every failure is an
`EvalError` that names the function.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, Final

from actors.protocols.spec_types import format_number, parse_text
from actors.sim.spec_syntax import EvalError

Item = float | str | dict[str, str]
FORMAT: Final = re.compile(r"%(?P<flags>[-+ #0]*)(?P<width>\d*)(?:\.(?P<prec>\d*))?"
                           r"(?P<conv>[diouxXeEfFgGcs%])")
MAX_FORMATTED: Final = 64 * 1024


def to_number(value: Item | int) -> float:
    """A value as a number; EvalError for text that is not one (or an array)."""
    if isinstance(value, dict):
        raise EvalError("an associative array is not a number (use one element: A[key])")
    if isinstance(value, str):
        parsed = parse_text(value)
        if isinstance(parsed, str):
            raise EvalError(f"{value[:40]!r} is not a number")
        return float(parsed)
    return float(value)


def to_text(value: Item | None) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    return value if isinstance(value, str) else format_number(value)


def is_text(value: Item) -> bool:
    """Text that does not read as a number (SPEC compares and adds such values as strings)."""
    return isinstance(value, str) and isinstance(parse_text(value), str)


def spec_format(fmt: str, args: list[Item]) -> str:
    """C ``printf`` formatting of `args` by `fmt` (``%d %i %u %o %x %X %e %f %g %c %s %%``,
    flags, width, precision)."""
    out: list[str] = []
    pos, used = 0, 0
    for m in FORMAT.finditer(fmt):
        out.append(_literal(fmt[pos:m.start()]))
        pos = m.end()
        conv = m.group("conv")
        if conv == "%":
            out.append("%")
            continue
        if used >= len(args):
            raise EvalError(f"printf: {fmt[:40]!r} wants more than {len(args)} argument(s)")
        out.append(_convert(m, args[used]))
        used += 1
    out.append(_literal(fmt[pos:]))
    text = "".join(out)
    if len(text) > MAX_FORMATTED:
        raise EvalError(f"printf: {len(text)} characters is too long a result")
    return text


def _literal(text: str) -> str:
    if "%" in text:
        bad = text[text.index("%"):][:6]
        raise EvalError(f"printf: unsupported conversion {bad!r}")
    return text


def _convert(m: re.Match[str], value: Item) -> str:
    conv = m.group("conv")
    spec = "%" + m.group("flags") + m.group("width")
    if m.group("prec") is not None:
        spec += "." + (m.group("prec") or "0")
    if int(m.group("width") or 0) > 1000 or int(m.group("prec") or 0) > 1000:
        raise EvalError("printf: width or precision over 1000")
    arg: Any
    if conv in "diouxX":
        number = to_number(value)
        if not math.isfinite(number):
            raise EvalError(f"printf: %{conv} of {format_number(number)}")
        arg, conv = math.trunc(number), "d" if conv in "iu" else conv
    elif conv in "eEfFgG":
        arg = to_number(value)
    elif conv == "c":
        arg = to_text(value)[:1] if is_text(value) else chr(int(to_number(value)) % 0x110000)
        conv = "s"
    else:
        arg = to_text(value)
    text: str = (spec + conv) % arg
    return text


def _substr(text: Item, start: Item, count: Item | None = None) -> str:
    s = to_text(text)
    first = max(0, int(to_number(start)) - 1)  # SPEC counts characters from 1
    if count is None:
        return s[first:]
    return s[first:first + max(0, int(to_number(count)))]


def _math(name: str, fn: Callable[..., float]) -> tuple[int, int, Callable[..., Item]]:
    def call(*args: Item) -> Item:
        try:
            return float(fn(*(to_number(a) for a in args)))
        except (ValueError, OverflowError, ZeroDivisionError):
            raise EvalError(f"{name}({', '.join(to_text(a) for a in args)}): math domain "
                            "error") from None
    arity = fn.__code__.co_argcount
    return arity, arity, call


FUNCTIONS: Final[dict[str, tuple[int, int, Callable[..., Item]]]] = {
    "int": _math("int", lambda x: float(math.trunc(x))),
    "abs": _math("abs", lambda x: abs(x)), "fabs": _math("fabs", lambda x: abs(x)),
    "sqrt": _math("sqrt", lambda x: math.sqrt(x)), "exp": _math("exp", lambda x: math.exp(x)),
    "log": _math("log", lambda x: math.log(x)), "log10": _math("log10", lambda x: math.log10(x)),
    "pow": _math("pow", lambda x, y: math.pow(x, y)), "sin": _math("sin", lambda x: math.sin(x)),
    "cos": _math("cos", lambda x: math.cos(x)), "tan": _math("tan", lambda x: math.tan(x)),
    "atan": _math("atan", lambda x: math.atan(x)),
    "atan2": _math("atan2", lambda y, x: math.atan2(y, x)),
    "fmod": _math("fmod", lambda x, y: math.fmod(x, y)),
    "length": (1, 1, lambda s: float(len(to_text(s)))),
    "substr": (2, 3, _substr),
    "index": (2, 2, lambda s, t: float(to_text(s).find(to_text(t)) + 1)),
    "tolower": (1, 1, lambda s: to_text(s).lower()),
    "toupper": (1, 1, lambda s: to_text(s).upper()),
    "asc": (1, 1, lambda s: float(ord(to_text(s)[0])) if to_text(s) else 0.0),
    "sprintf": (1, 64, lambda fmt, *args: spec_format(to_text(fmt), list(args))),
}
