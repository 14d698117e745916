"""Host-level single steps of one vCPU, exact (what `Machine.step_vcpu` does).

- "insn": exactly one thing happens in the guest: one instruction retires, or the
  hypervisor completes one intercepted instruction (HLT, IN/OUT, RDMSR/WRMSR, CPUID, PAUSE),
  or one event is delivered (an injected NMI, a reflected exception, a fault, an interrupt):
  a delivery is a stop of its own, before the handler's first instruction.
- "exit": up to the next #VMEXIT and its handling by the hypervisor, stopping before the
  next VMRUN (the VMCB then holds what that exit saved and what the handler changed).

The vCPU run loop (nitdbg.vmm) runs until its budget is spent or userspace is needed, and
would go on past a delivery or an emulated instruction within the same budget. The step
watches it from outside, with the hooks a host debugger has: the retirement events (a
delivery), the exit listeners, and a bounce to userspace after an exit (the vCPU's own
`bounce_pending`); a delivery ends the step where the vCPU would next resume guest
execution. Nothing of the machine's state is changed by the watching itself, so replaying a
recorded step reproduces it exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .svm import exitcodes as ec
from .x86.retire import EV_EXCEPTION, EV_INTR, EV_NMI, EV_SOFTINT

if TYPE_CHECKING:
    from .machine import Machine, StopEvent

DELIVERIES = frozenset({EV_EXCEPTION, EV_NMI, EV_INTR, EV_SOFTINT})
# exits after which the hypervisor resumes the guest past the intercepted instruction
EMULATED = frozenset({ec.VMEXIT_HLT, ec.VMEXIT_PAUSE, ec.VMEXIT_IOIO, ec.VMEXIT_MSR,
                      ec.VMEXIT_CPUID})


class _Stop(Exception):
    """Ends a step where the vCPU would resume guest execution (it stays in guest mode, as
    when a scheduling quantum ends)."""


def host_step(m: Machine, vcpu: int, unit: str = "insn", limit: int = 1_000_000
              ) -> StopEvent:
    from .machine import MachineError, StopEvent
    if unit not in ("insn", "exit"):
        raise MachineError(f"unknown step unit '{unit}' (insn or exit)")
    if not 0 <= vcpu < len(m.vm.vcpus):
        raise MachineError(f"no vCPU {vcpu} (the VM has {len(m.vm.vcpus)})")
    if getattr(m, "powered_off", False):
        return StopEvent("poweroff", vcpu)
    if vcpu in m.in_kdb:
        return StopEvent("kdb", vcpu, dict(m.in_kdb[vcpu]))
    v = m.vm.vcpus[vcpu]
    c = v.cpu
    start = c.icount
    seen: dict[str, object] = {}

    record = c.record_event

    def on_event(kind: int, vector: int, error_code: int | None, rip: int, rflags: int,
                 info: int = 0) -> None:
        record(kind, vector, error_code, rip, rflags, info)
        if unit == "insn" and kind in DELIVERIES and "delivered" not in seen:
            seen["delivered"] = (kind, vector, rip)
            c.request_stop()         # no instruction of the handler runs in this step

    def on_exit(_v, e) -> None:  # noqa: ANN001 - Vcpu, Exit
        seen.setdefault("exit", e.code)
        if (unit == "exit" or e.code in EMULATED) and not v.bounce_pending:
            v.bounce_pending = True      # back to userspace once the exit is handled
            seen["bounced"] = True

    resume = v.svm.resume

    def guarded_resume(budget: int):  # noqa: ANN202 - Exit | None
        if "delivered" in seen or (unit == "insn" and c.icount > start):
            raise _Stop
        return resume(budget)

    c.record_event = on_event
    v.exit_listeners.append(on_exit)
    v.svm.resume = guarded_resume
    try:
        while True:
            if v.halted and not v.wake_pending() and not m.vm.sleep_until_event(v):
                return StopEvent("idle", vcpu)
            before = c.icount
            try:
                ux = v.run(1)
            except _Stop:
                ux = None
            finally:
                m.total_retired += c.icount - before
            ev = m._userspace(ux) if ux is not None else None
            if ev is not None:
                return ev                # the debugger hypercall, a shutdown, ...
            if unit == "exit":
                if "exit" in seen:
                    break
            elif "delivered" in seen or c.icount > start or "bounced" in seen:
                break
            if c.icount - start >= limit:
                return StopEvent("budget", vcpu)
    finally:
        del c.record_event
        v.exit_listeners.remove(on_exit)
        del v.svm.resume
        if seen.get("bounced") and v.bounce_pending:
            v.bounce_pending = False
        c.stop_requested = False
    info: dict = {"retired": c.icount - start}
    if "exit" in seen:
        info["exitcode"] = seen["exit"]
    if "delivered" in seen:
        kind, vector, rip = seen["delivered"]     # type: ignore[misc]
        info["delivered"] = {EV_NMI: "NMI", EV_INTR: "interrupt", EV_SOFTINT: "INT n"}.get(
            kind, "exception")
        info["vector"] = vector
    return StopEvent("step", vcpu, info)
