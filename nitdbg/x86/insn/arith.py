"""Integer arithmetic: add, adc, sub, sbb, cmp, inc, dec, neg, xadd, cmpxchg, mul, imul, div,
idiv (SDM vol 2, APM vol 3).

Register-register and register-immediate forms with a full-width (32/64-bit) destination get
closures that index `c.regs` directly; everything else goes through operand readers/writers.
"""

from __future__ import annotations

import capstone.x86_const as X

from .. import flags as F
from ..decode import Decoded, Exec, translates
from ..faults import Fault
from ..regs import CF, MASK, OF, RAX, RDX, REGMAP

NA = F.NOT_ARITH
M64 = 0xFFFF_FFFF_FFFF_FFFF


def _ud(c) -> None:
    raise Fault(6)


def lock_ud(d: Decoded, lockable: bool = True) -> Exec | None:
    """LOCK is #UD unless the instruction is lockable and its destination is memory
    (SDM vol 2 LOCK, APM vol 3 1.2.5). Returns the #UD closure, or None if LOCK is fine."""
    if d.lock and not (lockable and d.ops and d.is_mem(0)):
        return _ud
    return None


def full_reg(d: Decoded, i: int) -> int | None:
    """GPR index of operand i if it is a 32- or 64-bit register (writes need no merging:
    a 32-bit result already masked is the zero-extended 64-bit value), else None."""
    op = d.ops[i]
    if op.type != X.X86_OP_REG or op.size not in (4, 8):
        return None
    return REGMAP[op.reg][0]


# ----------------------------------------------------------------------------- add/sub family

def _binop(d: Decoded, op: str) -> Exec:
    ud = lock_ud(d, lockable=op != "cmp")
    if ud is not None:
        return ud
    size = d.size(0)
    m = MASK[size]
    carry = op in ("adc", "sbb")
    is_add = op in ("add", "adc")
    fl = F.ADD[size] if is_add else F.SUB[size]
    write = op != "cmp"
    dst = full_reg(d, 0)
    if dst is not None and not carry and not d.is_mem(1):
        fast = _binop_fast(d, op, dst, size, fl)
        if fast is not None:
            return fast
    rd0, rd1 = d.reader(0), d.reader(1, size)
    wr = d.writer(0) if write else None

    if carry:
        def binop_c(c):
            a = rd0(c)
            b = rd1(c)
            ci = c.rflags & CF
            r = ((a + b + ci) if is_add else (a - b - ci)) & m
            if wr is not None:
                wr(c, r)
            c.rflags = (c.rflags & NA) | fl(a, b, r, ci)
        return binop_c

    if is_add:
        def add_(c):
            a = rd0(c)
            b = rd1(c)
            r = (a + b) & m
            wr(c, r)
            c.rflags = (c.rflags & NA) | fl(a, b, r, 0)
        return add_

    def sub_(c):
        a = rd0(c)
        b = rd1(c)
        r = (a - b) & m
        if wr is not None:
            wr(c, r)
        c.rflags = (c.rflags & NA) | fl(a, b, r, 0)
    return sub_


def _binop_fast(d: Decoded, op: str, dst: int, size: int, fl) -> Exec | None:
    m = MASK[size]
    if d.is_imm(1):
        b = d.imm(1, size)
        if op == "add":
            def add_ri(c):
                regs = c.regs
                a = regs[dst] & m
                r = (a + b) & m
                regs[dst] = r
                c.rflags = (c.rflags & NA) | fl(a, b, r, 0)
            return add_ri
        if op == "sub":
            def sub_ri(c):
                regs = c.regs
                a = regs[dst] & m
                r = (a - b) & m
                regs[dst] = r
                c.rflags = (c.rflags & NA) | fl(a, b, r, 0)
            return sub_ri

        def cmp_ri(c):
            a = c.regs[dst] & m
            c.rflags = (c.rflags & NA) | fl(a, b, (a - b) & m, 0)
        return cmp_ri
    src = full_reg(d, 1)
    if src is None:
        return None
    if op == "add":
        def add_rr(c):
            regs = c.regs
            a = regs[dst] & m
            b = regs[src] & m
            r = (a + b) & m
            regs[dst] = r
            c.rflags = (c.rflags & NA) | fl(a, b, r, 0)
        return add_rr
    if op == "sub":
        def sub_rr(c):
            regs = c.regs
            a = regs[dst] & m
            b = regs[src] & m
            r = (a - b) & m
            regs[dst] = r
            c.rflags = (c.rflags & NA) | fl(a, b, r, 0)
        return sub_rr

    def cmp_rr(c):
        regs = c.regs
        a = regs[dst] & m
        b = regs[src] & m
        c.rflags = (c.rflags & NA) | fl(a, b, (a - b) & m, 0)
    return cmp_rr


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


def _incdec(d: Decoded, delta: int) -> Exec:
    # INC/DEC leave CF unchanged (SDM vol 2 INC/DEC): flags of a +/- 1 with CF taken out.
    ud = lock_ud(d)
    if ud is not None:
        return ud
    size = d.size(0)
    m = MASK[size]
    keep = NA | CF
    fl = F.ADD[size] if delta == 1 else F.SUB[size]
    no_cf = ~CF
    dst = full_reg(d, 0)
    if dst is not None:
        def incdec_r(c):
            regs = c.regs
            a = regs[dst] & m
            r = (a + delta) & m
            regs[dst] = r
            c.rflags = (c.rflags & keep) | (fl(a, 1, r, 0) & no_cf)
        return incdec_r
    rd, wr = d.reader(0), d.writer(0)

    def incdec(c):
        a = rd(c)
        r = (a + delta) & m
        wr(c, r)
        c.rflags = (c.rflags & keep) | (fl(a, 1, r, 0) & no_cf)
    return incdec


@translates(X.X86_INS_INC)
def inc(d: Decoded):
    return _incdec(d, 1)


@translates(X.X86_INS_DEC)
def dec(d: Decoded):
    return _incdec(d, -1)


@translates(X.X86_INS_NEG)
def neg(d: Decoded):
    ud = lock_ud(d)
    if ud is not None:
        return ud
    size = d.size(0)
    m = MASK[size]
    fl = F.SUB[size]
    rd, wr = d.reader(0), d.writer(0)

    def neg_(c):
        a = rd(c)
        r = (-a) & m
        wr(c, r)
        # NEG is 0 - a: CF = (a != 0), AF/OF/SZP as that subtraction (SDM vol 2 NEG)
        c.rflags = (c.rflags & NA) | fl(0, a, r, 0)
    return neg_


@translates(X.X86_INS_XADD)
def xadd(d: Decoded):
    """TEMP := SRC + DEST; SRC := DEST; DEST := TEMP (SDM vol 2 XADD); flags as ADD."""
    ud = lock_ud(d)
    if ud is not None:
        return ud
    size = d.size(0)
    m = MASK[size]
    fl = F.ADD[size]
    rd0, rd1 = d.reader(0), d.reader(1)
    wr0, wr1 = d.writer(0), d.writer(1)
    mem = d.is_mem(0)

    def xadd_(c):
        a = rd0(c)
        b = rd1(c)
        r = (a + b) & m
        if mem:
            wr0(c, r)           # the store may fault: nothing else is written before it
            wr1(c, a)
        else:
            wr1(c, a)           # xadd reg, reg with the same register keeps the sum
            wr0(c, r)
        c.rflags = (c.rflags & NA) | fl(a, b, r, 0)
    return xadd_


@translates(X.X86_INS_CMPXCHG)
def cmpxchg(d: Decoded):
    """Compare the accumulator with DEST (flags as CMP acc, DEST); equal: DEST := SRC,
    else the accumulator := DEST. A memory DEST is written either way, with its own value
    on a mismatch (SDM vol 2 CMPXCHG: the processor never does a locked read without a
    write); a register DEST and the accumulator are written only when they change."""
    ud = lock_ud(d)
    if ud is not None:
        return ud
    size = d.size(0)
    m = MASK[size]
    fl = F.SUB[size]
    rd0, rd1, wr0 = d.reader(0), d.reader(1), d.writer(0)
    mem = d.is_mem(0)
    acc_keep = M64 & ~m if size in (1, 2) else 0

    def cmpxchg_(c):
        dest = rd0(c)
        acc = c.regs[RAX] & m
        if acc == dest:
            wr0(c, rd1(c))
        else:
            if mem:
                wr0(c, dest)
            c.regs[RAX] = (c.regs[RAX] & acc_keep) | dest
        c.rflags = (c.rflags & NA) | fl(acc, dest, (acc - dest) & m, 0)
    return cmpxchg_


# ----------------------------------------------------------------------------- mul/div

def _signed(v: int, size: int) -> int:
    return v - (1 << (8 * size)) if v & F.SIGN[size] else v


def _store_pair(c, size: int, lo: int, hi: int) -> None:
    """Write a double-width result: AX for byte operands, else rDX:rAX (32-bit halves
    zero-extend in 64-bit mode)."""
    regs = c.regs
    if size == 1:
        regs[RAX] = (regs[RAX] & ~0xFFFF) | (hi << 8) | lo
    elif size == 2:
        regs[RAX] = (regs[RAX] & ~0xFFFF) | lo
        regs[RDX] = (regs[RDX] & ~0xFFFF) | hi
    else:
        regs[RAX] = lo
        regs[RDX] = hi


def _dividend(c, size: int) -> int:
    regs = c.regs
    if size == 1:
        return regs[RAX] & 0xFFFF
    m = MASK[size]
    return ((regs[RDX] & m) << (8 * size)) | (regs[RAX] & m)


@translates(X.X86_INS_MUL)
def mul(d: Decoded):
    ud = lock_ud(d, lockable=False)
    if ud is not None:
        return ud
    size = d.size(0)
    m, bits = MASK[size], 8 * size
    rd = d.reader(0)

    def mul_(c):
        p = (c.regs[RAX] & m) * rd(c)
        lo, hi = p & m, p >> bits
        _store_pair(c, size, lo, hi)
        c.rflags = (c.rflags & NA) | F.mul(lo, hi != 0, size)
    return mul_


@translates(X.X86_INS_IMUL)
def imul(d: Decoded):
    ud = lock_ud(d, lockable=False)
    if ud is not None:
        return ud
    size = d.size(0)
    m, bits = MASK[size], 8 * size
    lo_lim, hi_lim = -(1 << (bits - 1)), 1 << (bits - 1)
    if len(d.ops) == 1:
        rd = d.reader(0)

        def imul1(c):
            p = _signed(c.regs[RAX] & m, size) * _signed(rd(c), size)
            lo, hi = p & m, (p >> bits) & m
            _store_pair(c, size, lo, hi)
            c.rflags = (c.rflags & NA) | F.mul(lo, not lo_lim <= p < hi_lim, size)
        return imul1
    # imul r, r/m (dest *= src) and imul r, r/m, imm (dest = src * imm): the result is
    # truncated to the destination; CF = OF = the signed product did not fit.
    if len(d.ops) == 2:
        rd_a, rd_b = d.reader(0), d.reader(1)
    else:
        rd_a, rd_b = d.reader(1), d.reader(2, size)
    wr = d.writer(0)
    szp = F.SZP[size]
    of = CF | OF

    def imul_n(c):
        p = _signed(rd_a(c), size) * _signed(rd_b(c), size)
        r = p & m
        wr(c, r)
        c.rflags = (c.rflags & NA) | szp(r) | (0 if lo_lim <= p < hi_lim else of)
    return imul_n


@translates(X.X86_INS_DIV)
def div(d: Decoded):
    """Unsigned divide of AX / rDX:rAX; #DE on a zero divisor or a quotient that does not
    fit, raised before anything is written. Flags are undefined (AMD, Intel); QEMU leaves
    them unchanged and so do we."""
    ud = lock_ud(d, lockable=False)
    if ud is not None:
        return ud
    size = d.size(0)
    m = MASK[size]
    rd = d.reader(0)

    def div_(c):
        den = rd(c)
        if den == 0:
            raise Fault(0)
        q, r = divmod(_dividend(c, size), den)
        if q > m:
            raise Fault(0)
        _store_pair(c, size, q, r)
    return div_


@translates(X.X86_INS_IDIV)
def idiv(d: Decoded):
    """Signed divide, quotient truncated toward zero, remainder with the dividend's sign;
    #DE on zero or a quotient outside the signed range (SDM vol 2 IDIV)."""
    ud = lock_ud(d, lockable=False)
    if ud is not None:
        return ud
    size = d.size(0)
    m, bits = MASK[size], 8 * size
    lo_lim, hi_lim = -(1 << (bits - 1)), 1 << (bits - 1)
    rd = d.reader(0)

    def idiv_(c):
        den = _signed(rd(c), size)
        if den == 0:
            raise Fault(0)
        num = _dividend(c, size)
        if num >> (2 * bits - 1):
            num -= 1 << (2 * bits)
        q = abs(num) // abs(den)
        if (num < 0) != (den < 0):
            q = -q
        if not lo_lim <= q < hi_lim:
            raise Fault(0)
        r = num - q * den
        _store_pair(c, size, q & m, r & m)
    return idiv_
