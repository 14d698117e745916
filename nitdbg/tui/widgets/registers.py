"""General registers of the selected vCPU (the trapframe's while it is in ddb), changed
ones highlighted since the previous stop."""

from __future__ import annotations

from ..model import Snapshot
from .base import Pane, base_vcpu
from .lineview import LinePane

CHANGED = "bold #ffcb6b on #3b2f1a"


def _where(snap: Snapshot) -> str:
    return next((d.where for d in snap.disasm if d.current), "")


class RegistersPane(LinePane, Pane):
    def key(self, snap: Snapshot, base: Snapshot | None) -> object:
        v = snap.vcpu
        old = base_vcpu(base, v.id)
        return v.id, v.regs_source, v.regs, old.regs if old else None, _where(snap)

    def show(self, snap: Snapshot, base: Snapshot | None) -> None:
        v = snap.vcpu
        old_v = base_vcpu(base, v.id)
        old = old_v.regs if old_v is not None else {}
        small = self.screen.has_class("-small") if self.is_mounted else False
        rip = v.regs.get("rip", 0)
        # small layout: RIP in the title (▶ in the disassembly says where), one row less
        self.set_title(f"registers vCPU {v.id} ({v.regs_source})" if not small
                       else f"vCPU {v.id} {v.regs_source} rip {rip:x}")
        lines = []
        # the snapshot's order (the architecture's, rax..r15); not imported from nitdbg.x86,
        # which would bring capstone in before the first paint
        gprs = [n for n in v.regs if n != "rip"]
        half = len(gprs) // 2
        for row in range(half):
            runs: list[tuple[str, str]] = []
            for col, name in enumerate((gprs[row], gprs[row + half])):
                if col:
                    runs.append(("  ", ""))
                val = v.regs.get(name, 0)
                runs.append((f"{name:>3} ", "#82aaff"))
                changed = name in old and old[name] != val
                runs.append((f"{val:016x}", CHANGED if changed else ""))
            lines.append(tuple(runs))
        changed = "rip" in old and old["rip"] != rip
        if not small:
            lines.append((("rip ", "#82aaff"), (f"{rip:016x}", CHANGED if changed else ""),
                          (f" {_where(snap)}", "#b0bec5")))
        self.set_lines(lines)
