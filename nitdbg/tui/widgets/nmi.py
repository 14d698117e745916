"""The NMI state of each vCPU as a small state machine, the current state lit:
idle -> NMI injected/blocked -> IRET intercepted -> tracing -> unblocked precisely
(or speculatively, or at the IRET exit under bhyve-upstream)."""

from __future__ import annotations

from ..model import Snapshot, VcpuView
from .base import Pane
from .lineview import LinePane

STATES = ("idle", "blocked", "iret-exit", "tracing", "unblocked")
LABELS = {"idle": "idle", "blocked": "blocked", "iret-exit": "IRET exit",
          "tracing": "tracing", "unblocked": "unblocked"}


def current_state(v: VcpuView) -> str:
    """Which state of the chain is lit for this vCPU."""
    if v.nmi_state == "tracing":
        return "tracing"
    if v.nmi_state == "blocked":
        return "blocked"
    if v.last_unblock:
        return "unblocked"
    return "idle"


class NmiPane(LinePane, Pane):
    auto_height = True
    def key(self, snap: Snapshot, base: Snapshot | None) -> object:
        return snap.policy, snap.selected, tuple(
            (v.nmi_state, v.last_unblock, v.iret_exit_seen, v.nmi_pending, v.nmi_transition)
            for v in snap.vcpus)

    def show(self, snap: Snapshot, base: Snapshot | None) -> None:
        self.set_title(f"NMI blocking ({snap.policy})")
        lines = []
        for v in snap.vcpus:
            cur = current_state(v)
            sel = v.id == snap.selected
            runs = [(f"{'▸' if sel else ' '}{v.id} ", "bold" if sel else "")]
            for i, s in enumerate(STATES):
                if i:
                    runs.append(("→", "#697098"))
                label = LABELS[s]
                if s == "unblocked" and v.last_unblock:
                    label = {"precisely": "precise", "speculatively": "speculative",
                             "upstream": "at exit"}.get(v.last_unblock, v.last_unblock)
                lit = s == cur or (s == "iret-exit" and cur == "tracing" and v.iret_exit_seen)
                runs.append((label, "bold black on #ffcb6b" if lit else "#697098"))
            if v.nmi_pending:
                runs.append((" +pending", "bold #ff5370"))
            lines.append(tuple(runs))
        sel = snap.vcpu
        small = self.is_mounted and self.screen.has_class("-small")
        if sel.nmi_transition and not small:   # as the policy reports it (NmiView)
            lines.append(((f"  vCPU {sel.id} last: {sel.nmi_transition}", "#697098"),))
        self.set_lines(lines)
