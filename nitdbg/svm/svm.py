"""VMRUN and #VMEXIT: the SVM processor extension around one x86 vCPU (AMD APM vol 2 ch. 15).

`Svm` is the x86 layer's hook object while the guest runs: at every architectural point where
SVM can intercept, it checks the VMCB's intercept bits and, when one is set, fills EXITCODE,
EXITINFO1/2, EXITINTINFO and nRIP, stores the guest state into the VMCB save area and ends
guest execution (#VMEXIT). Between runs the VMCB is the truth: the hypervisor edits it, and
VMRUN loads it back.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..x86.cpu import Cpu
from ..x86.faults import Intercepted
from ..x86.hooks import ACC_FETCH, ACC_WRITE, Hooks
from ..x86.regs import RAX, RSP, SHADOW_STI
from ..x86.retire import EV_INJECT, EV_VMEXIT, EV_VMRUN
from . import exitcodes as ec
from .intinfo import TYPE_EXCEPTION, TYPE_INTR, TYPE_NMI, TYPE_SOFT_INT, IntInfo
from .npt import NestedPageFault, NestedPageTable
from .vmcb import INTERCEPTS, SEGMENT_OFFSETS, Iopm, Msrpm, Vmcb

_INSN_INTERCEPTS = {
    "iret": ("IRET", ec.VMEXIT_IRET), "hlt": ("HLT", ec.VMEXIT_HLT),
    "pause": ("PAUSE", ec.VMEXIT_PAUSE), "cpuid": ("CPUID", ec.VMEXIT_CPUID),
    "rdtsc": ("RDTSC", ec.VMEXIT_RDTSC), "invlpg": ("INVLPG", ec.VMEXIT_INVLPG),
    "vmmcall": ("VMMCALL", ec.VMEXIT_VMMCALL), "vmrun": ("VMRUN", ec.VMEXIT_VMRUN),
    "icebp": ("ICEBP", ec.VMEXIT_ICEBP), "intn": ("INTn", ec.VMEXIT_SWINT),
    "pushf": ("PUSHF", ec.VMEXIT_PUSHF), "popf": ("POPF", ec.VMEXIT_POPF),
    "task_switch": ("TASK_SWITCH", ec.VMEXIT_TASK_SWITCH),
}
# Save-area layout (APM vol 2 table B-2): ten {u16 sel, u16 attrib, u32 limit, u64 base}
# segments from offset 0, CR4..RIP from 0x148, RAX..KERNEL_GS_BASE from 0x1F8. The offsets
# come from the Vmcb's named fields (svm/vmcb.py is their one source); the bulk structs below
# read runs of consecutive fields, checked once here.
_OFF_SEGS = SEGMENT_OFFSETS["es"]
_OFF_CPL = Vmcb.cpl.offset
_OFF_EFER = Vmcb.efer.offset
_OFF_CTRL = Vmcb.cr4.offset         # cr4, cr3, cr0, dr7, dr6, rflags, rip
_OFF_RSP = Vmcb.rsp.offset
_OFF_GPR = Vmcb.rax.offset          # rax, star, lstar, cstar, sfmask, kernel_gs_base
_OFF_CR2 = Vmcb.cr2.offset
_OFF_EXIT = Vmcb.exitcode.offset    # exitcode, exitinfo1, exitinfo2, exitintinfo
_OFF_NRIP = Vmcb.nrip.offset


def _consecutive(*fields: object) -> bool:
    offs = [f.offset for f in fields]  # type: ignore[attr-defined]
    return offs == list(range(offs[0], offs[0] + 8 * len(offs), 8))


assert _consecutive(Vmcb.cr4, Vmcb.cr3, Vmcb.cr0, Vmcb.dr7, Vmcb.dr6, Vmcb.rflags, Vmcb.rip)
assert _consecutive(Vmcb.rax, Vmcb.star, Vmcb.lstar, Vmcb.cstar, Vmcb.sfmask,
                    Vmcb.kernel_gs_base)
assert _consecutive(Vmcb.exitcode, Vmcb.exitinfo1, Vmcb.exitinfo2, Vmcb.exitintinfo)
assert list(SEGMENT_OFFSETS.values()) == list(range(_OFF_SEGS, _OFF_SEGS + 0xA0, 0x10))
_SEG_ALL = struct.Struct("<" + "HHIQ" * 10)


def _save_area_struct() -> struct.Struct:
    """One struct reading every field load_guest takes, in offset order, skipping the bytes
    between them (reading only: a pack through it would zero the fields it skips)."""
    spans = [(_OFF_SEGS, "HHIQ" * 10, 0xA0), (_OFF_CPL, "B", 1), (_OFF_EFER, "Q", 8),
             (_OFF_CTRL, "7Q", 56), (_OFF_RSP, "Q", 8), (_OFF_GPR, "6Q", 48),
             (_OFF_CR2, "Q", 8)]
    fmt, pos = "<", _OFF_SEGS
    for off, f, size in spans:
        assert off >= pos
        fmt += (f"{off - pos}x" if off > pos else "") + f
        pos = off + size
    st = struct.Struct(fmt)
    assert st.size == pos - _OFF_SEGS
    return st


_SAVE_AREA = _save_area_struct()
_OFF_EXITINTINFO = Vmcb.exitintinfo.offset
_OFF_EVENTINJ = Vmcb.eventinj.offset
# the virtual interrupt control word: V_TPR 7:0, V_IRQ 8, V_INTR_PRIO 19:16, V_IGN_TPR 20
_OFF_VINTR_CTL = Vmcb.v_intr_control.offset


def _shift_in_vintr_ctl(f: object) -> int:
    return (f.offset - _OFF_VINTR_CTL) * 8 + f.lo  # type: ignore[attr-defined]


_SH_V_IRQ = _shift_in_vintr_ctl(Vmcb.v_irq)
_SH_V_IGN_TPR = _shift_in_vintr_ctl(Vmcb.v_ign_tpr)
_SH_V_INTR_PRIO = _shift_in_vintr_ctl(Vmcb.v_intr_prio)
assert Vmcb.v_tpr.offset == _OFF_VINTR_CTL and Vmcb.v_tpr.lo == 0


def _intercept_bit(name: str) -> tuple[int, int]:
    """The byte of the VMCB holding intercept `name` and its bit in that byte."""
    word, bit = INTERCEPTS[name]
    return word + (bit >> 3), 1 << (bit & 7)


_OFF_IOIO_PROT, _BIT_IOIO_PROT = _intercept_bit("IOIO_PROT")
# instruction name -> (byte, bit, exit code) of its intercept
_INSN_INTERCEPT_BITS = {name: (*_intercept_bit(icpt), code)
                        for name, (icpt, code) in _INSN_INTERCEPTS.items()}
# Single bits of the control area read on every VMRUN and #VMEXIT, by byte and mask.
_OFF_SHADOW, _BIT_SHADOW = Vmcb.interrupt_shadow.offset, 1 << Vmcb.interrupt_shadow.lo
_OFF_VNMI_EN = Vmcb.v_nmi_enable.offset
_BIT_VNMI_EN = 1 << Vmcb.v_nmi_enable.lo
assert Vmcb.interrupt_shadow.width == 1 and Vmcb.interrupt_shadow.lo < 8
assert Vmcb.v_nmi_enable.width == 1 and Vmcb.v_nmi_enable.lo < 8
_CTRL = struct.Struct("<7Q")
_GPR = struct.Struct("<6Q")
_Q = struct.Struct("<Q")
_EXIT = struct.Struct("<4Q")
_M64 = 0xFFFF_FFFF_FFFF_FFFF
_M32 = 0xFFFF_FFFF
_TYPE_KIND = {TYPE_INTR: "intr", TYPE_NMI: "nmi", TYPE_EXCEPTION: "exception",
              TYPE_SOFT_INT: "soft"}


@dataclass(slots=True)
class Exit:
    """What the last #VMEXIT reported (also in the VMCB; this is a convenience copy)."""

    code: int
    info1: int
    info2: int
    intinfo: int
    nrip: int
    rip: int


class Svm(Hooks):
    """One vCPU's SVM state: its VMCB, the VM's nested page table and permission maps."""

    def __init__(self, cpu: Cpu, vmcb: Vmcb, npt: NestedPageTable, iopm: Iopm, msrpm: Msrpm):
        super().__init__()
        self.cpu = cpu
        self.vmcb = vmcb
        self.npt = npt
        self.iopm = iopm
        self.msrpm = msrpm
        self.exit: Exit | None = None
        self.in_guest = False
        self._pending = None
        cpu.hooks = self

    # ------------------------------------------------------------------ state transfer
    def load_guest(self) -> None:
        """VMRUN: load the guest state from the save area (APM 15.5.1)."""
        v, c = self.vmcb, self.cpu
        buf = v.buf
        es, cs, ss, ds, fs, gs = c.seg
        gdtr, ldtr, idtr, tr = c.gdtr, c.ldtr, c.idtr, c.tr
        # One unpack of the whole save area, straight into the vCPU's registers (the
        # selector and attribute words of GDTR and IDTR are reserved: dropped).
        (es.sel, es.attrib, es.limit, es.base, cs.sel, cs.attrib, cs.limit, cs.base,
         ss.sel, ss.attrib, ss.limit, ss.base, ds.sel, ds.attrib, ds.limit, ds.base,
         fs.sel, fs.attrib, fs.limit, fs.base, gs.sel, gs.attrib, gs.limit, gs.base,
         _, _, gdtr.limit, gdtr.base, ldtr.sel, ldtr.attrib, ldtr.limit, ldtr.base,
         _, _, idtr.limit, idtr.base, tr.sel, tr.attrib, tr.limit, tr.base,
         cpl, efer, cr4, cr3, cr0, dr7, dr6, rflags, rip, rsp,
         rax, c.star, c.lstar, c.cstar, c.sfmask, c.kernel_gs_base,
         c.cr2) = _SAVE_AREA.unpack_from(buf, _OFF_SEGS)
        paging_changed = (c.cr0 != cr0 or c.cr3 != cr3 or c.cr4 != cr4 or c.efer != efer)
        c.cr0, c.cr3, c.cr4, c.efer = cr0, cr3, cr4, efer
        dr = c.dr
        debug_changed = dr[7] != dr7
        dr[6], dr[7] = dr6, dr7
        c.rflags = rflags | 0x2
        c.rip = rip
        regs = c.regs
        regs[RSP] = rsp
        regs[RAX] = rax
        c.cpl = cpl
        c.shadow = SHADOW_STI if buf[_OFF_SHADOW] & _BIT_SHADOW else 0
        if buf[_OFF_VNMI_EN] & _BIT_VNMI_EN:
            # Virtual NMI (APM vol 2 15.21.x): the guest's NMI state is in int_ctl; the CPU
            # takes V_NMI_PENDING when NMIs are not blocked, as it would a real NMI.
            c.nmi_pending = bool(v.v_nmi_pending)
            c.nmi_blocked = bool(v.v_nmi_blocking)
        if paging_changed:
            c.flush_tlb()
        c.update_mode()
        if debug_changed or c.exec_bps or c.data_bps:
            c.update_debug()

    def save_guest(self) -> None:
        """#VMEXIT: store the guest state into the save area (APM 15.6)."""
        v, c = self.vmcb, self.cpu
        buf = v.buf
        es, cs, ss, ds, fs, gs = c.seg
        gdtr, ldtr, idtr, tr = c.gdtr, c.ldtr, c.idtr, c.tr
        _SEG_ALL.pack_into(
            buf, _OFF_SEGS,
            es.sel, es.attrib, es.limit & _M32, es.base, cs.sel, cs.attrib, cs.limit & _M32,
            cs.base, ss.sel, ss.attrib, ss.limit & _M32, ss.base, ds.sel, ds.attrib,
            ds.limit & _M32, ds.base, fs.sel, fs.attrib, fs.limit & _M32, fs.base,
            gs.sel, gs.attrib, gs.limit & _M32, gs.base,
            0, 0, gdtr.limit, gdtr.base,
            ldtr.sel, ldtr.attrib, ldtr.limit & _M32, ldtr.base,
            0, 0, idtr.limit, idtr.base,
            tr.sel, tr.attrib, tr.limit & _M32, tr.base)
        buf[_OFF_CPL] = c.cpl
        _Q.pack_into(buf, _OFF_EFER, c.efer)
        dr = c.dr
        _CTRL.pack_into(buf, _OFF_CTRL, c.cr4, c.cr3, c.cr0, dr[7], dr[6], c.rflags, c.rip)
        regs = c.regs
        _Q.pack_into(buf, _OFF_RSP, regs[RSP])
        _GPR.pack_into(buf, _OFF_GPR, regs[RAX], c.star, c.lstar, c.cstar,
                       c.sfmask, c.kernel_gs_base)
        _Q.pack_into(buf, _OFF_CR2, c.cr2)
        # INTERRUPT_SHADOW reflects the guest's shadow state at #VMEXIT (APM vol 2 15.21.5,
        # table B-1 offset 68h): an instruction that has not completed (a #NPF on it) leaves
        # the shadow VMRUN loaded in force.
        if c.shadow:
            buf[_OFF_SHADOW] |= _BIT_SHADOW
        else:
            buf[_OFF_SHADOW] &= ~_BIT_SHADOW & 0xFF
        if buf[_OFF_VNMI_EN] & _BIT_VNMI_EN:
            mark = self._vnmi_iret
            if mark is not None and c.icount == mark[0]:
                # An IRET that exits before it completes has not unblocked virtual NMIs:
                # "hardware clears V_NMI_BLOCKING upon successful execution of IRET".
                c.nmi_blocked = mark[1]
            v.v_nmi_pending = 1 if c.nmi_pending else 0
            v.v_nmi_blocking = 1 if c.nmi_blocked else 0

    # ------------------------------------------------------------------ VMRUN
    def vmrun(self, budget: int) -> Exit | None:
        """VMRUN: load the guest, deliver EVENTINJ, run up to `budget` instructions.

        Returns the #VMEXIT, or None when the budget ran out with the guest still in guest
        mode: the simulator interleaves vCPUs that real hardware runs in parallel, and
        pausing the simulation of one is not an architectural event. `resume()` goes on."""
        c = self.cpu
        self.load_guest()
        _Q.pack_into(self.vmcb.buf, _OFF_EXITINTINFO, 0)
        self._pending = None
        self._rip_override = None
        self._vnmi_iret = None
        self.in_guest = True
        c.record_event(EV_VMRUN, 0, None, c.rip, c.rflags)
        try:
            self._inject_eventinj()
            self._virq_setup()
        except Intercepted:
            return self._finish_exit()
        # The state is loaded and EVENTINJ delivered: the vCPU's own test of whether the
        # next boundary needs its exact path (an event pending, TF/RF, a shadow, an
        # instruction breakpoint, a host stop...), rather than the slow path for every
        # first instruction after a VMRUN.
        c.recompute_attention()
        return self.resume(budget)

    def resume(self, budget: int) -> Exit | None:
        c = self.cpu
        try:
            c.run(budget)
            if self._pending is None:
                if c.stop_reason == "shutdown":
                    self._exit(ec.VMEXIT_SHUTDOWN)
                else:
                    return None
        except Intercepted:
            pass
        return self._finish_exit()

    def kick(self) -> Exit:
        """A host interrupt (the IPI bhyve's vcpu_notify_event sends, a timer callout) ends
        guest execution with a physical-interrupt #VMEXIT at the current boundary."""
        self._exit(ec.VMEXIT_INTR)
        return self._finish_exit()

    def _inject_eventinj(self) -> None:
        """Deliver EVENTINJ before the first guest instruction (APM 15.20). An intercepted
        exception during delivery exits with EXITINTINFO = the event being injected."""
        v, c = self.vmcb, self.cpu
        if not v.buf[_OFF_EVENTINJ + 3] & 0x80:          # EVENTINJ.V, bit 31
            return
        raw = v.eventinj
        v.eventinj = 0
        info = IntInfo.decode(raw)
        kind = _TYPE_KIND.get(info.type)
        if kind is None:
            self._exit(ec.VMEXIT_INVALID)
            raise Intercepted
        c.record_event(EV_INJECT, info.vector, info.errcode if info.errcode_valid else None,
                       c.rip, c.rflags, raw)
        self._injecting = raw
        if info.type == TYPE_NMI and v.v_nmi_enable:
            # "If Event Injection is used to inject an NMI when NMI Virtualization is
            # enabled, VMRUN sets V_NMI_MASK in the guest state" (APM, via KVM 72046d0a077a)
            c.nmi_blocked = True
        try:
            c.inject(kind, info.vector, info.errcode if info.errcode_valid else None)
        finally:
            self._injecting = 0

    _injecting = 0

    def _virq_setup(self) -> None:
        c = self.cpu
        # V_IRQ: a virtual interrupt the guest takes when RFLAGS.IF=1 outside a shadow and
        # above V_TPR (APM 15.21.4). bhyve only uses it with the VINTR intercept to learn
        # when the window opens, so taking it without the intercept is modelled simply.
        ctl = _Q.unpack_from(self.vmcb.buf, _OFF_VINTR_CTL)[0]
        c.intr_pending = bool(ctl >> _SH_V_IRQ & 1) and (
            bool(ctl >> _SH_V_IGN_TPR & 1) or (ctl >> _SH_V_INTR_PRIO & 0xF) > (ctl & 0xF))
        c.intr_ack = self._virq_ack
        c.attention = True

    def _virq_ack(self) -> int | None:
        self.vmcb.v_irq = 0
        self.cpu.intr_pending = False
        return self.vmcb.v_intr_vector

    # ------------------------------------------------------------------ #VMEXIT
    def _exit(self, code: int, info1: int = 0, info2: int = 0, nrip: int | None = None) -> None:
        """Record the #VMEXIT; the state is stored once the vCPU has stopped (the step loop
        rewinds RIP to the intercepted instruction first)."""
        c = self.cpu
        intinfo = 0
        if self._injecting:
            intinfo = self._injecting
        elif c.delivering is not None:
            kind, vec, err = c.delivering
            t = {"nmi": TYPE_NMI, "intr": TYPE_INTR, "soft": TYPE_SOFT_INT}.get(kind,
                                                                               TYPE_EXCEPTION)
            intinfo = IntInfo(vec, t, True, err is not None, err or 0).encode()
        c.delivering = None
        self._pending = (code, info1, info2, intinfo, nrip)

    def _finish_exit(self) -> Exit:
        v, c = self.vmcb, self.cpu
        assert self._pending is not None
        self._injecting = 0
        code, info1, info2, intinfo, nrip = self._pending
        if self._rip_override is not None:
            c.rip = self._rip_override
        self.save_guest()
        if (v.buf[_OFF_VNMI_EN] & _BIT_VNMI_EN and intinfo & (1 << 31)
                and (intinfo >> 8) & 7 == TYPE_NMI):
            # "Hardware clears V_NMI_BLOCKING ... if a VM-Exit occurs while delivering the
            # virtual NMI"; the NMI is in EXITINTINFO for the hypervisor to re-inject.
            v.v_nmi_blocking = 0
        nrip = nrip if nrip is not None else 0
        # EXITCODE, EXITINFO1, EXITINFO2, EXITINTINFO are consecutive (APM table B-1)
        _EXIT.pack_into(v.buf, _OFF_EXIT, code & _M64, info1 & _M64, info2 & _M64,  # u64 code
                        intinfo)
        _Q.pack_into(v.buf, _OFF_NRIP, nrip)
        self.exit = Exit(code, info1, info2, intinfo, nrip, c.rip)
        self.in_guest = False
        self._pending = None
        c.record_event(EV_VMEXIT, 0, None, c.rip, c.rflags, code & 0xFFFF_FFFF)
        return self.exit

    _pending: tuple[int, int, int, int, int | None] | None = None
    _rip_override: int | None = None
    # vNMI: (icount, NMI blocked) at the start of the IRET being executed
    _vnmi_iret: tuple[int, bool] | None = None

    def _intercept(self, code: int, info1: int = 0, info2: int = 0,
                   nrip: int | None = None) -> None:
        self._exit(code, info1, info2, nrip)
        raise Intercepted

    # ------------------------------------------------------------------ hooks
    def exception(self, cpu: Cpu, vector: int, error_code: int | None) -> None:
        mark = self._vnmi_iret
        if mark is not None and cpu.icount == mark[0] and self.vmcb.v_nmi_enable:
            # The IRET faulted: with vNMI only a successful IRET clears V_NMI_BLOCKING.
            cpu.nmi_blocked = mark[1]
            self._vnmi_iret = None
        if vector < 32 and self.vmcb.exception_intercepted(vector):
            # For #DB, DR6/DR7 were already updated (APM 15.12.2). For #PF, EXITINFO2 is
            # the faulting address. INT3/INTO report nRIP = the next instruction.
            info2 = cpu.cr2 if vector == 14 else 0
            nrip = None
            if vector in (3, 4) and cpu.delivering is None:
                # INT3/INTO: trap-like, the saved RIP and nRIP are the next instruction
                nrip = self._rip_override = cpu.rip
            self._intercept(ec.vmexit_excp(vector), error_code or 0, info2, nrip)

    def intr(self, cpu: Cpu) -> None:
        if self.vmcb.intercepted("VINTR") and self.vmcb.v_irq:
            self._intercept(ec.VMEXIT_VINTR)

    def nmi(self, cpu: Cpu) -> None:
        if self.vmcb.v_nmi_enable:
            return      # the virtual NMI (physical NMIs are not modelled in guest mode)
        if self.vmcb.intercepted("NMI"):
            self._intercept(ec.VMEXIT_NMI)

    def shutdown(self, cpu: Cpu, reason: str) -> None:
        self.shutdown_reason = reason
        if self.vmcb.intercepted("SHUTDOWN"):
            self._intercept(ec.VMEXIT_SHUTDOWN)

    def insn(self, cpu: Cpu, name: str, next_rip: int) -> None:
        buf = self.vmcb.buf
        if name == "iret" and buf[_OFF_VNMI_EN] & _BIT_VNMI_EN:
            self._vnmi_iret = (cpu.icount, bool(cpu.nmi_blocked))
        ent = _INSN_INTERCEPT_BITS.get(name)
        if ent is not None and buf[ent[0]] & ent[1]:
            self._intercept(ent[2], 0, 0, next_rip)

    def cr_write(self, cpu: Cpu, n: int, value: int, gpr: int, next_rip: int,
                 mov: bool = True) -> None:
        """CRn write intercepts (APM vol 2 15.9); with DecodeAssists EXITINFO1 bit 63 is 1
        for MOV CR (0 for CLTS and LMSW) and bits 3:0 name MOV's source GPR (15.8.1).
        CR0_SEL_WRITE is the selective one: a CR0 write that changes any bit other than TS
        and MP (15.9.1), so never CLTS; CR0_WRITE wins when both are set."""
        info1 = (1 << 63) | (gpr & 0xF) if mov else 0
        if self.vmcb.intercepted(f"CR{n}_WRITE"):
            self._intercept(ec.VMEXIT_CR0_WRITE + n, info1, 0, next_rip)
        if n == 0 and self.vmcb.intercepted("CR0_SEL_WRITE") and (value ^ cpu.cr0) & ~0xA:
            self._intercept(ec.VMEXIT_CR0_SEL_WRITE, info1, 0, next_rip)

    def io_in(self, cpu: Cpu, port: int, size: int, next_rip: int) -> int:
        self._io(port, size, True, next_rip)
        return (1 << (8 * size)) - 1

    def io_out(self, cpu: Cpu, port: int, size: int, value: int, next_rip: int) -> None:
        self._io(port, size, False, next_rip)

    def io_string(self, cpu: Cpu, port: int, size: int, is_in: bool, rep: bool,
                  addr_size: int, seg: int, next_rip: int) -> None:
        """INS/OUTS: the IOIO exit reports STR, REP, the address size and the segment
        (APM vol 2 15.10.2, figure 15-2); EXITINFO2 is the next RIP."""
        if self.vmcb.intercepted("IOIO_PROT") and self.iopm.io_intercepted(port, size):
            info = ec.IoioInfo(port=port, size=size, is_in=is_in, string=True, rep=rep,
                               addr_size=addr_size, seg=seg)
            self._intercept(ec.VMEXIT_IOIO, info.encode(), next_rip, next_rip)

    def _io(self, port: int, size: int, is_in: bool, next_rip: int) -> None:
        if self.vmcb.buf[_OFF_IOIO_PROT] & _BIT_IOIO_PROT and self.iopm.io_intercepted(port,
                                                                                     size):
            self._intercept(ec.VMEXIT_IOIO, ec.ioio_encode(port, size, is_in), next_rip,
                            next_rip)

    def rdmsr(self, cpu: Cpu, msr: int, next_rip: int) -> int | None:
        if self.vmcb.intercepted("MSR_PROT") and self.msrpm.msr_intercepted(msr, False):
            self._intercept(ec.VMEXIT_MSR, 0, 0, next_rip)
        return None

    def wrmsr(self, cpu: Cpu, msr: int, value: int, next_rip: int) -> bool:
        if self.vmcb.intercepted("MSR_PROT") and self.msrpm.msr_intercepted(msr, True):
            self._intercept(ec.VMEXIT_MSR, 1, 0, next_rip)
        return False

    def gpa(self, cpu: Cpu, gpa: int, access: int, walk: bool) -> int:
        if not self.vmcb.np_enable:
            return gpa
        try:
            return self.npt.translate(gpa, access & (ACC_WRITE | ACC_FETCH), walk)
        except NestedPageFault as f:
            # The instruction restarts after the hypervisor maps the page (APM 15.25.6).
            self._intercept(ec.VMEXIT_NPF, f.exitinfo1, f.gpa)
            raise AssertionError("unreachable") from None

    def unsupported(self, cpu: Cpu, rip: int, code: bytes, text: str) -> None:
        cpu.last_unsupported = (rip, code, text)
