"""`p` stops a running guest in the middle of the chunk the worker is running (the
machine's interrupt, at its next scheduling step), not at the chunk's end; the stop is
recorded as the step it came at, so `nitdbg replay --verify`, the TUI's own replay and a
re-recording from that state all stop the run at the same instruction count."""

from __future__ import annotations

import asyncio

from nitdbg.tui import worker as worker_mod
from nitdbg.tui.app import NitdbgApp
from nitdbg.tui.bench import wait_idle


def _transcript(app: NitdbgApp) -> str:
    return "".join(t for t, _ in app.main_screen.transcript)


def _paused_mid_chunk(tmp_path, monkeypatch, then=None):  # noqa: ANN001, ANN202
    """Record: boot, c, p while the first chunk (sized to take seconds) is running."""
    # chunks far longer than the pause takes to come: a stop only at a chunk's end would
    # run the whole budget
    monkeypatch.setattr(worker_mod, "FIRST_CHUNK", 20_000_000)
    path = tmp_path / "pause.nitrec"

    async def flow() -> NitdbgApp:
        app = NitdbgApp({}, record=str(path))
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(app, pilot)
            await pilot.press("c")
            for _ in range(200):               # the chunk is under way
                await pilot.pause(0.01)
                if app.machine.state.running:
                    break
            await pilot.pause(0.2)
            await pilot.press("p")
            await wait_idle(app, pilot, timeout=120)
            assert not app.main_screen.snap.running
            if then is not None:
                await then(app, pilot)
        return app

    return path, asyncio.run(flow())


def test_p_stops_the_run_mid_chunk_at_a_recorded_step_and_the_replay_verifies(
        tmp_path, monkeypatch):
    from nitdbg.cli import main
    from nitdbg.session import read_session, replay
    path, app = _paused_mid_chunk(tmp_path, monkeypatch)
    recs = read_session(path).records
    runs = [i for i, r in enumerate(recs) if r["t"] == "in" and r["op"] == "run"]
    assert runs
    i = runs[-1]
    ck = recs[i + 1]
    assert ck["t"] == "ck" and isinstance(ck.get("interrupted_at"), int)
    budget = recs[i]["args"]["max_insns"]
    retired = ck["icount"] - recs[i]["icount"]
    assert budget == 20_000_000 and 0 < retired < budget     # stopped inside the chunk
    assert "interrupted" in _transcript(app)
    res = replay(path, verify=True)
    assert res.ok, res.divergence
    assert res.retired == app.machine.m.total_retired
    assert main(["replay", str(path), "--verify"]) == 0


def test_the_tui_replay_of_a_paused_run_stops_at_the_same_count(tmp_path, monkeypatch):
    from nitdbg.session import read_session
    from nitdbg.session.replay import build_machine
    from nitdbg.tui.replaying import _Replay
    path, app = _paused_mid_chunk(tmp_path, monkeypatch)
    session = read_session(path)
    rp = _Replay(session, build_machine(session))
    out = "".join(rp.apply_next() for _ in session.inputs)
    assert "DIVERGED" not in out and out.count("same as recorded") == len(session.inputs)
    assert rp.m.total_retired == app.machine.m.total_retired


def test_r_twice_after_a_paused_run_rebuilds_the_very_same_state(tmp_path, monkeypatch):
    async def again(app: NitdbgApp, pilot) -> None:  # noqa: ANN001
        retired = app.machine.m.total_retired
        await pilot.press("r")                   # stop the recording
        await wait_idle(app, pilot)
        await pilot.press("r")                   # and record again from this state
        await wait_idle(app, pilot, timeout=120)
        assert "from this very state" in _transcript(app)
        assert app.machine.m.total_retired == retired
    _paused_mid_chunk(tmp_path, monkeypatch, then=again)
