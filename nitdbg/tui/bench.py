"""TUI figures for `nitdbg bench`: process start -> first paint, and key -> repaint with every
pane visible (median over N keys). A front end: it reads the wall clock to measure."""

from __future__ import annotations

import asyncio
import statistics
import time


async def _measure(keys: int, size: tuple[int, int]) -> dict[str, float]:
    from .app import NitdbgApp
    t0 = time.perf_counter()
    app = NitdbgApp({}, kdb_on_nmi=True)
    out: dict[str, float] = {}
    async with app.run_test(size=size) as pilot:
        scr = app.main_screen
        while scr.snap is None:
            await pilot.pause(0.005)
        await pilot.pause()
        out["tui_start_to_first_paint_s"] = round(time.perf_counter() - t0, 3)
        await pilot.press("n")
        await wait_idle(app, pilot)
        times = []
        for _ in range(keys):
            before = scr.updates
            t = time.perf_counter()
            await pilot.press("s")
            while scr.updates == before or not app.machine.idle:
                await pilot.pause(0.001)
            await pilot.pause()           # let the repaint happen
            times.append(time.perf_counter() - t)
        out["tui_key_to_repaint_ms"] = round(statistics.median(times) * 1000, 2)
        out["tui_keys_measured"] = float(keys)
    return out


async def wait_idle(app, pilot, timeout: float = 30.0) -> None:  # noqa: ANN001
    """Until the worker has done everything asked of it and the screen shows the result."""
    scr = app.main_screen
    for _ in range(int(timeout / 0.01)):
        snap = scr.snap
        if app.machine.idle and snap is not None and snap.seq == app.machine.state.completed:
            await pilot.pause()
            return
        if app.machine.state.error:
            raise RuntimeError(app.machine.state.error)
        await pilot.pause(0.01)
    raise TimeoutError("the machine worker did not become idle")


def bench_figures(keys: int = 15, size: tuple[int, int] = (160, 45)) -> dict[str, float]:
    """Wide layout (every pane visible)."""
    return asyncio.run(_measure(keys, size))


if __name__ == "__main__":
    print(bench_figures())
