"""The broadcast-NMI deadlock of the test plan: a DEADLOCK status naming each vCPU and where
it spins, with the plan's note, and R as the way out."""

from __future__ import annotations

import asyncio

from nitdbg.tui.app import NitdbgApp
from nitdbg.tui.bench import screen_rows, wait_idle


def test_a_broadcast_nmi_with_kdb_on_nmi_shows_deadlock_and_r_force_resets_while_recording(
        tmp_path):
    from nitdbg.session import replay
    path = tmp_path / "deadlock.nitrec"

    async def flow() -> None:
        app = NitdbgApp({}, kdb_on_nmi=True, record=str(path))
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_idle(app, pilot)
            await pilot.press("N")
            await wait_idle(app, pilot, timeout=120)
            status = app.main_screen.snap.status
            assert status.startswith("DEADLOCK: ")
            assert "vCPU 0 spins in stop_cpus_hard" in status
            assert "vCPU 1 spins in stop_cpus_hard" in status
            assert "R: force-reset" in status
            out = "".join(t for t, _ in app.main_screen.transcript)
            assert "broadcast NMI (--cpu=-1)" in out and "--force-reset" in out
            text = " ".join(" ".join(r.text for r in screen_rows(app)).split())
            assert "DEADLOCK" in text and "vCPU 1 spins in" in text     # wrapped, not cut
            # another input clears it until the watchdog says so again
            await pilot.press("v")
            await wait_idle(app, pilot)
            assert app.main_screen.snap.status.startswith("DEADLOCK")   # select: no input
            # the way out: bhyvectl --force-reset on the host, then the guest boots again
            await pilot.press("R")
            await wait_idle(app, pilot, timeout=120)
            out = "".join(t for t, _ in app.main_screen.transcript)
            assert "host$ bhyvectl --vm=vm2 --force-reset" in out
            assert "vm vm2 reset and booted to the prompt" in out
            assert not app.main_screen.snap.status.startswith("DEADLOCK")
            assert app.main_screen.snap.surface == "guest"
            assert app.machine.recorder is not None          # the recording goes on
    asyncio.run(flow())
    res = replay(path, verify=True)
    assert res.ok, res.divergence


def test_r_outside_a_deadlock_asks_before_resetting():
    async def flow() -> None:
        app = NitdbgApp({}, record=None)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(app, pilot)
            boots = app.machine.m.boots
            await pilot.press("R")
            await wait_idle(app, pilot)
            out = "".join(t for t, _ in app.main_screen.transcript)
            assert "press R again" in out and app.machine.m.boots == boots
            await pilot.press("R")
            await wait_idle(app, pilot, timeout=60)
            assert app.machine.m.boots == boots + 1
    asyncio.run(flow())


def test_a_reset_typed_at_the_host_prompt_gives_fresh_panes():
    async def flow() -> None:
        app = NitdbgApp({}, record=None)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(app, pilot)
            await pilot.press("f2", *"bhyvectl --vm=vm2 --force-reset", "enter", "escape")
            await wait_idle(app, pilot)
            snap = app.main_screen.snap
            assert app.machine.m.boots == 2
            assert snap.vcpus[0].icount == app.machine.m.view(0).icount
            assert "internal error" not in "".join(t for t, _ in app.main_screen.transcript)
    asyncio.run(flow())
