"""The KTR log, live and filterable (a substring typed in the filter box)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Input, Static

from ..model import Snapshot
from .base import Pane

SHOWN = 200
HIGHLIGHT = ("vNMI", "unblocked", "iret", "Injecting", "Reflecting", "Delaying",
             "nested page", "Bouncing", "non-canonical")


class KtrPane(Vertical, Pane):
    DEFAULT_CSS = """
    KtrPane > Input { height: 1; border: none; padding: 0 1; background: $boost; }
    KtrPane > VerticalScroll { height: 1fr; }
    """

    def __init__(self, **kw) -> None:  # noqa: ANN003
        super().__init__(**kw)
        self.entries: tuple = ()

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter KTR: vNMI, or !pause to hide", id="ktr-filter")
        with VerticalScroll():
            yield Static("", id="ktr-body")

    def show(self, snap: Snapshot, base: Snapshot | None) -> None:
        self.entries = snap.ktr
        self._render_entries()

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self._render_entries()

    def _render_entries(self) -> None:
        pat = self.query_one("#ktr-filter", Input).value.strip().lower()
        if pat.startswith("!"):          # "!pause": everything but the pause exits
            rows = [e for e in self.entries if pat[1:] not in e[3].lower()]
        else:
            rows = [e for e in self.entries if pat in e[3].lower()]
        rows = rows[-SHOWN:]
        self.border_title = f"KTR ({len(rows)} shown)"
        t = Text(no_wrap=True, overflow="ellipsis")
        for i, (index, cpu, ts, msg) in enumerate(rows):
            if i:
                t.append("\n")
            t.append(f"{index:6d} {cpu:2d} {ts:>12} ", style="#697098")
            t.append(msg, style="bold #ffcb6b" if any(h in msg for h in HIGHLIGHT) else "")
        self.query_one("#ktr-body", Static).update(t)
        self.query_one(VerticalScroll).scroll_end(animate=False)
