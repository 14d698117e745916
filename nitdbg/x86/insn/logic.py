"""Logical operations: and, or, xor, test, not (SDM vol 2; flags: CF = OF = 0, SF ZF PF from
the result, AF undefined and left 0 as QEMU does; NOT changes no flags)."""

from __future__ import annotations

import operator

import capstone.x86_const as X

from .. import flags as F
from ..decode import Decoded, Exec, translates
from ..regs import MASK
from .arith import full_reg, lock_ud

NA = F.NOT_ARITH


def _logic(d: Decoded, fn, write: bool = True) -> Exec:
    ud = lock_ud(d, lockable=write)
    if ud is not None:
        return ud
    size = d.size(0)
    m = MASK[size]
    fl = F.SZP[size]
    if write and d.is_reg(0) and d.is_reg(1) and d.ops[0].reg == d.ops[1].reg \
            and fn is operator.xor:
        # xor reg, reg: the zeroing idiom
        w = d.writer(0)
        zf = fl(0)

        def zero(c):
            w(c, 0)
            c.rflags = (c.rflags & NA) | zf
        return zero
    dst = full_reg(d, 0)
    if dst is not None and not d.is_mem(1):
        fast = _logic_fast(d, fn, write, dst, m, fl)
        if fast is not None:
            return fast
    rd0, rd1 = d.reader(0), d.reader(1, size)
    if not write:
        def test_(c):
            c.rflags = (c.rflags & NA) | fl(rd0(c) & rd1(c))
        return test_
    wr = d.writer(0)

    def logic(c):
        r = fn(rd0(c), rd1(c)) & m
        wr(c, r)
        c.rflags = (c.rflags & NA) | fl(r)
    return logic


def _logic_fast(d: Decoded, fn, write: bool, dst: int, m: int, fl) -> Exec | None:
    if d.is_imm(1):
        b = d.imm(1, d.size(0))
        if not write:
            def test_ri(c):
                c.rflags = (c.rflags & NA) | fl(c.regs[dst] & b)
            return test_ri

        def logic_ri(c):
            regs = c.regs
            r = fn(regs[dst] & m, b)
            regs[dst] = r
            c.rflags = (c.rflags & NA) | fl(r)
        return logic_ri
    src = full_reg(d, 1)
    if src is None:
        return None
    if not write:
        def test_rr(c):
            regs = c.regs
            c.rflags = (c.rflags & NA) | fl(regs[dst] & regs[src] & m)
        return test_rr

    def logic_rr(c):
        regs = c.regs
        r = fn(regs[dst], regs[src]) & m
        regs[dst] = r
        c.rflags = (c.rflags & NA) | fl(r)
    return logic_rr


@translates(X.X86_INS_AND)
def and_(d: Decoded):
    return _logic(d, operator.and_)


@translates(X.X86_INS_OR)
def or_(d: Decoded):
    return _logic(d, operator.or_)


@translates(X.X86_INS_XOR)
def xor(d: Decoded):
    return _logic(d, operator.xor)


@translates(X.X86_INS_TEST)
def test(d: Decoded):
    return _logic(d, operator.and_, write=False)


@translates(X.X86_INS_NOT)
def not_(d: Decoded):
    ud = lock_ud(d)
    if ud is not None:
        return ud
    rd, wr, m = d.reader(0), d.writer(0), MASK[d.size(0)]
    dst = full_reg(d, 0)
    if dst is not None:
        def not_r(c):
            c.regs[dst] = ~c.regs[dst] & m
        return not_r
    return lambda c: wr(c, ~rd(c) & m)
