"""Disassembly around the selected vCPU's RIP: AT&T syntax coloured with pygments, sym+off,
the current instruction, breakpoints, instructions retired since the last stop (dimmed) and
the IRET-tracing window (from the IRET exit to the unblocking)."""

from __future__ import annotations

from functools import lru_cache

from pygments.lexers.asm import GasLexer
from pygments.token import Comment, Keyword, Name, Number, Operator, Punctuation, Token
from rich.text import Text
from textual.widgets import Static

from ..model import Snapshot
from .base import Pane

_LEXER = GasLexer()
_STYLES = [(Name.Function, "bold #82aaff"), (Name.Variable, "#f78c6c"),
           (Name.Builtin, "#f78c6c"), (Keyword, "bold #c792ea"), (Number, "#c3e88d"),
           (Name.Constant, "#c3e88d"), (Comment, "#697098"), (Operator, "#89ddff"),
           (Punctuation, "#89ddff"), (Name.Attribute, "#ffcb6b"), (Name, "#eeffff")]


def _style(tok) -> str:  # noqa: ANN001 - a pygments token type
    for t, s in _STYLES:
        if tok in t:
            return s
    return ""


@lru_cache(maxsize=4096)
def colour_insn(text: str) -> Text:
    """One instruction ("movq\\t%r12,%rsi") as coloured Rich text."""
    out = Text()
    mnem, _, ops = text.partition("\t")
    out.append(f"{mnem:<7} ", style="bold #c792ea")
    for tok, val in _LEXER.get_tokens(ops):
        if tok in Token.Text.Whitespace or val == "\n":
            continue
        out.append(val, style=_style(tok))
    return out


class DisasmPane(Static, Pane):
    DEFAULT_CSS = "DisasmPane { height: 1fr; }"

    def show(self, snap: Snapshot, base: Snapshot | None) -> None:
        v = snap.vcpu
        self.border_title = f"disassembly vCPU {v.id} ({v.regs_source})"
        t = Text(no_wrap=True, overflow="ellipsis")
        wide = (self.size.width or 100) >= 72       # room for the address column
        for i, d in enumerate(snap.disasm):
            if i:
                t.append("\n")
            mark = "▶" if d.current else " "
            bp = "●" if d.breakpoint else " "
            win = "┃" if d.iret_window else " "
            t.append(mark, style="bold #ffcb6b")
            t.append(bp, style="bold red")
            t.append(win, style="bold #ff5370")
            line = Text()
            if wide:
                line.append(f"{d.addr:016x} ", style="#697098")
            line.append(f"{d.where[:22]:<22} ", style="#82aaff" if d.current else "#b0bec5")
            line.append_text(colour_insn(d.text))
            if d.retired and not d.current:
                line.stylize("dim")
            if d.current:
                line.stylize("on #2a3142")
            t.append_text(line)
        self.update(t)
