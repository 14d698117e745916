"""Panes drawn line by line, each line rendered once and repainted only when it changes.

A Static re-renders its whole text on every update, and a refresh repaints every row of
it. Here a pane's content is a list of *line specs*: tuples of (text, style) runs, which are
hashable. Rendered strips are cached by spec, and `set_lines()` repaints only the rows whose
spec changed, so a step costs the rows that moved. `LineView` scrolls (KTR, console,
transcript: new rows are appended, the view follows the end unless scrolled up) and
renders only the rows on screen.
"""

from __future__ import annotations

from collections.abc import Iterable

from rich.segment import Segment
from rich.text import Text
from textual.geometry import Region, Size
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget

Line = tuple[tuple[str, str], ...]       # (text, rich style) runs
ELLIPSIS = "…"


def plain(text: str, style: str = "") -> Line:
    return ((text, style),)


def line_text(line: Line) -> str:
    return "".join(t for t, _ in line)


class LineView(ScrollView, can_focus=True):
    DEFAULT_CSS = "LineView { overflow-x: hidden; overflow-y: auto; }"
    auto_height = False          # True: the pane is as high as its lines (height: auto)
    scrolls = True               # False: never a scrollbar (overflow hidden)

    def __init__(self, max_lines: int = 1000, **kw) -> None:  # noqa: ANN003
        super().__init__(**kw)
        self.max_lines = max_lines
        self._lines: list[Line] = []
        self._strips: dict[tuple[Line, int], Strip] = {}
        self._style = None            # rich_style walks every ancestor: once per style change
        self._follow = True           # keep the newest row in view (until scrolled up)

    @property
    def lines(self) -> list[Line]:
        return self._lines

    def text(self) -> str:
        return "\n".join(line_text(x) for x in self._lines)

    def set_lines(self, lines: Iterable[Line]) -> None:
        new = list(lines)[-self.max_lines:]
        old = self._lines
        self._lines = new
        if len(new) == len(old):
            # same rows: repaint only those that changed (the view does not move)
            top = round(self.scroll_offset.y)
            for y, (a, b) in enumerate(zip(old, new, strict=True)):
                if a != b:
                    self.refresh(Region(0, y - top, self.size.width, 1))
            return
        self._changed()

    def append(self, lines: Iterable[Line]) -> None:
        self._lines.extend(lines)
        drop = len(self._lines) - self.max_lines
        if drop > 0:
            del self._lines[:drop]
        self._changed()

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        self._follow = round(new) >= self.max_scroll_y

    def on_resize(self) -> None:
        if self._follow and self.scrolls:
            self.scroll_end(animate=False, immediate=True, x_axis=False)

    def _changed(self) -> None:
        follow = self._follow and self.scrolls
        size = Size(0, len(self._lines))
        height = self.scrollable_content_region.height
        was = self.virtual_size.height > height
        update = getattr(self, "_scroll_update", None)
        if not self.size and not self.auto_height:
            # not on screen (another tab): the layout that shows it reads the size then
            self.set_reactive(Widget.virtual_size, size)
        elif (update is not None and not self.auto_height
                and (not self.scrolls or was == (size.height > height))):
            # scrollbar shown before and after (or neither): no layout pass over the whole
            # screen, only this view's scroll limits (what Textual itself does on scroll)
            self.set_reactive(Widget.virtual_size, size)
            update(size)
            if follow:
                self.scroll_end(animate=False, immediate=True, x_axis=False)
        else:
            self.virtual_size = size
            if follow:     # scrolling is refused until the layout has shown the scrollbar
                self.call_after_refresh(self.scroll_end, animate=False, x_axis=False)
        self.refresh()
        if len(self._strips) > 4 * self.max_lines:
            self._strips.clear()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips.clear()
        self._style = None

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        row = round(self.scroll_offset.y) + y
        style = self._style
        if style is None:
            style = self._style = self.rich_style
        if not 0 <= row < len(self._lines) or width <= 0:
            return Strip.blank(width, style)
        line = self._lines[row]
        strip = self._strips.get((line, width))
        if strip is None:
            text = Text.assemble(*line, no_wrap=True)
            if text.cell_len > width:
                text.truncate(max(width - 1, 0))
                text.append(ELLIPSIS)
            segs = Segment.apply_style(text.render(self.app.console), style)
            strip = Strip(list(segs)).extend_cell_length(width, style)
            self._strips[(line, width)] = strip
        return strip


class LinePane(LineView, can_focus=False):
    """A pane of a few lines that never scrolls (it shows what fits)."""

    DEFAULT_CSS = "LinePane { overflow-x: hidden; overflow-y: hidden; }"
    scrolls = False
