"""The explain panel: which rule of the manuals produced what the machine just did.

Derived from what actually happened (the newest notable event in the vCPU's retirement log,
its exit code, DR6 as the #DB left it, the hypervisor's NMI state and ddb's stop reason), so
a student sees TF and RF rules at the moment they act. No Textual here.
"""

from __future__ import annotations

from itertools import islice

from ..svm import exitcodes as ec
from ..x86.regs import DR6_BS
from ..x86.retire import EV_EXCEPTION, EV_INJECT, EV_NMI, EV_VMEXIT, Event
from .model import Explanation

SCAN = 1 << 16         # newest retirement-log events looked at (the whole ring)
# Exits the hypervisor handles on every idle loop: not "the last event" worth explaining.
ROUTINE_EXITS = frozenset({ec.VMEXIT_PAUSE, ec.VMEXIT_HLT, ec.VMEXIT_IOIO, ec.VMEXIT_MSR,
                           ec.VMEXIT_VMMCALL, ec.VMEXIT_INTR, ec.VMEXIT_VINTR,
                           ec.VMEXIT_CPUID})


def _notable(e: Event) -> bool:
    if e.kind == EV_VMEXIT:
        return e.info not in ROUTINE_EXITS
    if e.kind == EV_INJECT:
        return e.vector == 2 or e.vector == 1
    if e.kind == EV_NMI:
        return True
    return e.kind == EV_EXCEPTION and e.vector in (1, 3, 13)


def last_notable(events) -> Event | None:  # noqa: ANN001 - the log's deque
    for e in islice(reversed(events), SCAN):
        if _notable(e):
            return e
    return None


def explain_event(e: Event, v, sym) -> Explanation | None:  # noqa: ANN001
    """The rule behind one retirement-log event of vCPU `v`."""
    where = sym(e.rip)
    bs = "BS=1" if e.dr6 & DR6_BS else "BS=0"
    if e.kind == EV_VMEXIT:
        code = e.info
        name = ec.apm_name(code)
        if code == ec.VMEXIT_IRET:
            return Explanation(
                "IRET intercepted",
                "the IRET intercept is taken before the IRET executes: the VMCB's RIP still "
                "points at the iret, and NMI blocking has not ended yet",
                "AMD APM vol 2 15.9 (instruction intercepts)",
                f"{name} at {where}")
        if code == ec.vmexit_excp(1):
            if e.dr6 & DR6_BS:
                return Explanation(
                    "#DB after the IRET",
                    "IRET executed with TF=1 at its start: #DB trap after it, DR6.BS=1; the "
                    "hypervisor ends NMI blocking here (vNMIs unblocked precisely); DR6 is "
                    "written before the #DB intercept",
                    "AMD APM vol 2 13.1.4 (single step), 15.12.2 (#DB intercept)",
                    f"{name} at {where}, DR6={e.dr6:#x} ({bs})")
            return Explanation(
                "#DB intercepted", "a debug exception without DR6.BS is the guest's own "
                "(breakpoint or general detect) and is reflected back",
                "AMD APM vol 2 13.1.1", f"{name} at {where}, DR6={e.dr6:#x} ({bs})")
        if ec.is_exception_exit(code):
            vec = code - ec.VMEXIT_EXCP_BASE
            return Explanation(
                f"exception {vec} intercepted",
                "an IRET that faults still unblocks NMIs; the guest's own TF/RF are restored "
                "and the exception is reflected into the guest",
                "Intel SDM vol 3 6.7.1", f"{name} at {where}")
        if code == ec.VMEXIT_NPF:
            return Explanation(
                "nested page fault", "the faulting instruction restarts after the hypervisor "
                "maps the page; an IRET under tracing keeps TF/RF set across the restart",
                "AMD APM vol 2 15.25.6 (nested page faults)", f"{name} at {where}")
        return Explanation(f"VM exit {ec.ktr_name(code)}", "an intercepted event left the "
                           "guest", "AMD APM vol 2 15.9", f"{name} at {where}")
    if e.kind == EV_INJECT:
        if e.vector == 2:
            return Explanation(
                "vNMI injected", "EVENTINJ type NMI is delivered at VMRUN before any guest "
                "instruction; the hypervisor now intercepts IRET (vNMI blocking enabled), "
                "because NMIs stay blocked until the handler's IRET",
                "AMD APM vol 2 15.20; Intel SDM vol 3 6.7.1", f"EVENTINJ at {where}")
        return Explanation("#DB reflected", "the hypervisor re-injects a #DB the guest itself "
                           "wanted (its own single step or breakpoint)", "AMD APM vol 2 15.20",
                           f"EVENTINJ vector 1 at {where}")
    if e.kind == EV_NMI:
        return Explanation(
            "NMI delivered", "NMI blocked until IRET: the processor blocks further NMIs from "
            "the delivery until the next IRET", "Intel SDM vol 3 6.7.1",
            f"pushed RIP {where}, RFLAGS {e.rflags:#x}")
    if e.kind == EV_EXCEPTION and e.vector == 1:
        tf = "TF=1" if e.rflags & 0x100 else "TF=0"
        return Explanation(
            "single-step #DB", "TF was 1 at the start of the instruction: a #DB trap after it "
            "with DR6.BS=1; TF is cleared on entry to the handler and the pushed RFLAGS keep "
            "it, so the IRET that returns resumes single-stepping",
            "AMD APM vol 2 13.1.4; Intel SDM vol 3 17.3.1.4",
            f"pushed RIP {where}, pushed RFLAGS {e.rflags:#x} ({tf}), DR6={e.dr6:#x} ({bs})")
    if e.kind == EV_EXCEPTION and e.vector == 3:
        return Explanation("breakpoint #BP", "int3 is a trap: the pushed RIP is after the int3; "
                           "ddb moves it back onto the breakpoint", "Intel SDM vol 3 6.15",
                           f"pushed RIP {where}")
    if e.kind == EV_EXCEPTION and e.vector == 13:
        return Explanation("#GP", "a non-canonical return address faults in the IRET itself; "
                           "NMIs are unblocked even though the IRET faulted",
                           "Intel SDM vol 3 6.7.1", f"pushed RIP {where}")
    return None


def explain_state(v) -> Explanation | None:  # noqa: ANN001
    """The rule behind the hypervisor's current NMI state for vCPU `v`."""
    pol = v.vm.policy.name
    if v.nmi_state == "tracing":
        return Explanation(
            "IRET tracing", "at the IRET exit the hypervisor set RFLAGS.TF and RF and intercepts "
            "#DB: TF takes effect after the first guest instruction (the IRET), RF suppresses "
            "an instruction breakpoint on it", "AMD APM vol 2 15.5.1, 13.1.3.1",
            f"policy {pol}")
    if v.nmi_state == "blocked":
        return Explanation(
            "NMI blocked", "NMI blocked until IRET; SVM does not report the IRET, so the "
            "hypervisor intercepts it", "Intel SDM vol 3 6.7.1; AMD APM vol 2 15.9",
            f"policy {pol}, IRET intercept on")
    if v.last_unblock == "speculatively":
        return Explanation(
            "unblocked speculatively", "an IRET with NT=1 is a task return: RFLAGS come from "
            "the TSS of the old task, so TF cannot be planted", "Intel SDM vol 3 7.3",
            f"policy {pol}")
    if v.last_unblock == "upstream":
        return Explanation(
            "unblocked at the IRET exit", "bhyve-upstream clears blocking at the IRET exit and "
            "sets the interrupt shadow: an NMI may be injected before the IRET has executed "
            "(the hole iret tracing closes)", "AMD APM vol 2 15.21.5 (interrupt shadow)",
            f"policy {pol}")
    return None


def explain_stop(m, vcpu: int) -> Explanation | None:  # noqa: ANN001
    """Why ddb stopped where it did."""
    ddb = m.ddb
    if not ddb.active or ddb.vcpu != vcpu:
        return None
    reason = ddb.stop_reason
    if reason == "step":
        return Explanation(
            "ddb step", "ddb set PSL_T (TF) in the trapframe; the trap exit's IRET loaded it, "
            "so exactly one instruction ran before the single-step #DB (DR6.BS=1)",
            "AMD APM vol 2 13.1.4", "stop reason: step")
    if reason == "T_NMI":
        return Explanation(
            "debugger entered on NMI", "machdep.kdb_on_nmi=1: the guest's NMI handler enters "
            "ddb; an NMI that arrives during HLT returns to the instruction after the hlt",
            "Intel SDM vol 3 6.7.1; SDM vol 2 HLT", "stop reason: T_NMI")
    if reason == "breakpoint":
        return Explanation("breakpoint", "ddb's int3 trapped; RF=1 on the way back keeps an "
                           "instruction breakpoint from firing twice", "AMD APM vol 2 13.1.3.1",
                           "stop reason: breakpoint")
    return Explanation(f"stopped ({reason})", "the guest trapped into its debugger",
                       "FreeBSD kdb_trap", f"stop reason: {reason}")


def explain(m, vcpu: int) -> list[Explanation]:  # noqa: ANN001 - the Machine
    v = m.vm.vcpus[vcpu]
    out = []
    stop = explain_stop(m, vcpu)
    if stop is not None:
        out.append(stop)
    e = last_notable(v.cpu.retire.events)
    if e is not None:
        x = explain_event(e, v, m.symbols.format)
        if x is not None:
            out.append(x)
    st = explain_state(v)
    if st is not None:
        out.append(st)
    return out
