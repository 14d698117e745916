"""Nothing a guest executes may raise a Python exception out of the vCPU: a bug in one
instruction's semantics becomes #UD for the guest and a record naming the instruction."""

from __future__ import annotations

import capstone.x86_const as X
from x86util import LongModeMachine

from nitdbg.x86 import decode


def test_an_internal_error_in_an_instruction_becomes_ud_with_a_record(monkeypatch):
    def broken(d):
        def fn(c):
            raise KeyError("simulated bug")
        return fn
    monkeypatch.setitem(decode.TRANSLATORS, X.X86_INS_BSWAP, broken)
    m = LongModeMachine("bad: bswap %eax\nhlt\nud_handler: hlt", handlers={6: "ud_handler"})
    m.cpu.run(10)
    assert m.cpu.rip == m.syms["ud_handler"] + 1
    rip, _, text = m.cpu.last_unsupported
    assert rip == m.syms["bad"] and "internal error executing bswap" in text


def test_flag_instructions_clear_set_and_complement_one_flag_each():
    src = """
        stc
        cmc
        pushfq
        std
        stc
        pushfq
        cld
        clc
        cmc
        pushfq
        hlt
    """
    m = LongModeMachine(src)
    m.cpu.run(20)
    c = m.cpu
    third, second, first = c.rd(c.regs[4], 8), c.rd(c.regs[4] + 8, 8), c.rd(c.regs[4] + 16, 8)
    assert (first & 1, first >> 10 & 1) == (0, 0)          # stc; cmc -> CF=0
    assert (second & 1, second >> 10 & 1) == (1, 1)        # std; stc
    assert (third & 1, third >> 10 & 1) == (1, 0)          # cld; clc; cmc
