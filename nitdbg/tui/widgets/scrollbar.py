"""A scrollbar drawn through the Line API, for the line views (widgets/lineview.py).

Textual's ScrollBar renders a Rich renderable through its Visual pipeline every time it is
repainted: some 0.1 ms a row, so a 15-row bar cost more than the pane beside it. This one
draws the same segments (Textual's own ScrollBarRender.render_bar: glyphs, colours and the
mouse actions of each cell) and keeps the rows until the thumb moves."""

from __future__ import annotations

from rich.color import Color
from rich.segment import Segment
from textual.scrollbar import ScrollBar
from textual.strip import Strip


class LineScrollBar(ScrollBar):
    def __init__(self, *args, **kw) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kw)
        self._rows_key: tuple | None = None
        self._rows: list[Strip] = []

    def _key(self):  # noqa: ANN202 - (renderer, key) or (None, None)
        """What the rows are drawn from: the renderer (its style resolved: hover, grab), the
        size, the thumb, the style under the bar."""
        bar = self.render()
        width, height = self.size
        if not isinstance(bar, self.renderer) or not width or not height:
            return None, None
        base = self.visual_style.rich_style      # under the bar, as Textual renders it
        return bar, (width, height, bar.virtual_size, bar.window_size, bar.position,
                     bar.thickness, bar.vertical, bar.style, base)

    def refresh(self, *regions, repaint=True, layout=False, recompose=False):  # noqa: ANN001, ANN201
        # Textual asks every scrollbar of a view the layout touched to repaint (after the
        # frame: one more frame of its own); a bar whose rows would come out the same has
        # nothing to draw
        if (not regions and repaint and not layout and not recompose
                and self._rows_key is not None and self.is_mounted
                and self._key()[1] == self._rows_key):
            return self
        return super().refresh(*regions, repaint=repaint, layout=layout,
                               recompose=recompose)

    def _strips(self) -> list[Strip]:
        bar, key = self._key()
        if key is None:
            return []
        width, height = self.size
        base = key[-1]
        if key != self._rows_key:
            style = bar.style
            back = style.bgcolor or Color.parse("#555555")     # as ScrollBarRender does
            fore = style.color or Color.parse("bright_magenta")
            if self.vertical:      # one segment per row, `width` cells wide
                segs = bar.render_bar(size=height, virtual_size=bar.virtual_size,
                                      window_size=bar.window_size, position=bar.position,
                                      thickness=width, vertical=True, back_color=back,
                                      bar_color=fore).segments
                rows = [Strip([Segment(s.text, base + s.style)], width) for s in segs]
            else:                  # one row of cells, repeated for the bar's height
                segs = bar.render_bar(size=width, virtual_size=bar.virtual_size,
                                      window_size=bar.window_size, position=bar.position,
                                      thickness=1, vertical=False, back_color=back,
                                      bar_color=fore).segments
                rows = [Strip([Segment(s.text, base + s.style) for s in segs
                               if s.text != "\n"], width)] * height
            self._rows_key, self._rows = key, rows
        return self._rows

    def _size_updated(self, size, virtual_size, container_size, layout=True) -> bool:  # noqa: ANN001
        # a bar lays out nothing inside it: its new size needs no layout pass of the whole
        # screen (Widget._size_updated would set its virtual size as a layout reactive)
        return super()._size_updated(size, virtual_size, container_size, layout=False)

    def render_lines(self, crop):  # noqa: ANN001, ANN201 - Region -> list[Strip]
        # the rows once a frame, and only if a row is drawn at all (a bar whose rows are
        # all cached is asked for none of them)
        self._in_frame, self._frame_rows = True, None
        try:
            return super().render_lines(crop)
        finally:
            self._in_frame, self._frame_rows = False, None
            if crop == self.size.region:
                # every row drawn now, from the bar as it is: a repaint asked for before
                # (the layout pass sets a new bar's window as it places it) is done, not
                # one more frame after this one
                self._repaint_required = False

    _in_frame = False
    _frame_rows: list[Strip] | None = None

    def render_line(self, y: int) -> Strip:
        rows = self._frame_rows
        if rows is None:
            rows = self._strips()
            if self._in_frame:
                self._frame_rows = rows
        if 0 <= y < len(rows):
            return rows[y]
        return Strip.blank(self.size.width)
