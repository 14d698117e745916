"""The guest's serial console (COM1). Typing goes through the command line in the guest#
surface (F3); the pane shows what the guest wrote."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from ..model import Snapshot
from .base import Pane

LINES = 200


class ConsolePane(VerticalScroll, Pane):
    def compose(self) -> ComposeResult:
        yield Static("", id="console-body", markup=False)

    def show(self, snap: Snapshot, base: Snapshot | None) -> None:
        self.border_title = "guest console (F3 to type)"
        text = snap.console.replace("\r\n", "\n").replace("\r", "")
        lines = text.split("\n")[-LINES:]
        self.query_one("#console-body", Static).update("\n".join(lines))
        self.scroll_end(animate=False)
