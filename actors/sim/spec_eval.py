"""Runs the command text SPEC clients send against the simulated session: the macro subset of
`actors.sim.spec_parse` (``local``, ``for``, ``while``, ``if``/``else``, ``return``, ``def``,
``[k: v]`` literals, ``print``, ``printf``), the built-ins clients use at connect
(``motor_mne``, ``motor_name``, ``motor_num``, ``cnt_mne``, ``cnt_name``, ``MOTORS``,
``COUNTERS``, ``A[]``, ``S[]``) and the command words ``mv``, ``umv``, ``count``/``ct``,
``get_angles``, ``move_em``, ``wa``, ``getcounts``, ``set_lm``, ``waitmove``, ``waitcount``
(those that act on motors, counters and the clock are in `actors.sim.spec_words`, the pure
functions in `actors.sim.spec_builtins`). Anything else is an `EvalError` saying what is not
supported, never a Python exception.

Values are numbers (float), text, or associative arrays (``dict[str, str]``, from ``[k: v]``
or a ``return`` of an array); a motor mnemonic evaluates to its motor number and a counter
mnemonic to its counter number (so ``A[m0]`` is element 0). Assignments to names not declared
``local`` are globals of the session (`SpecState.variables`, watchable as ``var/NAME``).

Time: nothing blocks. ``sleep(t)``, ``count t`` (and ``umv``, ``waitmove``, ``waitcount``)
advance the command's own clock; `Result.delay` is how far, which the server waits before it
replies. A later ``count`` (or a read of ``S[]``) in the same command first ends the one
before at that clock. A command stops with an error after `MAX_STEPS` statements (an endless
loop) or `MAX_DEPTH` nested macro calls.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from typing import Any, Final

from actors.protocols.spec_types import KEY_SEPARATOR, format_number, parse_text
from actors.sim import spec_syntax as syn
from actors.sim.spec_arrays import TYPE_NAMES, ArrayError, DataArray
from actors.sim.spec_builtins import (
    FUNCTIONS,
    Item,
    is_text,
    to_number,
    to_text,
)
from actors.sim.spec_parse import Parser, parse
from actors.sim.spec_state import READ_ONLY, PropertyError, SpecState
from actors.sim.spec_syntax import EvalError, Expr, Stmt, Token
from actors.sim.spec_words import WORDS, CommandWords, Result

__all__ = ["EvalError", "Interpreter", "Result", "to_number"]

MAX_STEPS: Final = 100_000
MAX_DEPTH: Final = 64
UNSUPPORTED: Final = frozenset({
    "cdef", "eval", "eval2", "unix", "open", "close", "fprintf", "on", "off", "array_op",
    "array_dump", "array_read", "data_grp", "data_put", "data_get", "fmt_read", "fmt_write",
    "split", "spec_par", "motor_par", "counter_par", "prdef", "lsdef", "savstate", "reconfig",
    "config", "chdir", "history", "ascan", "dscan", "a2scan", "mesh", "timescan", "input",
    "getline", "yesno", "getval", "whatis", "queue", "calc", "unset", "memstat"})
COMPARE: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt,
    "<=": operator.le, ">=": operator.ge,
}
MACRO_ARG: Final = re.compile(r"\$(\d|\*|#)")


class _Return(Exception):
    def __init__(self, value: Item | None) -> None:
        super().__init__("return")
        self.value = value


class _Jump(Exception):
    pass


class Interpreter(CommandWords):
    """Runs command text against a `SpecState` at time `now` (one instance per command)."""

    def __init__(self, state: SpecState, now: float) -> None:
        self.state = state
        self.start = self.now = now
        self.result = Result()
        self.frames: list[dict[str, Item | None]] = [{}]  # local variables of each call
        self.steps = 0
        self.expanding = 0  # plain macros being expanded
        self._stmts: dict[type, Callable[[Any], None]] = {
            syn.ExprStmt: self._expr_stmt, syn.Assign: self._assign, syn.Block: self._block,
            syn.If: self._if, syn.While: self._while, syn.For: self._for,
            syn.ForIn: self._for_in,
            syn.Jump: self._jump, syn.Return: self._return, syn.Declare: self._declare,
            syn.Define: self._define, syn.ArrayDecl: self._array, syn.Print: self._print,
            syn.Word: self._word,
        }
        self._words = self.word_handlers()

    def run(self, text: str) -> Result:
        try:
            self._run_block(parse(text, self._word_set()), top=True)
        except PropertyError as exc:
            raise EvalError(str(exc)) from None
        except ArrayError as exc:
            raise EvalError(str(exc)) from None
        except RecursionError:  # "((((..." or "----...1" nested deeper than Python's stack
            raise EvalError("expression nested too deeply") from None
        except ArithmeticError as exc:  # overflow and the like: an error reply, not a crash
            raise EvalError(f"arithmetic error: {exc}") from None
        except _Jump:
            raise EvalError("break or continue outside a loop") from None
        self.result.delay = max(0.0, self.now - self.start)
        return self.result

    def _run_block(self, program: list[Stmt], top: bool = False) -> None:
        try:
            for stmt in program:
                self._exec(stmt)
        except _Return as ret:
            if not top:
                raise
            self.result.value = ret.value

    # --- statements ------------------------------------------------------------------------

    def _exec(self, stmt: Stmt) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise EvalError(f"the command ran more than {MAX_STEPS} statements (an endless "
                            "loop?) and was stopped")
        self._stmts[type(stmt)](stmt)

    def _expr_stmt(self, stmt: syn.ExprStmt) -> None:
        expr = stmt.expr
        if isinstance(expr, syn.Var) and self._plain_macro(expr.name):
            self._expand(expr.name, ())
            return
        value = self._eval(expr)
        if len(self.frames) == 1:
            self.result.value = value

    def _assign(self, stmt: syn.Assign) -> None:
        value = self._eval(stmt.value)
        if stmt.op != "=":
            old = self._eval(stmt.target)
            value = self._binary(stmt.op[0], old, value)
        self._store(stmt.target, value)

    def _block(self, stmt: syn.Block) -> None:
        for inner in stmt.body:
            self._exec(inner)

    def _if(self, stmt: syn.If) -> None:
        if self._truth(stmt.test):
            self._exec(stmt.then)
        elif stmt.other is not None:
            self._exec(stmt.other)

    def _loop_body(self, body: Stmt) -> bool:
        """Run one pass; False when the loop must end (``break``)."""
        try:
            self._exec(body)
        except _Jump as jump:
            return str(jump) != "break"
        return True

    def _while(self, stmt: syn.While) -> None:
        while self._truth(stmt.test) and self._loop_body(stmt.body):
            pass

    def _for(self, stmt: syn.For) -> None:
        if stmt.init is not None:
            self._exec(stmt.init)
        while stmt.test is None or self._truth(stmt.test):
            if not self._loop_body(stmt.body):
                return
            if stmt.step is not None:
                self._exec(stmt.step)

    def _for_in(self, stmt: syn.ForIn) -> None:
        table = self._lookup(stmt.array)
        if not isinstance(table, dict):
            raise EvalError(f"for ({stmt.var} in {stmt.array}): {stmt.array} is not an "
                            "associative array")
        for key in list(table):
            self._store(syn.Var(stmt.var), key)
            if not self._loop_body(stmt.body):
                return

    def _jump(self, stmt: syn.Jump) -> None:
        raise _Jump(stmt.kind)

    def _return(self, stmt: syn.Return) -> None:
        value: Item | None = None
        if isinstance(stmt.value, syn.Var):
            found = self._lookup(stmt.value.name)
            value = dict(found) if isinstance(found, dict) else self._eval(stmt.value)
        elif stmt.value is not None:
            value = self._eval(stmt.value)
        raise _Return(value)

    def _declare(self, stmt: syn.Declare) -> None:
        for name, assoc in stmt.names:
            if stmt.scope == "local":
                self.frames[-1][name] = {} if assoc else None
            elif stmt.scope == "global":
                if name not in self.state.variables:
                    self.state.set_var(name, {} if assoc else "0")
            elif stmt.scope == "unglobal":
                self.state.delete_var(name)
            elif self.state.macros.pop(name, None) is None:
                raise EvalError(f"undef: {name} is not a macro")

    def _define(self, stmt: syn.Define) -> None:
        if stmt.name in WORDS or stmt.name in FUNCTIONS or stmt.name in self._builtins():
            raise EvalError(f"def {stmt.name}: that name is built in")
        self.state.macros[stmt.name] = stmt

    def _array(self, stmt: syn.ArrayDecl) -> None:
        if stmt.type == "string":
            raise EvalError(f"string array {stmt.name}: not supported by the simulator "
                            "(numeric data arrays only)")
        dims = [to_number(self._eval(d)) for d in stmt.dims]
        if not all(d.is_integer() for d in dims):
            raise EvalError(f"array {stmt.name}: dimensions must be whole numbers")
        rows, cols = (1, int(dims[0])) if len(dims) == 1 else (int(dims[0]), int(dims[1]))
        old = self.state.variables.get(stmt.name)
        kind = TYPE_NAMES[stmt.type]
        if isinstance(old, DataArray) and (old.type, old.rows, old.cols) == (kind, rows, cols):
            return  # declaring it again keeps it, as SPEC does
        self.state.set_var(stmt.name, DataArray(stmt.name, kind, rows, cols))

    def _print(self, stmt: syn.Print) -> None:
        self.result.printed.append(" ".join(to_text(self._eval(e)) for e in stmt.items) + "\n")

    def _word(self, stmt: syn.Word) -> None:
        handler = self._words.get(stmt.name)
        if handler is not None:
            parser = Parser(list(stmt.args))
            handler(parser)
            if parser.peek()[0] != "end":
                raise EvalError(f"{stmt.name}: unexpected {parser.peek()[1]!r}")
        elif self._plain_macro(stmt.name):
            self._expand(stmt.name, stmt.args)
        elif stmt.name in UNSUPPORTED:
            raise EvalError(f"{stmt.name}: not supported by the SPEC simulator")
        else:
            raise EvalError(f"{stmt.name}: unknown command or macro")

    # --- macros ----------------------------------------------------------------------------

    def _word_set(self) -> frozenset[str]:
        return WORDS | {n for n, d in self.state.macros.items() if d.params is None}

    def _plain_macro(self, name: str) -> bool:
        found = self.state.macros.get(name)
        return found is not None and found.params is None

    def _expand(self, name: str, args: tuple[Token, ...]) -> None:
        words = [tok for _, tok in args]
        subs = {"*": " ".join(words), "#": str(len(words))}
        text = MACRO_ARG.sub(lambda m: subs.get(m.group(1)) or (
            words[int(m.group(1)) - 1] if 0 < int(m.group(1)) <= len(words) else ""),
            self.state.macros[name].body)
        if self.expanding >= MAX_DEPTH:
            raise EvalError(f"macros nested more than {MAX_DEPTH} deep")
        self.expanding += 1  # a plain macro is text: it runs in the scope that uses it
        try:
            self._run_block(parse(text, self._word_set()))
        finally:
            self.expanding -= 1

    def _call_macro(self, name: str, args: list[Item]) -> Item | None:
        macro = self.state.macros[name]
        if len(args) != len(macro.params):
            raise EvalError(f"{name}() takes {len(macro.params)} argument(s), got {len(args)}")
        self._enter()
        self.frames[-1].update(zip(macro.params, args, strict=True))
        try:
            self._run_block(parse(macro.body, self._word_set()))
        except _Return as ret:
            return ret.value
        finally:
            self.frames.pop()
        return None

    def _enter(self) -> None:
        if len(self.frames) > MAX_DEPTH:
            raise EvalError(f"macros nested more than {MAX_DEPTH} deep")
        self.frames.append({})

    # --- names and storage -----------------------------------------------------------------

    def _lookup(self, name: str) -> Item | DataArray | None:
        frame = self.frames[-1]
        if name in frame:
            return frame[name]
        stored = self.state.variables.get(name)
        if name == "S":
            self._settle_count()
            stored = self.state.variables.get(name)
        if stored is not None:
            return stored
        if name in self.state.motors:
            return float(self.state.motors[name].number)
        if name in self.state.counters:
            return float(list(self.state.counters).index(name))
        raise EvalError(f"{name!r} is not a variable, motor or command")

    def _store(self, target: syn.Var | syn.Index, value: Item) -> None:
        frame, name = self.frames[-1], target.name
        if name in self.state.motors or name in READ_ONLY:
            raise EvalError(f"{name} is read-only")
        if isinstance(target, syn.Var):
            if name in frame:
                frame[name] = value
            elif isinstance(self.state.variables.get(name), DataArray) and \
                    not isinstance(value, dict):
                array = self.state.variables[name]
                assert isinstance(array, DataArray)
                array.fill(to_number(value))
                self.state.set_var(name, array)
            else:
                self.state.set_var(name, value if isinstance(value, dict) else
                                   to_text(value), replace=True)
            return
        keys = [self._key(self._eval(k)) for k in target.keys]
        if isinstance(value, dict):
            raise EvalError(f"{name}[{']['.join(keys)}]: an element holds one value, not "
                            "an array")
        if name in frame:
            table = frame[name]
            if not isinstance(table, dict):
                raise EvalError(f"{name} is not an array (declare it: local {name}[])")
            table[KEY_SEPARATOR.join(keys)] = to_text(value)
        else:
            self.state.set_element(name, keys, to_text(value))

    def _key(self, value: Item) -> str:
        if isinstance(value, dict):
            raise EvalError("an array cannot be a key")
        return value if isinstance(value, str) else format_number(value)

    # --- expressions -----------------------------------------------------------------------

    def _truth(self, expr: Expr) -> bool:
        value = self._eval(expr)
        return bool(value) if isinstance(value, str) and is_text(value) else \
            to_number(value) != 0

    def _eval(self, expr: Expr) -> Item:
        if isinstance(expr, syn.Num):
            return expr.value
        if isinstance(expr, syn.Str):
            return expr.value
        if isinstance(expr, syn.Var):
            return self._variable(expr.name)
        if isinstance(expr, syn.Index):
            return self._element(expr)
        if isinstance(expr, syn.Call):
            return self._call(expr.func, expr.args)
        if isinstance(expr, syn.AssocLit):
            return {KEY_SEPARATOR.join(self._key(self._eval(k)) for k in keys):
                    to_text(self._eval(value)) for keys, value in expr.items}
        if isinstance(expr, syn.Unary):
            return self._unary(expr.op, self._eval(expr.operand))
        if isinstance(expr, syn.Ternary):
            return self._eval(expr.then if self._truth(expr.test) else expr.other)
        if expr.op in ("&&", "||"):
            left = self._truth(expr.left)
            if left == (expr.op == "||"):
                return float(left)
            return float(self._truth(expr.right))
        return self._binary(expr.op, self._eval(expr.left), self._eval(expr.right))

    def _variable(self, name: str) -> Item:
        found = self._lookup(name)
        if isinstance(found, dict | DataArray):
            raise EvalError(f"{name} is an array; use {name}[key]")
        if found is None:
            return 0.0  # a local declared and not set yet
        if isinstance(found, str):
            parsed = parse_text(found)
            return float(parsed) if isinstance(parsed, int | float) else found
        return found

    def _element(self, expr: syn.Index) -> Item:
        keys = [self._eval(k) for k in expr.keys]
        found = self._lookup(expr.name)
        if isinstance(found, DataArray):
            return found.get([to_number(k) for k in keys])
        texts = [self._key(k) for k in keys]
        if expr.name in self.state.live:
            raise EvalError(f"{expr.name} is a live data array: read it whole (var/"
                            f"{expr.name})")
        if not isinstance(found, dict) or KEY_SEPARATOR.join(texts) not in found:
            raise EvalError(f"{expr.name}[{']['.join(texts)}] does not exist")
        item = found[KEY_SEPARATOR.join(texts)]
        parsed = parse_text(item)
        return float(parsed) if isinstance(parsed, int | float) else item

    def _unary(self, op: str, value: Item) -> Item:
        if op == "!":
            return float(not (bool(value) if is_text(value) else to_number(value)))
        number = to_number(value)
        return -number if op == "-" else number

    def _binary(self, op: str, a: Item, b: Item) -> Item:
        if op in COMPARE:
            test = COMPARE[op]
            if is_text(a) or is_text(b):
                return float(test(to_text(a), to_text(b)))
            return float(test(to_number(a), to_number(b)))
        if op == "+" and (is_text(a) or is_text(b)):
            return to_text(a) + to_text(b)
        x, y = to_number(a), to_number(b)
        if op == "+":
            return x + y
        if op == "-":
            return x - y
        if op == "*":
            return x * y
        if y == 0:
            raise EvalError("divide by zero")
        return x / y if op == "/" else math.fmod(x, y)

    # --- calls -----------------------------------------------------------------------------

    def _call(self, func: str, arg_exprs: tuple[Expr, ...]) -> Item:
        if not func:
            raise EvalError("a parenthesised list (a, b) is not a value")
        args = [self._eval(a) for a in arg_exprs]
        macro = self.state.macros.get(func)
        if macro is not None and macro.params is not None:
            result = self._call_macro(func, args)
            return "" if result is None else result
        table = FUNCTIONS.get(func)
        if table is not None and table[0] <= len(args) <= table[1]:
            return table[2](*args)
        builtin = self._builtins().get(func)
        if builtin is not None:
            try:
                return builtin(*args)
            except TypeError:
                pass  # wrong number of arguments: the error below says so
        if func in UNSUPPORTED:
            raise EvalError(f"{func}(): not supported by the SPEC simulator")
        raise EvalError(f"cannot call {func} with {len(args)} argument(s) "
                        f"({', '.join(to_text(a) for a in args)[:80]})")
