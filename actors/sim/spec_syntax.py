"""The syntax of the SPEC macro subset the simulator runs: its tokens, its syntax tree (small
frozen dataclasses, one per construct) and `EvalError`, the one error of the language.
`actors.sim.spec_parse` builds the tree from text, `actors.sim.spec_eval` runs it.

Tokens are ``(kind, text)``: ``num``, ``str`` (quoted, escapes kept until `unquote`),
``name``, ``op``, ``nl`` (a newline or ``;``) and a final ``end``; blanks, ``\\``-newline
and ``#`` comments are dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

MAX_TEXT: Final = 64 * 1024
TOKEN: Final = re.compile(r"""
    (?P<ws>[ \t\r]+|\\\n|\#[^\n]*) | (?P<nl>[\n;]) |
    (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?) |
    (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*') |
    (?P<name>[A-Za-z_][A-Za-z0-9_]*) |
    (?P<op>==|!=|<=|>=|&&|\|\||\+\+|--|[-+*/%]=|[-+*/%()=\[\],{}<>!:?])
""", re.VERBOSE)
ESCAPES: Final = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "0": "\0",
                  "$": "$"}
ARRAY_TYPES: Final = ("byte", "ubyte", "short", "ushort", "long", "ulong", "long64", "ulong64",
                      "float", "double", "string")
ASSIGN_OPS: Final = ("=", "+=", "-=", "*=", "/=", "%=")
BINARY: Final = (("||",), ("&&",), ("==", "!="), ("<", ">", "<=", ">="), ("+", "-"),
                 ("*", "/", "%"))
Token = tuple[str, str]


class EvalError(Exception):
    """Command text the simulator cannot run; the message says where and why."""


# --- the syntax tree ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Num:
    value: float


@dataclass(frozen=True, slots=True)
class Str:
    value: str


@dataclass(frozen=True, slots=True)
class Var:
    name: str


@dataclass(frozen=True, slots=True)
class Index:
    name: str
    keys: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Call:
    func: str
    args: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class AssocLit:
    items: tuple[tuple[tuple[Expr, ...], Expr], ...]  # (keys, value)


@dataclass(frozen=True, slots=True)
class Unary:
    op: str
    operand: Expr


@dataclass(frozen=True, slots=True)
class Binary:
    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class Ternary:
    test: Expr
    then: Expr
    other: Expr


Expr = Num | Str | Var | Index | Call | AssocLit | Unary | Binary | Ternary


@dataclass(frozen=True, slots=True)
class ExprStmt:
    expr: Expr


@dataclass(frozen=True, slots=True)
class Assign:
    target: Var | Index
    op: str  # "=", "+=", ... ("++" and "--" are += 1 and -= 1)
    value: Expr


@dataclass(frozen=True, slots=True)
class Block:
    body: tuple[Stmt, ...]


@dataclass(frozen=True, slots=True)
class If:
    test: Expr
    then: Stmt
    other: Stmt | None


@dataclass(frozen=True, slots=True)
class While:
    test: Expr
    body: Stmt


@dataclass(frozen=True, slots=True)
class For:
    init: Stmt | None
    test: Expr | None
    step: Stmt | None
    body: Stmt


@dataclass(frozen=True, slots=True)
class ForIn:
    var: str
    array: str
    body: Stmt


@dataclass(frozen=True, slots=True)
class Jump:
    kind: str  # "break" or "continue"


@dataclass(frozen=True, slots=True)
class Return:
    value: Expr | None


@dataclass(frozen=True, slots=True)
class Declare:
    scope: str  # "local", "global", "unglobal" or "undef"
    names: tuple[tuple[str, bool], ...]  # (name, declared as an associative array)


@dataclass(frozen=True, slots=True)
class Define:
    name: str
    params: tuple[str, ...] | None  # None: a plain macro (no parentheses)
    body: str


@dataclass(frozen=True, slots=True)
class ArrayDecl:
    name: str
    type: str
    dims: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Print:
    items: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Word:
    """A command word (``mv m0 1``, ``count 1``, a def'd macro) and its raw argument tokens."""

    name: str
    args: tuple[Token, ...]


Stmt = (ExprStmt | Assign | Block | If | While | For | ForIn | Jump | Return | Declare |
        Define | ArrayDecl | Print | Word)


def tokenize(text: str) -> list[Token]:
    if len(text) > MAX_TEXT:
        raise EvalError(f"command text of {len(text)} characters is too long")
    out: list[Token] = []
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


def unquote(token: str) -> str:
    return re.sub(r"\\(.)", lambda m: ESCAPES.get(m.group(1), m.group(1)), token[1:-1],
                  flags=re.DOTALL)
