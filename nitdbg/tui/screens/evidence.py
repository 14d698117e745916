"""The step audit's evidence (StepAudit.report()), one key away from the verdict."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


class EvidenceScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,a,q", "dismiss", "close")]

    def __init__(self, report: str) -> None:
        super().__init__()
        self.report = report

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="evidence", classes="dialog"):
            yield Static(self.report.expandtabs(8), markup=False)

    def on_mount(self) -> None:
        self.query_one("#evidence").border_title = "step audit: evidence (esc to close)"
