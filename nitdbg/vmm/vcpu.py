"""One vCPU of the bhyve-like hypervisor: event injection, VMRUN, the exit-handler table.

`Vcpu.run()` is bhyve's vm_run for one vCPU: inject pending events (svm_inj_interrupts), enter
the guest, handle the #VMEXIT in the kernel when it can, and return to "userspace" (the
machine layer) with a `UserExit` when it cannot: the debugger hypercall, a bounce, a halted
vCPU with nothing to wake it, a triple fault, the end of the scheduling quantum.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..svm import exitcodes as ec
from ..svm.intinfo import TYPE_EXCEPTION, TYPE_INTR, TYPE_NMI, IntInfo
from ..svm.svm import Exit, Svm
from ..svm.vmcb import Vmcb
from ..x86.cpu import Cpu
from ..x86.regs import DR6_BS, HAS_ERRCODE, IF, TF
from .hypercall import HYPERCALL_PORT
from .inout_str import emulate_inout_str
from .vlapic import ApicGP

if TYPE_CHECKING:
    from .vm import Vm

EXIT_COST_NS = 500     # one #VMEXIT + VMRUN round trip, roughly what SVM hardware takes
# The VMCB words the exit path reads and writes on every round trip, by offset (the Vmcb's
# fields are their one source): the same bytes the named fields read, without a descriptor
# call per access.
_Q = struct.Struct("<Q")
_OFF_RIP = Vmcb.rip.offset
_OFF_RFLAGS = Vmcb.rflags.offset
_OFF_RAX = Vmcb.rax.offset
_OFF_EXITINTINFO = Vmcb.exitintinfo.offset
_OFF_EVENTINJ = Vmcb.eventinj.offset
_OFF_SHADOW = Vmcb.interrupt_shadow.offset      # bit 0
_OFF_V_TPR = Vmcb.v_tpr.offset                  # the whole byte
_OFF_V_IRQ, _BIT_V_IRQ = Vmcb.v_irq.offset, 1 << Vmcb.v_irq.lo
assert Vmcb.interrupt_shadow.lo == 0 and Vmcb.v_tpr.width == 8 and Vmcb.v_irq.width == 1
INTR_TYPE_NAMES = {TYPE_INTR: "hwintr", TYPE_NMI: "nmi", TYPE_EXCEPTION: "exception", 4: "swintr"}


@dataclass
class UserExit:
    """An exit the hypervisor hands to userspace (bhyve's VM_EXITCODE_*)."""

    kind: str                # kdb, panic, hlt, bogus, shutdown, debug_exit, quantum, unhandled,
    #                          internal (a bug in nitdbg stopped the vCPU)
    vcpu: int
    info: dict = field(default_factory=dict)


class Vcpu:
    def __init__(self, vm: Vm, vcpuid: int, cpu: Cpu):
        self.vm = vm
        self.id = vcpuid
        self.cpu = cpu
        self.vmcb = Vmcb()
        self.svm = Svm(cpu, self.vmcb, vm.npt, vm.iopm, vm.msrpm)
        # bhyve's per-vcpu state
        self.nmi_pending = False
        self.exitintinfo = 0          # an event whose delivery an exit interrupted
        self.exception_pending: IntInfo | None = None
        self.nextrip = 0
        self.halted = False
        self.wait_sipi = False        # after INIT, until a STARTUP IPI (vmm/initsipi.py)
        self.intr_window = False
        # NMI blocking is the policy's (vm.policy owns the per-vCPU state)
        self.recursive_nmi_armed = False
        self.bounce_pending = False
        self.kicked = False
        self.kassert_pending: str | None = None   # a failed KASSERT to report to userspace
        self.sstep_after_hlt = False
        self.stopped_by_host = False     # the machine holds it (in the debugger)
        self.last_exit: Exit | None = None
        self.exit_count = 0
        # Restarts of an instruction the hypervisor emulates piecewise (REP INS/OUTS): they
        # retire nothing, so run() counts them against its budget and the host stays bounded.
        self.restarts = 0
        # (rip, consecutive PAUSE exits there, retirement count at the last one, virtual
        # time of the first one)
        self.pause_spin: tuple[int, int, int, int] | None = None
        self.exit_listeners: list[Callable[[Vcpu, Exit], None]] = []
        self.handlers: dict[int, Callable[[Exit], UserExit | None]] = {
            ec.VMEXIT_INTR: self._exit_intr,
            ec.VMEXIT_VINTR: self._exit_vintr,
            ec.VMEXIT_IRET: self._exit_iret,
            ec.VMEXIT_HLT: self._exit_hlt,
            ec.VMEXIT_PAUSE: self._exit_pause,
            ec.VMEXIT_IOIO: self._exit_inout,
            ec.VMEXIT_MSR: self._exit_msr,
            ec.VMEXIT_NPF: self._exit_npf,
            ec.VMEXIT_SHUTDOWN: self._exit_shutdown,
            ec.VMEXIT_VMMCALL: self._exit_vmmcall,
        }

    # ------------------------------------------------------------------ helpers
    @property
    def policy(self):
        return self.vm.policy

    def nmi_describe(self) -> dict:
        """The NMI policy's state for this vCPU as plain data (state, last_unblock,
        last_transition, blocked, policy, and the policy's own fields)."""
        return self.policy.describe(self)

    # read-only views kept for the front ends and checkpoints
    @property
    def nmi_state(self) -> str:
        return self.policy.describe(self)["state"]

    @property
    def last_unblock(self) -> str:
        return self.policy.state(self).last_unblock

    @property
    def guest_rflags(self) -> int:
        """RFLAGS as the guest and the tools see it (a policy may hide its own TF/RF)."""
        return self.policy.guest_rflags(self)

    def kassert(self, message: str) -> None:
        """A hypervisor KASSERT failed: a bhyve kernel with INVARIANTS would panic. Logged,
        counted, and reported to userspace as a "kassert" stop at the end of this exit."""
        self.log("panic: %s", message)
        self.stat("VMM_KASSERT_FAILED")
        self.kassert_pending = message

    def now(self) -> int:
        return self.cpu.now()

    def log(self, fmt: str, *args: object) -> None:
        # VCPU_CTRn records the __FILE__ and __LINE__ of the trace call: the caller's
        f = sys._getframe(1)
        vm = self.vm
        vm.ktr.vcpu_log_at(vm.name, self.id, self.cpu.now(), fmt, args, f.f_code, f.f_lasti)

    def stat(self, key: str, n: int = 1, index: int = 0) -> None:
        self.vm.stats.incr(self.id, key, n, index)

    def set_intr_shadow(self, val: int) -> None:
        self.log("Setting intr_shadow to %d", val)
        self.vmcb.interrupt_shadow = val

    def eventinject(self, info: IntInfo) -> None:
        """svm_eventinject: program EVENTINJ."""
        assert not self.vmcb.eventinj & (1 << 31), "eventinj already valid"
        self.vmcb.eventinj = info.encode()
        self.log("Injecting %s at vector %d errcode %#x", INTR_TYPE_NAMES.get(info.type, "?"),
                 info.vector, info.errcode)

    def reflect_exception(self, vector: int, errcode: int | None) -> None:
        """vm_inject_exception: queue an exception for the next entry."""
        if vector in HAS_ERRCODE and errcode is None:
            errcode = 0
        if vector not in HAS_ERRCODE:
            errcode = None
        self.exception_pending = IntInfo.exception(vector, errcode)

    def single_step_trap(self) -> None:
        """Queue the single-step #DB the guest is owed for an instruction completed here."""
        self.vmcb.dr6 = self.vmcb.dr6 | DR6_BS
        self.reflect_exception(1, None)

    def set_dr(self, n: int, val: int) -> None:
        """vm_set_register(VM_REG_GUEST_DRn): DR0-3 live in the vCPU, DR7 in the VMCB."""
        self.cpu.dr[n] = val
        if n == 7:
            self.vmcb.dr7 = val
        self.cpu.update_debug()

    def inject_nmi(self) -> None:
        """vm_inject_nmi: mark an NMI pending and wake the vCPU."""
        self.nmi_pending = True
        self.halted = self.wait_sipi      # wait-for-SIPI: the NMI waits until it runs
        self.kick()

    def spin_start(self, min_exits: int) -> int | None:
        """When the PAUSE spin loop this vCPU is in began (virtual ns), or None if it is not
        spinning: many PAUSE exits at one RIP and nothing else in between."""
        ps = self.pause_spin
        if ps is None or ps[1] < min_exits or self.cpu.icount - ps[2] >= 64:
            return None
        return ps[3]

    def guest_can_take_intr(self) -> bool:
        return bool(self.vmcb.rflags & IF) and not self.vmcb.interrupt_shadow

    def wake_pending(self) -> bool:
        """Would a halted vCPU wake up (vm_handle_hlt)?"""
        if self.wait_sipi:
            return False
        if self.nmi_pending or self.exception_pending or self.exitintinfo:
            return True
        vec = self.vm.vlapics[self.id].pending_intr()
        return vec is not None and bool(self.vmcb.rflags & IF)

    # ------------------------------------------------------------------ injection
    def inj_interrupts(self) -> None:
        """svm_inj_interrupts: what to put in EVENTINJ / V_IRQ before the next VMRUN."""
        vmcb = self.vmcb
        buf = vmcb.buf
        need_window = False
        if buf[_OFF_SHADOW] & 1 and self.nextrip != _Q.unpack_from(buf, _OFF_RIP)[0]:
            vmcb.interrupt_shadow = 0
            self.log("Guest interrupt blocking cleared due to rip change: %#lx/%#lx",
                     self.nextrip, vmcb.rip)
        # an event an exit interrupted, then an exception the hypervisor queued
        if self.exitintinfo:
            info = IntInfo.decode(self.exitintinfo)
            self.exitintinfo = 0
            self.stat("VCPU_INTINFO_INJECTED")
            self.log("Injecting intinfo: %#lx", info.encode())
            self.eventinject(info)
        elif self.exception_pending is not None:
            info = self.exception_pending
            self.exception_pending = None
            self.eventinject(info)
        policy = self.vm.policy
        allowed = policy.intr_allowed(self)
        if self.nmi_pending and policy.inj_nmi(self):
            need_window = True
        vlapic = self.vm.vlapics[self.id]
        vector = vlapic.pending_intr()
        if vector is not None:
            if not vmcb.rflags & IF:
                self.log("Cannot inject vector %d due to rflags %#lx", vector, vmcb.rflags)
                need_window = True
            elif vmcb.interrupt_shadow:
                self.log("Cannot inject vector %d due to interrupt shadow", vector)
                need_window = True
            elif vmcb.eventinj & (1 << 31):
                self.log("Cannot inject vector %d due to eventinj %#lx", vector, vmcb.eventinj)
                need_window = True
            elif not allowed:
                self.log("Cannot inject vector %d due to iret tracing", vector)
            else:
                self.eventinject(IntInfo.interrupt(vector))
                vlapic.intr_accepted(vector)
                need_window = True
        buf[_OFF_V_TPR] = vlapic.cr8
        if need_window:
            self._enable_intr_window()
        elif buf[_OFF_V_IRQ] & _BIT_V_IRQ:
            self._disable_intr_window()

    def _enable_intr_window(self) -> None:
        if not self.vmcb.v_irq:
            self.log("Enable intr window exiting")
            self.vmcb.v_irq = 1
            self.vmcb.v_ign_tpr = 1
            self.vmcb.v_intr_vector = 0
            self.vmcb.set_intercept("VINTR", True)

    def _disable_intr_window(self) -> None:
        if self.vmcb.v_irq:
            self.log("Disable intr window exiting")
            self.vmcb.v_irq = 0
            self.vmcb.set_intercept("VINTR", False)

    # ------------------------------------------------------------------ the run loop
    def run(self, budget: int) -> UserExit:
        """Run the vCPU for at most `budget` guest instructions or until userspace is
        needed. A vCPU whose budget runs out stays in guest mode (see Svm.vmrun)."""
        cpu, svm, vm = self.cpu, self.svm, self.vm
        start = cpu.icount
        restarts0 = self.restarts
        while True:
            if self.restarts - restarts0 >= budget:
                return UserExit("quantum", self.id)
            if cpu.internal_error is not None:
                # a bug in nitdbg stopped the vCPU: userspace tells the person, nothing runs
                return UserExit("internal", self.id, cpu.internal_error.info())
            left = budget - (cpu.icount - start)
            if svm.in_guest:
                deadline = vm.next_deadline(self)
                if self.kicked or (deadline is not None and deadline <= cpu.now()):
                    self.kicked = False
                    exit_ = svm.kick()
                elif left <= 0:
                    return UserExit("quantum", self.id)
                else:
                    exit_ = svm.resume(self._limit(left))
                    if exit_ is None:
                        if cpu.stop_reason == "host":      # the gdb stub's stop
                            return UserExit("gdb", self.id)
                        continue
            else:
                self.kicked = False
                vm.fire_timers(self)
                if self.halted:
                    if not self.wake_pending():
                        return UserExit("hlt", self.id)
                    self.halted = False
                if self.sstep_after_hlt:       # woken up (here or by an event)
                    self.sstep_after_hlt = False
                    self.single_step_trap()
                if self.bounce_pending:
                    self.bounce_pending = False
                    return UserExit("bogus", self.id)
                if left <= 0:
                    return UserExit("quantum", self.id)
                self.inj_interrupts()
                if vm.policy.before_vmrun(self):
                    self.exit_after_injection()
                vm.current_vcpu = self.id
                exit_ = svm.vmrun(0 if self.kicked else self._limit(left))
                if exit_ is None:
                    if cpu.stop_reason == "host":
                        return UserExit("gdb", self.id)
                    continue
            self.last_exit = exit_
            buf = self.vmcb.buf
            self.nextrip = _Q.unpack_from(buf, _OFF_RIP)[0]
            self.exit_count += 1
            # A #VMEXIT and the VMRUN after it take time on real hardware; spin loops that
            # exit on every PAUSE advance their clock by it, so the vCPU they wait for runs.
            cpu.advance_time(EXIT_COST_NS)
            vm.stats.incr(self.id, "VMEXIT_COUNT")
            if buf[_OFF_EXITINTINFO + 3] & 0x80:          # EXITINTINFO.V, bit 31
                self.exitintinfo = self.vmcb.exitintinfo
                self.stat("VCPU_EXITINTINFO")
            vm.policy.after_vmexit(self, exit_)
            ux = self.vmexit(exit_)
            if ux is not None:
                return ux
            if self.kassert_pending is not None:
                msg, self.kassert_pending = self.kassert_pending, None
                return UserExit("kassert", self.id, {"message": msg, "rip": exit_.rip})
            if vm.resched:
                # another vCPU was woken: let the scheduler interleave again
                vm.resched = False
                return UserExit("quantum", self.id)

    def _limit(self, left: int) -> int:
        """Run no further than the next timer deadline, where the host would interrupt."""
        vm = self.vm
        vm.current_vcpu = self.id
        deadline = vm.next_deadline(self)
        if deadline is None:
            return left
        cpu = self.cpu
        per = cpu.retire.ns_per_insn
        n = (deadline - cpu.now() + per - 1) // per
        n = left if left <= n else n                     # max(1, min(left, n))
        return n if n > 1 else 1

    def exit_after_injection(self) -> None:
        """Exit again right after VMRUN has delivered EVENTINJ, before the first guest
        instruction (bhyve's self-IPI_AST, KVM's forced immediate exit)."""
        self.kicked = True

    def kick(self) -> None:
        """vcpu_notify_event: make a vCPU in guest mode exit so new events are seen."""
        if self.svm.in_guest:
            self.kicked = True

    def vmexit(self, e: Exit) -> UserExit | None:
        """svm_vmexit: dispatch by exit code, then log the exit as bhyve does."""
        code = e.code
        for cb in self.exit_listeners:
            cb(self, e)
        nrip = e.nrip
        emulated = code in EMULATED_EXITS
        inst_length = (nrip - e.rip) if nrip and emulated else 0
        if emulated and nrip:
            # The intercepted instruction is completed here: resume after it. It started
            # with the guest's RFLAGS.TF, so it owes the guest a single-step #DB (SDM
            # 17.3.1.4), as KVM's skip_emulated_instruction delivers; a HLT owes it after
            # wake-up, with the pushed RIP after the HLT.
            buf = self.vmcb.buf
            _Q.pack_into(buf, _OFF_RIP, nrip)             # vmcb.rip = nRIP
            if _Q.unpack_from(buf, _OFF_RFLAGS)[0] & TF:
                if code == ec.VMEXIT_HLT:
                    self.sstep_after_hlt = True
                else:
                    self.single_step_trap()
        if _EXCP_FIRST <= code <= _EXCP_LAST:
            ux = self._exit_exception(e)
        else:
            handler = self.handlers.get(code)
            if handler is None:
                self.stat("VMEXIT_UNKNOWN")
                ux = UserExit("unhandled", self.id, {"exitcode": code, "rip": e.rip})
            else:
                ux = handler(e)
        handled = ux is None or ux.kind in ("hlt", "quantum")
        self.log("%s %s vmexit at %#lx/%d", "handled" if handled else "unhandled",
                 ec.ktr_name(code), e.rip, inst_length)
        return ux

    # ------------------------------------------------------------------ exit handlers
    def _exit_intr(self, e: Exit) -> UserExit | None:
        self.stat("VMEXIT_EXTINT")
        return None

    def _exit_vintr(self, e: Exit) -> UserExit | None:
        self.stat("VMEXIT_VINTR")
        self._disable_intr_window()
        return None

    def _exit_iret(self, e: Exit) -> UserExit | None:
        # The exit comes before the IRET executes; it restarts at the same RIP.
        self.policy.iret_exit(self)
        return None

    def _exit_hlt(self, e: Exit) -> UserExit | None:
        self.stat("VMEXIT_HLT")
        self.halted = True
        return None

    def _exit_pause(self, e: Exit) -> UserExit | None:
        self.stat("VMEXIT_PAUSE")
        rip, n, _, t0 = self.pause_spin or (0, 0, 0, 0)
        if rip != e.rip or self.cpu.icount - _ > 64:
            n, t0 = 0, self.now()
        self.pause_spin = (e.rip, n + 1, self.cpu.icount, t0)
        # A spin-wait cannot end before another running vCPU acts. The real vCPUs run side
        # by side, so while the others execute, this one keeps spinning: its clock catches
        # up with the least advanced of them and the simulator turns to them (a directed
        # yield, like pause-loop exiting in KVM), instead of simulating every iteration.
        others = [w.now() for w in self.vm.vcpus if w is not self and not w.halted
                  and not w.stopped_by_host]
        if others:
            ahead = min(others) - self.now()
            if ahead > 0:
                self.cpu.advance_time(ahead)
            self.vm.resched = True
        return None

    def _exit_exception(self, e: Exit) -> UserExit | None:
        vector = e.code - ec.VMEXIT_EXCP_BASE
        self.stat("VMEXIT_EXCEPTION")
        if self.policy.exception_exit(self, vector, e.info1, e.info2):
            return None
        errcode = e.info1 if vector in HAS_ERRCODE else None
        if vector == 14:
            self.vmcb.cr2 = e.info2
        if vector in (3, 4) and e.nrip:
            # INT3/INTO: the guest RIP is already past the instruction (trap-like).
            self.vmcb.rip = e.nrip
        self.log("Reflecting exception %d/%#x into the guest", vector, e.info1 & 0xFFFF_FFFF)
        self.reflect_exception(vector, errcode)
        return None

    def _exit_inout(self, e: Exit) -> UserExit | None:
        self.stat("VMEXIT_INOUT")
        io = ec.ioio_decode(e.info1)
        vm = self.vm
        if io.string:
            emulate_inout_str(self, io, e)
            return None
        if io.port == HYPERCALL_PORT and not io.is_in:
            return vm.hypercall(self)
        buf = self.vmcb.buf
        mask = (1 << (8 * io.size)) - 1
        if io.is_in:
            value = vm.iobus.read(io.port, io.size, self.id)
            rax = _Q.unpack_from(buf, _OFF_RAX)[0]
            # IN to EAX zero-extends into RAX in 64-bit mode; AL/AX merge.
            _Q.pack_into(buf, _OFF_RAX,
                         value & mask if io.size == 4 else (rax & ~mask) | (value & mask))
        else:
            vm.iobus.write(io.port, io.size, _Q.unpack_from(buf, _OFF_RAX)[0] & mask, self.id)
            if vm.debug_exit.exit_status is not None:
                return UserExit("debug_exit", self.id, {"status": vm.debug_exit.exit_status})
        return None

    def _exit_msr(self, e: Exit) -> UserExit | None:
        write = e.info1 == 1
        self.stat("VMEXIT_WRMSR" if write else "VMEXIT_RDMSR")
        ecx = self.cpu.regs[1] & 0xFFFF_FFFF
        vlapic = self.vm.vlapics[self.id]
        try:
            if not vlapic.handles_msr(ecx):
                raise ApicGP(f"msr {ecx:#x}")
            if write:
                val = ((self.cpu.regs[2] & 0xFFFF_FFFF) << 32) | (self.vmcb.rax & 0xFFFF_FFFF)
                vlapic.wrmsr(ecx, val)
            else:
                val = vlapic.rdmsr(ecx)
                self.vmcb.rax = val & 0xFFFF_FFFF
                self.cpu.regs[2] = (val >> 32) & 0xFFFF_FFFF
        except ApicGP:
            # the WRMSR/RDMSR faults: #GP at the instruction itself
            self.vmcb.rip = e.rip
            self.reflect_exception(13, 0)
        return None

    def _exit_npf(self, e: Exit) -> UserExit | None:
        self.stat("VMEXIT_NESTED_FAULT")
        self.log("nested page fault on gpa %#lx/%#lx at rip %#lx", e.info2, e.info1, e.rip)
        if not self.vm.npt.fault_in(e.info2):
            return UserExit("unhandled", self.id, {"exitcode": e.code, "gpa": e.info2,
                                                   "rip": e.rip})
        self.cpu.flush_tlb()
        # bounce_to_userspace acts on nested page faults of an IRET still in flight (only
        # with invalidate_nested_mappings, as the seed says).
        in_flight = self.policy.iret_in_flight(self, e.rip)
        if in_flight and self.vm.knobs.bounce_to_userspace \
                and self.vm.knobs.invalidate_nested_mappings:
            self.log("Bouncing to userspace")
            self.stat("VMEXIT_USERSPACE")
            return UserExit("bogus", self.id, {"rip": e.rip})
        return None

    def _exit_shutdown(self, e: Exit) -> UserExit | None:
        return UserExit("shutdown", self.id, {"reason": self.svm.shutdown_reason or "triple fault"})

    def _exit_vmmcall(self, e: Exit) -> UserExit | None:
        self.reflect_exception(6, None)
        return None


_EXCP_FIRST, _EXCP_LAST = ec.VMEXIT_EXCP_BASE, ec.VMEXIT_EXCP_BASE + 31   # is_exception_exit
# Exits for instructions the hypervisor completes itself: the guest resumes at nRIP.
EMULATED_EXITS = frozenset({ec.VMEXIT_HLT, ec.VMEXIT_PAUSE, ec.VMEXIT_IOIO, ec.VMEXIT_MSR,
                      ec.VMEXIT_CPUID})
