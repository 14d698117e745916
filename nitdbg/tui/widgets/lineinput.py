"""A one-row text input that shows what is typed, and gives the keys back on Esc.

Textual's Input draws a tall border when focused (`Input:focus` in its default CSS); on a
one-row line that border covers the text. The compact variant has no border at any state,
so the typed text and the cursor are always on the row; focus is shown by colour instead
(nitdbg.tcss, `LineInput:focus`)."""

from __future__ import annotations

from textual.binding import Binding
from textual.message import Message
from textual.widgets import Input


class LineInput(Input):
    BINDINGS = [Binding("escape", "leave", "back to the view", show=True)]

    class Left(Message):
        """Esc: the user wants the keys to go to the main view again."""

    def __init__(self, *args, **kw) -> None:  # noqa: ANN002, ANN003
        kw.setdefault("compact", True)
        super().__init__(*args, **kw)

    def action_leave(self) -> None:
        self.screen.set_focus(None)
        self.post_message(self.Left())
