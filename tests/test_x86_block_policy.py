"""When the step loop translates a block (blocks.build, "ski rental"): not before the work the
per-instruction path spent on it pays for the translation, never more than the translation
budget at once, at once from the process-wide cache. The policy changes speed only: the
differential tests (test_x86_blocks_differential.py) compare the results."""

from __future__ import annotations

import pytest

from nitdbg import bench
from nitdbg.x86 import blocks

START = bench.BASE + 0x200
START2 = bench.BASE + 0x300


def _loop(count: int) -> bytes:
    # mov ecx, count; xor eax, eax; 1: add rax, 3; xor rax, rdx; dec ecx; jnz 1b; hlt
    return (bytes.fromhex("b9") + count.to_bytes(4, "little")
            + bytes.fromhex("31c0" "4883c003" "4831d0" "ffc9" "75f5" "f4"))


@pytest.fixture
def cpu(monkeypatch):
    monkeypatch.setattr(blocks, "_COMPILED", {})     # nothing translated by other tests
    c = bench.bare_cpu()
    c.rip = START
    return c


def _loop_block(c):
    return c.bcache.get(START + 7)


def test_a_loop_run_a_few_dozen_times_is_not_translated(cpu):
    cpu.mem.write_bytes(START, _loop(40))
    cpu.run(1000)
    assert cpu.halted and cpu.regs[1] == 0
    assert not any(cpu.bcache.values())


def test_a_hot_loop_is_translated_once_its_interpreted_work_pays_for_it(cpu):
    cpu.mem.write_bytes(START, _loop(100_000))
    cpu.run(20_000)
    blk = _loop_block(cpu)
    assert blk is not None and blk.loops and blk.length == 4
    cost = blocks.XLATE_BASE + blocks.XLATE_PER_INSN * 4
    # visited (interpreted) until visits x length reached the cost, then not any more
    assert cpu.bhot[START + 7] == -(-cost // 4)


def test_the_translation_budget_caps_a_burst_and_refills_with_retired_instructions(
        cpu, monkeypatch):
    cost = blocks.XLATE_BASE + blocks.XLATE_PER_INSN * 4
    monkeypatch.setattr(blocks, "XLATE_BURST", cost)
    cpu.xlate_tokens = cost
    cpu.mem.write_bytes(START, _loop(3))
    cpu.mem.write_bytes(START2, _loop(3))
    cpu.blocks_enabled = False
    for start in (START, START2):       # decode both loops
        cpu.rip, cpu.halted = start, False
        cpu.run(100)
    hot = 10 * cost
    assert blocks.build(cpu, START + 7, hot) is not None
    again = blocks.build(cpu, START2 + 7, hot)
    assert again.__class__ is int and again > hot     # spent: ask again later
    cpu.icount += cost                                # retired instructions refill it
    assert blocks.build(cpu, START2 + 7, hot) is not None


def test_a_block_in_the_process_wide_cache_is_taken_after_a_few_visits(cpu):
    cpu.mem.write_bytes(START, _loop(100_000))
    cpu.run(20_000)
    assert _loop_block(cpu) is not None
    other = bench.bare_cpu()            # a new machine running the same code
    other.mem.write_bytes(START, _loop(100_000))
    other.rip = START
    other.run(200)
    assert _loop_block(other) is _loop_block(cpu)
    assert other.bhot[START + 7] < 20


def test_a_start_the_translator_cannot_take_is_turned_down_without_translating(
        cpu, monkeypatch):
    # a lone CPUID-free, translator-free start: pushfq; popfq; jmp back (pushfq not handled)
    cpu.mem.write_bytes(START, bytes.fromhex("9c" "9d" "ebfc"))
    cpu.blocks_enabled = False
    cpu.run(10)

    def boom(*_a):
        raise AssertionError("translated")
    monkeypatch.setattr(blocks, "_translate", boom)
    assert blocks.build(cpu, START, 10_000) is None
