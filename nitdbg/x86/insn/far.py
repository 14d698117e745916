"""Far control transfer in real, protected and long mode: ljmp, lcall, lret (SDM vol 2 JMP,
CALL, RET "far" pseudo-code; APM vol 3 "JMP (Far)", "CALL (Far)", "RET (Far)"; SDM vol 3 5.8).

Transfers through code-segment descriptors are modelled here: conforming and non-conforming
code at the same privilege for jmp/call, and same or outer privilege for ret. A far jmp/call
to a TSS or task gate in legacy mode is a task switch (tasks.far_transfer). Call gates, and
any system descriptor in long mode, raise #GP(selector): nitdbg's guests do not use them.

Loading a code segment with L=1 while EFER.LMA=1 enters 64-bit mode; that is how a 32-bit
guest that has just turned on paging with EFER.LME=1 (long mode active, compatibility mode)
reaches its 64-bit code (SDM vol 3 10.8.5, APM vol 2 14.6.1).

Operand sizes: far jmp/call through memory read a 16:16 or 16:32 pointer. AMD ignores REX.W
there (APM vol 3 lists only mem16:16 and mem16:32; the offset is "z-sized") whereas Intel
reads a 16:64 pointer; nitdbg models AMD. The pushes of a far call and the pops of a far
ret use the operand size (REX.W makes them 8 bytes: lretq).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import capstone.x86_const as X

from ..decode import Decoded, translates
from ..faults import Fault
from ..regs import CS, DS, EFER_LMA, ES, FS, GS, MASK, RSP, SS, canonical
from ..segments import ATTR_DB, ATTR_L, ATTR_P, ATTR_S, Segment, decode_descriptor
from ..stack import peek, push_frame, set_sp, stack_mask

if TYPE_CHECKING:
    from ..cpu import Cpu

M64 = 0xFFFF_FFFF_FFFF_FFFF
T_CODE, T_CONFORMING, T_WRITABLE, T_ACCESSED = 0x8, 0x4, 0x2, 0x1



def read_descriptor(c: Cpu, sel: int) -> tuple[Segment, int]:
    """The descriptor `sel` names (GDT or LDT) and its linear address. #GP(sel) beyond the
    table limit. The caller checks null selectors first (their error code differs)."""
    table = c.ldtr if sel & 4 else c.gdtr
    if (sel & 0xFFF8) + 7 > table.limit:
        raise Fault(13, sel & 0xFFFC)
    lin = table.base + (sel & 0xFFF8)
    seg = decode_descriptor(c.rd_sys(lin, 8))
    seg.sel = sel
    return seg, lin


def _set_accessed(c: Cpu, seg: Segment, lin: int) -> None:
    # Loading a segment register sets the descriptor's accessed bit (SDM vol 3 3.4.5.1).
    if not seg.attrib & T_ACCESSED:
        c.wr_sys(lin + 5, 1, c.rd_sys(lin + 5, 1) | T_ACCESSED)
        seg.attrib |= T_ACCESSED


def code_target(c: Cpu, sel: int, reason: str = "jmp",
                next_rip: int = 0) -> tuple[Segment, int] | None:
    """Checks of a far JMP/CALL target, in the order of the SDM pseudo-code: null, limit,
    type, privilege, present, L/D. Returns the descriptor (RPL set to CPL) and its address,
    or None when the target was a TSS or task gate and the task switch has been made."""
    if sel & 0xFFFC == 0:
        raise Fault(13, 0)
    seg, lin = read_descriptor(c, sel)
    err = sel & 0xFFFC
    if not seg.attrib & ATTR_S:
        # Legacy mode: a TSS or a task gate switches tasks (SDM vol 3 7.3); call gates
        # and every system descriptor in long mode are not modelled: #GP(selector).
        from .. import tasks
        if not c.efer & EFER_LMA and tasks.is_task_descriptor(seg.attrib):
            tasks.far_transfer(c, sel, reason, next_rip)
            return None
        raise Fault(13, err)
    if not seg.attrib & T_CODE:
        raise Fault(13, err)
    if seg.attrib & T_CONFORMING:
        if seg.dpl > c.cpl:
            raise Fault(13, err)
    elif sel & 3 > c.cpl or seg.dpl != c.cpl:
        raise Fault(13, err)
    if not seg.attrib & ATTR_P:
        raise Fault(11, err)
    if c.efer & EFER_LMA and seg.attrib & ATTR_L and seg.attrib & ATTR_DB:
        raise Fault(13, err)
    seg.sel = (sel & 0xFFFC) | c.cpl    # CS.RPL becomes CPL
    return seg, lin


def _target_rip(c: Cpu, seg: Segment, off: int) -> int:
    """A target offset must be canonical for 64-bit code, within the limit otherwise."""
    if c.efer & EFER_LMA and seg.attrib & ATTR_L:
        if not canonical(off):
            raise Fault(13, 0)
        return off
    if off > seg.limit:
        raise Fault(13, 0)
    return off


def _load_cs(c: Cpu, seg: Segment, lin: int, rip: int, cpl: int) -> None:
    _set_accessed(c, seg, lin)
    c.seg[CS].load(seg)
    c.rip = rip
    c.set_cpl(cpl)
    c.update_mode()


def _real_cs(c: Cpu, sel: int, off: int) -> None:
    """Real mode: CS = selector, base = selector << 4; the limit and attributes stay. An
    offset beyond the limit is #GP(0) (SDM vol 2 JMP/CALL/RET, real-address mode)."""
    if off > c.seg[CS].limit:
        raise Fault(13, 0)
    c.seg[CS].sel, c.seg[CS].base = sel, sel << 4
    c.rip = off


def far_jump(c: Cpu, sel: int, off: int, next_rip: int) -> None:
    if not c.cr0 & 1:
        _real_cs(c, sel, off)    # e.g. an AP's start-up code normalising CS
        return
    t = code_target(c, sel, "jmp", next_rip)
    if t is None:
        return
    seg, lin = t
    rip = _target_rip(c, seg, off)
    _load_cs(c, seg, lin, rip, c.cpl)


def far_call(c: Cpu, sel: int, off: int, push_size: int, ret_rip: int) -> None:
    if not c.cr0 & 1:
        if off > c.seg[CS].limit:
            raise Fault(13, 0)
        m = MASK[push_size]
        push_frame(c, (c.seg[CS].sel & m, ret_rip & m), push_size)
        _real_cs(c, sel, off)
        return
    t = code_target(c, sel, "call", ret_rip)
    if t is None:
        return
    seg, lin = t
    rip = _target_rip(c, seg, off)
    m = MASK[push_size]
    # Both pushes are written before RSP moves: a stack fault changes nothing (#SS/#PF).
    push_frame(c, (c.seg[CS].sel & m, ret_rip & m), push_size)
    _load_cs(c, seg, lin, rip, c.cpl)


def far_ret(c: Cpu, size: int, extra: int) -> None:
    """RET far [imm16] (SDM vol 2 RET, "protected mode / IA-32e mode" far return)."""
    if not c.cr0 & 1:
        new_rip = peek(c, size, 0) & MASK[size]
        new_cs = peek(c, size, size) & 0xFFFF
        _real_cs(c, new_cs, new_rip)
        set_sp(c, (c.regs[RSP] + 2 * size + extra) & stack_mask(c))
        return
    new_rip = peek(c, size, 0)
    sel = peek(c, size, size) & 0xFFFF
    if sel & 0xFFFC == 0:
        raise Fault(13, 0)
    rpl = sel & 3
    err = sel & 0xFFFC
    if rpl < c.cpl:
        raise Fault(13, err)
    seg, lin = read_descriptor(c, sel)
    if not seg.attrib & ATTR_S or not seg.attrib & T_CODE:
        raise Fault(13, err)
    if seg.attrib & T_CONFORMING:
        if seg.dpl > rpl:
            raise Fault(13, err)
    elif seg.dpl != rpl:
        raise Fault(13, err)
    if not seg.attrib & ATTR_P:
        raise Fault(11, err)
    if c.efer & EFER_LMA and seg.attrib & ATTR_L and seg.attrib & ATTR_DB:
        raise Fault(13, err)
    if size == 2:
        new_rip &= 0xFFFF
    rip = _target_rip(c, seg, new_rip)
    if rpl == c.cpl:
        sp = (c.regs[RSP] + 2 * size + extra) & stack_mask(c)
        _load_cs(c, seg, lin, rip, rpl)
        set_sp(c, sp)
        return
    # Return to an outer privilege level: SS:RSP are popped too (SDM vol 3 5.8.6).
    new_sp = peek(c, size, 2 * size + extra)
    ss_sel = peek(c, size, 3 * size + extra) & 0xFFFF
    to64 = bool(c.efer & EFER_LMA and seg.attrib & ATTR_L)
    ss = _outer_ss(c, ss_sel, rpl, to64)
    _load_cs(c, seg, lin, rip, rpl)
    c.seg[SS].load(ss)
    # The popped stack pointer takes the width of the new stack; imm16 is released on the
    # new stack too (SDM vol 2 RET: "ESP <- ESP + SRC" after the stack switch).
    set_sp(c, (new_sp + extra) & stack_mask(c))
    _null_inaccessible_data_segments(c, rpl)


def _outer_ss(c: Cpu, ss_sel: int, rpl: int, to64: bool) -> Segment:
    err = ss_sel & 0xFFFC
    if ss_sel & 0xFFFC == 0:
        # A null SS is allowed only when returning to 64-bit code at CPL < 3 (SDM vol 2 RET).
        if not to64 or rpl == 3:
            raise Fault(13, 0)
        return Segment(ss_sel, 0, 0xFFFF_FFFF, 0)
    if ss_sel & 3 != rpl:
        raise Fault(13, err)
    ss, lin = read_descriptor(c, ss_sel)
    if (not ss.attrib & ATTR_S or ss.attrib & T_CODE or not ss.attrib & T_WRITABLE
            or ss.dpl != rpl):
        raise Fault(13, err)
    if not ss.attrib & ATTR_P:
        raise Fault(12, err)
    _set_accessed(c, ss, lin)
    return ss


def _null_inaccessible_data_segments(c: Cpu, cpl: int) -> None:
    # After a return to an outer level, data segments the new CPL may not use are nulled
    # (SDM vol 2 RET: "FOR each of segment register (ES, FS, GS, and DS)").
    for i in (ES, FS, GS, DS):
        s = c.seg[i]
        if s.sel & 0xFFFC == 0:
            continue
        data_or_nc_code = not s.attrib & T_CODE or not s.attrib & T_CONFORMING
        if data_or_nc_code and s.dpl < cpl:
            c.seg[i].load(Segment(0, 0, 0, 0))


# ------------------------------------------------------------------ translators
def _far_sizes(d: Decoded) -> tuple[int, int]:
    """(pointer offset size, push/pop size) of a far jmp/call."""
    if d.mode == 64:
        # AMD: REX.W does not widen the far pointer; it widens the pushes.
        ptr = 2 if d.opsz else 4
        return ptr, 8 if d.rex_w else ptr
    if d.mode == 32:
        n = 2 if d.opsz else 4
    else:
        n = 4 if d.opsz else 2
    return n, n


def _mem_pointer(d: Decoded, ptr: int):
    ea = d.ea(0)
    wrap = M64 if d.mode == 64 else 0xFFFF_FFFF

    def read(c) -> tuple[int, int]:
        a = ea(c)
        off = c.rd(a, ptr)
        sel = c.rd((a + ptr) & wrap, 2)
        return sel, off
    return read


def far_jmp_mem(d: Decoded):
    ptr, _ = _far_sizes(d)
    read = _mem_pointer(d, ptr)
    nxt = d.next

    def ljmp_m(c):
        sel, off = read(c)
        far_jump(c, sel, off, nxt)
    return ljmp_m


def far_call_mem(d: Decoded):
    ptr, push_size = _far_sizes(d)
    read = _mem_pointer(d, ptr)
    nxt = d.next

    def lcall_m(c):
        sel, off = read(c)
        far_call(c, sel, off, push_size, nxt)
    return lcall_m


@translates(X.X86_INS_LJMP)
def ljmp(d: Decoded):
    if d.is_mem(0):
        return far_jmp_mem(d)
    sel, off = d.ops[0].imm & 0xFFFF, d.ops[1].imm & MASK[_far_sizes(d)[0]]
    nxt = d.next

    def ljmp_i(c):
        far_jump(c, sel, off, nxt)
    return ljmp_i


@translates(X.X86_INS_LCALL)
def lcall(d: Decoded):
    if d.is_mem(0):
        return far_call_mem(d)
    ptr, push_size = _far_sizes(d)
    sel, off = d.ops[0].imm & 0xFFFF, d.ops[1].imm & MASK[ptr]
    nxt = d.next

    def lcall_i(c):
        far_call(c, sel, off, push_size, nxt)
    return lcall_i


@translates(X.X86_INS_RETF, X.X86_INS_RETFQ)
def lret(d: Decoded):
    if d.id == X.X86_INS_RETFQ or d.rex_w:
        size = 8
    else:
        size = _far_sizes(d)[1] if d.mode != 64 else (2 if d.opsz else 4)
    extra = d.ops[0].imm & 0xFFFF if d.ops else 0

    def lret_(c):
        far_ret(c, size, extra)
    return lret_
