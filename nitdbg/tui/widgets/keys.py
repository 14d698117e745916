"""The key bar at the bottom: the screen's shown bindings as one line (key, what it does),
the command palette's key on the right; a click on a key presses it.

Textual's Footer is a container of one widget per binding, composed again whenever the
bindings change (a focus change): a dozen and a half widgets mounted, styled and laid out
each time, four times before the first paint. This is one line view (widgets/lineview.py)
rebuilt from `screen.active_bindings` on the same signal, repainted only where it changed.
"""

from __future__ import annotations

from textual.events import Click, Resize
from textual.screen import Screen

from .lineview import Line, LinePane


class KeysBar(LinePane):
    DEFAULT_CSS = """
    KeysBar { dock: bottom; height: 1; background: $footer-background;
              color: $footer-description-foreground; }
    """

    def __init__(self, compact: bool = False, **kw) -> None:  # noqa: ANN003
        super().__init__(**kw)
        self.compact = compact
        self._spans: list[tuple[int, int, str]] = []      # start, end column, key

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._bindings_changed)
        self._build()

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def _bindings_changed(self, screen: Screen) -> None:
        if self.is_attached and screen is self.screen:
            self._build()

    def on_resize(self, event: Resize) -> None:
        super().on_resize()
        self._build()

    def _build(self) -> None:
        width = self.size.width or 80
        runs, spans, col = self._runs(self.compact)
        if not self.compact and col > width:          # does not fit: the compact spacing
            runs, spans, col = self._runs(True)
        app = self.app
        active = self.screen.active_bindings
        palette = active.get(app.COMMAND_PALETTE_BINDING) if app.ENABLE_COMMAND_PALETTE else None
        if palette is not None:
            binding = palette[1]
            tail = [("▏", "dim"), (app.get_key_display(binding), self._key_style()),
                    (f" {binding.description} ", "")]
            room = width - sum(len(t) for t, _ in tail)
            if room > col:
                runs.append((" " * (room - col), ""))
                spans.append((room + 1, width, binding.key))
                runs.extend(tail)
        self._spans = spans
        line: Line = tuple(runs)
        self.set_lines([line])

    def _key_style(self) -> str:
        return "bold " + self.app.theme_variables.get("footer-key-foreground", "")

    def _runs(self, compact: bool) -> tuple[list[tuple[str, str]], list[tuple[int, int, str]],
                                            int]:
        """The shown bindings as runs, the column span of each key, and the width."""
        app = self.app
        key_style = self._key_style()
        seen: set[str] = set()
        runs: list[tuple[str, str]] = []
        spans: list[tuple[int, int, str]] = []
        col = 0
        for _node, binding, enabled, _tip in self.screen.active_bindings.values():
            if not binding.show or binding.action in seen:
                continue
            seen.add(binding.action)      # one entry per action, as Footer shows them
            key = app.get_key_display(binding)
            text = [(key if compact else f" {key} ", key_style if enabled else "dim"),
                    (f" {binding.description}" if compact else f"{binding.description} ",
                     "" if enabled else "dim")]
            if compact and runs:
                text.insert(0, (" ", ""))
            width = sum(len(t) for t, _ in text)
            spans.append((col, col + width, binding.key))
            runs.extend(text)
            col += width
        return runs, spans, col

    def on_click(self, event: Click) -> None:
        key = next((k for a, b, k in self._spans if a <= event.x < b), None)
        if key is not None:
            self.app.simulate_key(key)
