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


INSN_COLS = 30          # "movq    %r12,0x10(%rsp)": what the instruction column needs


def where_width(width: int, addr_col: bool) -> int:
    """The sym+off column: as wide as leaves the instruction its room (at most 24; below
    NARROW the pane switches to symbol label rows)."""
    return min(24, width - 3 - (17 if addr_col else 0) - INSN_COLS)


NARROW = 18      # a sym+off column narrower than this cuts names: label rows instead


def centre(rows: list, current: int, height: int) -> list:
    """`height` of `rows` with row `current` in the middle (as near as the rows at hand
    allow): the instructions before RIP above it, those after below."""
    if height <= 0 or len(rows) <= height:
        return rows
    top = max(0, min(current - (height - 1) // 2, len(rows) - height))
    return rows[top:top + height]


def split_where(where: str) -> tuple[str, str]:
    """"cpu_idle_acpi+0x2" -> ("cpu_idle_acpi", "+0x2"); an address without a symbol is
    its own label."""
    sym, plus, off = where.rpartition("+")
    if not plus or where.startswith("0x"):
        return where, ""
    return sym, "+" + off


@lru_cache(maxsize=2048)
def label_line(sym: str) -> Line:
    return (("   ", ""), (f"<{sym}>:", "italic #82aaff"))


def narrow_rows(lines: tuple[DisLine, ...]) -> tuple[list[Line], int]:
    """objdump's layout for a narrow pane: a `<symbol>:` row where the symbol changes and
    the offset in the column, so the instruction keeps its width. Returns the rows and the
    index of the current one."""
    rows: list[Line] = []
    cur = 0
    last = None
    for d in lines:
        sym, off = split_where(d.where)
        if sym != last:
            rows.append(label_line(sym))
            last = sym
        if d.current:
            cur = len(rows)
        rows.append(dis_line(d, False, 7, off or "+0"))
    return rows, cur


@lru_cache(maxsize=2048)
def dis_line(d: DisLine, wide: bool, where_w: int = 22, where: str | None = None) -> Line:
    extra = "on #2a3142" if d.current else ("dim" if d.retired else "")
    runs = [("▶" if d.current else " ", "bold #ffcb6b"), ("●" if d.breakpoint else " ",
            "bold red"), ("┃" if d.iret_window else " ", "bold #ff5370")]
    if wide:
        runs.append((f"{d.addr:016x} ", _with("#697098", extra)))
    where = d.where if where is None else where
    if len(where) > where_w:
        where = where[:where_w - 1] + "…"
    runs.append((f"{where:<{where_w}} ", _with("#82aaff" if d.current else "#b0bec5",
                                                  extra)))
    runs.extend((t, _with(s, extra)) for t, s in colour_insn(d.text))
    return tuple(runs)


class DisasmPane(LinePane, Pane):
    """Centred on ▶: the rows above it are the instructions before RIP (dimmed where they
    retired since the previous stop), the rows below what comes next."""

    DEFAULT_CSS = "DisasmPane { height: 1fr; }"

    def _wide(self) -> bool:
        return (self.size.width or 100) >= 17 + 3 + 22 + INSN_COLS   # room for addresses

    def _geometry(self) -> tuple[bool, int, int]:
        width = self.scrollable_content_region.width or 80
        wide = self._wide()
        return wide, where_width(width, wide), self.scrollable_content_region.height or 20

    def key(self, snap: Snapshot, base: Snapshot | None) -> object:
        v = snap.vcpu
        return v.id, v.in_ddb, v.regs_source, v.disasm, self._geometry()

    def on_resize(self) -> None:
        super().on_resize()
        if self._snap is not None:
            self.show(self._snap, None)

    _snap: Snapshot | None = None

    def show(self, snap: Snapshot, base: Snapshot | None) -> None:
        self._snap = snap
        v = snap.vcpu
        wide, where_w, height = self._geometry()
        name = "disasm" if (self.size.width or 80) < 40 else "disassembly"
        self.set_title(f"{name} vCPU {v.id}" + (" in ddb" if v.in_ddb else "")
                       + f" ({v.regs_source})")
        if where_w < NARROW:
            rows, cur = narrow_rows(snap.disasm)
        else:
            rows = [dis_line(d, wide, where_w) for d in snap.disasm]
            cur = next((i for i, d in enumerate(snap.disasm) if d.current), 0)
        self.set_lines(centre(rows, cur, height))
