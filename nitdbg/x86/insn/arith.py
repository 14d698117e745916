"""Integer arithmetic: add, adc, sub, sbb, cmp, inc, dec, neg (more in this family to come)."""

from __future__ import annotations

import capstone.x86_const as X

from .. import flags as F
from ..decode import Decoded, translates
from ..regs import CF, MASK, REGMAP

NA = F.NOT_ARITH


def _binop(d: Decoded, op: str):
    size = d.size(0)
    m = MASK[size]
    rd0, rd1 = d.reader(0), d.reader(1, size)
    wr = d.writer(0) if op != "cmp" else None
    fl = F.add if op in ("add", "adc") else F.sub
    carry = op in ("adc", "sbb")
    add = op in ("add", "adc")
    # fast path: 64-bit register destination, register or immediate source
    if (d.is_reg(0) and size == 8 and not carry and not d.is_mem(1)):
        dst = REGMAP[d.ops[0].reg][0]
        if d.is_imm(1):
            b = d.imm(1, size)
            if op == "add":
                def add_ri(c):
                    a = c.regs[dst]
                    r = (a + b) & m
                    c.regs[dst] = r
                    c.rflags = (c.rflags & NA) | fl(a, b, r, 8)
                return add_ri
            if op == "sub":
                def sub_ri(c):
                    a = c.regs[dst]
                    r = (a - b) & m
                    c.regs[dst] = r
                    c.rflags = (c.rflags & NA) | fl(a, b, r, 8)
                return sub_ri
            if op == "cmp":
                def cmp_ri(c):
                    a = c.regs[dst]
                    c.rflags = (c.rflags & NA) | fl(a, b, (a - b) & m, 8)
                return cmp_ri

    def binop(c):
        a = rd0(c)
        b = rd1(c)
        ci = c.rflags & CF if carry else 0
        r = ((a + b + ci) if add else (a - b - ci)) & m
        if wr is not None:
            wr(c, r)
        c.rflags = (c.rflags & NA) | fl(a, b, r, size, ci)
    return binop


@translates(X.X86_INS_ADD)
def add(d: Decoded):
    return _binop(d, "add")


@translates(X.X86_INS_ADC)
def adc(d: Decoded):
    return _binop(d, "adc")


@translates(X.X86_INS_SUB)
def sub(d: Decoded):
    return _binop(d, "sub")


@translates(X.X86_INS_SBB)
def sbb(d: Decoded):
    return _binop(d, "sbb")


@translates(X.X86_INS_CMP)
def cmp(d: Decoded):
    return _binop(d, "cmp")


def _incdec(d: Decoded, delta: int):
    # INC/DEC leave CF unchanged (SDM vol 2 INC/DEC).
    size = d.size(0)
    m = MASK[size]
    rd, wr = d.reader(0), d.writer(0)
    keep = NA | CF
    fl = F.add if delta == 1 else F.sub

    def incdec(c):
        a = rd(c)
        r = (a + delta) & m
        wr(c, r)
        c.rflags = (c.rflags & keep) | (fl(a, 1, r, size) & ~CF)
    return incdec


@translates(X.X86_INS_INC)
def inc(d: Decoded):
    return _incdec(d, 1)


@translates(X.X86_INS_DEC)
def dec(d: Decoded):
    return _incdec(d, -1)


@translates(X.X86_INS_NEG)
def neg(d: Decoded):
    size = d.size(0)
    m = MASK[size]
    rd, wr = d.reader(0), d.writer(0)

    def neg_(c):
        a = rd(c)
        r = (-a) & m
        wr(c, r)
        # NEG is 0 - a: CF = (a != 0)
        c.rflags = (c.rflags & NA) | F.sub(0, a, r, size)
    return neg_
