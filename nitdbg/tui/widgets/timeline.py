"""VM exits, injections, #DB and IRET exits per vCPU over virtual time (from the
retirement logs). One column per time bucket; the most telling event of a bucket wins.

An exit can be picked on it (issue 10, item 8): click a cell, or focus the pane (t) and
move with the arrows, Enter: the exit history opens on the exit nearest that moment, with
the VMCB and the guest registers as the exit left them."""

from __future__ import annotations

from textual.binding import Binding
from textual.events import Click
from textual.message import Message

from ..model import Snapshot
from .base import Pane
from .lineview import LinePane, plain

# kind -> (glyph, style, rank): higher rank wins a bucket
GLYPHS = {"iret": ("I", "bold black on #ff5370", 6), "nmi": ("N", "bold black on #ffcb6b", 5),
          "inject": ("n", "bold #ffcb6b", 4), "db": ("D", "bold black on #82aaff", 5),
          "exc": ("E", "bold #ff5370", 3), "intr": ("i", "#89ddff", 2),
          "ret": ("r", "bold #c3e88d", 4), "exit": ("x", "#697098", 1)}
LEGEND = ("I IRET exit", "r IRET retired", "N NMI", "n inject", "D #DB", "E exception",
          "i intr", "x exit")


def legend_rows(width: int) -> list[str]:
    """The legend packed into rows of `width`, an entry never split."""
    rows = [""]
    for item in LEGEND:
        if rows[-1] and len(rows[-1]) + 2 + len(item) > width:
            rows.append("")
        rows[-1] += ("  " if rows[-1] else "") + item
    return rows


def _ends(tl: tuple) -> tuple:
    # the events are the newest of an append-only log: count and both ends say it all
    return (len(tl), tl[0], tl[-1]) if tl else ()


LABEL = 6             # "vCPU0 " before the cells
CURSOR = "reverse bold"


class TimelinePane(LinePane, Pane, can_focus=True):
    BINDINGS = [Binding("left", "move(-1)", "earlier", show=False),
                Binding("right", "move(1)", "later", show=False),
                Binding("up", "row(-1)", "vCPU above", show=False),
                Binding("down", "row(1)", "vCPU below", show=False),
                Binding("enter", "pick", "exit here", show=True),
                Binding("escape", "leave", "back to the view", show=True)]

    class Picked(Message):
        """The user picked a moment on vCPU `vcpu`'s row: the time of the event its cell
        shows (virtual ns)."""

        def __init__(self, vcpu: int, time: int) -> None:
            super().__init__()
            self.vcpu = vcpu
            self.time = time

    _cells: list[tuple[int, list[int | None]]] = []    # per row: vCPU, time shown per cell
    _cursor: tuple[int, int] | None = None              # row, cell
    _snap: Snapshot | None = None

    def key(self, snap: Snapshot, base: Snapshot | None) -> object:
        return (self.size.width, snap.selected, tuple(_ends(v.timeline) for v in snap.vcpus),
                self._cursor)

    def show(self, snap: Snapshot, base: Snapshot | None) -> None:
        self._snap = snap
        width = max(20, (self.size.width or 80) - 8)
        ends = [(v.timeline[0].time, v.timeline[-1].time) for v in snap.vcpus if v.timeline]
        if not ends:
            self._cells = []
            self.set_lines([plain("no events yet")])
            return
        # each vCPU's events are in time order: the span is from the ends
        lo = min(a for a, _ in ends)
        hi = max(b for _, b in ends)
        span = max(hi - lo, 1)
        self.set_title(f"timeline {lo / 1e6:.3f}–{hi / 1e6:.3f} ms (virtual)")
        lines = []
        last = width - 1
        rows: list[tuple[int, list[int | None]]] = []
        for r, v in enumerate(snap.vcpus):
            best = [0] * width
            cells: list[tuple[str, str, int] | None] = [None] * width
            times: list[int | None] = [None] * width
            for e in v.timeline:
                g = GLYPHS.get(e.kind)
                if g is None:
                    continue
                i = (e.time - lo) * width // span
                i = last if i > last else 0 if i < 0 else i
                if g[2] > best[i]:
                    best[i] = g[2]
                    cells[i] = g
                    times[i] = e.time
            rows.append((v.id, times))
            cur = self._cursor[1] if self._cursor and self._cursor[0] == r else -1
            runs = [(f"vCPU{v.id} ", "bold" if v.id == snap.selected else "")]
            runs.extend(((c[0], c[1]) if c is not None else ("·", "#3a3f4b")) if i != cur
                        else ((c[0] if c is not None else "·"), CURSOR)
                        for i, c in enumerate(cells))
            lines.append(tuple(runs))
        self._cells = rows
        lines.extend(plain(r, "#697098") for r in legend_rows(width + 6))
        self.set_lines(lines)

    # ------------------------------------------------------------------ picking an exit
    def _redraw(self) -> None:
        if self._snap is not None:
            self.show(self._snap, None)

    def _nearest(self, row: int, cell: int) -> int | None:
        """The cell with an event nearest `cell` on `row` (itself if it has one)."""
        times = self._cells[row][1]
        filled = [i for i, t in enumerate(times) if t is not None]
        return min(filled, key=lambda i: abs(i - cell)) if filled else None

    def on_focus(self) -> None:
        if self._cursor is None and self._cells:
            row = next((r for r, (vid, _) in enumerate(self._cells)
                        if self._snap is not None and vid == self._snap.selected), 0)
            cell = self._nearest(row, len(self._cells[row][1]) - 1)
            self._cursor = (row, cell) if cell is not None else None
            self._redraw()

    def on_blur(self) -> None:
        if self._cursor is not None:
            self._cursor = None
            self._redraw()

    def action_move(self, delta: int) -> None:
        if self._cursor is None:
            return
        row, cell = self._cursor
        times = self._cells[row][1]
        i = cell + delta
        while 0 <= i < len(times) and times[i] is None:     # to the next cell with an event
            i += delta
        if 0 <= i < len(times):
            self._cursor = (row, i)
            self._redraw()

    def action_row(self, delta: int) -> None:
        if self._cursor is None or not self._cells:
            return
        row = (self._cursor[0] + delta) % len(self._cells)
        cell = self._nearest(row, self._cursor[1])
        if cell is not None:
            self._cursor = (row, cell)
            self._redraw()

    def action_pick(self) -> None:
        if self._cursor is not None:
            row, cell = self._cursor
            vcpu, times = self._cells[row]
            t = times[cell]
            if t is not None:
                self.post_message(self.Picked(vcpu, t))

    def action_leave(self) -> None:
        self.screen.set_focus(None)

    def on_click(self, event: Click) -> None:
        row = event.y - self.gutter.top
        cell = event.x - self.gutter.left - LABEL
        if not (0 <= row < len(self._cells)) or cell < 0:
            return
        near = self._nearest(row, cell)
        if near is not None:
            self._cursor = (row, near)
            self._redraw()
            self.action_pick()
