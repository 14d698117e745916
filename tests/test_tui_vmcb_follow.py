"""The VMCB pane says which exit its save area is from ("no exit yet" before any); the
panes follow the vCPU that entered ddb and say so; h and x say what they did."""

from __future__ import annotations

import asyncio
import re

from nitdbg.tui.app import NitdbgApp
from nitdbg.tui.bench import wait_idle
from nitdbg.tui.widgets.vmcb import VmcbPane


def _transcript(app: NitdbgApp) -> str:
    return "".join(t for t, _ in app.main_screen.transcript)


def test_vmcb_pane_says_no_exit_yet_before_the_first_exit_then_which_exit():
    async def flow() -> None:
        app = NitdbgApp({}, boot=False, record=None)
        async with app.run_test(size=(160, 45)) as pilot:
            await wait_idle(app, pilot)
            text = app.main_screen.query_one(VmcbPane).text()
            assert "no exit yet" in text and "VMEXIT_CR0_READ" not in text
            await pilot.press("x")
            await wait_idle(app, pilot)
            text = " ".join(app.main_screen.query_one(VmcbPane).text().split())
            exit_ = app.main_screen.snap.vcpu.vmcb
            assert f"save area from exit #1 {exit_.exitname}" in text and "on vCPU 0" in text
            assert "stopped before the next VMRUN" in _transcript(app)
    asyncio.run(flow())


def test_panes_follow_the_vcpu_that_entered_ddb():
    async def flow() -> None:
        app = NitdbgApp({}, kdb_on_nmi=True, record=None)
        async with app.run_test(size=(160, 45)) as pilot:
            await wait_idle(app, pilot)
            assert app.main_screen.selected == 0
            await pilot.press("f2", *"bhyvectl --vm=vm2 --cpu=1 --assert-lapic-lvt=1",
                              "enter", "escape")
            await wait_idle(app, pilot)
            assert app.main_screen.snap.ddb_vcpu == 1
            assert app.main_screen.selected == 1 and app.main_screen.snap.vcpu.id == 1
            assert "vCPU 1 entered ddb: the panes follow it" in _transcript(app)
            assert "disassembly vCPU 1 in ddb" in str(
                app.main_screen.query_one("#disasm").border_title)
    asyncio.run(flow())


def test_h_on_a_pending_interrupt_says_the_delivery_was_a_stop_of_its_own():
    async def flow() -> None:
        app = NitdbgApp({}, record=None)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(app, pilot)
            # the idle vCPU's next event is the LAPIC timer interrupt: h delivers it alone
            for _ in range(3):
                await pilot.press("h")
                await wait_idle(app, pilot)
            out = " ".join(_transcript(app).split())
            assert re.search(r"host step vCPU 0 \(one instruction\): interrupt vector \d+ "
                             r"delivered at \S+, now at the handler \S+; no instruction "
                             r"retired \(a delivery is a stop of its own\)", out), out
    asyncio.run(flow())
