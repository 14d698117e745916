"""The step audit verdict, always visible; click it (or press a) for the evidence."""

from __future__ import annotations

from rich.text import Text
from textual.message import Message
from textual.widgets import Static

from ..model import Snapshot
from .base import Pane, update_auto_height


class VerdictBar(Static, Pane):
    DEFAULT_CSS = "VerdictBar { height: 1; }"

    class EvidenceRequested(Message):
        """The user wants the audit's evidence."""

    def key(self, snap: Snapshot, base: Snapshot | None) -> object:
        return snap.audit_ok, snap.audit_summary, snap.status

    def show(self, snap: Snapshot, base: Snapshot | None) -> None:
        t = Text()          # wraps: a long status (a deadlock, every vCPU) stays readable
        ok = snap.audit_ok
        if snap.status.startswith("DEADLOCK"):
            # nothing runs: the deadlock is all there is to say
            head, _, rest = snap.status.partition(":")
            t.append(f" {head} ", style="bold white on #ff5370")
            t.append(rest, style="bold #ff5370")
        else:
            t.append(" ✔ " if ok else " ✘ ", style="bold black on #c3e88d" if ok
                     else "bold white on #ff5370")
            t.append(" " + snap.audit_summary, style="bold" if not ok else "")
            if (self.size.width or 100) >= 100:
                t.append("  (a: evidence)", style="#697098")
            t.append(f"   {snap.status}", style="#89ddff")
        update_auto_height(self, t)
        self.set_class(not ok, "-violation")

    def on_click(self) -> None:
        self.post_message(self.EvidenceRequested())
