"""The NMI state of each vCPU as a small state machine, the current state lit:
idle -> NMI injected/blocked -> IRET intercepted -> tracing -> unblocked precisely
(or speculatively, or at the IRET exit under bhyve-upstream)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ..model import Snapshot, VcpuView
from .base import Pane

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


class NmiPane(Static, Pane):
    def show(self, snap: Snapshot, base: Snapshot | None) -> None:
        self.border_title = f"NMI blocking ({snap.policy})"
        t = Text(no_wrap=True, overflow="ellipsis")
        for v in snap.vcpus:
            if v.id:
                t.append("\n")
            cur = current_state(v)
            sel = v.id == snap.selected
            t.append(f"{'▸' if sel else ' '}{v.id} ", style="bold" if sel else "")
            for i, s in enumerate(STATES):
                if i:
                    t.append("→", style="#697098")
                label = LABELS[s]
                if s == "unblocked" and v.last_unblock:
                    label = {"precisely": "precise", "speculatively": "speculative",
                             "upstream": "at exit"}.get(v.last_unblock, v.last_unblock)
                lit = s == cur or (s == "iret-exit" and cur == "tracing" and v.iret_exit_seen)
                t.append(label, style="bold black on #ffcb6b" if lit else "#697098")
            if v.nmi_pending:
                t.append(" +pending", style="bold #ff5370")
        self.update(t)
