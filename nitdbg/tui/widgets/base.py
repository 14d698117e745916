"""What every pane has: `show(snapshot, baseline)` (the baseline is the snapshot of the
previous stop, for "changed since the last stop" marks), and `key()`: the part of the
snapshot the pane draws. The screen repaints a pane only when its key changed, so a step
repaints the few panes whose data moved, not all of them."""

from __future__ import annotations

from textual.content import Content
from textual.geometry import Region
from textual.markup import escape

from ..model import Snapshot

_UNSHOWN = object()


class Pane:
    """Mixin: the screen calls refresh_from() on every Pane it has, whatever the layout."""

    _shown_key: object = _UNSHOWN

    def key(self, snap: Snapshot, base: Snapshot | None) -> object:
        """What show() draws from; None: always redraw."""
        return None

    def refresh_from(self, snap: Snapshot, base: Snapshot | None) -> bool:
        """show() if the data this pane draws changed; True if it did."""
        k = self.key(snap, base)
        if k is not None and k == self._shown_key:
            return False
        self.show(snap, base)
        self._shown_key = k
        return True

    def show(self, snap: Snapshot, base: Snapshot | None) -> None:
        raise NotImplementedError

    def set_title(self, title: str) -> None:
        """Only a new title is set. Setting `border_title` repaints the whole widget (every
        row drawn again: on `v` half a dozen panes); once the pane is on screen with a top
        border, the title is stored as Textual's descriptor stores it (one line of Content)
        and only the border row is repainted."""
        if getattr(self, "_title_text", None) == title:
            return
        self._title_text = title
        w = self  # type: ignore[assignment] - the Widget this mixin is part of
        top = w.styles.border_top[0] if w.is_mounted else ""
        if not top or not w.size:
            w.border_title = escape(title)  # type: ignore[attr-defined] - text, not markup
            return
        w._border_title = Content(title).expand_tabs(4).split()[0]  # noqa: SLF001
        gutter = w.gutter
        w.refresh(Region(-gutter.left, -gutter.top, w.outer_size.width, 1))


def base_vcpu(base: Snapshot | None, vcpu: int):  # noqa: ANN201 - VcpuView | None
    return base.vcpus[vcpu] if base is not None and len(base.vcpus) > vcpu else None


def update_auto_height(widget, content) -> None:  # noqa: ANN001 - a Static, a Visual
    """Static.update() for a pane whose height follows its text: a layout pass (every
    widget on the screen re-arranged) only when the text needs a different number of rows."""
    height = widget.styles.height
    if height is not None and not height.is_auto:
        widget.update(content, layout=False)
        return
    before = _rows(widget)
    widget.update(content, layout=False)
    widget.clear_cached_dimensions()            # the text changed: measure it again
    if _rows(widget) != before:
        widget.refresh(layout=True)


def _rows(widget) -> int | None:  # noqa: ANN001
    width = widget.content_region.width
    if not width:
        return None
    return widget.get_content_height(widget.size, widget.app.size, width)


def flush_refreshes(screen) -> None:  # noqa: ANN001 - a Screen
    """Hand the screen now every repaint its widgets were asked for, so that one frame
    draws them all. Each widget is a task of its own that tells the screen of its repaint
    only when it next goes idle; the screen draws as soon as it has one, so a snapshot's
    repaint went out in two frames, the second a timer period (or two: Textual's timer
    skips a tick after a late one) behind the first. `_check_refresh` is what the widget
    runs when idle (Textual 8.2); where it is missing this does nothing and the widgets
    report as before."""
    for w in screen.walk_children(with_self=False):
        # a view's scrollbars are its own tasks too, outside the DOM
        for x in (w, getattr(w, "_vertical_scrollbar", None),
                  getattr(w, "_horizontal_scrollbar", None)):
            if x is not None and (x._repaint_required or x._layout_required
                                  or x._scroll_required):
                check = getattr(x, "_check_refresh", None)
                if check is not None:
                    check()
