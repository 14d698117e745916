"""The instruction TLB (x86/mmu.py _fetch_hpa): a code page is walked on its first fetch after
a flush; INVLPG, MOV CR3 and every other flush_tlb() drop it with the data TLBs (SDM vol 3
4.10.4: a page-table change is seen for sure only after the invalidation)."""

import pytest

from nitdbg.bench import A_OFF, B_OFF, BASE, PML4, bare_cpu
from nitdbg.x86.faults import Fault

PD = PML4 + 0x2000


def test_a_second_instruction_on_a_fetched_page_uses_the_cached_translation():
    c = bare_cpu()
    c.fetch_insn(BASE + A_OFF)
    assert c.itlb == {(BASE >> 12) << 1: BASE}
    walks = []
    c.translate = lambda lin, acc: walks.append(lin) or lin   # would walk
    c.fetch_insn(BASE + B_OFF)
    assert walks == []


def test_after_a_flush_the_next_fetch_walks_again_and_sees_the_page_table_change():
    c = bare_cpu()
    c.fetch_insn(BASE + A_OFF)
    c.mem.write(PD, 8, 0)                # the 2 MiB page holding the code: not present
    c.flush_tlb()                        # as INVLPG / MOV CR3 do
    assert c.itlb == {}
    with pytest.raises(Fault) as ei:
        c.fetch_insn(BASE + B_OFF)
    assert ei.value.vector == 14
    assert c.itlb == {}                  # a failed walk caches nothing
