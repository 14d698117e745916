"""Logical operations: and, or, xor, test, not."""

from __future__ import annotations

import operator

import capstone.x86_const as X

from .. import flags as F
from ..decode import Decoded, translates
from ..regs import MASK, REGMAP

NA = F.NOT_ARITH


def _logic(d: Decoded, fn, write: bool = True):
    size = d.size(0)
    rd0, rd1 = d.reader(0), d.reader(1, size)
    wr = d.writer(0) if write else None
    m = MASK[size]
    if write and d.is_reg(0) and d.is_reg(1) and d.ops[0].reg == d.ops[1].reg \
            and fn is operator.xor:
        # xor reg, reg: the zeroing idiom
        w = d.writer(0)
        zf = F.logic(0, size)

        def zero(c):
            w(c, 0)
            c.rflags = (c.rflags & NA) | zf
        return zero
    if not write and d.is_reg(0) and d.is_reg(1) and size == 8:
        a_i, b_i = REGMAP[d.ops[0].reg][0], REGMAP[d.ops[1].reg][0]

        def test_rr(c):
            c.rflags = (c.rflags & NA) | F.logic(c.regs[a_i] & c.regs[b_i], 8)
        return test_rr

    def logic(c):
        r = fn(rd0(c), rd1(c)) & m
        if wr is not None:
            wr(c, r)
        c.rflags = (c.rflags & NA) | F.logic(r, size)
    return logic


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
    rd, wr, m = d.reader(0), d.writer(0), MASK[d.size(0)]
    return lambda c: wr(c, ~rd(c) & m)
