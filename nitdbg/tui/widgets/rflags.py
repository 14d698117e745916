"""RFLAGS bit by bit: set bits upper-case, clear ones lower-case, changed ones marked, a
tooltip per bit with what it means (and, for TF and RF, the rule that matters here)."""

from __future__ import annotations

from textual.events import MouseMove

from ..model import Snapshot
from .base import Pane, base_vcpu
from .lineview import LinePane, plain, wrap_line

# (bit, name, meaning) - APM vol 2 3.1.6, SDM vol 1 3.4.3
BITS: list[tuple[int, str, str]] = [
    (0, "CF", "carry flag: carry/borrow out of the last arithmetic result"),
    (2, "PF", "parity flag: low byte of the result has an even number of 1 bits"),
    (4, "AF", "auxiliary carry: carry out of bit 3 (BCD)"),
    (6, "ZF", "zero flag: the result was zero"),
    (7, "SF", "sign flag: the result's top bit"),
    (8, "TF", "trap flag: a single-step #DB (DR6.BS=1) after each instruction that starts "
              "with TF=1; the instruction that sets TF is not stepped (APM vol 2 13.1.4)"),
    (9, "IF", "interrupt flag: maskable interrupts enabled (NMIs ignore it)"),
    (10, "DF", "direction flag: string instructions go down"),
    (11, "OF", "overflow flag: signed overflow"),
    (12, "IOPL", "I/O privilege level (2 bits)"),
    (14, "NT", "nested task: IRET does a task return (RFLAGS from the TSS, so a hypervisor "
               "cannot trace it with TF: unblocked speculatively)"),
    (16, "RF", "resume flag: suppresses instruction breakpoints for one instruction; cleared "
               "after it, except when set by IRET (APM vol 2 13.1.3.1)"),
    (17, "VM", "virtual-8086 mode"),
    (18, "AC", "alignment check"),
]


def flag_cell(bit: int, name: str, rflags: int, old: int | None) -> tuple[int, str, str]:
    """(value, text, style) of one flag: set upper-case, clear lower-case, "*" if it changed
    since the previous stop."""
    if name == "IOPL":
        val, prev = rflags >> 12 & 3, None if old is None else old >> 12 & 3
        text = f"iopl={val}"
    else:
        val, prev = rflags >> bit & 1, None if old is None else old >> bit & 1
        text = name if val else name.lower()
    changed = prev is not None and prev != val
    style = "bold #ffcb6b on #3b2f1a" if changed else ("bold #c3e88d" if val else "#697098")
    return val, text + ("*" if changed else ""), style


class RflagsPane(LinePane, Pane):
    """One line of flags and one of where the value comes from. The flags are drawn as one
    line (not a widget per bit: 14 more widgets to lay out and composite on every step);
    the tooltip follows the mouse from bit to bit."""

    def __init__(self, **kw) -> None:  # noqa: ANN003
        super().__init__(**kw)
        self.values: dict[str, int] = {}
        self._cols: list[tuple[int, int, str]] = []      # start, end column, tooltip

    def flag_value(self, name: str) -> int:
        return self.values[name]

    auto_height = True

    def key(self, snap: Snapshot, base: Snapshot | None) -> object:
        v = snap.vcpu
        old = base_vcpu(base, v.id)
        return (v.rflags, v.rflags_source, v.rflags_now, old.rflags if old else None,
                self.scrollable_content_region.width)

    def on_resize(self) -> None:
        super().on_resize()
        if self._snap is not None:
            self.show(*self._snap)

    _snap: tuple | None = None

    def show(self, snap: Snapshot, base: Snapshot | None) -> None:
        self._snap = (snap, base)
        v = snap.vcpu
        old_v = base_vcpu(base, v.id)
        old = old_v.rflags if old_v is not None else None
        width = self.scrollable_content_region.width or 80
        self.set_title(f"rflags {v.rflags:#x}")
        # the flags on as many rows as the width needs, never cut
        rows: list[list[tuple[str, str]]] = [[]]
        cols, col = [], 0
        for bit, name, meaning in BITS:
            val, text, style = flag_cell(bit, name, v.rflags, old)
            self.values[name] = val
            if col and col + len(text) > width:
                rows.append([])
                col = 0
            if col:
                rows[-1].append((" ", ""))
                col += 1
            rows[-1].append((text, style))
            cols.append((len(rows) - 1, col, col + len(text), f"{name} (bit {bit}): {meaning}"))
            col += len(text)
        self._cols = cols
        src = "source: " + v.rflags_source
        if v.rflags_now is not None and v.rflags_now != v.rflags:
            src += f"; now {v.rflags_now:#x}"
        lines = [tuple(r) for r in rows]
        lines.extend(wrap_line(plain(src, "#697098"), width))
        self.set_lines(lines)

    def on_mouse_move(self, event: MouseMove) -> None:
        x = event.x - self.styles.gutter.left
        y = event.y - self.styles.gutter.top
        tip = next((t for r, a, b, t in self._cols if r == y and a <= x < b), None)
        if tip != self.tooltip:
            self.tooltip = tip
