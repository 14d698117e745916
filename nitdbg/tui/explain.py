"""The explain panel: what the machine did since the previous stop, link by link, each link
with the rule of the manuals that produced it. No Textual here.

Everything is derived from what happened, never from how an event looks:

- the vCPU's retirement-log events in the window (#VMEXITs with their exit code and DR6,
  VMRUNs with the RFLAGS they entered with, retired IRETs with what they loaded, event
  deliveries and injections),
- the KTR lines the hypervisor wrote while handling each exit (every NMI-policy transition
  logs itself: "vNMI iret tracing enabled", "vNMIs unblocked precisely", "Reflecting
  exception ..."), matched to the exit by virtual time,
- the NMI policy's state as it reports it (nitdbg.view.NmiView),
- ddb's stop reason and the step audit's verdict for this stop.

A link is only said when its evidence is there: a #DB exit is "the single-step trap after
the IRET" only when an IRET exit came before it and the policy logged the unblocking at it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass

from ..svm import exitcodes as ec
from ..view import RF, TF, KtrLine, NmiView, TimedEvent
from .model import Explanation

MAX_LINKS = 12          # the newest links shown for a window
# Exits the hypervisor handles in every idle loop: not links worth a line by themselves.
ROUTINE_EXITS = frozenset({ec.VMEXIT_PAUSE, ec.VMEXIT_HLT, ec.VMEXIT_IOIO, ec.VMEXIT_MSR,
                           ec.VMEXIT_VMMCALL, ec.VMEXIT_INTR, ec.VMEXIT_VINTR,
                           ec.VMEXIT_CPUID})

SDM_NMI = "Intel SDM vol 3 6.7.1 (handling multiple NMIs)"
SDM_SSTEP = "Intel SDM vol 3 17.3.1.4 (single-step exception condition)"
APM_INTERCEPT = "AMD APM vol 2 15.9 (instruction intercepts)"
APM_VMRUN_TF = "AMD APM vol 2 15.5 (VMRUN and TF/RF bits in EFLAGS)"
APM_DB = "AMD APM vol 2 15.12.2 (DR6/DR7 updated before the #DB intercept)"
APM_EVENTINJ = "AMD APM vol 2 15.20 (event injection)"
SEED_DB = "seed, Implementation details: #DB after a successful IRET"
SEED_FAULT = "seed, Implementation details: exception triggered by the IRET"


@dataclass(frozen=True)
class AuditVerdict:
    """The step audit's check of this stop."""

    number: int
    ok: bool
    executed: tuple[str, ...]     # the instructions it found executed outside the trap path
    problems: tuple[str, ...]


@dataclass(frozen=True)
class StepFacts:
    """What happened on one vCPU since its previous stop, as plain data."""

    vcpu: int
    events: tuple[TimedEvent, ...]
    ktr: tuple[KtrLine, ...]
    nmi: NmiView
    stop_reason: str | None = None       # ddb's, when this vCPU is stopped in ddb
    audit: AuditVerdict | None = None


Sym = Callable[[int], str]


def _tf_rf(rflags: int) -> str:
    return f"TF={rflags >> 8 & 1} RF={rflags >> 16 & 1}"


def _has(lines: list[str], text: str) -> str | None:
    return next((m for m in lines if text in m), None)


class _Window:
    """The events and the KTR lines of each exit's handling (its KTR lines are those logged
    from the exit's time until the next exit at a later time)."""

    def __init__(self, facts: StepFacts) -> None:
        self.events = facts.events
        self.ktr = facts.ktr
        self._times = [k.timestamp for k in facts.ktr]      # one vCPU's: in order
        # for each event, the time of the next exit after it at a later time (None: none)
        self._ends: list[int | None] = [None] * len(self.events)
        end: int | None = None
        later: list[int] = []          # exit times after i, nearest last
        for i in range(len(self.events) - 1, -1, -1):
            e = self.events[i]
            while later and later[-1] <= e.time:
                later.pop()
            end = later[-1] if later else None
            self._ends[i] = end
            if e.kind == "vmexit":
                later.append(e.time)

    def handling(self, i: int) -> list[str]:
        e = self.events[i]
        lo = bisect_left(self._times, e.time)
        end = self._ends[i]
        hi = len(self._times) if end is None else bisect_left(self._times, end)
        return [k.message for k in self.ktr[lo:hi]]

    def next_of(self, i: int, kind: str) -> TimedEvent | None:
        """The next event of `kind` before the next exit."""
        for x in self.events[i + 1:i + 64]:
            if x.kind == kind:
                return x
            if x.kind == "vmexit":
                return None
        return None


def chain(facts: StepFacts, sym: Sym) -> list[Explanation]:
    """The links of what happened in the window, in order."""
    w = _Window(facts)
    out: list[Explanation] = []
    after_iret_exit = False        # an IRET exit came, its IRET has not retired yet
    for i, e in enumerate(facts.events):
        where = sym(e.rip)
        if e.kind == "vmexit":
            code = e.info
            said = w.handling(i)
            run = w.next_of(i, "vmrun")
            if code == ec.VMEXIT_IRET:
                out.append(Explanation(
                    "IRET exit", "the IRET intercept is taken before the IRET executes: NMIs "
                    "are still blocked and the guest RIP is the iret", APM_INTERCEPT,
                    f"VMEXIT_IRET at {where}, RFLAGS {e.rflags:#x} ({_tf_rf(e.rflags)})"))
                after_iret_exit = True
                if _has(said, "iret tracing enabled") and run is not None:
                    planted = run.rflags & (TF | RF) & ~e.rflags
                    out.append(Explanation(
                        "TF|RF planted", "the hypervisor resumes the IRET with TF=1 (a #DB "
                        "trap after it) and RF=1 (no instruction breakpoint on it)",
                        APM_VMRUN_TF, f"KTR \"vNMI iret tracing enabled\"; VMRUN RFLAGS "
                        f"{run.rflags:#x} ({_tf_rf(run.rflags)}), set by it: {planted:#x}"))
                if _has(said, "blocking cleared"):
                    out.append(Explanation(
                        "blocking cleared at the IRET exit", "NMIs are unblocked before the "
                        "IRET has executed; the interrupt shadow only keeps the very next "
                        "VMRUN from injecting one (an IRET that exits again, e.g. on a nested "
                        "page fault, can be preceded by a new NMI)",
                        "FreeBSD svm.c clear_nmi_blocking (its XXX comment)",
                        "KTR \"vNMI blocking cleared\""))
                if _has(said, "unblocked speculatively"):
                    out.append(Explanation(
                        "unblocked speculatively", "a task return (NT=1) loads RFLAGS from "
                        "the old task's TSS, so TF cannot be planted in them",
                        "Intel SDM vol 3 7.3 (task switching)",
                        "KTR \"vNMIs unblocked speculatively\""))
                continue
            if ec.is_exception_exit(code):
                vec = code - ec.VMEXIT_EXCP_BASE
                unblocked = _has(said, "unblocked precisely")
                reflected = _has(said, "Reflecting exception")
                injected_db = _has(said, "Injecting exception at vector 1")
                if vec == 1 and e.bs and unblocked:
                    out.append(Explanation(
                        "#DB exit, DR6.BS=1", "the IRET completed under the planted TF: a "
                        "single-step trap after it, with DR6 written before the intercept",
                        APM_DB, f"VMEXIT_EXCP1 at {where}, DR6 {e.dr6:#x}"))
                    out.append(Explanation(
                        "vNMIs unblocked precisely", "the IRET has executed: NMI blocking "
                        "ends here, not earlier; TF/RF are not restored (RFLAGS are what the "
                        "IRET popped from the NMI frame)", SEED_DB + "; " + SDM_NMI,
                        f"KTR \"{unblocked.split(': ', 1)[-1]}\""))
                    if run is not None:
                        own = "kept" if run.rflags & TF else "clear"
                        out.append(Explanation(
                            f"the guest's own TF {own}", "RFLAGS after the IRET are the "
                            "guest's: its frame's TF goes on (ddb's PSL_T steps the next "
                            "instruction)" if run.rflags & TF else "RFLAGS after the IRET "
                            "are the guest's, with TF=0", SEED_DB,
                            f"VMRUN RFLAGS {run.rflags:#x} ({_tf_rf(run.rflags)})"))
                    if injected_db:
                        out.append(Explanation(
                            "the guest's #DB reflected", "the guest had TF=1 at the start of "
                            "its IRET (or a data breakpoint hit): it gets the #DB it would "
                            "have had on bare metal", SEED_DB + "; " + APM_EVENTINJ,
                            f"KTR \"{injected_db.split(': ', 1)[-1]}\""))
                    after_iret_exit = False
                    continue
                if unblocked and reflected:
                    out.append(Explanation(
                        f"the IRET faulted (exception {vec})", "an IRET unblocks NMIs even "
                        "when it faults; the guest's own TF/RF are restored and the exception "
                        "is reflected into the guest", SEED_FAULT + "; " + SDM_NMI,
                        f"VMEXIT_EXCP{vec} at {where}; KTR \"vNMIs unblocked precisely\", "
                        f"\"{reflected.split(': ', 1)[-1]}\""
                        + (f"; VMRUN RFLAGS {run.rflags:#x} ({_tf_rf(run.rflags)})"
                           if run is not None else "")))
                    after_iret_exit = False
                    continue
                if reflected:
                    out.append(Explanation(
                        f"exception {vec} intercepted and reflected", "the hypervisor "
                        "intercepts guest exceptions (hw.vmm.trace_guest_exceptions=1) and "
                        "gives each back to the guest unchanged; NMI blocking is not involved",
                        "bhyve vmm.c trace_guest_exceptions; " + APM_EVENTINJ,
                        f"VMEXIT_EXCP{vec} at {where}"
                        + (f", DR6 {e.dr6:#x}" if vec == 1 else "")
                        + f"; KTR \"{reflected.split(': ', 1)[-1]}\""))
                continue
            if code == ec.VMEXIT_NPF and after_iret_exit:
                out.append(Explanation(
                    "nested page fault at the IRET", "the IRET is restarted once the page is "
                    "mapped; NMIs stay blocked and the planted TF/RF stay for the retry",
                    "AMD APM vol 2 15.25.6 (nested page faults)", f"VMEXIT_NPF at {where}, "
                    f"RFLAGS {e.rflags:#x}"))
            continue
        if e.kind == "iret" and after_iret_exit:
            out.append(Explanation(
                "IRET retired", "the NMI handler's IRET popped RIP and RFLAGS from its frame",
                "Intel SDM vol 2 IRET", f"to {sym(e.rip)}, RFLAGS {e.rflags:#x} "
                f"({_tf_rf(e.rflags)})"))
            continue
        if e.kind == "inject" and e.vector == 2:
            out.append(Explanation(
                "vNMI injected", "EVENTINJ type NMI is delivered by VMRUN before any guest "
                "instruction; the hypervisor blocks further NMIs until the handler's IRET",
                APM_EVENTINJ + "; " + SDM_NMI, f"EVENTINJ at {where}"))
            continue
        if e.kind == "nmi":
            out.append(Explanation(
                "NMI delivered", "the processor blocks further NMIs from this delivery until "
                "the next IRET", SDM_NMI, f"pushed RIP {where}, RFLAGS {e.rflags:#x}"))
            continue
        if e.kind == "exception" and e.vector == 1 and e.bs:
            out.append(Explanation(
                "single-step #DB in the guest", "an instruction that started with TF=1 is "
                "followed by a #DB trap, DR6.BS=1; the pushed RIP is the next instruction",
                SDM_SSTEP, f"pushed RIP {where}, RFLAGS {e.rflags:#x} ({_tf_rf(e.rflags)}), "
                f"DR6 {e.dr6:#x}"))
            continue
        if e.kind == "exception" and e.vector == 3:
            out.append(Explanation(
                "#BP in the guest", "int3 is a trap: the pushed RIP is the byte after it",
                "Intel SDM vol 3 6.15 (interrupt 3, breakpoint)", f"pushed RIP {where}"))
    return out[-MAX_LINKS:]


def explain_stop(facts: StepFacts, links: list[Explanation], sym: Sym
                 ) -> Explanation | None:
    """Why ddb stopped where it did, with the audit's verdict where there is one."""
    reason = facts.stop_reason
    if reason is None:
        return None
    a = facts.audit
    if a is None:
        verdict = "not a step: the audit has nothing to check"
    elif a.ok:
        ran = a.executed[0] if len(a.executed) == 1 else f"{len(a.executed)} instructions"
        verdict = f"audit step {a.number}: exactly one instruction ran: {ran}"
    else:
        verdict = f"audit step {a.number}: " + "; ".join(a.problems)
    if reason == "step":
        across = any(x.title == "IRET exit" for x in links)
        traced = any(x.title == "TF|RF planted" for x in links)
        title = "ddb step across the NMI handler's IRET" if across else "ddb step"
        how = ""
        if across:
            how = (", and on the way the hypervisor traced the IRET" if traced else
                   ", and on the way the hypervisor took the IRET exit") + \
                " (below, as it happened)"
        return Explanation(
            title, "ddb set PSL_T (TF) in the trapframe and returned; the single-step #DB "
            "after the next instruction entered the debugger again" + how, SDM_SSTEP,
            verdict)
    if reason == "T_NMI":
        nmi = next((e for e in reversed(facts.events) if e.kind == "nmi"), None)
        hlt = None
        if nmi is not None:
            hlt = next((e for e in facts.events if e.kind == "vmexit"
                        and e.info == ec.VMEXIT_HLT and e.rip + 1 == nmi.rip), None)
        return Explanation(
            "debugger entered on NMI", "the guest's NMI handler called kdb_trap "
            "(machdep.kdb_on_nmi=1)" + ("; the NMI woke the vCPU from HLT and the pushed RIP "
                                        "is the instruction after the hlt" if hlt else ""),
            SDM_NMI + ("; Intel SDM vol 2 HLT" if hlt else ""),
            f"pushed RIP {sym(nmi.rip)}" if nmi is not None else "stop reason: T_NMI")
    if reason == "breakpoint":
        return Explanation(
            "breakpoint", "int3 is a trap: the pushed RIP is after it; ddb moved the "
            "trapframe's RIP back onto the breakpoint", "Intel SDM vol 3 6.15; FreeBSD ddb "
            "FIXUP_PC_AFTER_BREAK", "stop reason: breakpoint")
    return Explanation(f"stopped ({reason})", "the guest trapped into its debugger",
                       "FreeBSD kdb_trap", f"stop reason: {reason}")


def explain_state(nmi: NmiView) -> Explanation | None:
    """The rule behind the policy's current state (as the policy reports it)."""
    detail = f"policy {nmi.policy}, state {nmi.state}" + (
        f", last transition: {nmi.last_transition}" if nmi.last_transition else "")
    if nmi.state == "tracing":
        return Explanation(
            "IRET tracing", "NMIs stay blocked until the #DB after the IRET shows it has "
            "executed", SEED_DB, detail)
    if nmi.blocked:
        return Explanation(
            "NMIs blocked", "a virtual NMI is in progress: none is injected until the "
            "handler's IRET; SVM does not report that IRET, so the hypervisor tracks it",
            SDM_NMI + "; " + APM_INTERCEPT, detail)
    return None


def explain(facts: StepFacts, sym: Sym) -> list[Explanation]:
    links = chain(facts, sym)
    out = []
    stop = explain_stop(facts, links, sym)
    if stop is not None:
        out.append(stop)
    out.extend(links)
    st = explain_state(facts.nmi)
    if st is not None:
        out.append(st)
    return out
