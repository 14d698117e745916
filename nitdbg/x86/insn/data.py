"""Data movement: mov, movzx/movsx/movsxd, lea, xchg, push/pop, cmovcc, setcc, bswap, cbw..."""

from __future__ import annotations

import capstone.x86_const as X

from ..decode import Decoded, translates
from ..faults import Fault
from ..flags import COND_FUNCS
from ..operands import mem_offset, reg_writer
from ..regs import CRMAP, DRMAP, MASK, REGMAP, SEGMAP, SHADOW_MOVSS, SIGN, SS
from ..stack import adjust, peek, pop, push, push_frame

M64 = 0xFFFF_FFFF_FFFF_FFFF


@translates(X.X86_INS_MOV, X.X86_INS_MOVABS)
def mov(d: Decoded):
    regs = [o.reg for o in d.ops if o.type == X.X86_OP_REG]
    if any(r in CRMAP or r in DRMAP for r in regs):
        from .system import mov_cr_dr
        return mov_cr_dr(d)
    if any(r in SEGMAP for r in regs):
        from .system import mov_sreg
        return mov_sreg(d)
    if d.is_reg(0) and d.is_imm(1) and d.size(0) in (4, 8) and not REGMAP[d.ops[0].reg][2]:
        idx = REGMAP[d.ops[0].reg][0]
        v = d.imm(1)

        def mov_r_i(c):
            c.regs[idx] = v
        return mov_r_i
    if d.is_reg(0) and d.is_reg(1) and d.size(0) == 8:
        dst, src = REGMAP[d.ops[0].reg][0], REGMAP[d.ops[1].reg][0]

        def mov_r_r(c):
            c.regs[dst] = c.regs[src]
        return mov_r_r
    size = d.size(0)
    # The common memory forms in one closure each: the accessor calls of the general form
    # (reader, writer, then the MMU) are a large part of an interpreted MOV's cost.
    if d.is_mem(0) and d.is_imm(1):
        ea, v = d.ea(0), d.imm(1, size)

        def mov_m_i(c):
            c.wr(ea(c), size, v)
        return mov_m_i
    if d.is_mem(0) and d.is_reg(1) and size == 8:
        ea, src = d.ea(0), REGMAP[d.ops[1].reg][0]

        def mov_m_r(c):
            c.wr(ea(c), 8, c.regs[src])
        return mov_m_r
    if d.is_reg(0) and d.is_mem(1) and size in (4, 8) and not REGMAP[d.ops[0].reg][2]:
        # (a 4-byte load is below 2**32: stored as is, it zero-extends as reg_writer does)
        dst, ea = REGMAP[d.ops[0].reg][0], d.ea(1)

        def mov_r_m(c):
            c.regs[dst] = c.rd(ea(c), size)
        return mov_r_m
    rd, wr = d.reader(1, size), d.writer(0)

    def mov_(c):
        wr(c, rd(c))
    return mov_


@translates(X.X86_INS_MOVZX)
def movzx(d: Decoded):
    rd, wr = d.reader(1), d.writer(0)
    return lambda c: wr(c, rd(c))


@translates(X.X86_INS_MOVSX, X.X86_INS_MOVSXD)
def movsx(d: Decoded):
    rd, wr = d.reader(1), d.writer(0)
    ss, ds = d.size(1), d.size(0)
    sign, full, dm = SIGN[ss], 1 << (8 * ss), MASK[ds]

    def movsx_(c):
        v = rd(c)
        wr(c, (v - full if v & sign else v) & dm)
    return movsx_


@translates(X.X86_INS_LEA)
def lea(d: Decoded):
    """LEA stores the offset only: no segment base, whatever the override; the address is
    computed in the address size (0x67 selects it) and then truncated or zero-extended to the
    operand size (SDM vol 2 LEA, table 3-53)."""
    ea = mem_offset(d.ops[1].mem, d.addr_size, d.next)
    wr, m = d.writer(0), MASK[d.size(0)]
    if d.is_reg(0) and d.size(0) == 8 and d.addr_size == 8:
        dst = REGMAP[d.ops[0].reg][0]

        def lea64(c):
            c.regs[dst] = ea(c)
        return lea64
    return lambda c: wr(c, ea(c) & m)


@translates(X.X86_INS_PUSH)
def push_(d: Decoded):
    """PUSH r/m, imm, sreg in the stack operand size (64-bit mode: 8, or 2 with 0x66).
    An rSP-based source is read before rSP is decremented; an immediate is sign-extended;
    a segment selector is zero-extended (AMD; recent Intel parts write only 16 bits)."""
    size = d.stack_size()
    if d.is_reg(0) and d.ops[0].reg in SEGMAP:
        idx = SEGMAP[d.ops[0].reg]
        return lambda c: push(c, c.seg[idx].sel, size)
    if d.is_imm(0):
        v = d.ops[0].imm & MASK[size]
        return lambda c: push(c, v, size)
    if d.is_reg(0) and size == 8:
        r = REGMAP[d.ops[0].reg][0]
        return lambda c: push(c, c.regs[r], 8)
    rd = d.reader(0, size)
    return lambda c: push(c, rd(c), size)


@translates(X.X86_INS_POP)
def pop_(d: Decoded):
    size = d.stack_size()
    if d.is_reg(0) and d.ops[0].reg in SEGMAP:
        idx = SEGMAP[d.ops[0].reg]
        from .system import load_data_seg

        def pop_sreg(c):
            load_data_seg(c, idx, peek(c, size) & 0xFFFF)
            adjust(c, size)
            if idx == SS:   # POP SS opens the same shadow as MOV SS (SDM 6.8.3)
                c.shadow = SHADOW_MOVSS
                c.attention = True
        return pop_sreg
    if d.is_reg(0):
        wr = d.writer(0)

        def pop_r(c):
            # pop first, then write: POP rSP ends with the popped value in rSP
            v = pop(c, size)
            wr(c, v)
        return pop_r
    wr = d.writer(0)

    def pop_m(c):
        v = peek(c, size)
        # An rSP-based destination address is computed after rSP is incremented (SDM vol 2
        # POP); if the store faults, rSP goes back so the instruction changed nothing.
        adjust(c, size)
        try:
            wr(c, v)
        except Fault:
            adjust(c, -size)
            raise
    return pop_m


@translates(X.X86_INS_XCHG)
def xchg(d: Decoded):
    r0, w0, r1, w1 = d.reader(0), d.writer(0), d.reader(1), d.writer(1)

    mem_first = d.is_mem(0)

    def xchg_(c):
        a, b = r0(c), r1(c)
        if mem_first:   # write memory before the register so a fault changes nothing
            w0(c, b)
            w1(c, a)
        else:
            w1(c, a)
            w0(c, b)
    return xchg_


_CC_NAMES = {"o": 0, "no": 1, "b": 2, "c": 2, "nae": 2, "ae": 3, "nb": 3, "nc": 3, "e": 4,
             "z": 4, "ne": 5, "nz": 5, "be": 6, "na": 6, "a": 7, "nbe": 7, "s": 8, "ns": 9,
             "p": 10, "pe": 10, "np": 11, "po": 11, "l": 12, "nge": 12, "ge": 13, "nl": 13,
             "le": 14, "ng": 14, "g": 15, "nle": 15}


def cc_from_mnemonic(m: str) -> int:
    for pre in ("cmov", "set", "j"):
        if m.startswith(pre):
            return _CC_NAMES[m[len(pre):]]
    raise ValueError(m)


_CMOVS = [getattr(X, f"X86_INS_CMOV{s}") for s in
          ("A", "AE", "B", "BE", "E", "G", "GE", "L", "LE", "NE", "NO", "NP", "NS", "O", "P", "S")]
_SETS = [getattr(X, f"X86_INS_SET{s}") for s in
         ("A", "AE", "B", "BE", "E", "G", "GE", "L", "LE", "NE", "NO", "NP", "NS", "O", "P", "S")]


@translates(*_CMOVS)
def cmov(d: Decoded):
    cond = COND_FUNCS[cc_from_mnemonic(d.mnemonic)]
    rd, wr = d.reader(1), d.writer(0)
    rdd = d.reader(0)

    def cmov_(c):
        v = rd(c)   # the source is read (and may fault) whatever the condition
        # A 32-bit CMOV zero-extends its destination even when the condition is false.
        wr(c, v if cond(c.rflags) else rdd(c))
    return cmov_


@translates(*_SETS)
def setcc(d: Decoded):
    cond = COND_FUNCS[cc_from_mnemonic(d.mnemonic)]
    wr = d.writer(0)
    return lambda c: wr(c, 1 if cond(c.rflags) else 0)


@translates(X.X86_INS_BSWAP)
def bswap(d: Decoded):
    rd, wr, size = d.reader(0), d.writer(0), d.size(0)
    return lambda c: wr(c, int.from_bytes(rd(c).to_bytes(size, "little"), "big"))


def _sext_acc(from_size: int, to_size: int):
    """CBW/CWDE/CDQE: sign-extend the low half of rAX into rAX."""
    sign, full = SIGN[from_size], 1 << (8 * from_size)
    wr = reg_writer({2: X.X86_REG_AX, 4: X.X86_REG_EAX, 8: X.X86_REG_RAX}[to_size])
    m = MASK[from_size]
    tm = MASK[to_size]

    def f(c):
        v = c.regs[0] & m
        wr(c, (v - full if v & sign else v) & tm)
    return f


@translates(X.X86_INS_CBW)
def cbw(d: Decoded):
    return _sext_acc(1, 2)


@translates(X.X86_INS_CWDE)
def cwde(d: Decoded):
    return _sext_acc(2, 4)


@translates(X.X86_INS_CDQE)
def cdqe(d: Decoded):
    return _sext_acc(4, 8)


def _sext_dx(size: int):
    """CWD/CDQ/CQO: rDX = all ones or zeros from the sign of rAX."""
    sign = SIGN[size]
    wr = reg_writer({2: X.X86_REG_DX, 4: X.X86_REG_EDX, 8: X.X86_REG_RDX}[size])
    m = MASK[size]
    return lambda c: wr(c, m if c.regs[0] & sign else 0)


@translates(X.X86_INS_CWD)
def cwd(d: Decoded):
    return _sext_dx(2)


@translates(X.X86_INS_CDQ)
def cdq(d: Decoded):
    return _sext_dx(4)


@translates(X.X86_INS_CQO)
def cqo(d: Decoded):
    return _sext_dx(8)


@translates(X.X86_INS_NOP, X.X86_INS_ENDBR64, X.X86_INS_ENDBR32)
def nop(d: Decoded):
    """NOP, the multi-byte NOP r/m (0F 1F /0: no memory access), 66 90 (xchg %ax,%ax) and,
    without CET, ENDBR64/ENDBR32 (hint NOPs in the 0F 1E space)."""
    def nop_(c):
        pass
    return nop_


@translates(X.X86_INS_PUSHAL, X.X86_INS_PUSHAW)
def pusha(d: Decoded):
    """PUSHA/PUSHAD: EAX ECX EDX EBX, the ESP before the instruction, EBP ESI EDI; #UD in
    64-bit mode. All eight are written before ESP moves, so a fault changes nothing."""
    size = 2 if d.id == X.X86_INS_PUSHAW else 4
    if d.mode == 64:
        def ud(c):
            raise Fault(6)
        return ud
    m = MASK[size]

    def pusha_(c):
        push_frame(c, [c.regs[i] & m for i in range(8)], size)
    return pusha_


@translates(X.X86_INS_POPAL, X.X86_INS_POPAW)
def popa(d: Decoded):
    """POPA/POPAD: pops EDI ESI EBP (ESP skipped) EBX EDX ECX EAX."""
    size = 2 if d.id == X.X86_INS_POPAW else 4
    if d.mode == 64:
        def ud(c):
            raise Fault(6)
        return ud

    def popa_(c):
        vals = [peek(c, size, size * k) for k in range(8)]   # read all before committing
        for k, reg in enumerate((7, 6, 5, None, 3, 2, 1, 0)):
            if reg is not None:
                if size == 4:
                    c.regs[reg] = vals[k]
                else:
                    c.regs[reg] = (c.regs[reg] & ~0xFFFF) | vals[k]
        adjust(c, 8 * size)
    return popa_
