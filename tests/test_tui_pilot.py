"""Pilot tests of the TUI's main flows (each boots the amd64 guest: ~1 s)."""

from __future__ import annotations

import asyncio

from nitdbg.tui.app import NitdbgApp
from nitdbg.tui.bench import wait_idle
from nitdbg.tui.commands import COMMANDS
from nitdbg.tui.screens.main import MainScreen
from nitdbg.tui.widgets.cmdline import CommandLine, complete
from nitdbg.tui.widgets.disasm import DisasmPane
from nitdbg.tui.widgets.nmi import NmiPane
from nitdbg.tui.widgets.rflags import BITS, RflagsPane
from nitdbg.tui.widgets.transcript import Transcript
from nitdbg.tui.widgets.verdict import VerdictBar


def _text(widget) -> str:  # noqa: ANN001
    return str(widget.render())


def _transcript(app: NitdbgApp) -> str:
    return "".join(t for t, _ in app.main_screen.transcript)


def test_nmi_with_kdb_on_nmi_stops_after_hlt_then_five_steps_skip_nothing():
    asyncio.run(_flow_nmi_with_kdb_on_nmi_stops_after_hlt_then_five_steps_skip_nothing())


async def _flow_nmi_with_kdb_on_nmi_stops_after_hlt_then_five_steps_skip_nothing():
    """Seed, 'Single step guest kernel': kdb_on_nmi=1, an NMI into vCPU 0 stops the guest
    at the instruction after 'hlt' in cpu_idle_acpi; 's' five times keeps every
    instruction (the audit says none skipped) and the trapframe's RFLAGS show TF."""
    app = NitdbgApp({})
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_idle(app, pilot)
        # the guest console, typed into as a user does (F3)
        await pilot.press("f3")
        assert app.main_screen.query_one(CommandLine).surface == "guest"
        await pilot.press(*"sysctl machdep.kdb_on_nmi=1", "enter")
        await wait_idle(app, pilot)
        assert "machdep.kdb_on_nmi: 0 -> 1" in app.main_screen.snap.console
        await pilot.press("escape", "n")
        await wait_idle(app, pilot)
        snap = app.main_screen.snap
        assert snap.surface == "ddb" and snap.ddb_vcpu == 0
        cur = [i for i, d in enumerate(snap.disasm) if d.current]
        assert len(cur) == 1
        assert snap.disasm[cur[0]].where == "cpu_idle_acpi+0x2"
        assert snap.disasm[cur[0] - 1].text == "hlt"
        assert "Stopped at\tcpu_idle_acpi+0x2:" in _transcript(app)
        assert "▶" in app.main_screen.query_one(DisasmPane).text()
        assert app.main_screen.query_one(CommandLine).surface == "ddb"
        assert any("6.7.1" in x.source for x in snap.explain)
        for _ in range(5):
            await pilot.press("s")
        await wait_idle(app, pilot)
        snap = app.main_screen.snap
        assert snap.audit_steps == 5 and snap.audit_ok
        assert "5 steps checked, no instruction skipped" in _text(
            app.main_screen.query_one(VerdictBar))
        pane = app.main_screen.query_one(RflagsPane)
        assert pane.flag_value("TF") == 1 and " TF" in pane.text()
        assert "#DB" in pane.text().splitlines()[1]
        assert "DR6.BS=1" in " ".join(x.rule for x in snap.explain)
        # the evidence, one key away
        await pilot.press("a")
        await wait_idle(app, pilot)
        assert "step 5 on vCPU 0" in _transcript(app)
        assert not isinstance(app.screen, MainScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)


def test_ddb_input_steps_and_continue_runs_until_paused():
    asyncio.run(_flow_ddb_input_steps_and_continue_runs_until_paused())


async def _flow_ddb_input_steps_and_continue_runs_until_paused():
    """The db> line runs ddb commands (here 's' and a breakpoint listing); 'c' resumes the
    guest, which runs in chunks until 'p' pauses it."""
    app = NitdbgApp({}, kdb_on_nmi=True)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_idle(app, pilot)
        await pilot.press("n")
        await wait_idle(app, pilot)
        await pilot.press("f4", *"x/i $rip", "enter")
        await wait_idle(app, pilot)
        assert "db> x/i $rip" in _transcript(app)
        assert "cpu_idle_acpi+0x2:\tret" in _transcript(app)
        await pilot.press("escape", "c")
        for _ in range(200):
            await pilot.pause(0.01)
            if app.main_screen.snap.surface == "guest":
                break
        await pilot.press("p")
        await wait_idle(app, pilot)
        snap = app.main_screen.snap
        assert snap.surface == "guest" and not snap.running
        assert app.main_screen.query_one(CommandLine).surface != "ddb"


def test_host_level_steps_select_vcpu_and_layout_switch():
    asyncio.run(_flow_host_level_steps_select_vcpu_and_layout_switch())


async def _flow_host_level_steps_select_vcpu_and_layout_switch():
    """h steps one instruction of the selected vCPU, x runs it to its next VM exit, v
    selects the next vCPU, l switches to the wide layout with every pane."""
    app = NitdbgApp({})
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_idle(app, pilot)
        await pilot.press("v")
        await wait_idle(app, pilot)
        assert app.main_screen.snap.selected == 1
        assert "▸1" in app.main_screen.query_one(NmiPane).text()
        before = app.main_screen.snap.vcpus[1].icount
        await pilot.press("x")
        await wait_idle(app, pilot)
        assert "host step vCPU 1 (to the next VM exit)" in _transcript(app)
        assert ", then exit #" in _transcript(app)
        assert "handled; stopped before the next VMRUN" in _transcript(app)
        await pilot.press("h")
        await wait_idle(app, pilot)
        assert app.main_screen.snap.vcpus[1].icount > before
        await pilot.press("l")
        await pilot.pause()
        assert app.main_screen.has_class("-wide")
        assert app.main_screen.query_one(Transcript)    # recomposed, transcript kept
        flags = app.main_screen.query_one(RflagsPane).text().lower()
        assert all(name.lower() in flags for _, name, _ in BITS)


def test_palette_commands_are_domain_action_and_exist():
    for name, action, _ in COMMANDS:
        assert ": " in name
        assert hasattr(MainScreen, "action_" + action.split("(")[0])


def test_completion_extends_to_the_common_prefix():
    assert complete("cpu_id", ["cpu_idle_acpi", "cpu_idle_hlt", "step"]) == (
        "cpu_idle_", ["cpu_idle_acpi", "cpu_idle_hlt"])
    assert complete("zz", ["step"]) == ("zz", [])


def test_replay_steps_forward_and_back_through_a_recorded_session():
    asyncio.run(_flow_replay_steps_forward_and_back())


async def _flow_replay_steps_forward_and_back():
    """Open a recorded session, step forward through its inputs (each checkpoint compared
    with the recording), then back: the nearest saved state is restored and re-executed."""
    from pathlib import Path

    from nitdbg.tui.worker import Request
    path = Path(__file__).resolve().parents[1] / "sessions" / "pending-interrupt.nitrec"
    app = NitdbgApp({})
    async with app.run_test(size=(160, 45)) as pilot:
        await wait_idle(app, pilot)
        app.main_screen._submit(Request("replay_open", str(path)))
        await wait_idle(app, pilot)
        for _ in range(6):
            await pilot.press("right_square_bracket")
            await wait_idle(app, pilot)
        out = _transcript(app)
        assert "replay: at input 6 of" in out
        assert "checkpoint: same as recorded" in out and "DIVERGED" not in out
        forward = app.machine.m.total_retired
        await pilot.press("left_square_bracket")
        await wait_idle(app, pilot)
        out = _transcript(app)
        assert "replay: restored the state saved at input 4" in out
        assert "replay: at input 5 of" in out
        assert app.machine.m.total_retired <= forward
        await pilot.press("right_square_bracket")
        await wait_idle(app, pilot)
        assert app.machine.m.total_retired == forward      # the same state as before
        assert "DIVERGED" not in _transcript(app)


def test_running_the_pending_interrupt_scenario_shows_its_verdict():
    asyncio.run(_flow_scenario_verdict())


async def _flow_scenario_verdict():
    """e → pick a scenario: it runs on its own machines and its checks and verdict appear."""
    from nitdbg.tui.screens.scenarios import ScenarioScreen
    app = NitdbgApp({})
    async with app.run_test(size=(160, 45)) as pilot:
        await wait_idle(app, pilot)
        await pilot.press("e")
        await pilot.pause()
        assert isinstance(app.screen, ScenarioScreen)
        app.screen.dismiss("pending-interrupt")
        await pilot.pause()
        await wait_idle(app, pilot, timeout=120)
        out = _transcript(app)
        assert "PASS  there is a pending interrupt after \"Delaying 800000 usecs\"" in out
        assert "scenario pending-interrupt: PASS" in out


def test_a_session_recorded_in_the_tui_replays_bit_for_bit(tmp_path):
    asyncio.run(_flow_record_and_replay(tmp_path / "tui.nitrec"))


async def _flow_record_and_replay(path):
    from nitdbg.session import replay
    app = NitdbgApp({}, record=str(path))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_idle(app, pilot)
        await pilot.press("f3", *"sysctl machdep.kdb_on_nmi=1", "enter")
        await wait_idle(app, pilot)
        await pilot.press("escape", "n")
        await wait_idle(app, pilot)
        await pilot.press("s")
        await wait_idle(app, pilot)
    assert path.read_text().splitlines()[-1].startswith('{"t":"end"')
    res = replay(path, verify=True)
    assert res.ok and res.inputs >= 4, res.divergence
