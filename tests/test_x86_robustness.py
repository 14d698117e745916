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
