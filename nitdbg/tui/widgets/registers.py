"""General registers of the selected vCPU (the trapframe's while it is in ddb), changed
ones highlighted since the previous stop."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ...x86.regs import GPR_NAMES
from ..model import Snapshot
from .base import Pane

CHANGED = "bold #ffcb6b on #3b2f1a"


class RegistersPane(Static, Pane):
    def show(self, snap: Snapshot, base: Snapshot | None) -> None:
        v = snap.vcpu
        old = base.vcpus[v.id].regs if base is not None and len(base.vcpus) > v.id else {}
        self.border_title = f"registers vCPU {v.id} ({v.regs_source})"
        t = Text(no_wrap=True)
        half = len(GPR_NAMES) // 2
        for row in range(half):
            if row:
                t.append("\n")
            for col, name in enumerate((GPR_NAMES[row], GPR_NAMES[row + half])):
                if col:
                    t.append("  ")
                val = v.regs.get(name, 0)
                t.append(f"{name:>3} ", style="#82aaff")
                changed = name in old and old[name] != val
                t.append(f"{val:016x}", style=CHANGED if changed else "")
        rip = v.regs.get("rip", 0)
        t.append("\nrip ", style="#82aaff")
        changed = "rip" in old and old["rip"] != rip
        t.append(f"{rip:016x}", style=CHANGED if changed else "")
        where = next((d.where for d in snap.disasm if d.current), "")
        t.append(f" {where}", style="#b0bec5")
        self.update(t)
