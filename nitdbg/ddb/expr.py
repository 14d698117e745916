"""ddb expressions (after sys/ddb/db_expr.c): terms are numbers (radix 16), symbols,
`$registers`, `.` (dot, the last address examined) and parenthesised expressions; operators
`* / %` bind tighter than `+ -`; unary `-`. Values wrap to 64 bits."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..guest.symbols import SymbolTable
from .errors import DdbError
from .lex import Lexer, is_hex_word

M64 = (1 << 64) - 1
MAX_DEPTH = 64      # parentheses and unary minus nested deeper are refused, not recursed into


class ExprContext:
    """What an expression can refer to: the symbol table, the register variables, dot."""

    def __init__(self, symbols: SymbolTable, var: Callable[[str], int], dot: Callable[[], int]):
        self.symbols = symbols
        self.var = var
        self.dot = dot
        self.depth = 0            # nesting of ( and unary -, bounded by MAX_DEPTH


def starts_expression(lx: Lexer) -> bool:
    t = lx.peek()
    return t.kind in ("num", "ident", "var") or (t.kind == "punct" and t.text in "(-")


def expression(lx: Lexer, ctx: ExprContext) -> int:
    """Parse an expression; DdbError("Syntax error") when there is none."""
    value = _add(lx, ctx)
    return value & M64


def _wrap(v: int) -> int:
    """db_expr_t is a signed 64-bit integer: every operation wraps, so no intermediate value
    grows without bound (a chain of huge products would otherwise cost seconds)."""
    return ((v + (1 << 63)) & M64) - (1 << 63)


def _add(lx: Lexer, ctx: ExprContext) -> int:
    v = _mul(lx, ctx)
    while True:
        if lx.accept("+"):
            v = _wrap(v + _mul(lx, ctx))
        elif lx.accept("-"):
            v = _wrap(v - _mul(lx, ctx))
        else:
            return v


def _mul(lx: Lexer, ctx: ExprContext) -> int:
    v = _unary(lx, ctx)
    while True:
        if lx.accept("*"):
            v = _wrap(v * _unary(lx, ctx))
        elif lx.accept("/") or lx.accept("%"):
            op = lx.toks[lx.pos - 1].text
            r = _unary(lx, ctx)
            if r == 0:
                raise DdbError("Division by 0")
            v = _wrap(v // r if op == "/" else v % r)
        else:
            return v


def _unary(lx: Lexer, ctx: ExprContext) -> int:
    if lx.accept("-"):
        with _nested(ctx):
            return _wrap(-_unary(lx, ctx))
    return _term(lx, ctx)


@contextmanager
def _nested(ctx: ExprContext) -> Iterator[None]:
    ctx.depth += 1
    try:
        if ctx.depth > MAX_DEPTH:
            raise DdbError(f"Expression too deeply nested (more than {MAX_DEPTH} levels)")
        yield
    finally:
        ctx.depth -= 1


def _term(lx: Lexer, ctx: ExprContext) -> int:
    t = lx.next()
    if t.kind == "num":
        return _wrap(t.value)
    if t.kind == "ident":
        if t.text == ".":
            return ctx.dot()
        if t.text in ctx.symbols:
            return ctx.symbols.address(t.text)
        if is_hex_word(t.text):
            return _wrap(int(t.text, 16))   # a bare hex word that is not a symbol
        raise DdbError(f"Symbol '{t.text}' not found")
    if t.kind == "var":
        return ctx.var(t.text)
    if t.kind == "punct" and t.text == "(":
        with _nested(ctx):
            v = _add(lx, ctx)
        if not lx.accept(")"):
            raise DdbError("Syntax error")
        return v
    raise DdbError("Syntax error")
