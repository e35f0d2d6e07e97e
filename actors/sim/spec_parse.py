"""The parser of the SPEC macro subset the simulator runs: text → the syntax tree of
`actors.sim.spec_syntax` (`actors.sim.spec_eval` runs it). Its own recursive-descent parser:
client text never reaches Python's ``eval``.

Grammar (statements end at ``;``, a newline or ``}``)::

    statement := "{" statement* "}"
               | "if" "(" expr ")" statement ["else" statement]
               | "while" "(" expr ")" statement
               | "for" "(" [simple] ";" [expr] ";" [simple] ")" statement
               | "for" "(" NAME "in" NAME ")" statement
               | "break" | "continue" | "return" [expr]
               | ("local" | "global") NAME ["[]"] ("," NAME ["[]"])*
               | "unglobal" NAME | "undef" NAME
               | "def" NAME ["(" [NAME ("," NAME)*] ")"] STRING        a macro (function)
               | ["shared"] [TYPE] "array" NAME "[" expr "]" ["[" expr "]"]
               | "print" expr ("," expr)* | "print" "(" expr ("," expr)* ")"
               | WORD arguments...          a command word (mv, count, ...), a def'd macro,
                                            or any name followed by a word (``ascan m0 ...``)
               | simple
    simple    := NAME ("[" expr "]")* ("=" | "+=" | "-=" | "*=" | "/=" | "%=") expr
               | NAME ("[" expr "]")* ("++" | "--") | expr
    expr      := C precedence: ?:, ||, &&, == !=, < > <= >=, + -, * / %, unary - ! +
    primary   := NUMBER | STRING | "(" expr ")" | NAME | NAME ("[" expr "]")+
               | NAME "(" [expr ("," expr)*] ")"
               | "[" [item ("," item)*] "]"     item := expr (":" expr)+  (keys, then value)

A command word's arguments are the raw tokens up to the end of the statement (SPEC macros see
words, ``$1`` ...). Errors raise `EvalError` naming what was expected and what came.
"""

from __future__ import annotations

from collections.abc import Callable

from actors.sim.spec_syntax import (
    ARRAY_TYPES,
    ASSIGN_OPS,
    BINARY,
    ArrayDecl,
    Assign,
    AssocLit,
    Binary,
    Block,
    Call,
    Declare,
    Define,
    EvalError,
    Expr,
    ExprStmt,
    For,
    ForIn,
    If,
    Index,
    Jump,
    Num,
    Print,
    Return,
    Stmt,
    Str,
    Ternary,
    Token,
    Unary,
    Var,
    While,
    Word,
    tokenize,
    unquote,
)


def parse(text: str, words: frozenset[str] = frozenset()) -> list[Stmt]:
    """The statements of `text` (see `Parser` for `words`)."""
    return Parser(tokenize(text), words).program()


class Parser:
    """Tokens → statements. `words` are the names parsed as command words (with raw
    arguments) when they start a statement and are not followed by ``=``, ``(`` or ``[``."""

    def __init__(self, toks: list[Token], words: frozenset[str] = frozenset()) -> None:
        self.toks = toks if toks and toks[-1][0] == "end" else [*toks, ("end", "")]
        self.i = 0
        self.words = words

    def program(self) -> list[Stmt]:
        out: list[Stmt] = []
        while self.peek()[0] != "end":
            stmt = self.statement()
            if stmt is not None:
                out.append(stmt)
        return out

    # --- tokens ----------------------------------------------------------------------------

    def peek(self, ahead: int = 0) -> Token:
        return self.toks[min(self.i + ahead, len(self.toks) - 1)]

    def take(self) -> Token:
        tok = self.peek()
        self.i += 1
        return tok

    def at(self, text: str) -> bool:
        kind, got = self.peek()
        return got == text and kind in ("op", "nl")

    def expect(self, text: str) -> None:
        kind, got = self.take()
        if got != text or kind not in ("op", "nl", "name"):
            raise EvalError(f"expected {text!r}, got {got or 'end of text'!r}")

    def name(self, what: str) -> str:
        kind, got = self.take()
        if kind != "name":
            raise EvalError(f"{what} needs a name, got {got or 'end of text'!r}")
        return got

    def skip_newlines(self) -> None:
        while self.peek() == ("nl", "\n"):
            self.i += 1

    def end_of_statement(self) -> None:
        if not (self.at(";") or self.at("\n") or self.at("}") or self.peek()[0] == "end"):
            raise EvalError(f"unexpected {self.peek()[1]!r}")

    # --- statements ------------------------------------------------------------------------

    def statement(self) -> Stmt | None:
        kind, word = self.peek()
        if kind == "nl":
            self.i += 1
            return None
        if word == "{" and kind == "op":
            return self.block()
        if kind == "name":
            special = self.keyword(word)
            if special is not None:
                return special
        stmt = self.simple()
        self.end_of_statement()
        return stmt

    def block(self) -> Block:
        self.expect("{")
        body: list[Stmt] = []
        while not self.at("}"):
            if self.peek()[0] == "end":
                raise EvalError("expected '}', got end of text")
            stmt = self.statement()
            if stmt is not None:
                body.append(stmt)
        self.i += 1
        return Block(tuple(body))

    def body(self) -> Stmt:
        self.skip_newlines()
        stmt = self.statement()
        return stmt if stmt is not None else Block(())

    def keyword(self, word: str) -> Stmt | None:
        follows = self.peek(1)[1]
        parsers: dict[str, Callable[[], Stmt]] = {
            "if": self.if_, "while": self.while_, "for": self.for_, "return": self.return_,
            "def": self.define, "print": self.print_}
        if word in parsers and not (word == "print" and follows in ASSIGN_OPS):
            self.i += 1
            return parsers[word]()
        if word in ("break", "continue"):
            self.i += 1
            self.end_of_statement()
            return Jump(word)
        if word in ("local", "global", "unglobal", "undef"):
            self.i += 1
            return self.declare(word)
        if word == "array" or (word in ("shared", *ARRAY_TYPES) and
                               self._array_declaration()):
            return self.array_decl()
        if (word in self.words and follows not in ("=", "(", "[", *ASSIGN_OPS)) or \
                self.peek(1)[0] in ("name", "num", "str"):
            self.i += 1
            args: list[Token] = []
            while not (self.at(";") or self.at("\n") or self.at("}") or
                       self.peek()[0] == "end"):
                args.append(self.take())
            return Word(word, tuple(args))
        return None

    def _array_declaration(self) -> bool:
        j = 0
        while self.peek(j)[1] in ("shared", *ARRAY_TYPES):
            j += 1
        return self.peek(j)[1] == "array"

    def if_(self) -> If:
        self.expect("(")
        test = self.expr()
        self.expect(")")
        then = self.body()
        save = self.i
        self.skip_newlines()
        if self.at(";"):
            self.i += 1
            self.skip_newlines()
        if self.peek() == ("name", "else"):
            self.i += 1
            return If(test, then, self.body())
        self.i = save
        return If(test, then, None)

    def while_(self) -> While:
        self.expect("(")
        test = self.expr()
        self.expect(")")
        return While(test, self.body())

    def for_(self) -> For | ForIn:
        self.expect("(")
        if self.peek()[0] == "name" and self.peek(1) == ("name", "in"):
            var = self.name("for")
            self.i += 1
            array = self.name("for ... in")
            self.expect(")")
            return ForIn(var, array, self.body())
        init = None if self.at(";") else self.simple()
        self.expect(";")
        test = None if self.at(";") else self.expr()
        self.expect(";")
        step = None if self.at(")") else self.simple()
        self.expect(")")
        return For(init, test, step, self.body())

    def return_(self) -> Return:
        if self.at(";") or self.at("\n") or self.at("}") or self.peek()[0] == "end":
            return Return(None)
        value = self.expr()
        self.end_of_statement()
        return Return(value)

    def declare(self, scope: str) -> Declare:
        names: list[tuple[str, bool]] = []
        while True:
            name = self.name(scope)
            assoc = self.at("[")
            if assoc:
                self.i += 1
                self.expect("]")
            names.append((name, assoc))
            if not self.at(","):
                break
            self.i += 1
        self.end_of_statement()
        return Declare(scope, tuple(names))

    def define(self) -> Define:
        name = self.name("def")
        params: tuple[str, ...] | None = None
        if self.at("("):
            self.i += 1
            found: list[str] = []
            while not self.at(")"):
                found.append(self.name(f"def {name}"))
                if not self.at(")"):
                    self.expect(",")
            self.i += 1
            params = tuple(found)
        kind, body = self.take()
        if kind != "str":
            raise EvalError(f"def {name}: the macro body must be a quoted string, got "
                            f"{body or 'end of text'!r}")
        self.end_of_statement()
        return Define(name, params, unquote(body))

    def array_decl(self) -> ArrayDecl:
        type_ = "double"
        while self.peek()[1] != "array":
            word = self.take()[1]
            if word != "shared":
                type_ = word
        self.i += 1
        name = self.name("array")
        dims: list[Expr] = []
        while self.at("["):
            self.i += 1
            dims.append(self.expr())
            self.expect("]")
        if not 1 <= len(dims) <= 2:
            raise EvalError(f"array {name} needs one or two dimensions ([n] or [rows][cols])")
        self.end_of_statement()
        return ArrayDecl(name, type_, tuple(dims))

    def print_(self) -> Print:
        items = [self.expr()]
        while self.at(","):
            self.i += 1
            items.append(self.expr())
        self.end_of_statement()
        if len(items) == 1 and isinstance(items[0], Call) and items[0].func == "":
            return Print(items[0].args)  # print("a", "b"): the parenthesised list
        return Print(tuple(items))

    def simple(self) -> Stmt:
        kind, _ = self.peek()
        if kind == "name" and self._assignment_ahead():
            target = self.target()
            op = self.take()[1]
            if op in ("++", "--"):
                return Assign(target, op[0] + "=", Num(1.0))
            return Assign(target, op, self.expr())
        return ExprStmt(self.expr())

    def _assignment_ahead(self) -> bool:
        depth, j = 0, 1
        while True:
            kind, tok = self.peek(j)
            if kind == "end" or (kind == "nl" and depth == 0):
                return False
            if kind == "op" and tok == "[":
                depth += 1
            elif kind == "op" and tok == "]":
                depth -= 1
            elif depth == 0:
                return kind == "op" and tok in (*ASSIGN_OPS, "++", "--")
            j += 1

    def target(self) -> Var | Index:
        name = self.name("assignment")
        keys = self.keys()
        return Index(name, keys) if keys else Var(name)

    def keys(self) -> tuple[Expr, ...]:
        keys: list[Expr] = []
        while self.at("["):
            self.i += 1
            keys.append(self.expr())
            self.expect("]")
        return tuple(keys)

    # --- expressions -----------------------------------------------------------------------

    def expr(self) -> Expr:
        test = self.binary(0)
        if not self.at("?"):
            return test
        self.i += 1
        then = self.expr()
        self.expect(":")
        return Ternary(test, then, self.expr())

    def binary(self, level: int) -> Expr:
        if level == len(BINARY):
            return self.unary()
        left = self.binary(level + 1)
        while self.peek()[0] == "op" and self.peek()[1] in BINARY[level]:
            op = self.take()[1]
            left = Binary(op, left, self.binary(level + 1))
        return left

    def unary(self) -> Expr:
        if self.at("-") or self.at("!") or self.at("+"):
            op = self.take()[1]
            return Unary(op, self.unary())
        if self.at("--") or self.at("++"):  # no pre-decrement: "--x" is -(-x)
            op = self.take()[1][0]
            return Unary(op, Unary(op, self.unary()))
        return self.primary()

    def primary(self) -> Expr:
        kind, tok = self.take()
        if kind == "num":
            return Num(float(tok))
        if kind == "str":
            return Str(unquote(tok))
        if kind == "op" and tok == "(":
            items = [self.expr()]
            while self.at(","):
                self.i += 1
                items.append(self.expr())
            self.expect(")")
            return items[0] if len(items) == 1 else Call("", tuple(items))
        if kind == "op" and tok == "[":
            return self.assoc_literal()
        if kind != "name":
            raise EvalError(f"expected a value, got {tok or 'end of text'!r}")
        if self.at("("):
            return Call(tok, self.arguments())
        keys = self.keys()
        return Index(tok, keys) if keys else Var(tok)

    def arguments(self) -> tuple[Expr, ...]:
        self.expect("(")
        args: list[Expr] = []
        while not self.at(")"):
            args.append(self.expr())
            if not self.at(")"):
                self.expect(",")
        self.i += 1
        return tuple(args)

    def assoc_literal(self) -> AssocLit:
        items: list[tuple[tuple[Expr, ...], Expr]] = []
        self.skip_newlines()
        while not self.at("]"):
            parts = [self.expr()]
            while self.at(":"):
                self.i += 1
                parts.append(self.expr())
            if len(parts) < 2:
                raise EvalError("an associative array item is key: value ([k: v, ...])")
            items.append((tuple(parts[:-1]), parts[-1]))
            self.skip_newlines()
            if not self.at("]"):
                self.expect(",")
                self.skip_newlines()
        self.i += 1
        return AssocLit(tuple(items))
