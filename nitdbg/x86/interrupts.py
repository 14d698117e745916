"""Delivery of exceptions and interrupts through the IDT (SDM vol 3 6.12-6.14, APM vol 2 8.7-8.9).

`deliver` is the only way into a handler. It raises Fault for problems found while
delivering (bad gate, not-present, stack faults); the caller escalates those.
Kinds: "fault", "trap" (exceptions raised by the CPU), "nmi", "intr" (external), "soft"
(INT n, INT3, INTO: gate DPL checked against CPL), "icebp" (INT1: no DPL check).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import fastpath
from .faults import Fault
from .regs import CS, DR7_GD, EFER_LMA, HAS_ERRCODE, IF, NT, RF, RSP, SS, TF, VM, canonical
from .retire import EV_EXCEPTION, EV_INTR, EV_NMI, EV_SOFTINT
from .segments import ATTR_L, Segment, decode_descriptor

if TYPE_CHECKING:
    from .cpu import Cpu

M64 = 0xFFFF_FFFF_FFFF_FFFF
EV_KIND = {"fault": EV_EXCEPTION, "trap": EV_EXCEPTION, "nmi": EV_NMI, "intr": EV_INTR,
           "soft": EV_SOFTINT, "icebp": EV_EXCEPTION}


def _ext(kind: str) -> int:
    # EXT bit of an error code: the event was external to the program (SDM 6.13).
    return 0 if kind in ("soft", "icebp") else 1


def load_code_descriptor(cpu: Cpu, sel: int, vector: int, kind: str) -> Segment:
    """Read the code-segment descriptor a gate points at (GDT or LDT)."""
    err = (sel & 0xFFFC) | _ext(kind)
    if sel & 0xFFFC == 0:
        raise Fault(13, _ext(kind))
    table = cpu.ldtr if sel & 4 else cpu.gdtr
    idx = sel & 0xFFF8
    if idx + 7 > table.limit:
        raise Fault(13, err)
    lo = cpu.rd_sys(table.base + idx, 8)
    seg = decode_descriptor(lo)
    if not seg.attrib & 0x10 or not seg.attrib & 0x8:     # must be a code segment
        raise Fault(13, err)
    if not seg.present:
        raise Fault(11, err)
    seg.sel = sel
    return seg


def deliver(cpu: Cpu, vector: int, kind: str, error_code: int | None) -> None:
    if kind == "fault" and vector not in HAS_ERRCODE:
        error_code = None
    if kind in ("nmi", "intr", "soft", "icebp"):
        error_code = None
    cpu.delivering = (kind, vector, error_code)
    try:
        if cpu.mode == 64 or cpu.efer & EFER_LMA:
            _deliver64(cpu, vector, kind, error_code)
        elif cpu.cr0 & 1:
            _deliver32(cpu, vector, kind, error_code)
        else:
            _deliver_real(cpu, vector, kind)
    finally:
        cpu.delivering = None
    if vector == 1 and kind != "soft":
        # Entering the #DB handler clears DR7.GD so it can use the debug registers
        # (SDM vol 3 17.2.4; Bochs clears it on every #DB delivery). INT 01 is no #DB.
        cpu.dr[7] &= ~DR7_GD
    cpu.attention = True


def _pushed_rflags(cpu: Cpu, vector: int, kind: str) -> int:
    # Fault-class exceptions push RF=1 so that the handler's IRET does not re-trigger an
    # instruction breakpoint (SDM 17.3.1.1, APM 13.1.3.1); the general-detect #DB too. The
    # instruction-breakpoint #DB, which pushes RF as it is, is delivered as a "trap".
    fl = cpu.rflags
    if kind == "fault":
        fl |= RF
    return fl


def _deliver64(cpu: Cpu, vector: int, kind: str, error_code: int | None) -> None:
    if cpu.fast_events and fastpath.deliver64(cpu, vector, kind, error_code):
        return
    gate_err = vector * 8 + 2 + _ext(kind)
    if vector * 16 + 15 > cpu.idtr.limit:
        raise Fault(13, gate_err)
    lo = cpu.rd_sys(cpu.idtr.base + vector * 16, 8)
    hi = cpu.rd_sys(cpu.idtr.base + vector * 16 + 8, 8)
    gtype = (lo >> 40) & 0x1F     # only 64-bit interrupt and trap gates (SDM 6.14.1)
    if gtype not in (0xE, 0xF):
        raise Fault(13, gate_err)
    dpl = (lo >> 45) & 3
    if kind == "soft" and dpl < cpu.cpl:
        raise Fault(13, gate_err)
    if not (lo >> 47) & 1:
        raise Fault(11, gate_err)
    sel = (lo >> 16) & 0xFFFF
    offset = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF0000) | ((hi & 0xFFFF_FFFF) << 32)
    ist = (lo >> 32) & 7
    cs = load_code_descriptor(cpu, sel, vector, kind)
    if not cs.attrib & ATTR_L:
        raise Fault(13, (sel & 0xFFFC) | _ext(kind))
    new_cpl = cpu.cpl if cs.type & 0x4 else cs.dpl   # conforming code keeps CPL
    if new_cpl > cpu.cpl:
        raise Fault(13, (sel & 0xFFFC) | _ext(kind))
    old_ss = cpu.seg[SS].sel
    old_rsp = cpu.regs[RSP]
    if ist:
        rsp = cpu.rd_sys(cpu.tr.base + 0x24 + (ist - 1) * 8, 8)
    elif new_cpl < cpu.cpl:
        rsp = cpu.rd_sys(cpu.tr.base + 4 + new_cpl * 8, 8)
    else:
        rsp = old_rsp
    rsp &= ~0xF & M64   # 64-bit mode aligns the new stack (SDM 6.14.2)
    if not canonical(rsp - 48):
        raise Fault(12, 0)
    rflags = _pushed_rflags(cpu, vector, kind)
    frame = [old_ss, old_rsp, rflags, cpu.seg[CS].sel, cpu.rip]
    if error_code is not None:
        frame.append(error_code)
    # Write the whole frame before changing any register, so a fault leaves state intact.
    for v in frame:
        rsp = (rsp - 8) & M64
        cpu.wr_sys(rsp, 8, v & M64)
    if not canonical(offset):
        raise Fault(13, 0)
    if new_cpl != cpu.cpl:
        cpu.seg[SS].load(Segment(new_cpl, 0, 0xFFFF_FFFF, 0))  # NULL SS with RPL = new CPL
    cpu.regs[RSP] = rsp
    cs.sel = (sel & 0xFFFC) | new_cpl
    cpu.seg[CS].load(cs)
    cpu.rflags = rflags & ~(TF | NT | RF | VM) & ~(IF if gtype == 0xE else 0) | 0x2
    cpu.rip = offset
    cpu.set_cpl(new_cpl)
    cpu.update_mode()
    cpu.record_event(EV_KIND[kind], vector, error_code, frame[4], rflags)



def _deliver32(cpu: Cpu, vector: int, kind: str, error_code: int | None) -> None:
    gate_err = vector * 8 + 2 + _ext(kind)
    if vector * 8 + 7 > cpu.idtr.limit:
        raise Fault(13, gate_err)
    lo = cpu.rd_sys(cpu.idtr.base + vector * 8, 8)
    gtype = (lo >> 40) & 0x1F     # S bit included: only system gates are valid
    # Checks in the order of SDM vol 2 INT n "PROTECTED-MODE": gate type, DPL (software
    # interrupts only), present.
    if gtype not in (0x5, 0x6, 0x7, 0xE, 0xF):
        raise Fault(13, gate_err)
    dpl = (lo >> 45) & 3
    if kind == "soft" and dpl < cpu.cpl:
        raise Fault(13, gate_err)
    if not (lo >> 47) & 1:
        raise Fault(11, gate_err)
    sel = (lo >> 16) & 0xFFFF
    if gtype == 0x5:   # task gate (SDM 7.3): the handler is a whole task
        from . import tasks
        tasks.task_gate(cpu, sel, vector, kind, error_code)
        return
    offset = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF0000)
    size = 4 if gtype & 0x8 else 2
    if size == 2:
        offset &= 0xFFFF
    cs = load_code_descriptor(cpu, sel, vector, kind)
    new_cpl = cpu.cpl if cs.type & 0x4 else cs.dpl
    if new_cpl > cpu.cpl:
        raise Fault(13, (sel & 0xFFFC) | _ext(kind))
    rflags = _pushed_rflags(cpu, vector, kind)
    frame: list[int] = []
    new_ss = None
    if new_cpl < cpu.cpl:
        esp = cpu.rd_sys(cpu.tr.base + 4 + new_cpl * 8, 4)
        ss_sel = cpu.rd_sys(cpu.tr.base + 8 + new_cpl * 8, 2)
        new_ss = _load_stack_segment(cpu, ss_sel, new_cpl)
        frame += [cpu.seg[SS].sel, cpu.regs[RSP] & 0xFFFF_FFFF]
        base = new_ss.base
    else:
        esp = cpu.regs[RSP] & 0xFFFF_FFFF
        base = cpu.seg[SS].base
    frame += [rflags & 0xFFFF_FFFF, cpu.seg[CS].sel, cpu.rip & 0xFFFF_FFFF]
    if error_code is not None:
        frame.append(error_code)
    for v in frame:
        esp = (esp - size) & 0xFFFF_FFFF
        cpu.wr_sys((base + esp) & 0xFFFF_FFFF, size, v & ((1 << (8 * size)) - 1))
    if new_ss is not None:
        cpu.seg[SS].load(new_ss)
    cpu.regs[RSP] = esp
    cs.sel = (sel & 0xFFFC) | new_cpl
    cpu.seg[CS].load(cs)
    cpu.rflags = rflags & ~(TF | NT | RF | VM) & ~(IF if not gtype & 1 else 0) | 0x2
    cpu.rip = offset
    cpu.set_cpl(new_cpl)
    cpu.update_mode()
    cpu.record_event(EV_KIND[kind], vector, error_code, cpu_pushed_rip(frame, error_code), rflags)


def cpu_pushed_rip(frame: list[int], error_code: int | None) -> int:
    return frame[-1] if error_code is None else frame[-2]


def _load_stack_segment(cpu: Cpu, sel: int, cpl: int) -> Segment:
    if sel & 0xFFFC == 0:
        raise Fault(10, sel & 0xFFFC)
    table = cpu.ldtr if sel & 4 else cpu.gdtr
    lo = cpu.rd_sys(table.base + (sel & 0xFFF8), 8)
    seg = decode_descriptor(lo)
    if not seg.present:
        raise Fault(12, sel & 0xFFFC)
    seg.sel = sel
    return seg


def _deliver_real(cpu: Cpu, vector: int, kind: str) -> None:
    ent = cpu.rd_sys(cpu.idtr.base + vector * 4, 4)
    sp = cpu.regs[RSP] & 0xFFFF
    for v in (cpu.rflags & 0xFFFF, cpu.seg[CS].sel, cpu.rip & 0xFFFF):
        sp = (sp - 2) & 0xFFFF
        cpu.wr_sys(cpu.seg[SS].base + sp, 2, v)
    cpu.regs[RSP] = (cpu.regs[RSP] & ~0xFFFF) | sp
    seg = ent >> 16
    cpu.seg[CS].load(Segment(seg, seg << 4, 0xFFFF, 0x9B))
    cpu.rflags &= ~(TF | IF | RF)
    cpu.rip = ent & 0xFFFF
    cpu.record_event(EV_KIND[kind], vector, None, cpu.rip, cpu.rflags)
