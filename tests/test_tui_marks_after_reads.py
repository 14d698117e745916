"""A read (v to another vCPU and back, the audit) shows the same stop again: the registers
changed by the last step stay highlighted and the instructions it retired stay dimmed on
the rendered screen. Before, the worker took every read as a new stop and the marks went."""

from __future__ import annotations

import asyncio

from nitdbg.tui.app import NitdbgApp
from nitdbg.tui.bench import wait_idle
from nitdbg.tui.widgets.disasm import DisasmPane
from nitdbg.tui.widgets.registers import RegistersPane


def _styled(pane, want) -> list[str]:  # noqa: ANN001
    """The text of the rendered segments whose style `want(style)` picks, row by row."""
    out = []
    for y in range(pane.size.height):
        for seg in pane.render_line(y):
            if seg.style is not None and want(seg.style) and seg.text.strip():
                out.append(seg.text.strip())
    return out


def _changed(style) -> bool:  # noqa: ANN001
    return style.bgcolor is not None and style.bgcolor.name == "#3b2f1a"


def _dim(style) -> bool:  # noqa: ANN001
    return bool(style.dim)


def test_reads_keep_the_changed_and_retired_marks_of_the_last_stop():
    asyncio.run(_flow())


async def _flow():
    app = NitdbgApp({})
    async with app.run_test(size=(160, 45)) as pilot:
        await wait_idle(app, pilot)
        await pilot.press("f3", *"sysctl machdep.kdb_on_nmi=1", "enter")
        await wait_idle(app, pilot)
        await pilot.press("escape", "n")
        await wait_idle(app, pilot)
        await pilot.press("s", "s")      # the second lands next to what the first retired
        await wait_idle(app, pilot)
        await pilot.pause()
        screen = app.main_screen
        regs, dis = screen.query_one(RegistersPane), screen.query_one(DisasmPane)
        changed, dimmed = _styled(regs, _changed), _styled(dis, _dim)
        assert changed, "the step changed no register on the screen"
        assert dimmed, "the step retired no dimmed instruction on the screen"
        for keys in (("v", "v"), ("a",)):
            await pilot.press(*keys)
            await wait_idle(app, pilot)
            await pilot.pause()
            assert screen.snap.vcpu.id == 0
            assert _styled(regs, _changed) == changed, keys
            assert _styled(dis, _dim) == dimmed, keys
        # the next step is a new stop: its own marks
        await pilot.press("escape", "s")
        await wait_idle(app, pilot)
        assert screen.snap.audit_steps == 3 and screen.snap.audit_ok
