"""SVG snapshots of the main screens (pytest-textual-snapshot) at 100x30 and 160x45.
Deterministic content: virtual time only, the machine waited on until idle."""

from __future__ import annotations

from nitdbg.tui.app import NitdbgApp
from nitdbg.tui.bench import wait_idle


def _stopped_after_two_steps():
    async def run_before(pilot) -> None:  # noqa: ANN001
        app = pilot.app
        await wait_idle(app, pilot)
        await pilot.press("n")
        await wait_idle(app, pilot)
        await pilot.press("s", "s")
        await wait_idle(app, pilot)
    return run_before


def test_ddb_stop_after_two_steps_compact_100x30(snap_compare):
    assert snap_compare(NitdbgApp({}, kdb_on_nmi=True), terminal_size=(100, 30),
                        run_before=_stopped_after_two_steps())


def test_ddb_stop_after_two_steps_wide_160x45(snap_compare):
    assert snap_compare(NitdbgApp({}, kdb_on_nmi=True), terminal_size=(160, 45),
                        run_before=_stopped_after_two_steps())


def test_booted_guest_compact_100x30(snap_compare):
    async def run_before(pilot) -> None:  # noqa: ANN001
        await wait_idle(pilot.app, pilot)
    assert snap_compare(NitdbgApp({}), terminal_size=(100, 30), run_before=run_before)
