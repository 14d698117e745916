"""Exit history: the recent exits of a vCPU, each with the VMCB and the registers as that
exit left them, not as they are now."""

from __future__ import annotations

import asyncio

from nitdbg.machine import Machine
from nitdbg.tui.app import NitdbgApp
from nitdbg.tui.bench import wait_idle


def test_each_recorded_exit_keeps_its_own_vmcb_and_registers():
    m = Machine()
    m.exit_history(0)                       # from here on
    m.boot_to_prompt()
    h = m.exit_history(0)
    assert len(h) > 2
    numbers = [x.exit.number for x in h]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    last = h[-1]
    assert last.exit.number == m.view(0).last_exit.number
    assert last.vmcb.exitcode == last.exit.code == m.view(0).vmcb.exitcode
    # an older exit shows its own exit code and RIP, not the current ones
    older = next(x for x in reversed(h) if x.exit.code != last.exit.code)
    assert older.vmcb.exitcode == older.exit.code and older.regs["rip"] == older.exit.rip


def test_a_cloned_machine_keeps_its_own_history():
    m = Machine()
    m.exit_history(0)
    m.boot_to_prompt()
    c = m.clone()
    n = m.exit_history(0)[-1].exit.number
    c.run(max_insns=200_000)
    assert m.exit_history(0)[-1].exit.number == n
    assert c.exit_history(0)[-1].exit.number > n


def test_x_key_shows_the_exits_and_the_picked_exits_vmcb():
    from textual.widgets import OptionList, Static

    from nitdbg.tui.screens.exits import ExitHistoryScreen

    async def flow() -> None:
        app = NitdbgApp({}, record=None)
        async with app.run_test(size=(160, 45)) as pilot:
            await wait_idle(app, pilot)
            await pilot.press("X")
            for _ in range(200):
                await pilot.pause(0.02)
                if isinstance(app.screen, ExitHistoryScreen):
                    break
            scr = app.screen
            assert isinstance(scr, ExitHistoryScreen) and scr.exits
            ol = scr.query_one(OptionList)
            await pilot.press("down")
            await pilot.pause()
            picked = scr.exits[ol.highlighted]
            text = str(scr.query_one("#exit-detail", Static).render())
            assert f"exit #{picked.exit.number} {picked.exit.name}" in text
            assert f"exitcode    {picked.vmcb.exitcode:#x}" in text
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(app.screen, ExitHistoryScreen)
    asyncio.run(flow())
