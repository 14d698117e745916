"""Layouts as a user sees them: at 80x24 the first screen has the disassembly (mnemonics
whole, ▶ centred), the registers, the RFLAGS bits, the NMI state and the prompt; long lines
wrap (ddb/host transcript, status) instead of being cut."""

from __future__ import annotations

import asyncio

import pytest

from nitdbg.tui.app import NitdbgApp
from nitdbg.tui.bench import screen_rows, wait_idle
from nitdbg.tui.model import DisLine
from nitdbg.tui.widgets.disasm import DisasmPane, centre, narrow_rows
from nitdbg.tui.widgets.lineview import line_text, wrap_line
from nitdbg.tui.widgets.transcript import Transcript


def _screen(app: NitdbgApp) -> str:
    return "\n".join(r.text for r in screen_rows(app))


@pytest.mark.parametrize("size", [(80, 24), (100, 30), (160, 45)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
def test_first_screen_has_disassembly_registers_rflags_nmi_and_prompt(size):
    async def flow() -> None:
        app = NitdbgApp({}, kdb_on_nmi=True, record=None)
        async with app.run_test(size=size) as pilot:
            await wait_idle(app, pilot)
            await pilot.press("n")
            await wait_idle(app, pilot)
            await pilot.press("s")
            await wait_idle(app, pilot)
            text = _screen(app)
            assert "▶" in text
            for word in ("rax", "r15", "TF", "IF", "RF".lower(), "NMI blocking", "db>"):
                assert word in text, word
            assert "idle→blocked" in text
            # every instruction row on screen has its whole mnemonic
            pane = app.main_screen.query_one(DisasmPane)
            mnems = {d.text.split("\t")[0] for d in app.main_screen.snap.disasm}
            for row in pane.text().split("\n"):
                if row.strip() and not row.strip().startswith("<"):
                    assert mnems & set(row.split()), row
            # ▶ is in the middle of the pane (rows above it = rows below, give or take one)
            rows = pane.text().split("\n")
            at = next(i for i, r in enumerate(rows) if r.startswith("▶"))
            assert abs(at - (len(rows) - 1 - at)) <= 1, rows
    asyncio.run(flow())


def test_the_current_instruction_is_centred_with_the_ones_before_it_above():
    lines = tuple(DisLine(0x1000 + i, f"f+{i:#x}", "nop", current=(i == 30))
                  for i in range(50))
    win = centre(list(lines), 30, 11)
    assert [d.addr for d in win].index(0x1000 + 30) == 5
    assert win[0].addr == 0x1000 + 25
    # near the start of what is at hand, the current one moves up rather than leaving
    # rows empty
    near = [DisLine(d.addr, d.where, d.text, current=(i == 2)) for i, d in enumerate(lines)]
    win = centre(near, 2, 11)
    assert len(win) == 11 and win[2].current


def test_narrow_disassembly_puts_the_symbol_on_a_label_row_and_keeps_the_mnemonic():
    lines = (DisLine(0x10, "cpu_idle_acpi", "sti"),
             DisLine(0x11, "cpu_idle_acpi+0x1", "hlt"),
             DisLine(0x12, "cpu_idle_acpi+0x2", "ret", current=True),
             DisLine(0x13, "a_very_long_function_name_indeed+0x0", "movabsq\t$0x1,%rax"))
    rows, cur = narrow_rows(lines)
    texts = [line_text(r) for r in rows]
    assert texts[0].strip() == "<cpu_idle_acpi>:"
    assert "+0x2" in texts[cur] and "ret" in texts[cur] and texts[cur].startswith("▶")
    assert "<a_very_long_function_name_indeed>:" in texts[4]
    assert "movabsq" in texts[5]


def test_a_long_line_wraps_at_a_space_and_keeps_every_character():
    line = (("watchdog: no vCPU makes progress: ", "a"), ("vCPU 0 spins in smp_rendezvous", "b"))
    rows = wrap_line(line, 30)
    assert all(len(line_text(r)) <= 30 for r in rows)
    assert "".join(line_text(r) for r in rows) == line_text(line)
    assert line_text(rows[0]).endswith(" ")          # cut after a space


def test_transcript_lines_longer_than_the_pane_are_readable_in_full():
    async def flow() -> None:
        app = NitdbgApp({}, record=None)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_idle(app, pilot)
            words = [f"word{i:02d}" for i in range(30)]          # ~210 characters
            app.main_screen._output(" ".join(words) + "\n", "info")
            await pilot.pause()
            await pilot.pause()
            tr = app.main_screen.query_one(Transcript)
            width = tr.scrollable_content_region.width
            rows = [line_text(r) for r in tr.rows]
            assert all(len(r) <= width for r in rows)
            wrapped = " ".join(rows)
            for w in words:
                assert w in wrapped, w
            assert words[-1] in _screen(app)
    asyncio.run(flow())
