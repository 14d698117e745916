"""The step audit judged against hardware: is a lost step the guest's or the policy's?

`attach(m)` records the machine's inputs (it must be called before the machine runs) and
gives its step audit a judge. For each violation the judge runs the hardware reference of
the inputs so far and looks at the same step there:

- lost on hardware too: the guest's own behaviour, with the rule that causes it, read from
  the reference's retirement log (the IRET that unblocked NMIs, where it returned to, the NMI
  that followed, and whether the NMI gate switches to an IST stack, so that the nested NMI's
  frame overwrites the outer one's);
- kept on hardware: the policy's violation, with the difference kind of the comparison.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..x86.faults import Fault
from ..x86.retire import EV_IRET, EV_NMI
from .diff import compare_machines
from .hardware import reference_run
from .recorder import record

if TYPE_CHECKING:
    from ..ddb.audit import StepAudit, StepCheck
    from ..machine import Machine


def _nmi_ist(ref: Machine, vcpu: int) -> int:
    """The IST index of the guest's NMI gate (64-bit IDT, SDM 6.14.1), 0 if none."""
    v = ref.vm.vcpus[vcpu]
    try:
        lo = int.from_bytes(ref.vm.read_guest(v, v.cpu.idtr.base + 2 * 16, 8), "little")
    except (Fault, ValueError):     # no readable IDT: no IST claim
        return 0
    return (lo >> 32) & 7 if v.cpu.mode == 64 else 0


def hardware_rule(ref: Machine, chk: StepCheck) -> str:
    """Why the step is lost on hardware, from the reference's log of that step."""
    log = ref.vm.vcpus[chk.vcpu].cpu.retire
    evs = log.events_between(chk.from_seq, chk.to_seq + 1)
    nmi = next((e for e in evs if e.kind == EV_NMI), None)
    sym = ref.symbols.format
    if nmi is None:
        return "the step is lost on hardware too"
    iret = next((e for e in reversed(evs) if e.kind == EV_IRET and e.seq <= nmi.seq), None)
    ist = _nmi_ist(ref, chk.vcpu)
    where = f" on the IST stack (IST{ist}), over the outer NMI's frame" if ist else ""
    if iret is None:
        return (f"an NMI arrived at {sym(nmi.rip)} before the step completed (it was not "
                "blocked)")
    iret_at = sym(log.rips[iret.seq & log.mask])
    return (f"the IRET at {iret_at} returned to {sym(iret.rip)} and unblocked NMIs "
            f"(SDM vol 3 6.7.1: any IRET does); the pending NMI was taken at once at "
            f"{sym(nmi.rip)} and nested{where}")


class Judge:
    def __init__(self, m: Machine):
        self.m = m
        self._cache: tuple[int, dict[int, list[str]]] | None = None

    def __call__(self, audit: StepAudit) -> dict[int, list[str]]:
        tl = self.m.observed      # type: ignore[attr-defined]
        if self._cache is not None and self._cache[0] == len(tl.entries):
            return self._cache[1]
        ref = reference_run(tl)
        hw = {c.number: c for c in ref.ddb.audit.checks}
        diffs = {d.vcpu: d for d in compare_machines(self.m, ref, tl.entries)}
        out: dict[int, list[str]] = {}
        for c in audit.violations:
            h = hw.get(c.number)
            if h is not None and not h.ok and h.from_rip == c.from_rip:
                out[c.number] = ["the guest's behaviour, not the policy's: on hardware the "
                                 "guest loses this step too: " + hardware_rule(ref, h)]
                d = diffs.get(c.vcpu)
                if d is not None:
                    # the loss is the guest's, but the policy still differs from hardware
                    out[c.number].append(f"besides, the policy's own difference from "
                                         f"hardware: {d.kind}: {d.detail} (at {d.at})")
            else:
                d = diffs.get(c.vcpu)
                why = f"{d.kind}: {d.detail} (at {d.at})" if d else "no guest-visible " \
                    "difference found"
                out[c.number] = [f"the policy's violation: on hardware this step is kept; {why}"]
        self._cache = (len(tl.entries), out)
        return out


def attach(m: Machine) -> Machine:
    """Record `m`'s inputs (if not yet) and judge its step audit against hardware."""
    if getattr(m, "observed", None) is None:
        record(m)
    m.ddb.audit.judge = Judge(m)
    return m
