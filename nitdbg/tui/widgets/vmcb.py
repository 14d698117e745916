"""The VMCB of the selected vCPU as the hypervisor sees it: intercepts by name, EXITCODE
with its name, EXITINFO1/2, EXITINTINFO and EVENTINJ decoded, V_IRQ, the interrupt shadow
and the guest RFLAGS; fields changed since the previous stop highlighted."""

from __future__ import annotations

from ..model import Snapshot
from .base import Pane, base_vcpu
from .lineview import LinePane, wrap_line

CHANGED = "bold #ffcb6b on #3b2f1a"


class VmcbPane(LinePane, Pane):
    def key(self, snap: Snapshot, base: Snapshot | None) -> object:
        old = base_vcpu(base, snap.selected)
        return snap.selected, snap.vcpu.vmcb, old.vmcb if old else None

    def show(self, snap: Snapshot, base: Snapshot | None) -> None:
        shown = snap.vcpu
        b = shown.vmcb
        old_v = base_vcpu(base, shown.id)
        old = old_v.vmcb.fields() if old_v is not None else {}
        self.set_title(f"VMCB vCPU {shown.id}")
        lines = []
        # which #VMEXIT the save area and the exit fields come from
        if b.exit:
            src = "save area from " + b.exit + ("; the guest has run on since" if b.in_guest
                                                else "")
        else:
            src = "no exit yet: the save area is the loader's start state"
        lines.append(((src, "italic #89ddff"),))

        def row(label: str, key: str, text: str) -> None:
            changed = key in old and old[key] != getattr(b, key)
            lines.append(((f"{label:<12}", "#82aaff"), (text, CHANGED if changed else "")))

        row("exitcode", "exitcode", f"{b.exitcode:#x} {b.exitname}" if b.exit else "-")
        row("exitinfo1", "exitinfo1", f"{b.exitinfo1:#x}")
        row("exitinfo2", "exitinfo2", f"{b.exitinfo2:#x}")
        row("exitintinfo", "exitintinfo", b.exitintinfo)
        row("eventinj", "eventinj", b.eventinj)
        row("v_irq", "v_irq", f"{b.v_irq} vector {b.v_intr_vector:#x}")
        row("int_shadow", "interrupt_shadow", str(b.interrupt_shadow))
        row("rflags", "rflags", f"{b.rflags:#x}" + (" TF" if b.rflags & 0x100 else "")
            + (" RF" if b.rflags & 0x10000 else ""))
        row("rip", "rip", f"{b.rip:#x}")
        row("dr6/dr7", "dr6", f"{b.dr6:#x} / {b.dr7:#x}" + (" BS" if b.dr6 & 0x4000 else ""))
        row("intercepts", "intercepts", " ".join(b.intercepts))
        width = self.scrollable_content_region.width or 48
        self.set_lines([r for line in lines for r in wrap_line(line, width)])
