"""Picking an exit on the timeline (issue 10, item 8): a click on a cell, or t then the
arrows and Enter, opens the exit history on the exit nearest that moment, with the VMCB
and the guest registers as that exit left them."""

from __future__ import annotations

import asyncio

from textual.widgets import OptionList, Static

from nitdbg.tui.app import NitdbgApp
from nitdbg.tui.bench import wait_idle
from nitdbg.tui.screens.exits import ExitHistoryScreen
from nitdbg.tui.widgets.lineview import line_text
from nitdbg.tui.widgets.timeline import LABEL, TimelinePane


async def _across_the_iret(pilot, app) -> TimelinePane:  # noqa: ANN001
    await wait_idle(app, pilot)
    await pilot.press("n")                  # kdb_on_nmi=1: ddb stops in the NMI handler
    await wait_idle(app, pilot)
    await pilot.press("s")                  # the step across the handler's IRET
    await wait_idle(app, pilot)
    return app.main_screen.query_one(TimelinePane)


async def _history(pilot, app) -> ExitHistoryScreen:  # noqa: ANN001
    for _ in range(200):
        await pilot.pause(0.02)
        if isinstance(app.screen, ExitHistoryScreen):
            await pilot.pause()
            return app.screen
    raise AssertionError("the exit history did not open")


def _picked(scr: ExitHistoryScreen):  # noqa: ANN202 - the highlighted ExitSnapshot
    return scr.exits[scr.query_one(OptionList).highlighted]


def test_clicking_the_iret_exit_on_the_timeline_opens_that_exit_with_its_vmcb_and_registers():
    async def flow() -> None:
        app = NitdbgApp({}, kdb_on_nmi=True, record=None)
        async with app.run_test(size=(160, 45)) as pilot:
            tl = await _across_the_iret(pilot, app)
            row = line_text(tl.lines[0])                  # vCPU 0's row
            assert row.startswith("vCPU0 ") and "I" in row[LABEL:]
            cell = row.index("I", LABEL)
            await pilot.click(TimelinePane, offset=(tl.gutter.left + cell, tl.gutter.top))
            scr = await _history(pilot, app)
            x = _picked(scr)
            assert scr.vcpu == 0 and x.exit.name == "VMEXIT_IRET"
            detail = str(scr.query_one("#exit-detail", Static).render())
            assert "VMEXIT_IRET" in detail and f"rip {x.regs['rip']:016x}" in detail
    asyncio.run(flow())


def test_t_then_enter_picks_the_newest_moment_and_escape_gives_the_keys_back():
    async def flow() -> None:
        app = NitdbgApp({}, kdb_on_nmi=True, record=None)
        async with app.run_test(size=(160, 45)) as pilot:
            tl = await _across_the_iret(pilot, app)
            await pilot.press("t")
            await pilot.pause()
            assert app.focused is tl
            row, cell = tl._cursor
            t = tl._cells[row][1][cell]
            assert t is not None
            await pilot.press("enter")
            scr = await _history(pilot, app)
            timed = [x for x in scr.exits if x.exit.time is not None]
            nearest = min(timed, key=lambda x: abs(x.exit.time - t))
            assert _picked(scr) is nearest
            await pilot.press("escape")               # closes the history
            await pilot.pause()
            await pilot.press("escape")               # the timeline gives the keys back
            await pilot.pause()
            assert app.focused is None and tl._cursor is None
    asyncio.run(flow())
