"""Panes drawn line by line, each line rendered once and repainted only when it changes.

A Static re-renders its whole text on every update, and a refresh repaints every row of
it. Here a pane's content is a list of *line specs*: tuples of (text, style) runs, which are
hashable. Rendered strips are cached by spec, and `set_lines()` repaints only the rows whose
spec changed, so a step costs the rows that moved. `LineView` scrolls (KTR, console,
transcript: new rows are appended, the view follows the end unless scrolled up) and
renders only the rows on screen. No line is cut without a way to read it: a view either
wraps its long lines onto more rows (`wrap`: ddb, console) or scrolls sideways (`hscroll`:
KTR, whose columns stay aligned).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from rich.segment import Segment
from rich.style import Style
from textual.geometry import Region, Size
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget

from .scrollbar import LineScrollBar

Line = tuple[tuple[str, str], ...]       # (text, rich style) runs
STRIPS_PER_ROW = 4       # rendered rows kept per row of the view ...
STRIPS_MIN = 64          # ... and at least
ELLIPSIS = "…"


@lru_cache(maxsize=1024)
def run_style(base: Style, spec: str) -> Style:
    """A run's style on the view's own (its colours, its background)."""
    return base + Style.parse(spec) if spec else base


def line_strip(line: Line, base: Style) -> Strip:
    """The runs as segments, each styled once per (view style, run style): what
    Text.assemble(...).render() gives for these plain runs, without laying out a Text."""
    return Strip([Segment(t, run_style(base, s)) for t, s in line if t])


def plain(text: str, style: str = "") -> Line:
    return ((text, style),)


def line_text(line: Line) -> str:
    return "".join(t for t, _ in line)


@lru_cache(maxsize=4096)
def wrap_line(line: Line, width: int) -> tuple[Line, ...]:
    """`line` cut into rows (cached: a pane re-wraps the same lines on every snapshot)."""
    return tuple(_wrap_line(line, width))


def _wrap_line(line: Line, width: int) -> list[Line]:
    """`line` cut into rows of at most `width` characters, after a space where one is near
    the end of the row (else mid-word); the runs keep their styles."""
    text = line_text(line)
    if width <= 0 or len(text) <= width:
        return [line]
    cuts = []
    pos = 0
    while len(text) - pos > width:
        end = pos + width
        space = text.rfind(" ", pos + width * 2 // 3, end)
        pos = space + 1 if space >= 0 else end
        cuts.append(pos)
    out: list[Line] = []
    cur: list[tuple[str, str]] = []
    at = 0                        # offset of the next run's text
    bounds = iter(cuts + [len(text)])
    limit = next(bounds)
    for run, style in line:
        while run:
            take = min(len(run), limit - at)
            if take:
                cur.append((run[:take], style))
            run, at = run[take:], at + take
            if at == limit and limit < len(text):
                out.append(tuple(cur))
                cur = []
                limit = next(bounds)
    out.append(tuple(cur))
    return out


class LineView(ScrollView, can_focus=True):
    DEFAULT_CSS = "LineView { overflow-x: hidden; overflow-y: auto; }"
    auto_height = False          # True: the pane is as high as its lines (height: auto)
    scrolls = True               # False: never a scrollbar (overflow hidden)
    wrap = False                 # True: a long line goes on over the next rows
    hscroll = False              # True: a long line is kept whole, the view scrolls sideways
    follow_end = True            # keep the newest row in view (a log); False: stay put

    def __init__(self, max_lines: int = 1000, **kw) -> None:  # noqa: ANN003
        super().__init__(**kw)
        self.max_lines = max_lines
        self._lines: list[Line] = []
        self._strips: dict[tuple[Line, int], Strip] = {}
        self._style = None            # rich_style walks every ancestor: once per style change
        self._follow = True           # keep the newest row in view (until scrolled up)
        self._rows: list[Line] = []   # wrap: the rows the lines take at _wrap_width
        self._wrap_width = 0
        self._widest = 0              # hscroll: the longest line, in cells

    def _width(self) -> int:
        return self.scrollable_content_region.width

    def _rewrap(self) -> None:
        w = self._width()
        self._wrap_width = w
        self._rows = [r for line in self._lines for r in wrap_line(line, w)]

    @property
    def rows(self) -> list[Line]:
        """The rows drawn: the lines, or with `wrap` their pieces."""
        return self._rows if self.wrap else self._lines

    @property
    def lines(self) -> list[Line]:
        return self._lines

    def text(self) -> str:
        return "\n".join(line_text(x) for x in self._lines)

    def set_lines(self, lines: Iterable[Line]) -> None:
        new = list(lines)[-self.max_lines:]
        old = self._lines
        self._lines = new
        if self.wrap or self.hscroll:
            if self.wrap:
                self._rewrap()
            else:
                self._widest = max((sum(len(t) for t, _ in x) for x in new), default=0)
            self._changed()
            return
        if len(new) == len(old):
            # same rows: repaint only those that changed (the view does not move), in one
            # refresh (each refresh is a message to the screen)
            top = round(self.scroll_offset.y)
            width = self.size.width
            dirty = [Region(0, y - top, width, 1)
                     for y, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]
            if dirty:
                self.refresh(*dirty)
            return
        self._changed()

    def append(self, lines: Iterable[Line]) -> None:
        new = list(lines)
        self._lines.extend(new)
        drop = len(self._lines) - self.max_lines
        if drop > 0:
            del self._lines[:drop]
        if self.wrap:
            if drop > 0 or self._wrap_width != self._width():
                self._rewrap()
            else:
                self._rows.extend(r for line in new for r in wrap_line(line, self._wrap_width))
        elif self.hscroll:
            self._widest = max([self._widest] + [sum(len(t) for t, _ in x) for x in new])
        self._changed()

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        self._follow = round(new) >= self.max_scroll_y

    def on_resize(self) -> None:
        if self.wrap and self._wrap_width != self._width():
            self._rewrap()
            self._changed()
        if self._follow and self.scrolls and self.follow_end:
            self.scroll_end(animate=False, immediate=True, x_axis=False)

    # the scrollbars drawn through the Line API (widgets/scrollbar.py); created as
    # Widget.vertical_scrollbar / horizontal_scrollbar create Textual's own
    def _new_bar(self, vertical: bool) -> LineScrollBar:
        """A hidden bar, kept before it is started (as Widget's own properties do)."""
        name = "vertical" if vertical else "horizontal"
        bar = LineScrollBar(vertical=vertical, name=name,
                            thickness=getattr(self, f"scrollbar_size_{name}"))
        bar.display = False
        setattr(self, f"_{name}_scrollbar", bar)
        self.app._start_widget(self, bar)
        return bar

    @property
    def vertical_scrollbar(self) -> LineScrollBar:
        bar = self._vertical_scrollbar
        return bar if bar is not None else self._new_bar(True)

    @property
    def horizontal_scrollbar(self) -> LineScrollBar:
        bar = self._horizontal_scrollbar
        return bar if bar is not None else self._new_bar(False)

    def _bars_for(self, virtual: Size) -> tuple[bool, bool]:
        """The scrollbars Textual shows for `virtual` (its rule, Widget._refresh_scrollbars):
        "scroll" always, "hidden" never, "auto" when the content is larger than the view,
        the other bar's width counted once one is shown."""
        st = self.styles
        width, height = self.container_size
        ox, oy = st.overflow_x, st.overflow_y
        x = ox == "scroll" or (ox == "auto" and virtual.width > width)
        y = oy == "scroll" or (oy == "auto" and virtual.height > height)
        if ox == "auto" and y and not x:
            x = virtual.width > width - st.scrollbar_size_vertical
        if oy == "auto" and x and not y:
            y = virtual.height > height - st.scrollbar_size_horizontal
        return x, y

    def _size_bars(self, virtual: Size) -> None:
        """The scroll limits for a new virtual size, as Widget._scroll_update sets them,
        but a scrollbar is repainted only when its thumb changes (its reactives compare)."""
        width, height = self.container_size
        if self.show_vertical_scrollbar:
            bar = self.vertical_scrollbar
            bar.window_virtual_size = virtual.height
            bar.window_size = height - self.scrollbar_size_horizontal
        if self.show_horizontal_scrollbar:
            bar = self.horizontal_scrollbar
            bar.window_virtual_size = virtual.width
            bar.window_size = width - self.scrollbar_size_vertical
        self.scroll_x = self.validate_scroll_x(self.scroll_x)
        self.scroll_y = self.validate_scroll_y(self.scroll_y)

    def _changed(self) -> None:
        follow = self._follow and self.scrolls and self.follow_end
        size = Size(self._widest if self.hscroll else 0, len(self.rows))
        if not self.size and not self.auto_height:
            # not on screen (another tab): the layout that shows it reads the size then
            self.set_reactive(Widget.virtual_size, size)
        elif not self.auto_height and self._bars_for(size) == (
                self.show_horizontal_scrollbar, self.show_vertical_scrollbar):
            # the same scrollbars before and after: no layout pass over the whole screen,
            # only this view's scroll limits, and the bars redrawn only if they moved
            if size != self.virtual_size:
                self.set_reactive(Widget.virtual_size, size)
                self._size_bars(size)
            if follow:
                self.scroll_end(animate=False, immediate=True, x_axis=False)
        else:
            # the scrollbars come or go: one layout pass. The bars are decided here, as
            # the layout would decide them (Widget._refresh_scrollbars), so that the pass
            # places them at once: left to the layout, showing a bar takes three passes
            # (the bar's visibility, then its own size, each a layout of the whole screen)
            # and a frame each, and then one more frame for the scroll to the end
            self.virtual_size = size
            self._refresh_scrollbars()          # (from the virtual size)
            if self.wrap and self._wrap_width != self._width():
                # the bar takes columns: the rows as they will be drawn, now, not after
                # the layout's Resize (a frame of its own)
                self._rewrap()
                self.virtual_size = Size(0, len(self.rows))
            if follow:     # a view that shows its bar now scrolls now
                self.scroll_end(animate=False, immediate=True, x_axis=False)
                self.call_after_refresh(self.scroll_end, animate=False, x_axis=False)
        # the content rows only: a bare refresh() would draw the border and its title again
        self.refresh(self.size.region)

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips.clear()
        self._style = None

    def render_lines(self, crop: Region) -> list[Strip]:
        # what every row of this frame needs, read once (each is a walk over the styles)
        region = self.scrollable_content_region
        self._frame = (region.width, round(self.scroll_offset.x), round(self.scroll_offset.y))
        try:
            return super().render_lines(crop)
        finally:
            self._frame = None

    _frame: tuple[int, int, int] | None = None

    def render_line(self, y: int) -> Strip:
        frame = self._frame
        if frame is None:
            frame = (self.scrollable_content_region.width, round(self.scroll_offset.x),
                     round(self.scroll_offset.y))
        width, x, top = frame
        row = top + y
        style = self._style
        if style is None:
            style = self._style = self.rich_style
        if self.wrap and width > 0 and width != self._wrap_width:
            # the width changed without a resize (a scrollbar came or went): wrap again
            self._rewrap()
            self.call_later(self._changed)
        rows = self.rows
        if not 0 <= row < len(rows) or width <= 0:
            return Strip.blank(width, style)
        line = rows[row]
        strips = self._strips
        if len(strips) > max(STRIPS_MIN, STRIPS_PER_ROW * self.size.height):
            # only the rows on screen need their strips from frame to frame: a few screens'
            # worth are kept. A strip is some ten objects for the cyclic collector, and a
            # running guest's KTR lines passed through here by the thousand, each pass of
            # the collector going through all of them
            strips.clear()
        if self.hscroll:
            strip = strips.get((line, -1))
            if strip is None:
                strip = strips[(line, -1)] = line_strip(line, style)
            return strip.crop(x, x + width).extend_cell_length(width, style)
        strip = strips.get((line, width))
        if strip is None:
            strip = line_strip(line, style)
            if strip.cell_length > width:
                strip = Strip([*strip.crop(0, max(width - 1, 0)), Segment(ELLIPSIS, style)])
            strip = strip.extend_cell_length(width, style)
            self._strips[(line, width)] = strip
        return strip


class LinePane(LineView, can_focus=False):
    """A pane of a few lines that never scrolls (it shows what fits)."""

    DEFAULT_CSS = "LinePane { overflow-x: hidden; overflow-y: hidden; }"
    scrolls = False
