"""Regenerate the README's SVG screenshots: `python3 -m nitdbg.tui.screenshots.make`.

The seed's first test: kdb_on_nmi=1, an NMI into vCPU 0, then the first `s`, the step
across the NMI handler's IRET (with the explain pane showing the chain as it happened at
100x30), at 80x24, 100x30 and 160x45 (every pane visible); and text typed at guest# at 80x24.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

HERE = Path(__file__).resolve().parent


async def _iret_step(size: tuple[int, int], name: str, explain: bool) -> None:
    from ..app import NitdbgApp
    from ..bench import wait_idle
    app = NitdbgApp({}, kdb_on_nmi=True, record=None)
    async with app.run_test(size=size) as pilot:
        await wait_idle(app, pilot)
        await pilot.press("n")
        await wait_idle(app, pilot)
        await pilot.press("s")
        await wait_idle(app, pilot)
        if explain:
            from textual.widgets import TabbedContent
            app.main_screen.query_one(TabbedContent).active = "tab-explain"
            await pilot.pause()
        app.save_screenshot(str(HERE / name))


async def _typed(size: tuple[int, int], name: str) -> None:
    from ..app import NitdbgApp
    from ..bench import wait_idle
    from ..widgets.cmdline import CmdInput
    app = NitdbgApp({}, record=None)
    async with app.run_test(size=size) as pilot:
        await wait_idle(app, pilot)
        app.main_screen.query_one(CmdInput).cursor_blink = False
        await pilot.press("f3", *"sysctl kern.zq")
        await pilot.pause()
        app.save_screenshot(str(HERE / name))


def main() -> None:
    for old in HERE.glob("*.svg"):
        old.unlink()
    asyncio.run(_iret_step((80, 24), "iret-step-80x24.svg", False))
    asyncio.run(_iret_step((100, 30), "iret-step-explain-100x30.svg", True))
    asyncio.run(_iret_step((160, 45), "iret-step-160x45.svg", False))
    asyncio.run(_typed((80, 24), "typed-guest-80x24.svg"))


if __name__ == "__main__":
    main()
