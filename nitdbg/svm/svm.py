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
from .vmcb import SEGMENT_OFFSETS, Iopm, Msrpm, Vmcb

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
_CTRL = struct.Struct("<7Q")
_GPR = struct.Struct("<6Q")
_Q = struct.Struct("<Q")
_EXIT = struct.Struct("<4Q")
_M64 = 0xFFFF_FFFF_FFFF_FFFF
_TYPE_KIND = {TYPE_INTR: "intr", TYPE_NMI: "nmi", TYPE_EXCEPTION: "exception",
              TYPE_SOFT_INT: "soft"}


@dataclass
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
        segs = _SEG_ALL.unpack_from(buf, _OFF_SEGS)
        for i, seg in enumerate((*c.seg, None, c.ldtr, None, c.tr)):
            sel, attrib, limit, base = segs[4 * i:4 * i + 4]
            if seg is None:
                tbl = c.gdtr if i == 6 else c.idtr
                tbl.base, tbl.limit = base, limit
            else:
                seg.sel, seg.attrib, seg.limit, seg.base = sel, attrib, limit, base
        cpl = buf[_OFF_CPL]
        efer, = _Q.unpack_from(buf, _OFF_EFER)
        cr4, cr3, cr0, dr7, dr6, rflags, rip = _CTRL.unpack_from(buf, _OFF_CTRL)
        rsp, = _Q.unpack_from(buf, _OFF_RSP)
        rax, c.star, c.lstar, c.cstar, c.sfmask, c.kernel_gs_base = _GPR.unpack_from(
            buf, _OFF_GPR)
        c.cr2, = _Q.unpack_from(buf, _OFF_CR2)
        paging_changed = (c.cr0, c.cr3, c.cr4, c.efer) != (cr0, cr3, cr4, efer)
        c.cr0, c.cr3, c.cr4, c.efer = cr0, cr3, cr4, efer
        debug_changed = c.dr[7] != dr7
        c.dr[6], c.dr[7] = dr6, dr7
        c.rflags = rflags | 0x2
        c.rip = rip
        c.regs[RSP] = rsp
        c.regs[RAX] = rax
        c.cpl = cpl
        c.shadow = SHADOW_STI if v.interrupt_shadow else 0
        if v.v_nmi_enable:
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
        vals: list[int] = []
        for s in c.seg:
            vals += (s.sel, s.attrib, s.limit & 0xFFFF_FFFF, s.base)
        vals += (0, 0, c.gdtr.limit, c.gdtr.base)
        vals += (c.ldtr.sel, c.ldtr.attrib, c.ldtr.limit & 0xFFFF_FFFF, c.ldtr.base)
        vals += (0, 0, c.idtr.limit, c.idtr.base)
        vals += (c.tr.sel, c.tr.attrib, c.tr.limit & 0xFFFF_FFFF, c.tr.base)
        _SEG_ALL.pack_into(buf, _OFF_SEGS, *vals)
        buf[_OFF_CPL] = c.cpl
        _Q.pack_into(buf, _OFF_EFER, c.efer)
        _CTRL.pack_into(buf, _OFF_CTRL, c.cr4, c.cr3, c.cr0, c.dr[7], c.dr[6],
                        c.rflags, c.rip)
        _Q.pack_into(buf, _OFF_RSP, c.regs[RSP])
        _GPR.pack_into(buf, _OFF_GPR, c.regs[RAX], c.star, c.lstar, c.cstar,
                       c.sfmask, c.kernel_gs_base)
        _Q.pack_into(buf, _OFF_CR2, c.cr2)
        # INTERRUPT_SHADOW reflects the guest's shadow state at #VMEXIT (APM vol 2 15.21.5,
        # table B-1 offset 68h): an instruction that has not completed (a #NPF on it) leaves
        # the shadow VMRUN loaded in force.
        v.interrupt_shadow = 1 if c.shadow else 0
        if v.v_nmi_enable:
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
        self.vmcb.exitintinfo = 0
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
        raw = v.eventinj
        if not raw & (1 << 31):
            return
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
        v, c = self.vmcb, self.cpu
        # V_IRQ: a virtual interrupt the guest takes when RFLAGS.IF=1 outside a shadow and
        # above V_TPR (APM 15.21.4). bhyve only uses it with the VINTR intercept to learn
        # when the window opens, so taking it without the intercept is modelled simply.
        c.intr_pending = bool(v.v_irq) and (
            bool(v.v_ign_tpr) or v.v_intr_prio > (v.v_tpr & 0xF))
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
        if v.v_nmi_enable and intinfo & (1 << 31) and (intinfo >> 8) & 7 == TYPE_NMI:
            # "Hardware clears V_NMI_BLOCKING ... if a VM-Exit occurs while delivering the
            # virtual NMI"; the NMI is in EXITINTINFO for the hypervisor to re-inject.
            v.v_nmi_blocking = 0
        nrip = nrip if nrip is not None else 0
        # EXITCODE, EXITINFO1, EXITINFO2, EXITINTINFO are consecutive (APM table B-1)
        _EXIT.pack_into(v.buf, _OFF_EXIT, ec.exitcode_to_u64(code), info1 & _M64, info2 & _M64,
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
        if name == "iret" and self.vmcb.v_nmi_enable:
            self._vnmi_iret = (cpu.icount, bool(cpu.nmi_blocked))
        ent = _INSN_INTERCEPTS.get(name)
        if ent is not None and self.vmcb.intercepted(ent[0]):
            self._intercept(ent[1], 0, 0, next_rip)

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
        if self.vmcb.intercepted("IOIO_PROT") and self.iopm.io_intercepted(port, size):
            info = ec.IoioInfo(port=port, size=size, is_in=is_in)
            self._intercept(ec.VMEXIT_IOIO, info.encode(), next_rip, next_rip)

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
