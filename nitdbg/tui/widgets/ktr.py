"""The KTR log, live and filterable (a substring typed in the filter box; `!pause` hides).

Entries new since the previous snapshot are appended; the whole list is only rebuilt when
the filter changes or the snapshot's KTR does not continue the one shown (ring cleared,
another machine)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Input

from ..model import Snapshot
from .base import Pane
from .lineinput import LineInput
from .lineview import Line, LineView

SHOWN = 200
HIGHLIGHT = ("vNMI", "unblocked", "iret", "Injecting", "Reflecting", "Delaying",
             "nested page", "Bouncing", "non-canonical")


def _row(e: tuple[int, int, int, str]) -> Line:
    index, cpu, ts, msg = e
    return ((f"{index:6d} {cpu:2d} {ts:>12} ", "#697098"),
            (msg, "bold #ffcb6b" if any(h in msg for h in HIGHLIGHT) else ""))


class KtrBody(LineView):
    """KTR rows kept whole (columns aligned); a long message scrolls sideways."""

    DEFAULT_CSS = "KtrBody { overflow-x: auto; }"
    BINDINGS = [Binding("left", "scroll_left", "scroll left", show=False),
                Binding("right", "scroll_right", "scroll right", show=False),
                Binding("home", "scroll_home", show=False),
                Binding("end", "scroll_end", show=False)]
    hscroll = True


class KtrPane(Vertical, Pane):
    DEFAULT_CSS = """
    KtrPane > LineInput { padding: 0 1; }
    KtrPane > KtrBody { height: 1fr; }
    """

    def __init__(self, **kw) -> None:  # noqa: ANN003
        super().__init__(**kw)
        self.entries: tuple = ()
        self._epoch = -1
        self._total = 0
        self._pattern = ""
        self._shown = 0

    def compose(self) -> ComposeResult:
        yield LineInput(placeholder="filter KTR: vNMI, or !pause to hide (/ to type)",
                        id="ktr-filter")
        yield KtrBody(max_lines=SHOWN, id="ktr-body")

    def key(self, snap: Snapshot, base: Snapshot | None) -> object:
        return snap.ktr_epoch, snap.ktr_total

    def show(self, snap: Snapshot, base: Snapshot | None) -> None:
        self.entries = snap.ktr
        new = snap.ktr_total - self._total
        if snap.ktr_epoch != self._epoch or not 0 <= new <= len(snap.ktr):
            self._epoch, self._total = snap.ktr_epoch, snap.ktr_total
            self._render_entries()
            return
        self._total = snap.ktr_total
        if new:
            rows = self._filtered(snap.ktr[len(snap.ktr) - new:])
            if rows:
                self.query_one(LineView).append(_row(e) for e in rows)
                self._shown = min(SHOWN, self._shown + len(rows))
                self._title()

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self._render_entries()

    def _filtered(self, entries) -> list:  # noqa: ANN001
        pat = self._pattern
        if pat.startswith("!"):          # "!pause": everything but the pause exits
            return [e for e in entries if pat[1:] not in e[3].lower()]
        return [e for e in entries if pat in e[3].lower()] if pat else list(entries)

    def _render_entries(self) -> None:
        self._pattern = self.query_one("#ktr-filter", Input).value.strip().lower()
        rows = self._filtered(self.entries)[-SHOWN:]
        self.query_one(LineView).set_lines(_row(e) for e in rows)
        self._shown = len(rows)
        self._title()

    def _title(self) -> None:
        self.set_title(f"KTR ({self._shown} shown)")
