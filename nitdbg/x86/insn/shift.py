"""Shifts and rotates: shl/sal, shr, sar, rol, ror, rcl, rcr, shld, shrd (SDM vol 2 SAL/SAR/
SHL/SHR, RCL/RCR/ROL/ROR, SHLD, SHRD; APM vol 3).

The count is masked to 5 bits (6 with a 64-bit operand); a masked count of 0 changes no flags
(the destination is still written back, so a 32-bit register is zero-extended). OF is defined
for a count of 1; for larger counts it follows QEMU TCG (see nitdbg.x86.flags). RCL/RCR of 8-
and 16-bit operands rotate through CF modulo 9 / 17, and a count that is a multiple of that
changes nothing, flags included.
"""

from __future__ import annotations

import capstone.x86_const as X

from .. import flags as F
from ..decode import Decoded, Exec, translates
from ..regs import CF, MASK, OF, REGMAP
from .arith import full_reg, lock_ud

NA = F.NOT_ARITH
CF_OF = CF | OF
KEEP_CF_OF = ~CF_OF


def _count(d: Decoded, i: int):
    """(constant count, None) for an immediate count, (None, reader) for CL."""
    cmask = 0x3F if d.size(0) == 8 else 0x1F
    if d.is_imm(i):
        return d.ops[i].imm & cmask, None
    idx = REGMAP[d.ops[i].reg][0]
    return None, lambda c: c.regs[idx] & cmask


def _shift(d: Decoded, kind: str) -> Exec:
    ud = lock_ud(d, lockable=False)
    if ud is not None:
        return ud
    size = d.size(0)
    m, bits = MASK[size], 8 * size
    sign, full = F.SIGN[size], 1 << bits
    const, rd_n = _count(d, 1) if len(d.ops) > 1 else (1, None)
    fl = F.SHL[size] if kind == "shl" else F.SHR[size]

    def compute(a: int, n: int) -> tuple[int, int]:
        # returns (result, t) with t the source shifted by n - 1 (the flags' input)
        if kind == "shl":
            t = a << (n - 1)
            return (t << 1) & m, t
        if kind == "shr":
            t = a >> (n - 1)
            return t >> 1, t
        s = a - full if a & sign else a
        t = s >> (n - 1)
        return (t >> 1) & m, t & m

    dst = full_reg(d, 0)
    if const is not None and const and dst is not None:
        n = const
        sh = n - 1
        # register destination, immediate count: the common compiled forms
        if kind == "shl":
            def shl_ri(c):
                regs = c.regs
                t = (regs[dst] & m) << sh
                r = (t << 1) & m
                regs[dst] = r
                c.rflags = (c.rflags & NA) | fl(t, r)
            return shl_ri
        if kind == "shr":
            def shr_ri(c):
                regs = c.regs
                t = (regs[dst] & m) >> sh
                r = t >> 1
                regs[dst] = r
                c.rflags = (c.rflags & NA) | fl(t, r)
            return shr_ri

        def sar_ri(c):
            regs = c.regs
            a = regs[dst] & m
            r, t = compute(a, n)
            regs[dst] = r
            c.rflags = (c.rflags & NA) | fl(t, r)
        return sar_ri

    rd, wr = d.reader(0), d.writer(0)

    def shift_(c):
        a = rd(c)
        n = const if rd_n is None else rd_n(c)
        if n == 0:
            wr(c, a)
            return
        r, t = compute(a, n)
        wr(c, r)
        c.rflags = (c.rflags & NA) | fl(t, r)
    return shift_


@translates(X.X86_INS_SHL, X.X86_INS_SAL)
def shl(d: Decoded):
    return _shift(d, "shl")


@translates(X.X86_INS_SHR)
def shr(d: Decoded):
    return _shift(d, "shr")


@translates(X.X86_INS_SAR)
def sar(d: Decoded):
    return _shift(d, "sar")


def _rotate(d: Decoded, kind: str) -> Exec:
    """ROL/ROR change only CF and OF; RCL/RCR rotate through CF (an operand one bit wider).
    CF/OF are set whenever the masked count is nonzero, even if the rotation modulo the
    width is the identity (SDM pseudo-code: flags use COUNT AND COUNTMASK)."""
    ud = lock_ud(d, lockable=False)
    if ud is not None:
        return ud
    size = d.size(0)
    m, bits = MASK[size], 8 * size
    top = bits - 1
    const, rd_n = _count(d, 1) if len(d.ops) > 1 else (1, None)
    rd, wr = d.reader(0), d.writer(0)
    wide = bits + 1
    wm = (1 << wide) - 1

    if kind in ("rol", "ror"):
        left = kind == "rol"

        def rot(c):
            a = rd(c)
            n = const if rd_n is None else rd_n(c)
            if n == 0:
                wr(c, a)
                return
            k = n % bits
            if left:
                r = ((a << k) | (a >> (bits - k))) & m
                # CF := LSB(result); OF := MSB(result) XOR CF
                f = (r & 1) | ((((r >> top) ^ r) & 1) << 11)
            else:
                r = ((a >> k) | (a << (bits - k))) & m
                # CF := MSB(result); OF := MSB(result) XOR MSB-1(result)
                f = ((r >> top) & 1) | ((((r >> top) ^ (r >> (top - 1))) & 1) << 11)
            wr(c, r)
            c.rflags = (c.rflags & KEEP_CF_OF) | f
        return rot

    left = kind == "rcl"
    # 8/16-bit operands rotate through CF modulo 9/17 (SDM RCL: tempCOUNT); 32/64 counts are
    # already below the width after masking.
    modulo = wide if size in (1, 2) else 0

    def rotc(c):
        a = rd(c)
        n = const if rd_n is None else rd_n(c)
        if modulo:
            n %= modulo
        if n == 0:
            wr(c, a)
            return
        v = ((c.rflags & CF) << bits) | a
        if left:
            v = ((v << n) | (v >> (wide - n))) & wm
        else:
            v = ((v >> n) | (v << (wide - n))) & wm
        r = v & m
        wr(c, r)
        # OF := MSB(source) XOR MSB(result): the SDM's count-1 rule, QEMU's for every count
        c.rflags = (c.rflags & KEEP_CF_OF) | (v >> bits) | ((((a ^ r) >> top) & 1) << 11)
    return rotc


@translates(X.X86_INS_ROL)
def rol(d: Decoded):
    return _rotate(d, "rol")


@translates(X.X86_INS_ROR)
def ror(d: Decoded):
    return _rotate(d, "ror")


@translates(X.X86_INS_RCL)
def rcl(d: Decoded):
    return _rotate(d, "rcl")


@translates(X.X86_INS_RCR)
def rcr(d: Decoded):
    return _rotate(d, "rcr")


def _shiftd(d: Decoded, left: bool) -> Exec:
    """SHLD/SHRD dest, src, count: shift dest, filling from src. For a 16-bit operand and a
    count above 16 the result is undefined; we do what QEMU (and Intel) do and shift the
    48-bit dest:src:dest. Flags as SHL/SHR with the last bit shifted out in CF."""
    ud = lock_ud(d, lockable=False)
    if ud is not None:
        return ud
    size = d.size(0)
    m, bits = MASK[size], 8 * size
    const, rd_n = _count(d, 2)
    rd0, rd1, wr = d.reader(0), d.reader(1), d.writer(0)
    fl = F.SHL[size] if left else F.SHR[size]

    def shiftd(c):
        a = rd0(c)
        b = rd1(c)
        n = const if rd_n is None else rd_n(c)
        if n == 0:
            wr(c, a)
            return
        if size == 2:
            # 48 bits: dest (high), src, dest (low)
            v = (a << 32) | (b << 16) | a
            if left:
                t = (v << (n - 1)) >> 32
                r = ((v << n) >> 32) & m
            else:
                t = v >> (n - 1)
                r = (t >> 1) & m
        elif left:
            v = (a << bits) | b
            t = (v << (n - 1)) >> bits
            r = ((v << n) >> bits) & m
        else:
            v = (b << bits) | a
            r = (v >> n) & m
            # QEMU forms t from the 128-bit pair for 32 bits but from dest alone for 64:
            # CF is the same either way, OF (undefined for count > 1) is not.
            t = (a if size == 8 else v) >> (n - 1)
        wr(c, r)
        c.rflags = (c.rflags & NA) | fl(t, r)
    return shiftd


@translates(X.X86_INS_SHLD)
def shld(d: Decoded):
    return _shiftd(d, True)


@translates(X.X86_INS_SHRD)
def shrd(d: Decoded):
    return _shiftd(d, False)
