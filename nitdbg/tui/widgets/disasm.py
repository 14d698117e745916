"""Disassembly around the selected vCPU's RIP: AT&T syntax coloured with pygments, sym+off,
the current instruction, breakpoints, instructions retired since the last stop (dimmed) and
the IRET-tracing window (from the IRET exit to the unblocking)."""

from __future__ import annotations

from functools import lru_cache

from ..model import DisLine, Snapshot
from .base import Pane
from .lineview import Line, LinePane


@lru_cache(maxsize=1)
def _highlighter():  # noqa: ANN202
    """The GAS lexer and token styles, loaded at the first instruction shown rather than
    at start-up (pygments' lexers take a noticeable part of the time to first paint)."""
    from pygments.lexers.asm import GasLexer
    from pygments.token import Comment, Keyword, Name, Number, Operator, Punctuation, Token
    styles = [(Name.Function, "bold #82aaff"), (Name.Variable, "#f78c6c"),
              (Name.Builtin, "#f78c6c"), (Keyword, "bold #c792ea"), (Number, "#c3e88d"),
              (Name.Constant, "#c3e88d"), (Comment, "#697098"), (Operator, "#89ddff"),
              (Punctuation, "#89ddff"), (Name.Attribute, "#ffcb6b"), (Name, "#eeffff")]
    return GasLexer(), styles, Token.Text.Whitespace


def _style(tok, styles) -> str:  # noqa: ANN001 - a pygments token type
    for t, s in styles:
        if tok in t:
            return s
    return ""


@lru_cache(maxsize=4096)
def colour_insn(text: str) -> Line:
    """One instruction ("movq\\t%r12,%rsi") as coloured runs."""
    mnem, _, ops = text.partition("\t")
    out = [(f"{mnem:<7} ", "bold #c792ea")]
    lexer, styles, whitespace = _highlighter()
    for tok, val in lexer.get_tokens(ops):
        if tok in whitespace or val == "\n":
            continue
        out.append((val, _style(tok, styles)))
    return tuple(out)


def _with(style: str, extra: str) -> str:
    return f"{style} {extra}".strip() if extra else style


@lru_cache(maxsize=1024)
def dis_line(d: DisLine, wide: bool) -> Line:
    extra = "on #2a3142" if d.current else ("dim" if d.retired else "")
    runs = [("▶" if d.current else " ", "bold #ffcb6b"), ("●" if d.breakpoint else " ",
            "bold red"), ("┃" if d.iret_window else " ", "bold #ff5370")]
    if wide:
        runs.append((f"{d.addr:016x} ", _with("#697098", extra)))
    runs.append((f"{d.where[:22]:<22} ", _with("#82aaff" if d.current else "#b0bec5",
                                                  extra)))
    runs.extend((t, _with(s, extra)) for t, s in colour_insn(d.text))
    return tuple(runs)


class DisasmPane(LinePane, Pane):
    DEFAULT_CSS = "DisasmPane { height: 1fr; }"

    def _wide(self) -> bool:
        return (self.size.width or 100) >= 72       # room for the address column

    def key(self, snap: Snapshot, base: Snapshot | None) -> object:
        v = snap.vcpu
        return v.id, v.regs_source, v.disasm, self._wide()

    def show(self, snap: Snapshot, base: Snapshot | None) -> None:
        v = snap.vcpu
        self.set_title(f"disassembly vCPU {v.id} ({v.regs_source})")
        wide = self._wide()
        self.set_lines(dis_line(d, wide) for d in snap.disasm)
