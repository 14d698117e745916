"""Regenerate the README's SVG screenshots: `python3 -m nitdbg.tui.screenshots.make`.

Each shows a ddb stop after the seed's first steps (kdb_on_nmi=1, an NMI into vCPU 0, `s`
three times), at 100x30 and at 160x45 with every pane visible."""

from __future__ import annotations

import asyncio
from pathlib import Path

HERE = Path(__file__).resolve().parent


async def _shoot(size: tuple[int, int], name: str) -> None:
    from ..app import NitdbgApp
    from ..bench import wait_idle
    app = NitdbgApp({}, kdb_on_nmi=True)
    async with app.run_test(size=size) as pilot:
        await wait_idle(app, pilot)
        await pilot.press("n")
        await wait_idle(app, pilot)
        for _ in range(3):
            await pilot.press("s")
            await wait_idle(app, pilot)
        app.save_screenshot(str(HERE / name))


def main() -> None:
    asyncio.run(_shoot((100, 30), "ddb-step-100x30.svg"))
    asyncio.run(_shoot((160, 45), "ddb-step-160x45.svg"))


if __name__ == "__main__":
    main()
