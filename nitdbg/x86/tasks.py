"""32-bit hardware task switches (SDM vol 3 ch. 7, APM vol 2 12.3).

A task switch is made by an interrupt or exception through a task gate in the IDT, by an IRET
with EFLAGS.NT=1 (return to the task named by the back link), or by a far JMP/CALL to a TSS
descriptor or a task gate. Only 32-bit TSSs are modelled (16-bit ones raise Unsupported, so
the guest gets #UD and the front end a record); long mode has no task switches.

32-bit TSS layout (SDM figure 7-2): 0x00 back link, 0x04 ESP0, 0x08 SS0, ... 0x1C CR3,
0x20 EIP, 0x24 EFLAGS, 0x28 EAX ECX EDX EBX ESP EBP ESI EDI, 0x48 ES CS SS DS FS GS,
0x60 LDT selector, 0x64 T (bit 0), 0x66 I/O map base.

Every check that can fail is made before any register changes, so a fault leaves the old task
intact and restartable (the SDM lets faults after the commit point be raised in the new task's
context; raising them all before it is a simplification this model makes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .faults import Fault, Unsupported
from .regs import CR0_PG, CR0_TS, CS, DR6_BT, EFER_LMA, NT, RF, SS, VM
from .segments import ATTR_DB, ATTR_P, ATTR_S, Segment, decode_descriptor

if TYPE_CHECKING:
    from .cpu import Cpu

TSS_MIN_LIMIT = 0x67
TYPE_TSS32_AVAIL, TYPE_TSS32_BUSY, TYPE_TASK_GATE = 0x9, 0xB, 0x5
TSS_BUSY = 0x2               # the busy bit within the type field
DR7_LOCAL = 0x155            # L0-L3 and LE: cleared on every task switch (SDM 17.2.4)
REASONS = ("iret", "jmp", "call", "gate")


class TaskState:
    """The register state held in a 32-bit TSS."""

    __slots__ = ("link", "cr3", "eip", "eflags", "gprs", "sels", "ldt", "trap")

    def __init__(self, c: Cpu, base: int):
        rd = c.rd_sys
        self.link = rd(base, 2)
        self.cr3 = rd(base + 0x1C, 4)
        self.eip = rd(base + 0x20, 4)
        self.eflags = rd(base + 0x24, 4)
        self.gprs = [rd(base + 0x28 + 4 * i, 4) for i in range(8)]
        self.sels = [rd(base + 0x48 + 4 * i, 2) for i in range(6)]
        self.ldt = rd(base + 0x60, 2)
        self.trap = rd(base + 0x64, 2) & 1


def _gdt_desc(c: Cpu, sel: int, err: int) -> tuple[int, Segment]:
    """(linear address, decoded descriptor) of a GDT entry, or #GP(err)."""
    if sel & 4 or sel & 0xFFFC == 0 or (sel & 0xFFF8) + 7 > c.gdtr.limit:
        raise Fault(13, err)
    addr = c.gdtr.base + (sel & 0xFFF8)
    seg = decode_descriptor(c.rd_sys(addr, 8))
    seg.sel = sel
    return addr, seg


def _seg_desc(c: Cpu, sel: int, ldt: Segment | None, err: int) -> Segment:
    """A segment descriptor of the new task, from the GDT or the new task's LDT; #TS(err)."""
    if sel & 4:
        if ldt is None or (sel & 0xFFF8) + 7 > ldt.limit:
            raise Fault(10, err)
        base = ldt.base
    else:
        if (sel & 0xFFF8) + 7 > c.gdtr.limit:
            raise Fault(10, err)
        base = c.gdtr.base
    seg = decode_descriptor(c.rd_sys(base + (sel & 0xFFF8), 8))
    seg.sel = sel
    return seg


def _load_task_segments(c: Cpu, ts: TaskState) -> tuple[Segment, list[Segment]]:
    """Qualify the new task's LDT and segment selectors (SDM 7.3 step 12) -> (ldtr, segs)."""
    ldtr = Segment(ts.ldt, 0, 0, 0)
    if ts.ldt & 0xFFFC:
        if ts.ldt & 4:
            raise Fault(10, ts.ldt & 0xFFFC)
        _a, ldtr = _gdt_desc(c, ts.ldt, ts.ldt & 0xFFFC)
        if ldtr.attrib & ATTR_S or ldtr.type != 0x2:
            raise Fault(10, ts.ldt & 0xFFFC)
        if not ldtr.present:
            raise Fault(10, ts.ldt & 0xFFFC)
    ldt = ldtr if ts.ldt & 0xFFFC else None
    segs: list[Segment] = []
    cs_sel = ts.sels[CS]
    cpl = cs_sel & 3
    for i, sel in enumerate(ts.sels):
        err = sel & 0xFFFC
        if i in (CS, SS) and not err:
            raise Fault(10, 0)
        if not err:
            segs.append(Segment(sel, 0, 0, 0))
            continue
        d = _seg_desc(c, sel, ldt, err)
        if not d.attrib & ATTR_S:
            raise Fault(10, err)
        code = bool(d.type & 0x8)
        if i == CS:
            if not code:
                raise Fault(10, err)
            conforming = bool(d.type & 0x4)
            if (conforming and d.dpl > cpl) or (not conforming and d.dpl != cpl):
                raise Fault(10, err)
        elif i == SS:
            if code or not d.type & 0x2 or d.dpl != cpl or sel & 3 != cpl:
                raise Fault(10, err)
        elif code and not d.type & 0x2:
            raise Fault(10, err)      # execute-only code cannot be a data segment
        if not d.attrib & ATTR_P:
            raise Fault(12 if i == SS else 11, err)
        segs.append(d)
    return ldtr, segs


def switch(c: Cpu, new_sel: int, reason: str, saved_eflags: int, *, ext: int = 0,
           hook_rip: int | None = None) -> None:
    """Switch from the current task to the TSS `new_sel` (SDM 7.3 steps 3-13).

    reason: "iret", "jmp", "call" or "gate" (interrupt/exception through a task gate).
    saved_eflags: the EFLAGS image to save in the old TSS (NT is cleared there for IRET).
    hook_rip: when not None, the TASK_SWITCH intercept point is offered to the layer above
    first (hooks.insn(c, "task_switch", hook_rip)).
    """
    nested = reason in ("call", "gate")
    err = (new_sel & 0xFFFC) | ext
    if c.efer & EFER_LMA:
        raise Fault(13, 0)            # no task switches in IA-32e mode (SDM 7.7)
    # The new TSS descriptor: a 32-bit TSS in the GDT, available (busy for IRET), present,
    # limit >= 0x67 (SDM 7.3 steps 3-4; #TS for IRET, #GP for the others).
    bad = 10 if reason == "iret" else 13
    if new_sel & 4 or new_sel & 0xFFFC == 0:
        raise Fault(bad, err)
    _addr, nd = _gdt_desc(c, new_sel, err)
    if nd.attrib & ATTR_S or nd.type & ~TSS_BUSY not in (0x1, 0x9):
        raise Fault(bad, err)
    if nd.type in (0x1, 0x3):
        raise Unsupported("task switch to a 16-bit TSS")
    want_busy = reason == "iret"
    if bool(nd.type & TSS_BUSY) != want_busy:
        raise Fault(bad, err)
    if not nd.present:
        raise Fault(11, err)
    if nd.limit < TSS_MIN_LIMIT:
        raise Fault(10, err)
    if c.tr.limit < TSS_MIN_LIMIT:
        raise Fault(10, (c.tr.sel & 0xFFFC) | ext)
    if hook_rip is not None:
        c.task_switch_reason = reason
        c.task_switch_sel = new_sel
        c.hooks.insn(c, "task_switch", hook_rip)
    ts = TaskState(c, nd.base)
    ldtr, segs = _load_task_segments(c, ts)
    if ts.eflags & VM:
        raise Unsupported("task switch into virtual-8086 mode")

    # --- commit: save the old task (step 7). EIP is already the return point.
    old = c.tr.copy()
    wr = c.wr_sys
    ob = old.base
    wr(ob + 0x20, 4, c.rip & 0xFFFF_FFFF)
    wr(ob + 0x24, 4, (saved_eflags & ~NT if reason == "iret" else saved_eflags) & 0xFFFF_FFFF)
    for i in range(8):
        wr(ob + 0x28 + 4 * i, 4, c.regs[i] & 0xFFFF_FFFF)
    for i in range(6):
        wr(ob + 0x48 + 4 * i, 2, c.seg[i].sel)
    # Busy bits (steps 5, 9): JMP and IRET leave the old task; CALL and gates nest into the
    # new one, which records the old task in its back link (step 8).
    if reason in ("jmp", "iret") and not old.attrib & ATTR_S:
        _set_busy(c, old.sel, False)
    if nested:
        wr(nd.base, 2, old.sel)
    if reason != "iret":
        _set_busy(c, new_sel, True)
        nd.attrib |= TSS_BUSY
    c.tr.load(nd)

    # --- load the new task (steps 10-12)
    if c.cr0 & CR0_PG and ts.cr3 != c.cr3:
        c.cr3 = ts.cr3
        c.flush_tlb()
    c.ldtr.load(ldtr)
    for i, s in enumerate(segs):
        c.seg[i].load(s)
    for i in range(8):
        c.regs[i] = ts.gprs[i]
    c.rip = ts.eip
    eflags = (ts.eflags | 0x2) & ~VM
    c.rflags = eflags | NT if nested else eflags
    c.cr0 |= CR0_TS     # the FPU state belongs to the old task (SDM 2.5 CR0.TS)
    if c.dr[7] & DR7_LOCAL:
        c.dr[7] &= ~DR7_LOCAL
        c.update_debug()
    c.set_cpl(ts.sels[CS] & 3)
    c.update_mode()
    if ts.trap:
        # T flag: #DB (DR6.BT) before the new task's first instruction (SDM 17.3.1.5,
        # APM 13.1.3.4); not cleared by the processor.
        c.pending_db |= DR6_BT
    c.attention = True


def _set_busy(c: Cpu, sel: int, busy: bool) -> None:
    a = c.gdtr.base + (sel & 0xFFF8) + 5
    v = c.rd_sys(a, 1)
    c.wr_sys(a, 1, v | TSS_BUSY if busy else v & ~TSS_BUSY)


def task_gate(c: Cpu, sel: int, vector: int, kind: str, error_code: int | None) -> None:
    """Deliver an interrupt or exception through a task gate (SDM 6.12.2, 7.3)."""
    from .interrupts import EV_KIND, _pushed_rflags
    ext = 0 if kind in ("soft", "icebp") else 1
    old_rip = c.rip
    flags = _pushed_rflags(c, vector, kind)
    c.task_switch_errcode = error_code
    switch(c, sel, "gate", flags, ext=ext, hook_rip=c.rip)
    if error_code is not None:
        # The error code goes on the new task's stack (SDM 6.13), sized by the new CS.
        size = 4 if c.seg[CS].attrib & ATTR_DB else 2
        m = 0xFFFF_FFFF if c.seg[SS].attrib & ATTR_DB else 0xFFFF
        sp = (c.regs[4] - size) & m
        c.wr_sys((c.seg[SS].base + sp) & 0xFFFF_FFFF, size, error_code)
        c.regs[4] = (c.regs[4] & ~m) | sp
    c.record_event(EV_KIND[kind], vector, error_code, old_rip, flags)


def iret_task_return(c: Cpu, next_rip: int) -> None:
    """IRET with NT=1: return to the task in the back link (SDM vol 2 IRET, 7.3).

    The TASK_SWITCH intercept is offered before anything changes; NMIs are unblocked even
    if the switch then faults (SDM 6.7.1)."""
    try:
        link = c.rd_sys(c.tr.base, 2)
    except Fault:
        c.nmi_blocked = False
        raise
    c.task_switch_reason = "iret"
    c.task_switch_sel = link
    c.task_switch_errcode = None
    c.hooks.insn(c, "task_switch", next_rip)
    c.nmi_blocked = False
    switch(c, link, "iret", c.rflags)


def is_task_descriptor(attrib: int) -> bool:
    """A far JMP/CALL target that means a task switch: a TSS or a task gate."""
    return not attrib & ATTR_S and attrib & 0xF in (0x1, 0x3, 0x9, 0xB, TYPE_TASK_GATE)


def far_transfer(c: Cpu, sel: int, reason: str, next_rip: int) -> None:
    """Far JMP/CALL to a TSS descriptor or a task gate (SDM vol 2 JMP/CALL "TASK-GATE",
    "TASK-STATE-SEGMENT"). RIP must already be the return point (next_rip)."""
    if reason not in ("jmp", "call"):
        raise ValueError(f"far_transfer reason must be jmp or call, not {reason!r}")
    err = sel & 0xFFFC
    if sel & 4:
        table = c.ldtr
        if (sel & 0xFFF8) + 7 > table.limit:
            raise Fault(13, err)
        d = decode_descriptor(c.rd_sys(table.base + (sel & 0xFFF8), 8))
    else:
        _a, d = _gdt_desc(c, sel, err)
    if d.dpl < max(c.cpl, sel & 3):
        raise Fault(13, err)
    if d.type == TYPE_TASK_GATE:
        if not d.present:
            raise Fault(11, err)
        tss_sel = (d.base >> 0) & 0xFFFF   # the gate's selector field sits in base 15:0
        switch(c, tss_sel, reason, c.rflags, hook_rip=next_rip)
        return
    if d.type in (TYPE_TSS32_BUSY, 0x3):
        raise Fault(13, err)
    switch(c, sel, reason, c.rflags, hook_rip=next_rip)


__all__ = ["switch", "task_gate", "iret_task_return", "far_transfer", "is_task_descriptor",
           "TaskState", "REASONS", "RF"]
