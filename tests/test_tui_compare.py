"""The compare screen: the scenario x policy table against hardware, a cell's two runs side
by side at the first difference, and the NMI policy chosen from the palette."""

from __future__ import annotations

import asyncio

from nitdbg.compare.sidebyside import side_by_side
from nitdbg.tui.app import NitdbgApp
from nitdbg.tui.bench import screen_rows, wait_idle
from nitdbg.tui.screens.compare import CompareScreen, SideBySideScreen

SCENARIO = "sstep-recursive-nmi"


def screen_text(app: NitdbgApp) -> str:
    return "\n".join(r.text for r in screen_rows(app))


async def until(pilot, app: NitdbgApp, cond, timeout: float = 60.0) -> None:  # noqa: ANN001
    for _ in range(int(timeout / 0.05)):
        await pilot.pause(0.05)
        if cond():
            return
    raise AssertionError("not on the screen in time:\n" + screen_text(app))


def test_side_by_side_shows_the_frame_kvm_pushes_without_the_guests_tf():
    v = side_by_side(SCENARIO, "kvm")
    assert not v.same and v.kind == "lost_db"
    pol, hw = v.sides
    assert pol.label == "policy kvm" and hw.label == "hardware"
    at = [r for r in pol.insns if r.here]
    assert len(at) == 1 and f"#{at[0].seq} " in v.at + " "
    nmi_p = next(e for e in pol.events if e.what == "NMI")
    nmi_h = next(e for e in hw.events if e.what == "NMI")
    assert nmi_p.seq == nmi_h.seq
    assert "TF" in nmi_h.rflags.split() and "TF" not in nmi_p.rflags.split()
    assert side_by_side(SCENARIO, "iret-tracing").same


def test_compare_screen_renders_the_row_and_the_kvm_cell_side_by_side():
    async def flow() -> None:
        app = NitdbgApp({}, record=None)
        async with app.run_test(size=(160, 45)) as pilot:
            await wait_idle(app, pilot)
            await pilot.press("C")              # the full table, nothing computed yet
            await until(pilot, app, lambda: isinstance(app.screen, CompareScreen))
            await pilot.pause()
            assert "compare: policies against hardware" in screen_text(app)
            await pilot.press("escape")
            await pilot.pause()
            app.push_screen(CompareScreen([SCENARIO], ["iret-tracing", "kvm"]))
            await until(pilot, app, lambda: SCENARIO in screen_text(app))
            await pilot.press("enter")           # compute this row
            await until(pilot, app, lambda: "lost_db" in screen_text(app))
            row = next(r.text for r in screen_rows(app) if SCENARIO in r.text)
            assert "same as hardware" in row and "lost_db sstest_loop" in row
            await pilot.press("right", "right", "enter")      # the kvm cell
            await until(pilot, app, lambda: isinstance(app.screen, SideBySideScreen)
                        and "HARDWARE" in screen_text(app))
            text = screen_text(app)
            assert "POLICY KVM" in text and "lost_db on vCPU 0 at #" in text
            assert "RFLAGS 0x117 TF (pushed by the NMI" in text
            assert "RFLAGS 0x17 (pushed by the NMI" in text
            assert "iretq" in text
    asyncio.run(flow())


def test_palette_policy_rebuilds_the_machine_under_kvm():
    async def flow() -> None:
        app = NitdbgApp({}, record=None)
        async with app.run_test(size=(160, 45)) as pilot:
            await wait_idle(app, pilot)
            assert app.machine.m.summary().policy == "iret-tracing"
            await pilot.press("ctrl+p")
            await pilot.pause()
            await pilot.press(*"restart under kvm")
            await pilot.pause(0.3)
            await pilot.press("enter")
            await until(pilot, app, lambda: "now under policy kvm" in screen_text(app))
            await wait_idle(app, pilot)
            assert app.main_screen.snap.policy == "kvm"
    asyncio.run(flow())
