"""Near control transfer: jmp, jcc, call, ret, loop/loope/loopne, jrcxz/jecxz/jcxz, leave, enter.

Far forms (FF /3, FF /5, EA, 9A, CA/CB) live in far.py. In 64-bit mode a near branch to a
non-canonical target raises #GP(0) on the branch itself, with RIP still at the branch and
nothing pushed or popped (SDM vol 2 JMP/CALL/RET "64-bit mode exceptions"; APM vol 2 8.4.2).
"""

from __future__ import annotations

import capstone.x86_const as X

from ..decode import Decoded, translates
from ..faults import Fault
from ..flags import COND_FUNCS
from ..regs import CF, MASK, OF, PF, RBP, RSP, SF, ZF, canonical
from ..stack import peek, push, push_frame, set_sp, stack_lin, stack_mask
from .data import cc_from_mnemonic

M64 = 0xFFFF_FFFF_FFFF_FFFF



def _ipmask(d: Decoded) -> int:
    if d.mode == 64:
        return M64
    return 0xFFFF if (d.mode == 16) != d.opsz else 0xFFFF_FFFF


def _check_target(c, t: int) -> None:
    # A near branch to a non-canonical address faults on the branch itself (#GP(0)).
    if c.mode == 64 and not canonical(t):
        raise Fault(13, 0)


def _gp0(c) -> None:
    raise Fault(13, 0)


def _direct_target(d: Decoded) -> int | None:
    """Target of a relative branch, or None when it is non-canonical (the taken branch
    then raises #GP(0))."""
    t = d.ops[0].imm & _ipmask(d)
    if d.mode == 64 and not canonical(t):
        return None
    return t


def _is_far(d: Decoded) -> bool:
    # FF /3 is CALL FAR m16:xx, FF /5 JMP FAR; capstone reports some of them as plain
    # call/jmp with a memory operand, so look at the ModRM reg field.
    return d.ci.opcode[0] == 0xFF and (d.ci.modrm >> 3) & 7 in (3, 5)


@translates(X.X86_INS_JMP)
def jmp(d: Decoded):
    if _is_far(d):
        from .far import far_jmp_mem
        return far_jmp_mem(d)
    if d.is_imm(0):
        t = _direct_target(d)
        if t is None:
            return _gp0

        def jmp_rel(c):
            c.rip = t
        return jmp_rel
    rd = d.reader(0)
    m = _ipmask(d)

    def jmp_ind(c):
        t = rd(c) & m
        _check_target(c, t)
        c.rip = t
    return jmp_ind


_FAST_CC = {4: ZF, 5: ZF, 8: SF, 9: SF, 2: CF, 3: CF, 0: OF, 1: OF, 10: PF, 11: PF}

_JCCS = [getattr(X, f"X86_INS_J{s}") for s in
         ("A", "AE", "B", "BE", "E", "G", "GE", "L", "LE", "NE", "NO", "NP", "NS", "O", "P", "S")]


@translates(*_JCCS)
def jcc(d: Decoded):
    cc = cc_from_mnemonic(d.mnemonic)
    t = _direct_target(d)
    if t is None:
        cond0 = COND_FUNCS[cc]

        def jcc_gp(c):
            if cond0(c.rflags):
                raise Fault(13, 0)
        return jcc_gp
    if cc in _FAST_CC:
        bit = _FAST_CC[cc]
        if cc & 1:
            def jn(c):
                if not c.rflags & bit:
                    c.rip = t
            return jn

        def j(c):
            if c.rflags & bit:
                c.rip = t
        return j
    cond = COND_FUNCS[cc]

    def jcc_(c):
        if cond(c.rflags):
            c.rip = t
    return jcc_


@translates(X.X86_INS_JRCXZ, X.X86_INS_JECXZ, X.X86_INS_JCXZ)
def jrcxz(d: Decoded):
    """The count register is rCX in the address size (0x67 selects ECX/CX)."""
    t = _direct_target(d)
    m = MASK[d.addr_size]

    def jrcxz_(c):
        if not c.regs[1] & m:
            if t is None:
                raise Fault(13, 0)
            c.rip = t
    return jrcxz_


@translates(X.X86_INS_LOOP, X.X86_INS_LOOPE, X.X86_INS_LOOPNE)
def loop(d: Decoded):
    """rCX (address size) is decremented without touching the flags, then the branch is taken
    when it is non-zero (and, for LOOPE/LOOPNE, ZF=1/ZF=0). A non-canonical target faults
    before rCX changes."""
    t = _direct_target(d)
    m = MASK[d.addr_size]
    need_zf = {X.X86_INS_LOOP: None, X.X86_INS_LOOPE: True, X.X86_INS_LOOPNE: False}[d.id]

    def loop_(c):
        n = (c.regs[1] - 1) & m
        take = n != 0
        if take and need_zf is not None:
            take = bool(c.rflags & ZF) == need_zf
        if take and t is None:
            raise Fault(13, 0)
        c.regs[1] = (c.regs[1] & ~0xFFFF) | n if m == 0xFFFF else n
        if take:
            c.rip = t
    return loop_


@translates(X.X86_INS_CALL)
def call(d: Decoded):
    if _is_far(d):
        from .far import far_call_mem
        return far_call_mem(d)
    size = d.stack_size()
    ret = d.next & MASK[size]
    if d.is_imm(0):
        t = _direct_target(d)
        if t is None:
            return _gp0

        def call_rel(c):
            push(c, ret, size)
            c.rip = t
        return call_rel
    rd = d.reader(0)
    m = _ipmask(d)

    def call_ind(c):
        t = rd(c) & m
        _check_target(c, t)   # before the push: a faulting call leaves RSP alone
        push(c, ret, size)
        c.rip = t
    return call_ind


@translates(X.X86_INS_RET)
def ret(d: Decoded):
    size = d.stack_size()
    extra = d.ops[0].imm & 0xFFFF if d.ops else 0
    if d.mode == 64 and size == 8:
        release = 8 + extra

        def ret64(c):
            sp = c.regs[RSP]
            if not canonical(sp):
                raise Fault(12, 0)
            t = c.rd(sp, 8)
            if not canonical(t):
                raise Fault(13, 0)
            c.regs[RSP] = (sp + release) & M64
            c.rip = t
        return ret64

    def ret_(c):
        t = peek(c, size)
        _check_target(c, t)   # #GP(0) with RSP and RIP at the RET
        sp = (c.regs[RSP] + size + extra) & stack_mask(c)
        set_sp(c, sp)
        c.rip = t
    return ret_


@translates(X.X86_INS_LEAVE)
def leave(d: Decoded):
    """rSP <- rBP in the stack width, then pop rBP in the operand size (SDM vol 2 LEAVE)."""
    size = d.stack_size()
    m = MASK[size]

    def leave_(c):
        sm = stack_mask(c)
        sp = c.regs[RBP] & sm
        v = c.rd(stack_lin(c, sp), size)   # read before committing anything
        set_sp(c, (sp + size) & sm)
        c.regs[RBP] = (c.regs[RBP] & ~m) | v if size == 2 else v
    return leave_


@translates(X.X86_INS_ENTER)
def enter(d: Decoded):
    """ENTER alloc, level (SDM vol 2 ENTER): push rBP; for a nesting level L > 0 copy L-1
    frame pointers from the enclosing frame ([rBP - size*i]) and push the new frame pointer;
    rBP <- frame; rSP -= alloc. Everything is written before rSP/rBP change."""
    size = d.stack_size()
    alloc = d.ops[0].imm & 0xFFFF
    level = d.ops[1].imm & 0x1F
    m = MASK[size]

    def enter_(c):
        sm = stack_mask(c)
        frame = (c.regs[RSP] - size) & sm
        values = [c.regs[RBP] & m]
        bp = c.regs[RBP] & sm
        for _ in range(1, level):
            bp = (bp - size) & sm
            values.append(c.rd(stack_lin(c, bp), size))
        if level:
            values.append(frame & m)
        new_sp = (frame - (len(values) - 1) * size - alloc) & sm
        if c.mode == 64 and not canonical(new_sp):
            raise Fault(12, 0)
        push_frame(c, values, size)
        set_sp(c, new_sp)
        if sm == 0xFFFF:
            c.regs[RBP] = (c.regs[RBP] & ~0xFFFF) | frame
        else:
            c.regs[RBP] = frame
    return enter_
