"""What ddb, the host shell and the app said, in order (kept by the screen so it survives a
layout switch)."""

from __future__ import annotations

from ..model import Snapshot
from .base import Pane
from .lineview import LineView, plain

STYLES = {"ddb": "", "host": "#c3e88d", "error": "bold #ff5370", "info": "#89ddff",
          "audit": "#ffcb6b", "guest": ""}


class Transcript(LineView, Pane):
    wrap = True          # ddb's `bt`, the watchdog line: every word readable
    def __init__(self, **kw) -> None:  # noqa: ANN003
        super().__init__(max_lines=2000, **kw)

    def add(self, text: str, source: str) -> None:
        self.add_many([(text, source)])

    def add_many(self, items: list[tuple[str, str]]) -> None:
        """Several outputs in one append (one scroll, one repaint)."""
        self.append(plain(line.expandtabs(8), STYLES.get(source, ""))
                    for text, source in items for line in text.rstrip("\n").split("\n"))

    def key(self, snap: Snapshot, base: Snapshot | None) -> object:
        return snap.status

    def show(self, snap: Snapshot, base: Snapshot | None) -> None:
        status = snap.status if len(snap.status) < 40 else snap.status.split(":")[0]
        self.set_title(f"ddb / host  [{status}]")
