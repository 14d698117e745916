"""RFLAGS bit by bit: set bits upper-case, clear ones lower-case, changed ones marked, a
tooltip per bit with what it means (and, for TF and RF, the rule that matters here)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from ..model import Snapshot
from .base import Pane, base_vcpu

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


class FlagBit(Static):
    DEFAULT_CSS = "FlagBit { width: auto; padding: 0 1 0 0; }"

    def __init__(self, bit: int, name: str, meaning: str) -> None:
        super().__init__(name.lower(), id=f"flag-{name.lower()}", classes="flag")
        self.bit, self.flag, self.tooltip = bit, name, f"{name} (bit {bit}): {meaning}"
        self.value: int = 0
        self._drawn: tuple[str, str] | None = None

    def set_value(self, rflags: int, old: int | None) -> None:
        if self.flag == "IOPL":
            val, prev = rflags >> 12 & 3, None if old is None else old >> 12 & 3
            text = f"iopl={val}"
        else:
            val, prev = rflags >> self.bit & 1, None if old is None else old >> self.bit & 1
            text = self.flag if val else self.flag.lower()
        self.value = val
        changed = prev is not None and prev != val
        style = "bold #ffcb6b on #3b2f1a" if changed else ("bold #c3e88d" if val else "#697098")
        text += "*" if changed else ""
        if self._drawn != (text, style):
            # width: auto, so a layout pass only when the text's width changes
            relayout = self._drawn is None or len(self._drawn[0]) != len(text)
            self._drawn = (text, style)
            self.update(Text(text, style=style), layout=relayout)
        self.set_class(bool(val), "-set")
        self.set_class(changed, "-changed")


class RflagsPane(Vertical, Pane):
    DEFAULT_CSS = """
    RflagsPane { height: auto; }
    RflagsPane > Horizontal { height: 1; }
    RflagsPane > #rflags-src { height: 1; color: $text-muted; }
    """

    def compose(self) -> ComposeResult:
        with Horizontal():
            for bit, name, meaning in BITS:
                yield FlagBit(bit, name, meaning)
        yield Static("", id="rflags-src")

    def flag(self, name: str) -> FlagBit:
        return self.query_one(f"#flag-{name.lower()}", FlagBit)

    def key(self, snap: Snapshot, base: Snapshot | None) -> object:
        v = snap.vcpu
        old = base_vcpu(base, v.id)
        return v.rflags, v.rflags_source, v.rflags_now, old.rflags if old else None

    def show(self, snap: Snapshot, base: Snapshot | None) -> None:
        v = snap.vcpu
        old_v = base_vcpu(base, v.id)
        old = old_v.rflags if old_v is not None else None
        self.set_title(f"rflags {v.rflags:#x}")
        for fb in self.query(FlagBit):
            fb.set_value(v.rflags, old)
        src = "source: " + v.rflags_source
        if v.rflags_now is not None and v.rflags_now != v.rflags:
            src += f"; frame now {v.rflags_now:#x}"
        self.query_one("#rflags-src", Static).update(src, layout=False)
