"""VM exits, injections, #DB and IRET exits per vCPU over virtual time (from the
retirement logs). One column per time bucket; the most telling event of a bucket wins."""

from __future__ import annotations

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


class TimelinePane(LinePane, Pane):
    def key(self, snap: Snapshot, base: Snapshot | None) -> object:
        return (self.size.width, snap.selected, tuple(_ends(v.timeline) for v in snap.vcpus))

    def show(self, snap: Snapshot, base: Snapshot | None) -> None:
        width = max(20, (self.size.width or 80) - 8)
        ends = [(v.timeline[0].time, v.timeline[-1].time) for v in snap.vcpus if v.timeline]
        if not ends:
            self.set_lines([plain("no events yet")])
            return
        # each vCPU's events are in time order: the span is from the ends
        lo = min(a for a, _ in ends)
        hi = max(b for _, b in ends)
        span = max(hi - lo, 1)
        self.set_title(f"timeline {lo / 1e6:.3f}–{hi / 1e6:.3f} ms (virtual)")
        lines = []
        last = width - 1
        for v in snap.vcpus:
            best = [0] * width
            cells: list[tuple[str, str, int] | None] = [None] * width
            for e in v.timeline:
                g = GLYPHS.get(e.kind)
                if g is None:
                    continue
                i = (e.time - lo) * width // span
                i = last if i > last else 0 if i < 0 else i
                if g[2] > best[i]:
                    best[i] = g[2]
                    cells[i] = g
            runs = [(f"vCPU{v.id} ", "bold" if v.id == snap.selected else "")]
            runs.extend((c[0], c[1]) if c is not None else ("·", "#3a3f4b") for c in cells)
            lines.append(tuple(runs))
        lines.extend(plain(r, "#697098") for r in legend_rows(width + 6))
        self.set_lines(lines)
