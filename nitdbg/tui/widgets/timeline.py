"""VM exits, injections, #DB and IRET exits per vCPU over virtual time (from the
retirement logs). One column per time bucket; the most telling event of a bucket wins."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ..model import Snapshot
from .base import Pane

# kind -> (glyph, style, rank): higher rank wins a bucket
GLYPHS = {"iret": ("I", "bold black on #ff5370", 6), "nmi": ("N", "bold black on #ffcb6b", 5),
          "inject": ("n", "bold #ffcb6b", 4), "db": ("D", "bold black on #82aaff", 5),
          "exc": ("E", "bold #ff5370", 3), "intr": ("i", "#89ddff", 2),
          "exit": ("x", "#697098", 1)}
LEGEND = "I IRET exit  N NMI  n inject  D #DB  E exception  i intr  x exit"


class TimelinePane(Static, Pane):
    def show(self, snap: Snapshot, base: Snapshot | None) -> None:
        width = max(20, (self.size.width or 80) - 8)
        evs = [e for v in snap.vcpus for e in v.timeline]
        t = Text(no_wrap=True, overflow="ellipsis")
        if not evs:
            self.update("no events yet")
            return
        hi = max(e.time for e in evs)
        lo = min(e.time for e in evs)
        span = max(hi - lo, 1)
        self.border_title = f"timeline {lo / 1e6:.3f}–{hi / 1e6:.3f} ms (virtual)"
        for v in snap.vcpus:
            cells: list[tuple[str, str, int]] = [(" ", "", 0)] * width
            for e in v.timeline:
                i = min(width - 1, (e.time - lo) * width // span)
                g = GLYPHS.get(e.kind)
                if g and g[2] > cells[i][2]:
                    cells[i] = g
            t.append(f"vCPU{v.id} ", style="bold" if v.id == snap.selected else "")
            for ch, st, _ in cells:
                t.append(ch if ch != " " else "·", style=st or "#3a3f4b")
            t.append("\n")
        t.append(LEGEND, style="#697098")
        self.update(t)
