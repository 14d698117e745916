"""IRET / IRETD / IRETQ (SDM vol 2 IRET, APM vol 3 IRET; SDM vol 3 6.7.1, 6.14.3, 7.3).

The IRET intercept (SVM) is checked before the instruction has any effect, so the layer above
sees the IRET about to execute with the NMI frame still on the stack. After it, NMIs are
unblocked whether or not the IRET then completes (SDM 6.7.1).
"""

from __future__ import annotations

import capstone.x86_const as X

from .. import fastpath
from ..decode import F_LOADS_RF, Decoded, translates
from ..faults import Fault
from ..regs import (
    CS,
    DS,
    EFER_LMA,
    ES,
    FS,
    GS,
    IF,
    IOPL,
    NT,
    RF,
    RFLAGS_WRITABLE,
    RSP,
    SS,
    VM,
    canonical,
)
from ..retire import EV_IRET
from ..segments import ATTR_L, ATTR_S, Segment, decode_descriptor
from ..stack import peek

M64 = 0xFFFF_FFFF_FFFF_FFFF


def _load_seg(c, sel: int, what: str) -> Segment:
    """Read the descriptor for `sel` (GDT or LDT); #GP on a null selector or beyond the table
    limit. Presence is checked by the caller after the type checks (#NP/#SS order)."""
    if sel & 0xFFFC == 0:
        raise Fault(13, 0)
    table = c.ldtr if sel & 4 else c.gdtr
    if (sel & 0xFFF8) + 7 > table.limit:
        raise Fault(13, sel & 0xFFFC)
    seg = decode_descriptor(c.rd_sys(table.base + (sel & 0xFFF8), 8))
    seg.sel = sel
    if what != "raw" and not seg.present and seg.attrib & ATTR_S and (
            what != "cs" or seg.type & 0x8):
        raise Fault(11 if what == "cs" else 12, sel & 0xFFFC)
    return seg


def _new_rflags(c, popped: int, size: int) -> int:
    """Which RFLAGS bits IRET may change: IOPL only at CPL 0, IF only when CPL <= IOPL
    (CPL of the IRET itself, SDM vol 2 IRET)."""
    writable = RFLAGS_WRITABLE
    if c.cpl > 0:
        writable &= ~IOPL
    if c.cpl > (c.rflags & IOPL) >> 12:
        writable &= ~IF
    if size == 2:
        writable &= 0xFFFF
    return ((c.rflags & ~writable) | (popped & writable)) & ~VM | 0x2


def _iret_real(c, size: int) -> None:
    ip = peek(c, size, 0)
    cs = peek(c, size, size) & 0xFFFF
    fl = peek(c, size, 2 * size)
    writable = RFLAGS_WRITABLE if size == 4 else RFLAGS_WRITABLE & 0xFFFF
    sp = c.regs[RSP]
    c.regs[RSP] = (sp & ~0xFFFF) | ((sp + 3 * size) & 0xFFFF)
    c.seg[CS].load(Segment(cs, cs << 4, c.seg[CS].limit, c.seg[CS].attrib))
    c.rip = ip & (0xFFFF_FFFF if size == 4 else 0xFFFF)
    c.rflags = (c.rflags & ~writable) | (fl & writable) | 0x2
    c.update_mode()


def iret_exec(c, size: int, next_rip: int) -> None:
    c.hooks.insn(c, "iret", next_rip)
    if not c.cr0 & 1:
        c.nmi_blocked = False
        _iret_real(c, size)
        c.attention = True
        c.record_event(EV_IRET, 0, None, c.rip, c.rflags)
        return
    if c.rflags & NT:
        if c.efer & EFER_LMA:
            c.nmi_blocked = False
            raise Fault(13, 0)       # no task return in IA-32e mode (SDM vol 2 IRET)
        from .. import tasks
        tasks.iret_task_return(c, next_rip)
        c.record_event(EV_IRET, 0, None, c.rip, c.rflags)
        return
    # An IRET unblocks NMIs even if it then faults (SDM vol 3 6.7.1).
    c.nmi_blocked = False
    if size == 8 and c.mode == 64 and c.fast_events and fastpath.iretq(c):
        return
    new_rip = peek(c, size, 0)
    cs_sel = peek(c, size, size) & 0xFFFF
    popped = peek(c, size, 2 * size)
    rpl = cs_sel & 3
    if cs_sel & 0xFFFC == 0:
        raise Fault(13, 0)
    cs = _load_seg(c, cs_sel, "raw")
    err = cs_sel & 0xFFFC
    # Return CS: a code segment, RPL >= CPL, DPL == RPL (non-conforming) or <= RPL
    # (conforming), present (SDM vol 2 IRET "RETURN-FROM-PROTECTED-MODE").
    if cs.attrib & 0x18 != 0x18 or rpl < c.cpl:
        raise Fault(13, err)
    if (cs.type & 0x4 and cs.dpl > rpl) or (not cs.type & 0x4 and cs.dpl != rpl):
        raise Fault(13, err)
    if not cs.present:
        raise Fault(11, err)
    long64 = c.mode == 64
    # In 64-bit mode IRET always pops SS:RSP, even at the same privilege (SDM 6.14.3).
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
            # A null SS is allowed only when returning to 64-bit code at CPL < 3.
            if not (target64 and rpl < 3):
                raise Fault(13, 0)
            ss = Segment(ss_sel, 0, 0xFFFF_FFFF, 0)
        else:
            ss = _load_seg(c, ss_sel, "raw")
            serr = ss_sel & 0xFFFC
            if (ss_sel & 3 != rpl or ss.attrib & 0x1A != 0x12 or ss.dpl != rpl):
                raise Fault(13, serr)
            if not ss.present:
                raise Fault(12, serr)
    fl = _new_rflags(c, popped, size)
    # commit
    if pop_ss:
        c.regs[RSP] = new_rsp if long64 else new_rsp & 0xFFFF_FFFF
        c.seg[SS].load(ss)
    else:
        c.regs[RSP] = (c.regs[RSP] + 3 * size) & (M64 if long64 else 0xFFFF_FFFF)
    c.seg[CS].load(cs)
    c.rflags = fl
    c.rip = new_rip
    if rpl > c.cpl:
        null_outer_data_segments(c, rpl)
    c.set_cpl(rpl)
    c.update_mode()
    c.attention = True
    c.record_event(EV_IRET, 0, None, new_rip, fl)


def null_outer_data_segments(c, rpl: int) -> None:
    """Returning outward: data segments the new CPL may not use become null (SDM vol 2 IRET
    "RETURN-TO-OUTER-PRIVILEGE-LEVEL")."""
    for i in (ES, DS, FS, GS):
        s = c.seg[i]
        if s.sel & 0xFFFC and s.dpl < rpl and s.type & 0xC != 0xC:
            c.seg[i].load(Segment(0, 0, 0, 0))


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
