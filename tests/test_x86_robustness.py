"""Nothing a guest executes may raise a Python exception out of the vCPU: a bug in one
instruction's semantics becomes #UD for the guest and a record naming the instruction."""

from __future__ import annotations

import capstone.x86_const as X
import pytest
from x86util import LongModeMachine

from nitdbg.x86 import decode


@pytest.mark.internal_error_expected
def test_an_internal_error_stops_the_vcpu_at_the_instruction_without_inventing_a_ud(
        monkeypatch):
    def broken(d):
        def fn(c):
            raise KeyError("simulated bug")
        return fn
    monkeypatch.setitem(decode.TRANSLATORS, X.X86_INS_BSWAP, broken)
    m = LongModeMachine("bad: bswap %eax\nhlt\nud_handler: hlt", handlers={6: "ud_handler"})
    m.cpu.run(10)
    c = m.cpu
    assert c.stop_reason == "internal" and c.rip == m.syms["bad"]
    err = c.internal_error
    assert err.rip == m.syms["bad"] and err.code == b"\x0f\xc8"
    assert "bswap" in err.line() and "KeyError" in err.line()
    assert c.run(10) == 0 and c.stop_reason == "internal"      # it runs no further


@pytest.mark.internal_error_expected
def test_a_translator_bug_stops_the_vcpu_too(monkeypatch):
    def broken(d):
        raise ValueError("translator bug")
    monkeypatch.setitem(decode.TRANSLATORS, X.X86_INS_BSWAP, broken)
    m = LongModeMachine("bad: bswap %eax\nhlt\nud_handler: hlt", handlers={6: "ud_handler"})
    m.cpu.run(10)
    assert m.cpu.stop_reason == "internal" and m.cpu.rip == m.syms["bad"]
    assert "ValueError: translator bug" in m.cpu.internal_error.line()


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
