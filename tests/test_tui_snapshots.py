"""SVG snapshots of the main screens (pytest-textual-snapshot) at 80x24, 100x30 and 160x45:
the booted guest, text typed at guest#, and the ddb stop after the step across the NMI
handler's IRET (the explain pane with the chain as it happened). Deterministic content:
virtual time only, the machine waited on until idle. `--snapshot-update` regenerates."""

from __future__ import annotations

import pytest

from nitdbg.tui.app import NitdbgApp
from nitdbg.tui.bench import wait_idle
from nitdbg.tui.widgets.cmdline import CmdInput

SIZES = [(80, 24), (100, 30), (160, 45)]


def _after_the_iret_step(show_explain: bool):  # noqa: ANN202
    async def run_before(pilot) -> None:  # noqa: ANN001
        app = pilot.app
        await wait_idle(app, pilot)
        await pilot.press("n")
        await wait_idle(app, pilot)
        await pilot.press("s")                 # the first step: across the handler's IRET
        await wait_idle(app, pilot)
        if show_explain:
            from textual.widgets import TabbedContent
            app.main_screen.query_one(TabbedContent).active = "tab-explain"
            await pilot.pause()
    return run_before


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_ddb_stop_after_the_step_across_the_iret(snap_compare, size):
    app = NitdbgApp({}, kdb_on_nmi=True, record=None)
    assert snap_compare(app, terminal_size=size,
                        run_before=_after_the_iret_step(show_explain=size[0] < 150))


def test_typed_text_shows_at_the_guest_prompt_80x24(snap_compare):
    async def run_before(pilot) -> None:  # noqa: ANN001
        await wait_idle(pilot.app, pilot)
        pilot.app.main_screen.query_one(CmdInput).cursor_blink = False
        await pilot.press("f3", *"sysctl kern.zq")
        await pilot.pause()
    assert snap_compare(NitdbgApp({}, record=None), terminal_size=(80, 24),
                        run_before=run_before)


def test_booted_guest_compact_100x30(snap_compare):
    async def run_before(pilot) -> None:  # noqa: ANN001
        await wait_idle(pilot.app, pilot)
    assert snap_compare(NitdbgApp({}, record=None), terminal_size=(100, 30),
                        run_before=run_before)
