"""The explain panel: for the last event, the rule that produced it and the manual
section (computed by nitdbg.tui.explain from what the machine did)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ..model import Snapshot
from .base import Pane, update_auto_height


class ExplainPane(Static, Pane):
    def key(self, snap: Snapshot, base: Snapshot | None) -> object:
        return snap.selected, snap.explain

    def show(self, snap: Snapshot, base: Snapshot | None) -> None:
        self.set_title(f"explain vCPU {snap.selected}")
        t = Text()
        if not snap.explain:
            t.append("nothing notable yet: inject an NMI (n)", style="#697098")
        for i, x in enumerate(snap.explain):
            if i:
                t.append("\n")
            t.append(x.title, style="bold #ffcb6b")
            t.append(": " + x.rule + " — ")
            t.append(x.source, style="italic #82aaff")
            t.append(f"\n  [{x.evidence}]", style="#697098")
        update_auto_height(self, t)
