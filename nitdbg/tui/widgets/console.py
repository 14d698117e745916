"""The guest's serial console (COM1). Typing goes through the command line in the guest#
surface (F3); the pane shows what the guest wrote."""

from __future__ import annotations

from ..model import Snapshot
from .base import Pane
from .lineview import LineView, plain

LINES = 200
# control characters other than tab and newline would move the terminal's cursor: hide them
_CONTROLS = {c: None for c in range(32) if c not in (9, 10)} | {127: None}


class ConsolePane(LineView, Pane):
    wrap = True
    def __init__(self, **kw) -> None:  # noqa: ANN003
        super().__init__(max_lines=LINES, **kw)

    def on_mount(self) -> None:
        self.set_title("guest console (F3 to type)")

    def key(self, snap: Snapshot, base: Snapshot | None) -> object:
        return snap.console

    def show(self, snap: Snapshot, base: Snapshot | None) -> None:
        text = snap.console.replace("\r\n", "\n").replace("\r", "").translate(_CONTROLS)
        self.set_lines(plain(line.expandtabs(8)) for line in text.split("\n")[-LINES:])
