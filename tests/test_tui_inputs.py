"""What is typed shows on the rendered screen, with the cursor after it, at every size;
Esc gives the keys back to the main view; machine keys and typed letters never cross.

The screen is read as the terminal would get it (the compositor's rendered rows), not from
the widgets' values: a focused Textual Input with a border on a one-row line keeps its value
but shows nothing of it, which only the rendered screen reveals."""

from __future__ import annotations

import asyncio

import pytest

from nitdbg.tui.app import NitdbgApp
from nitdbg.tui.bench import screen_rows, wait_idle
from nitdbg.tui.widgets.cmdline import CmdInput, CommandLine
from nitdbg.tui.widgets.lineinput import LineInput

SIZES = [(80, 24), (100, 30), (160, 45)]


def row_with(app: NitdbgApp, text: str):  # noqa: ANN201 - a Strip
    rows = [r for r in screen_rows(app) if text in r.text]
    assert rows, f"{text!r} is not on the screen:\n" + "\n".join(
        r.text for r in screen_rows(app))
    return rows[0]


def cursor_follows(strip, text: str) -> bool:  # noqa: ANN001
    """The cell right after `text` is drawn in another background than the text: the cursor."""
    col = strip.text.index(text) + len(text)
    cells = []
    for seg in strip:
        for _ in seg.text:
            cells.append(seg.style.bgcolor if seg.style else None)
    return cells[col] != cells[col - 1]


async def _type_everywhere(size: tuple[int, int]) -> None:
    app = NitdbgApp({}, record=None)
    async with app.run_test(size=size) as pilot:
        await wait_idle(app, pilot)
        scr = app.main_screen
        for key, prompt, typed in (("f2", "host$", "sysctl debug.nit"),
                                   ("f3", "guest#", "sysctl kern.zq"),
                                   ("f4", "db>", "show registers")):
            await pilot.press(key, *typed)
            await pilot.pause()
            row = row_with(app, typed)
            assert prompt in row.text
            assert cursor_follows(row, typed)
            assert "Esc" in row.text               # it says where the keys go
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(scr.focused, LineInput)
            assert "keys: view" in row_with(app, prompt).text
            scr.query_one(CmdInput).value = ""
        await pilot.press("slash", *"vNMI")
        await pilot.pause()
        row = row_with(app, "vNMI")
        assert cursor_follows(row, "vNMI")
        # letters typed into the filter did not select a vCPU or inject NMIs
        await wait_idle(app, pilot)
        assert scr.selected == 0
        assert "assert-lapic-lvt" not in "".join(t for t, _ in scr.transcript)
        await pilot.press("escape", "v")       # Esc: `v` is a machine key again
        await wait_idle(app, pilot)
        assert scr.selected == 1
        assert scr.query_one("#ktr-filter", LineInput).value == "vNMI"


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_text_typed_into_every_input_is_on_the_rendered_screen(size):
    asyncio.run(_type_everywhere(size))


def test_no_input_has_the_focus_at_start_so_machine_keys_reach_the_machine():
    async def flow() -> None:
        app = NitdbgApp({}, record=None)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(app, pilot)
            assert not isinstance(app.main_screen.focused, LineInput)
            await pilot.press("v")
            await wait_idle(app, pilot)
            assert app.main_screen.selected == 1
            assert app.main_screen.query_one(CommandLine).input.value == ""
    asyncio.run(flow())
