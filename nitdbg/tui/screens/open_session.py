"""Ask for a .nitrec file to replay."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static


class OpenSessionScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "close")]

    def compose(self) -> ComposeResult:
        with Vertical(id="open-session", classes="dialog"):
            yield Static("session file to replay (.nitrec); [ and ] step back and forward")
            yield Input(placeholder="session.nitrec", id="path")

    def on_mount(self) -> None:
        self.query_one("#open-session").border_title = "open a session"
        self.query_one("#path", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)
