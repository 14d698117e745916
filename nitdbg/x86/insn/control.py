"""Near control transfer: jmp, jcc, call, ret, loop, jrcxz, leave, enter."""

from __future__ import annotations

import capstone.x86_const as X

from ..decode import Decoded, translates
from ..faults import Fault
from ..flags import COND_FUNCS
from ..regs import CF, MASK, OF, PF, RBP, RSP, SF, ZF
from ..stack import adjust, peek, pop, push
from .data import cc_from_mnemonic

M64 = 0xFFFF_FFFF_FFFF_FFFF


def _canon(a: int) -> bool:
    return a <= 0x0000_7FFF_FFFF_FFFF or a >= 0xFFFF_8000_0000_0000


def _ipmask(d: Decoded) -> int:
    if d.mode == 64:
        return M64
    return 0xFFFF if (d.mode == 16) != d.opsz else 0xFFFF_FFFF


def _check_target(c, t: int) -> None:
    # A near branch to a non-canonical address faults on the branch itself (#GP(0)).
    if c.mode == 64 and not _canon(t):
        raise Fault(13, 0)


@translates(X.X86_INS_JMP)
def jmp(d: Decoded):
    if d.is_imm(0):
        t = d.ops[0].imm & _ipmask(d)

        def jmp_rel(c):
            c.rip = t
        return jmp_rel
    if d.is_mem(0) and d.ops[0].size > (8 if d.mode == 64 else 4):
        from .far import far_jmp_mem
        return far_jmp_mem(d)
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
    t = d.ops[0].imm & _ipmask(d)
    cc = cc_from_mnemonic(d.mnemonic)
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
    t = d.ops[0].imm & _ipmask(d)
    m = MASK[d.addr_size]

    def jrcxz_(c):
        if not c.regs[1] & m:
            c.rip = t
    return jrcxz_


@translates(X.X86_INS_LOOP, X.X86_INS_LOOPE, X.X86_INS_LOOPNE)
def loop(d: Decoded):
    t = d.ops[0].imm & _ipmask(d)
    m = MASK[d.addr_size]
    kind = d.id

    def loop_(c):
        n = (c.regs[1] - 1) & m
        c.regs[1] = (c.regs[1] & ~0xFFFF) | n if m == 0xFFFF else n
        take = n != 0
        if kind == X.X86_INS_LOOPE:
            take = take and bool(c.rflags & ZF)
        elif kind == X.X86_INS_LOOPNE:
            take = take and not c.rflags & ZF
        if take:
            c.rip = t
    return loop_


@translates(X.X86_INS_CALL)
def call(d: Decoded):
    size = d.stack_size()
    ret = d.next & MASK[size]
    if d.is_imm(0):
        t = d.ops[0].imm & _ipmask(d)

        def call_rel(c):
            push(c, ret, size)
            c.rip = t
        return call_rel
    if d.is_mem(0) and d.ops[0].size > (8 if d.mode == 64 else 4):
        from .far import far_call_mem
        return far_call_mem(d)
    rd = d.reader(0)
    m = _ipmask(d)

    def call_ind(c):
        t = rd(c) & m
        _check_target(c, t)
        push(c, ret, size)
        c.rip = t
    return call_ind


@translates(X.X86_INS_RET)
def ret(d: Decoded):
    size = d.stack_size()
    extra = d.ops[0].imm & 0xFFFF if d.ops else 0

    def ret_(c):
        t = peek(c, size)
        _check_target(c, t)
        adjust(c, size + extra)
        c.rip = t
    return ret_


@translates(X.X86_INS_LEAVE)
def leave(d: Decoded):
    size = d.stack_size()
    m = MASK[size]

    def leave_(c):
        # RSP = RBP, then pop RBP; read before committing so a fault changes nothing
        saved = c.regs[RSP]
        c.regs[RSP] = c.regs[RBP] if size == 8 else c.regs[RBP] & 0xFFFF_FFFF
        try:
            v = pop(c, size)
        except Fault:
            c.regs[RSP] = saved
            raise
        c.regs[RBP] = v if size == 8 else (c.regs[RBP] & ~m) | v
    return leave_


@translates(X.X86_INS_ENTER)
def enter(d: Decoded):
    size = d.stack_size()
    alloc = d.ops[0].imm & 0xFFFF
    level = d.ops[1].imm & 0x1F

    def enter_(c):
        saved = (c.regs[RSP], c.regs[RBP])
        try:
            push(c, c.regs[RBP] & MASK[size], size)
            frame = c.regs[RSP]
            bp = c.regs[RBP]
            for _ in range(1, level):
                bp = (bp - size) & M64
                push(c, c.rd(bp, size), size)
            if level:
                push(c, frame & MASK[size], size)
            c.regs[RBP] = frame
            adjust(c, -alloc)
        except Fault:
            c.regs[RSP], c.regs[RBP] = saved
            raise
    return enter_
