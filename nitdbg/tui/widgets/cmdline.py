"""One command line for three surfaces, as the console: the host shell (host$), the guest
serial console (guest#) and ddb (db>). History per surface (up/down), tab completion of
commands and symbols, inline suggestion from the history."""

from __future__ import annotations

import os

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.suggester import Suggester
from textual.widgets import Input, Label

from .lineinput import LineInput

PROMPTS = {"host": "host$", "guest": "guest#", "ddb": "db>"}


def complete(word: str, words: list[str]) -> tuple[str, list[str]]:
    """The longest common extension of `word` among `words`, and the candidates."""
    cands = sorted({w for w in words if w.startswith(word)}) if word else []
    if not cands:
        return word, []
    return os.path.commonprefix(cands), cands


class _HistorySuggester(Suggester):
    def __init__(self, owner: CommandLine) -> None:
        super().__init__(use_cache=False, case_sensitive=True)
        self.owner = owner

    async def get_suggestion(self, value: str) -> str | None:
        for line in reversed(self.owner.history[self.owner.surface]):
            if value and line.startswith(value) and line != value:
                return line
        return None


class CmdInput(LineInput):
    BINDINGS = [
        Binding("tab", "complete", "complete", show=False),
        Binding("up", "history(-1)", "history", show=False),
        Binding("down", "history(1)", "history", show=False),
    ]

    def action_complete(self) -> None:
        self.post_message(CommandLine.CompleteRequested())

    def action_history(self, delta: int) -> None:
        self.post_message(CommandLine.HistoryRequested(delta))


class CommandLine(Horizontal):
    DEFAULT_CSS = """
    CommandLine { height: 1; }
    CommandLine > #prompt { width: auto; padding: 0 1; background: $primary-darken-2;
                            color: $text-muted; }
    CommandLine:focus-within > #prompt { background: $accent; color: $text;
                                         text-style: bold; }
    CommandLine > CmdInput { width: 1fr; padding: 0 1; }
    CommandLine > #mode { width: auto; padding: 0 1; color: $text-muted; }
    CommandLine:focus-within > #mode { color: $accent; text-style: bold; }
    """
    MODE_TYPING = "typing · Esc: keys to the view"
    MODE_VIEW = "keys: view · F2/F3/F4 type"

    class Submitted(Message):
        def __init__(self, surface: str, line: str) -> None:
            super().__init__()
            self.surface, self.line = surface, line

    class CompleteRequested(Message):
        pass

    class HistoryRequested(Message):
        def __init__(self, delta: int) -> None:
            super().__init__()
            self.delta = delta

    def __init__(self, **kw) -> None:  # noqa: ANN003
        super().__init__(**kw)
        self.surface = "host"
        self.history: dict[str, list[str]] = {s: [] for s in PROMPTS}
        self.words: dict[str, list[str]] = {s: [] for s in PROMPTS}
        self._pos = 0

    def compose(self) -> ComposeResult:
        yield Label(PROMPTS[self.surface], id="prompt")
        yield CmdInput(placeholder="F2 host  F3 guest console  F4 ddb   (tab completes)",
                       suggester=_HistorySuggester(self), id="cmd")
        yield Label(self.MODE_VIEW, id="mode")

    def show_mode(self, typing: bool) -> None:
        """Say where the keys go: into this line, or to the main view's bindings."""
        self.query_one("#mode", Label).update(self.MODE_TYPING if typing else self.MODE_VIEW)

    @property
    def input(self) -> CmdInput:
        return self.query_one(CmdInput)

    def set_surface(self, surface: str) -> None:
        self.surface = surface
        self._pos = len(self.history[surface])
        self.query_one("#prompt", Label).update(PROMPTS[surface])

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        line = event.value
        if line.strip():
            self.history[self.surface].append(line)
        self._pos = len(self.history[self.surface])
        self.input.value = ""
        self.post_message(self.Submitted(self.surface, line))

    def on_command_line_complete_requested(self, event: CompleteRequested) -> None:
        event.stop()
        inp = self.input
        head, sep, word = inp.value.rpartition(" ")
        new, cands = complete(word, self.words[self.surface])
        if new != word:
            inp.value = head + sep + new
            inp.cursor_position = len(inp.value)
        elif len(cands) > 1:
            self.notify("  ".join(cands[:24]) + (" …" if len(cands) > 24 else ""),
                        title="completions", timeout=4)

    def on_command_line_history_requested(self, event: HistoryRequested) -> None:
        event.stop()
        hist = self.history[self.surface]
        self._pos = max(0, min(len(hist), self._pos + event.delta))
        self.input.value = hist[self._pos] if self._pos < len(hist) else ""
        self.input.cursor_position = len(self.input.value)
