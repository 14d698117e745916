"""The hardware reference: the same guest, the same inputs, NMIs handled by the CPU itself.

Design: the same VM with the hypervisor taken out of the NMI and interrupt path, rather than a
second, bare x86 machine. The devices, the local APIC, the nested page table and the guest's
kdb hypercall are served exactly as in the policy's run (they are not what is judged), so the
only thing that changes is who blocks, holds and delivers events:

- no NMI intercept, no IRET intercept, no EVENTINJ of NMIs or interrupts, no TF planted, no
  exception intercepts: an NMI is raised on the x86 core's own NMI line (`Cpu.raise_nmi`),
  which blocks further NMIs until the next IRET completes, also when that IRET faults, holds
  one pending and wakes HLT (SDM vol 3 6.7.1, vol 2 HLT); the local APIC drives the core's
  INTR line and the core takes the interrupt when RFLAGS.IF=1 and no shadow (SDM 6.8.1);
- the inputs come from the policy run's recording (see `recorder`), at the same retired-
  instruction index of each vCPU; the APIC timer, IPIs and bhyvectl of this run reach
  nothing on their own (their time differs: no exit costs, no delay_usecs).

Everything else (HLT, I/O and MSR exits, their time) stays the vmm's.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

from ..machine import Machine
from ..vmm.vcpu import Vcpu
from ..vmm.vlapic import Vlapic
from ..x86.regs import IF
from .diff import Difference, compare_outcomes
from .outcome import Outcome, outcome
from .recorder import STOP_KINDS, Recording

MC_VECTOR = 18
OVERRUN_INSNS = 1_000_000    # how far hardware may run on past a stop the policy's run made


def _intr_line(v: Vcpu, vl: Vlapic) -> None:
    """Drive the core's INTR pin from the local APIC (its interrupt-acknowledge cycle moves
    the vector from IRR to ISR)."""
    def ack() -> int | None:
        vec = vl.pending_intr()
        if vec is None:
            return None
        return Vlapic.intr_accepted(vl, vec)
    v.cpu.set_intr_line(vl.pending_intr() is not None, ack)


def make_bare(m: Machine) -> Machine:
    """Take the hypervisor out of `m`'s NMI and interrupt path (before it runs)."""
    vm = m.vm
    for v, vl in zip(vm.vcpus, vm.vlapics, strict=True):
        vmcb = v.vmcb
        vmcb.set_intercept("NMI", False)
        vmcb.set_intercept("IRET", False)
        # No exception intercepts but #MC, and #BP/#OF where the boot-time tunable
        # (hw.vmm.trace_guest_exceptions) intercepts them: a reflected INT3 is completed by
        # the hypervisor instead of retiring, which the guest cannot tell, so both runs must
        # count it alike.
        vmcb.exception_intercepts = (1 << MC_VECTOR) | (vmcb.exception_intercepts & 0x18)
        # this run's own sources of NMIs and fixed interrupts reach nothing
        v.inject_nmi = lambda: None                    # type: ignore[method-assign]
        vl.on_nmi = None
        vl.set_intr = lambda vector, level=False: False             # type: ignore[method-assign]
        v.inj_interrupts = _bare_inj(v)                # type: ignore[method-assign]
        v.wake_pending = _bare_wake(v, vl)             # type: ignore[method-assign]
        v.svm._virq_setup = lambda v=v, vl=vl: _intr_line(v, vl)  # type: ignore[method-assign]
        for name in ("eoi", "set_tpr", "intr_accepted"):
            _refresh_after(v, vl, name)
    m.bare = True   # type: ignore[attr-defined]
    return m


def _refresh_after(v: Vcpu, vl: Vlapic, name: str) -> None:
    orig = getattr(vl, name)

    def call(*a: Any) -> Any:
        r = orig(*a)
        _intr_line(v, vl)
        return r
    setattr(vl, name, call)


def _bare_inj(v: Vcpu) -> Callable[[], None]:
    def inj_interrupts() -> None:
        """bhyve's svm_inj_interrupts without NMIs and interrupts: only the events the
        hypervisor itself owes the guest (an exception it queued, an event an exit
        interrupted) go through EVENTINJ."""
        vmcb = v.vmcb
        if v.nextrip != vmcb.rip and vmcb.interrupt_shadow:
            vmcb.interrupt_shadow = 0
        if v.exitintinfo:
            from ..svm.intinfo import IntInfo
            info = IntInfo.decode(v.exitintinfo)
            v.exitintinfo = 0
            v.eventinject(info)
        elif v.exception_pending is not None:
            info = v.exception_pending
            v.exception_pending = None
            v.eventinject(info)
        vmcb.v_tpr = v.vm.vlapics[v.id].cr8
    return inj_interrupts


def _bare_wake(v: Vcpu, vl: Vlapic) -> Callable[[], bool]:
    def wake_pending() -> bool:
        # HLT ends on an unblocked NMI or an unmasked interrupt (SDM vol 2 HLT)
        c = v.cpu
        if v.wait_sipi:
            return False    # after INIT only a STARTUP IPI wakes it (SDM vol 3 9.4.2)
        if v.exception_pending or v.exitintinfo:
            return True
        if c.nmi_pending and not c.nmi_blocked:
            return True
        return vl.pending_intr() is not None and bool(v.vmcb.rflags & IF)
    return wake_pending


def build(tl: Recording) -> Machine:
    cfg = tl.config
    m = Machine(kernel=cfg["kernel"], vcpus=cfg["vcpus"], ram_size=cfg["ram_size"],
                name=cfg["name"], tunables=cfg["tunables"], quantum=cfg["quantum"],
                retire_order=cfg["retire_order"])
    return make_bare(m)


def _run_to(m: Machine, vcpu: int, end: int, kind: str) -> None:
    """Run one vCPU of the reference up to `end` retired instructions, then take the user
    exit the policy run stopped with there (the kdb hypercall, a shutdown)."""
    v = m.vm.vcpus[vcpu]
    stuck = 0
    while v.cpu.icount < end and vcpu not in m.in_kdb and m.shutdown is None:
        if v.halted and not v.wake_pending():
            return          # hardware stays halted where the policy's run went on
        before = v.cpu.icount
        ev = m._userspace(v.run(end - v.cpu.icount))
        if ev is not None:
            return
        stuck = stuck + 1 if v.cpu.icount == before else 0
        if stuck > 1000:
            return
    if v.cpu.icount != end or vcpu in m.in_kdb or m.shutdown is not None or v.halted:
        return
    if kind == "hlt":
        m._userspace(v.run(1))      # the HLT the slice ended in has not retired
    elif kind in STOP_KINDS:
        # The policy's run stopped here (a hypercall, a shutdown). If the guest's stream is
        # still the same, the exit comes at once; if it has diverged, hardware reaches its
        # own stop later: run on to it, so the debugger inputs that follow meet a stop.
        spent = rounds = 0
        while spent < OVERRUN_INSNS and rounds < 10_000 and vcpu not in m.in_kdb \
                and m.shutdown is None:
            rounds += 1
            if v.halted and not v.wake_pending() and not m.vm.sleep_until_event(v):
                return
            before = v.cpu.icount
            if m._userspace(v.run(OVERRUN_INSNS - spent)) is not None:
                return
            spent += v.cpu.icount - before


def replay(m: Machine, tl: Recording) -> Machine:
    """Feed the policy run's inputs to the reference machine `m`, in order."""
    vm = m.vm
    for e in tl.entries:
        op = e[0]
        if op == "run":
            _run_to(m, e[1], e[2], e[3])
        elif op == "nmi":
            v = vm.vcpus[e[1]]
            v.cpu.raise_nmi()
        elif op == "intr":
            vl = vm.vlapics[e[1]]
            Vlapic.set_intr(vl, e[3], e[4])
            _intr_line(vm.vcpus[e[1]], vl)
        elif op == "mem":
            vm.mem.write_bytes(e[3], e[4])
            for v in vm.vcpus:
                v.cpu.invalidate_code_page(e[3] >> 12)
                v.cpu.flush_tlb()
        elif op == "dr":
            vm.vcpus[e[1]].set_dr(e[3], e[4])
        elif op == "console":
            vm.com1.feed(e[1])
        elif op == "ddb_enter":
            if e[1] in m.in_kdb:
                m.ddb.enter(e[1], m.in_kdb[e[1]])
        elif op == "ddb_cmd":
            if m.in_kdb:
                m.ddb.command(e[1])
        elif op == "leave":
            m.leave_kdb(e[1])
    return m


def reference_run(tl: Recording) -> Machine:
    """The hardware reference of a recorded policy run."""
    return replay(build(tl), tl)


def differences_of(runs: list[tuple[str, Outcome]]) -> list[tuple[str, Difference]]:
    """The differences from hardware of recorded runs (part name, difference). Each run is
    its outcome (`outcome.outcome(m, keep=True)`), so the machines that made them need not
    be alive; the references are built and compared one at a time."""
    out = []
    for i, (part, o) in enumerate(runs):
        tl = o.inputs
        if tl is None:
            raise ValueError(f"the run {part!r} was not recorded (reference.record)")
        ref = reference_run(tl)
        out += [(part, d) for d in compare_outcomes(o, outcome(ref), tl.entries)]
        del ref
        if i + 1 < len(runs):
            # the reference is garbage in reference cycles: free it before the next is
            # built, or the knob matrix's 25 pile up until the collector runs
            gc.collect()
    return out
