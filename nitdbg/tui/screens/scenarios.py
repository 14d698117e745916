"""Pick a scenario of the seed's test plan to run (nitdbg.scenarios, when it is there)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static


def scenario_names() -> list[str] | str:
    """Names of the scenarios, or why there are none."""
    try:
        from ...scenarios import list_scenarios
    except ImportError:
        return "nitdbg.scenarios is not available yet"
    return [getattr(s, "name", str(s)) for s in list_scenarios()]


class ScenarioScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "close")]

    def compose(self) -> ComposeResult:
        names = scenario_names()
        with Vertical(id="scenarios", classes="dialog"):
            if isinstance(names, str):
                yield Static(names + " (esc)")
            else:
                yield OptionList(*names, id="scenario-list")

    def on_mount(self) -> None:
        self.query_one("#scenarios").border_title = "run a scenario"

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(str(event.option.prompt))
