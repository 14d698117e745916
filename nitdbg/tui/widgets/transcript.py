"""What ddb, the host shell and the app said, in order (kept by the screen so it survives a
layout switch)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import RichLog

from ..model import Snapshot
from .base import Pane

STYLES = {"ddb": "", "host": "#c3e88d", "error": "bold #ff5370", "info": "#89ddff",
          "audit": "#ffcb6b", "guest": ""}


class Transcript(RichLog, Pane):
    def __init__(self, **kw) -> None:  # noqa: ANN003
        super().__init__(wrap=False, markup=False, max_lines=2000, **kw)

    def add(self, text: str, source: str) -> None:
        for line in text.rstrip("\n").split("\n"):
            self.write(Text(line.expandtabs(8), style=STYLES.get(source, "")))

    def show(self, snap: Snapshot, base: Snapshot | None) -> None:
        self.border_title = f"ddb / host  [{snap.status}]"
