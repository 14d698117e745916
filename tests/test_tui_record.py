"""`r` never reboots behind the user's back: stopping and starting again records from the
very same state (the stopped session's inputs re-executed under the new recorder, checked
equal); a state not reached under a recording makes `r` say what it would do first."""

from __future__ import annotations

import asyncio

from nitdbg.tui.app import NitdbgApp
from nitdbg.tui.bench import wait_idle

BANNER = "nitdbg amd64 firmware"


def _transcript(app: NitdbgApp) -> str:
    return "".join(t for t, _ in app.main_screen.transcript)


def test_r_stop_then_r_again_records_from_the_current_state_and_replays(tmp_path, monkeypatch):
    from nitdbg.session import read_session, replay
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))

    async def flow() -> None:
        app = NitdbgApp({}, record=str(tmp_path / "first.nitrec"))
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(app, pilot)
            await pilot.press("f3", *"sysctl machdep.kdb_on_nmi=1", "enter", "escape")
            await wait_idle(app, pilot)
            await pilot.press("r")                       # stop
            await wait_idle(app, pilot)
            retired = app.machine.m.total_retired
            await pilot.press("r")                       # start again: same state
            await wait_idle(app, pilot, timeout=120)
            assert "from this very state" in _transcript(app)
            assert app.machine.m.total_retired == retired
            console = app.main_screen.snap.console
            assert console.count(BANNER) == 1 and "kdb_on_nmi: 0 -> 1" in console
            await pilot.press("n")
            await wait_idle(app, pilot)
            await pilot.press("s")
            await wait_idle(app, pilot)
            app.second = str(app.machine.recorder.path)
        return app

    app = asyncio.run(flow())
    second = read_session(app.second)
    first = read_session(tmp_path / "first.nitrec")
    assert len(second.inputs) > len(first.inputs)
    res = replay(app.second, verify=True)
    assert res.ok, res.divergence


def test_r_on_an_unrecorded_state_asks_first_and_reboots_only_on_the_second_r(
        tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))

    async def flow() -> None:
        app = NitdbgApp({}, record=None)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(app, pilot)
            await pilot.press("r")
            await wait_idle(app, pilot)
            assert "press r again to reboot the VM" in _transcript(app)
            assert app.machine.recorder is None
            assert app.main_screen.snap.console.count(BANNER) == 1
            await pilot.press("v", "r")                  # another key: the offer is gone
            await wait_idle(app, pilot)
            assert app.machine.recorder is None
            await pilot.press("r")
            await wait_idle(app, pilot, timeout=60)
            assert app.machine.recorder is not None
            assert "the VM was rebooted for it, as asked" in _transcript(app)
    asyncio.run(flow())


def test_a_run_paused_in_the_tui_is_recorded_as_instruction_counts_and_replays(tmp_path):
    from nitdbg.session import read_session, replay
    path = tmp_path / "run.nitrec"

    async def flow() -> None:
        app = NitdbgApp({}, record=str(path))
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(app, pilot)
            await pilot.press("c")
            for _ in range(100):
                await pilot.pause(0.02)
                if app.main_screen.updates > 3:
                    break
            await pilot.press("p")
            await wait_idle(app, pilot)
            assert not app.main_screen.snap.running
    asyncio.run(flow())
    runs = [i for i in read_session(path).inputs if i["op"] == "run"]
    assert runs and all(isinstance(i["args"]["max_insns"], int) for i in runs)
    res = replay(path, verify=True)
    assert res.ok, res.divergence
