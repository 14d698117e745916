"""Decoded pages shared between machines (x86/mmu.py `_SharedPage`): a machine fetching from
a page image another machine decoded takes those instructions at its first fetch there. It
must run exactly as if it had fetched each one itself."""

from __future__ import annotations

import capstone.x86_const as X
import pytest
from x86util import LongModeMachine

from nitdbg.x86 import decode, mmu
from nitdbg.x86.cpu import Cpu

# The patch writes the imm8 of `add $5, %eax` (at `add`+2) when EBX is non-zero.
PATCHING = """
    test %ebx, %ebx
    jz 1f
    movb $7, add+2(%rip)
1:
add:
    add $5, %eax
    hlt
"""


def _state(c: Cpu) -> tuple:
    return (list(c.regs), c.rip, c.rflags, c.icount, c.stop_reason)


def _fresh(src: str, rbx: int = 0) -> LongModeMachine:
    m = LongModeMachine(src)
    m.cpu.regs[3] = rbx
    return m


def _decodes(monkeypatch) -> list[int]:
    """The addresses each later machine decodes itself (not taken from a shared page)."""
    seen: list[int] = []
    real = mmu.Mmu._decode

    def counting(self, code, rip, mode):  # noqa: ANN001
        seen.append(rip)
        return real(self, code, rip, mode)
    monkeypatch.setattr(mmu.Mmu, "_decode", counting)
    return seen


def test_a_second_machine_takes_the_decoded_page_instead_of_fetching_each_instruction(
        monkeypatch):
    mmu._PAGES.clear()
    a = _fresh(PATCHING)
    a.cpu.run(100)
    seen = _decodes(monkeypatch)
    b = _fresh(PATCHING)
    b.cpu.run(100)
    assert seen == [] and _state(b.cpu) == _state(a.cpu)
    assert a.cpu.regs[0] == 5


def test_a_guest_write_to_a_shared_instruction_it_has_not_run_yet_drops_it(monkeypatch):
    """Self-modifying code: the patched `add` was decoded by the first machine (EBX = 0, no
    patch) and taken by the second; the second one patches it before it reaches it, and must
    run the new bytes (APM vol 2 7.6.1: a store to code is seen by the next fetch)."""
    mmu._PAGES.clear()
    _fresh(PATCHING, rbx=0).cpu.run(100)
    b = _fresh(PATCHING, rbx=1)
    b.cpu.run(100)
    mmu._PAGES.clear()
    alone = _fresh(PATCHING, rbx=1)
    alone.cpu.run(100)
    assert b.cpu.regs[0] == 7 and _state(b.cpu) == _state(alone.cpu)


def test_a_page_with_other_bytes_is_not_taken():
    mmu._PAGES.clear()
    _fresh("mov $1, %eax\nhlt").cpu.run(100)
    b = _fresh("mov $2, %eax\nhlt")
    b.cpu.run(100)
    assert b.cpu.regs[0] == 2


@pytest.mark.internal_error_expected
def test_a_replaced_translator_is_used_by_the_next_machine(monkeypatch):
    mmu._PAGES.clear()
    src = "bswap %eax\nhlt"
    _fresh(src).cpu.run(100)

    def broken(d):
        raise ValueError("translator bug")
    monkeypatch.setitem(decode.TRANSLATORS, X.X86_INS_BSWAP, broken)
    b = _fresh(src)
    b.cpu.run(100)
    assert b.cpu.stop_reason == "internal"


TWO_MOVS = """
    test %ebx, %ebx
    jz 1f
    mov $2, %ecx
1:
    mov $1, %eax
    hlt
"""


def test_instructions_built_by_a_replaced_translator_are_not_taken_with_the_new_ones(
        monkeypatch):
    """After a translator is replaced, a page must not mix what the old one built with what
    the new one builds: a machine taking the page would run the old translation of an
    instruction as if the new translator had built it."""
    mmu._PAGES.clear()
    _fresh(TWO_MOVS, rbx=1).cpu.run(100)        # both MOVs, by the registered translator
    real = decode.TRANSLATORS[X.X86_INS_MOV]

    def marking(d):
        fn = real(d)

        def marked(c):
            fn(c)
        marked.marked = True
        return marked
    monkeypatch.setitem(decode.TRANSLATORS, X.X86_INS_MOV, marking)
    _fresh(TWO_MOVS, rbx=0).cpu.run(100)        # only the second MOV, by the new translator
    c = _fresh(TWO_MOVS, rbx=1).cpu             # both again
    c.run(100)
    movs = [i for i in c.icache.values() if i.id == X.X86_INS_MOV]
    assert len(movs) == 2 and all(getattr(i.fn, "marked", False) for i in movs)
    assert c.regs[1] == 2 and c.regs[0] == 1
