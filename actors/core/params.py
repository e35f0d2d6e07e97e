"""Declared commands: parameters and the conversion of wire values to them.

A command arrives on ``cmd.<actor>`` with ``data = {"command": str, "args": {name: value},
"argv": [str, ...]}``. ``argv`` are positional words (``sctl send ACTOR CMD a b``) that fill the
command's declared parameters in order; ``args`` name them. Values that arrive as strings are
converted to the declared kind; anything that does not fit becomes an error reply naming the
command and the parameter (``add: parameter a: expected an integer, got 'x'``), never a crash.

Conversion table (`convert`):

=======  ===================================  ===============================================
kind     accepts as is                        accepts from a string
=======  ===================================  ===============================================
str      str                                  (itself)
int      int (not bool), integral float       decimal, or 0x / 0o / 0b prefixed
float    int, float (finite)                  anything ``float()`` reads, finite
bool     bool, 0 / 1                          true/false, 1/0, on/off, yes/no (any case)
bytes    bytes                                hex, spaces allowed (``"02 41 03"``)
object   anything msgpack-native              (itself: no conversion)
=======  ===================================  ===============================================

Nothing in this module does I/O; it is unit-tested without sockets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, TypeVar

from broker.wire.errors import SctlError

COMMAND_ATTR: Final = "__sctl_command__"
KINDS: Final[dict[type, str]] = {
    str: "str", int: "int", float: "float", bool: "bool", bytes: "bytes", object: "any",
}
_TRUE: Final = frozenset({"true", "1", "on", "yes"})
_FALSE: Final = frozenset({"false", "0", "off", "no"})
_EXPECTED: Final[dict[type, str]] = {
    str: "a string", int: "an integer", float: "a number", bool: "true or false",
    bytes: "hex bytes such as '02 41 03'", object: "a value",
}


class CommandError(SctlError):
    """Raised by a command handler (or by argument binding): becomes an error reply.

    The message is what the operator reads, so say what went wrong and what to do.
    """


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final[Any] = _Required()


@dataclass(frozen=True, slots=True)
class Param:
    """One declared parameter of a command: name (a Python identifier), kind, default, doc."""

    name: str
    kind: type = str
    default: Any = REQUIRED
    doc: str = ""

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"parameter name {self.name!r} is not a Python identifier")
        if self.kind not in KINDS:
            raise ValueError(f"parameter {self.name}: kind {self.kind!r} is not one of "
                             f"{', '.join(KINDS.values())}")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": KINDS[self.kind],
                               "required": self.required, "doc": self.doc}
        if not self.required:
            out["default"] = self.default
        return out


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """A command as declared with `command`: wire name, parameters, doc, handler attribute."""

    name: str
    params: tuple[Param, ...]
    doc: str
    attr: str
    record: bool = True  # journal evt.<actor>.run started/done (False: read-only built-ins)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "doc": self.doc, "params": [p.describe() for p in self.params]}

    def usage(self) -> str:
        words = [p.name if p.required else f"[{p.name}]" for p in self.params]
        return " ".join([self.name, *words])


F = TypeVar("F", bound=Callable[..., Any])


def command(name: str, *params: Param, doc: str = "", record: bool = True) -> Callable[[F], F]:
    """Declare a method as the handler of command `name`; it is called with the params as
    keyword arguments, already converted. `doc` defaults to the method's docstring. `record`
    False skips the evt.<actor>.run records, for commands that change nothing."""
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise ValueError(f"command {name}: duplicate parameter names {names}")
    seen_default = False
    for p in params:
        if p.required and seen_default:
            raise ValueError(f"command {name}: required {p.name} follows a parameter "
                             "with a default (positional words could not reach it)")
        seen_default = seen_default or not p.required

    def mark(func: F) -> F:
        text = doc or (func.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        setattr(func, COMMAND_ATTR, CommandSpec(name, tuple(params), text, func.__name__,
                                                record))
        return func

    return mark


def collect(cls: type) -> dict[str, CommandSpec]:
    """Every command declared on `cls` and its bases; a subclass may override by name."""
    found: dict[str, CommandSpec] = {}
    for klass in reversed(cls.__mro__):
        for value in vars(klass).values():
            spec = getattr(value, COMMAND_ATTR, None)
            if isinstance(spec, CommandSpec):
                found[spec.name] = spec
    return found


def convert(param: Param, value: Any) -> Any:
    """`value` as `param.kind`; raises CommandError("parameter NAME: expected ..., got ...")."""
    try:
        return _CONVERTERS[param.kind](value)
    except (ValueError, TypeError, OverflowError):
        shown = repr(value) if isinstance(value, str | bytes) else \
            f"{type(value).__name__} {value!r}"
        raise CommandError(
            f"parameter {param.name}: expected {_EXPECTED[param.kind]}, got {shown[:80]}"
        ) from None


def _to_str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError
    return value


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        base = 0 if text.lower().lstrip("+-").startswith(("0x", "0o", "0b")) else 10
        return int(text, base)
    raise TypeError


def _to_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError
    out = float(value)
    if not math.isfinite(out):
        raise ValueError
    return out


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
    raise ValueError


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return bytes.fromhex(value)
    raise TypeError


_CONVERTERS: Final[dict[type, Callable[[Any], Any]]] = {
    str: _to_str, int: _to_int, float: _to_float, bool: _to_bool, bytes: _to_bytes,
    object: lambda v: v,
}


class Call(NamedTuple):
    """A command envelope's data, checked: what to run and with which (raw) arguments."""

    command: str
    args: Mapping[str, Any]
    argv: Sequence[str]


def parse_call(data: Mapping[str, Any]) -> Call:
    """Check the shape of a command's data; raises CommandError on a malformed one."""
    name = data.get("command")
    args = data.get("args") or {}
    argv = data.get("argv") or []
    if not isinstance(name, str) or not name:
        raise CommandError("malformed command: data.command must be a non-empty string")
    if not isinstance(args, dict):
        raise CommandError(f"{name}: malformed command: data.args must be a map")
    if not isinstance(argv, list) or not all(isinstance(w, str) for w in argv):
        raise CommandError(f"{name}: malformed command: data.argv must be a list of strings")
    return Call(name, args, argv)


def bind(spec: CommandSpec, args: Mapping[str, Any], argv: Sequence[str]) -> dict[str, Any]:
    """Map positional words and named args onto `spec.params`, convert, apply defaults.

    Raises CommandError prefixed with the command name on any mismatch.
    """
    try:
        return _bind(spec, args, argv)
    except CommandError as exc:
        raise CommandError(f"{spec.name}: {exc}") from None


def _split_named(params: Mapping[str, Param], argv: Sequence[str],
                 args: Mapping[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """A word ``name=value`` whose ``name`` is a declared parameter names it; any other word,
    ``=`` or not, is positional (``sctl send psu1 write VOLT=1`` sends ``VOLT=1``)."""
    positional: list[str] = []
    named = dict(args)
    for word in argv:
        key, sep, value = word.partition("=") if isinstance(word, str) else ("", "", "")
        if sep and key in params:
            if key in named:
                raise CommandError(f"parameter {key} given twice")
            named[key] = value
        else:
            positional.append(word)
    return positional, named


def _bind(spec: CommandSpec, args: Mapping[str, Any], argv: Sequence[str]) -> dict[str, Any]:
    params = {p.name: p for p in spec.params}
    argv, args = _split_named(params, argv, args)
    if len(argv) > len(spec.params):
        takes = ", ".join(params) or "no arguments"
        raise CommandError(f"too many arguments: takes {takes}, got {len(argv)} "
                           f"(usage: {spec.usage()})")
    raw: dict[str, Any] = dict(zip(params, argv, strict=False))
    for key, value in args.items():
        if key not in params:
            known = ", ".join(params) or "none"
            raise CommandError(f"unknown parameter {key!r} (parameters: {known})")
        if key in raw:
            raise CommandError(f"parameter {key} given twice (by position and by name)")
        raw[key] = value
    out: dict[str, Any] = {}
    for p in spec.params:
        if p.name in raw:
            out[p.name] = convert(p, raw[p.name])
        elif p.required:
            raise CommandError(f"missing parameter {p.name} ({KINDS[p.kind]}); "
                               f"usage: {spec.usage()}")
        else:
            out[p.name] = p.default
    return out
