"""Bit instructions: bt, bts, btr, btc, bsf, bsr, popcnt, lzcnt, tzcnt (SDM vol 2, APM vol 3).

BT*: CF := the selected bit; the other status flags are left unchanged (ZF is unaffected on
both vendors, OF SF AF PF undefined). With a memory operand and a *register* bit offset the
offset is a signed bit index from the operand's address and may reach outside it ("bit
base", SDM vol 2 BT): the accessed unit is EA + size * floor(offset / width).
"""

from __future__ import annotations

import capstone.x86_const as X

from .. import flags as F
from ..decode import Decoded, Exec, translates
from ..regs import CF, MASK, REGMAP, ZF
from .arith import full_reg, lock_ud

NA = F.NOT_ARITH
NOT_CF = ~CF


def _bt(d: Decoded, op: str) -> Exec:
    ud = lock_ud(d, lockable=op != "bt")
    if ud is not None:
        return ud
    size = d.size(0)
    m, bits = MASK[size], 8 * size
    sign = F.SIGN[size]
    shift = bits.bit_length() - 1          # log2(width)

    def apply(v: int, bit: int) -> int:
        mask = 1 << bit
        if op == "bts":
            return v | mask
        if op == "btr":
            return v & ~mask
        return v ^ mask                    # btc

    if d.is_imm(1):
        # An immediate offset is taken modulo the operand width, memory or register.
        bit = d.ops[1].imm & (bits - 1)
        if op == "bt":
            dst = full_reg(d, 0)
            if dst is not None:
                def bt_ri(c):
                    c.rflags = (c.rflags & NOT_CF) | ((c.regs[dst] >> bit) & 1)
                return bt_ri
            rd = d.reader(0)

            def bt_i(c):
                c.rflags = (c.rflags & NOT_CF) | ((rd(c) >> bit) & 1)
            return bt_i
        rd, wr = d.reader(0), d.writer(0)

        def btx_i(c):
            v = rd(c)
            wr(c, apply(v, bit) & m)
            c.rflags = (c.rflags & NOT_CF) | ((v >> bit) & 1)
        return btx_i

    src = REGMAP[d.ops[1].reg][0]
    if not d.is_mem(0):
        rd = d.reader(0)
        wr = None if op == "bt" else d.writer(0)

        def bt_rr(c):
            v = rd(c)
            bit = c.regs[src] & (bits - 1)
            if wr is not None:
                wr(c, apply(v, bit) & m)
            c.rflags = (c.rflags & NOT_CF) | ((v >> bit) & 1)
        return bt_rr

    # memory operand, register offset: bit base addressing
    ea = d.ea(0)
    wrap = 0xFFFF_FFFF_FFFF_FFFF if d.mode == 64 else 0xFFFF_FFFF
    full = 1 << bits

    def bt_mr(c):
        off = c.regs[src] & m
        if off & sign:
            off -= full
        lin = (ea(c) + (off >> shift) * size) & wrap
        bit = off & (bits - 1)
        v = c.rd(lin, size)
        if op != "bt":
            c.wr(lin, size, apply(v, bit) & m)
        c.rflags = (c.rflags & NOT_CF) | ((v >> bit) & 1)
    return bt_mr


@translates(X.X86_INS_BT)
def bt(d: Decoded):
    return _bt(d, "bt")


@translates(X.X86_INS_BTS)
def bts(d: Decoded):
    return _bt(d, "bts")


@translates(X.X86_INS_BTR)
def btr(d: Decoded):
    return _bt(d, "btr")


@translates(X.X86_INS_BTC)
def btc(d: Decoded):
    return _bt(d, "btc")


def _bitscan(d: Decoded, reverse: bool) -> Exec:
    """BSF/BSR: index of the lowest/highest set bit. A zero source sets ZF and leaves the
    destination unchanged, all 64 bits of it (APM vol 3 BSF/BSR). The other flags are
    undefined; as QEMU, they are those of a logical op on the source (CF=OF=AF=0)."""
    ud = lock_ud(d, lockable=False)
    if ud is not None:
        return ud
    size = d.size(0)
    rd, wr = d.reader(1), d.writer(0)
    fl = F.SZP[size]

    def bitscan(c):
        v = rd(c)
        if v:
            wr(c, v.bit_length() - 1 if reverse else (v & -v).bit_length() - 1)
        c.rflags = (c.rflags & NA) | fl(v)
    return bitscan


@translates(X.X86_INS_BSF)
def bsf(d: Decoded):
    return _bitscan(d, False)


@translates(X.X86_INS_BSR)
def bsr(d: Decoded):
    return _bitscan(d, True)


@translates(X.X86_INS_POPCNT)
def popcnt(d: Decoded):
    """ZF := (source = 0); CF OF SF AF PF := 0."""
    ud = lock_ud(d, lockable=False)
    if ud is not None:
        return ud
    rd, wr = d.reader(1), d.writer(0)

    def popcnt_(c):
        v = rd(c)
        wr(c, v.bit_count())
        c.rflags = (c.rflags & NA) | (0 if v else ZF)
    return popcnt_


def _count_zeros(d: Decoded, leading: bool) -> Exec:
    """LZCNT/TZCNT: CF := (source = 0), ZF := (result = 0); the rest undefined, 0 as in QEMU
    (SF would be the result's MSB, never set). A zero source gives the operand width."""
    ud = lock_ud(d, lockable=False)
    if ud is not None:
        return ud
    bits = 8 * d.size(0)
    rd, wr = d.reader(1), d.writer(0)

    def count_(c):
        v = rd(c)
        if leading:
            r = bits - v.bit_length()
        else:
            r = (v & -v).bit_length() - 1 if v else bits
        wr(c, r)
        c.rflags = (c.rflags & NA) | (0 if v else CF) | (0 if r else ZF)
    return count_


@translates(X.X86_INS_LZCNT)
def lzcnt(d: Decoded):
    return _count_zeros(d, True)


@translates(X.X86_INS_TZCNT)
def tzcnt(d: Decoded):
    return _count_zeros(d, False)
