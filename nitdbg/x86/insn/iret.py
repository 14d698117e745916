"""IRET / IRETD / IRETQ (SDM vol 2 IRET, APM vol 3 IRET; SDM vol 3 6.7.1, 6.14.3, 7.3).

The IRET intercept (SVM) is checked before the instruction has any effect, so the layer above
sees the IRET about to execute with the NMI frame still on the stack.
"""

from __future__ import annotations

import capstone.x86_const as X

from ..decode import F_LOADS_RF, Decoded, translates
from ..faults import Fault
from ..interrupts import canonical
from ..regs import CS, IF, IOPL, NT, RF, RFLAGS_WRITABLE, RSP, SS, VM
from ..segments import ATTR_L, Segment, decode_descriptor
from ..stack import peek

M64 = 0xFFFF_FFFF_FFFF_FFFF


def _load_seg(c, sel: int, what: str) -> Segment:
    if sel & 0xFFFC == 0:
        raise Fault(13, 0)
    table = c.ldtr if sel & 4 else c.gdtr
    if (sel & 0xFFF8) + 7 > table.limit:
        raise Fault(13, sel & 0xFFFC)
    seg = decode_descriptor(c.rd_sys(table.base + (sel & 0xFFF8), 8))
    if not seg.present:
        raise Fault(11 if what == "cs" else 12, sel & 0xFFFC)
    seg.sel = sel
    return seg


def _new_rflags(c, popped: int, size: int, new_cpl: int) -> int:
    """Which RFLAGS bits IRET may change: IOPL only at CPL 0, IF only when CPL <= IOPL."""
    writable = RFLAGS_WRITABLE
    if c.cpl > 0:
        writable &= ~IOPL
    if c.cpl > (c.rflags & IOPL) >> 12:
        writable &= ~IF
    if size == 2:
        writable &= 0xFFFF
    return ((c.rflags & ~writable) | (popped & writable)) & ~VM | 0x2


def iret_exec(c, size: int, next_rip: int) -> None:
    c.hooks.insn(c, "iret", next_rip)
    # An IRET unblocks NMIs even if it then faults (SDM vol 3 6.7.1).
    c.nmi_blocked = False
    if c.mode != 64 and c.rflags & NT:
        from .. import tasks
        tasks.iret_task_return(c)
        return
    new_rip = peek(c, size, 0)
    cs_sel = peek(c, size, size) & 0xFFFF
    popped = peek(c, size, 2 * size)
    rpl = cs_sel & 3
    if rpl < c.cpl:
        raise Fault(13, cs_sel & 0xFFFC)
    cs = _load_seg(c, cs_sel, "cs")
    if not cs.attrib & 0x18 == 0x18:
        raise Fault(13, cs_sel & 0xFFFC)
    long64 = c.mode == 64
    pop_ss = long64 or rpl > c.cpl
    if pop_ss:
        new_rsp = peek(c, size, 3 * size)
        ss_sel = peek(c, size, 4 * size) & 0xFFFF
    target64 = long64 and bool(cs.attrib & ATTR_L)
    if target64:
        if not canonical(new_rip):
            # AMD APM vol 3 IRET: a non-canonical return RIP in long mode is #GP(0) on the
            # IRET itself, before any state changes.
            raise Fault(13, 0)
    else:
        new_rip &= 0xFFFF_FFFF if size >= 4 else 0xFFFF
    ss = None
    if pop_ss:
        if ss_sel & 0xFFFC == 0:
            if not (long64 and rpl < 3):
                raise Fault(13, 0)
            ss = Segment(ss_sel, 0, 0xFFFF_FFFF, 0)
        else:
            ss = _load_seg(c, ss_sel, "ss")
    fl = _new_rflags(c, popped, size, rpl)
    # commit
    if pop_ss:
        c.regs[RSP] = new_rsp if long64 else new_rsp & 0xFFFF_FFFF
        c.seg[SS].load(ss)
    else:
        c.regs[RSP] = (c.regs[RSP] + 3 * size) & (M64 if long64 else 0xFFFF_FFFF)
    c.seg[CS].load(cs)
    c.rflags = fl
    c.rip = new_rip
    c.set_cpl(rpl)
    c.update_mode()
    c.attention = True


@translates(X.X86_INS_IRET, X.X86_INS_IRETD, X.X86_INS_IRETQ)
def iret(d: Decoded):
    size = {X.X86_INS_IRET: 2, X.X86_INS_IRETD: 4, X.X86_INS_IRETQ: 8}[d.id]
    if d.mode == 16 and d.id == X.X86_INS_IRET:
        size = 2
    d.flags |= F_LOADS_RF   # RF popped by IRET survives the next instruction (APM 13.1.3.1)

    nxt = d.next

    def iret_(c):
        iret_exec(c, size, nxt)
    return iret_


__all__ = ["iret", "iret_exec", "RF"]
