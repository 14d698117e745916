"""Both runs of one compare cell at its first difference, as plain data for a front end: for
the policy's run and for the hardware reference, the retired instructions around the
divergence (disassembled), the events delivered to the guest there, and the RFLAGS those
events pushed or an IRET loaded (what the guest can observe). Everything is read from the
two machines; nothing is computed twice by the screen."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ddb.disasm import Disassembler
from ..machine import Machine, MachineError
from ..reference.diff import DELIVERED, Difference, Trace, compare_machines
from ..reference.hardware import reference_run
from ..reference.outcome import outcome
from ..x86.regs import IF, RF, TF
from ..x86.retire import EV_EXCEPTION, EV_INTR, EV_IRET, EV_NMI, Event
from .matrix import run_recorded

WINDOW = 6           # instructions shown before and after the divergence
EVENT_WINDOW = 64    # events this far (in retired instructions) from it are shown


@dataclass(frozen=True)
class InsnRow:
    seq: int
    where: str       # sym+off
    text: str        # disassembly
    here: bool       # the first divergence


@dataclass(frozen=True)
class EventRow:
    seq: int
    what: str        # "NMI", "#DB", "IRET"
    where: str       # pushed RIP (delivery) or the RIP the IRET loaded
    rflags: str      # "0x117 TF IF"
    extra: str       # error code, DR6


@dataclass(frozen=True)
class Side:
    label: str                  # "policy kvm" / "hardware"
    insns: list[InsnRow]
    events: list[EventRow]
    rflags: str                 # the RFLAGS the guest saw last at or before the divergence


@dataclass(frozen=True)
class SideBySide:
    scenario: str
    policy: str
    same: bool
    kind: str = ""
    vcpu: int = 0
    at: str = ""
    detail: str = ""
    part: str = ""
    error: str | None = None
    sides: list[Side] = field(default_factory=list)    # policy, hardware


def rflags_words(v: int) -> str:
    names = [n for b, n in ((TF, "TF"), (RF, "RF"), (IF, "IF")) if v & b]
    return f"{v:#x}" + (" " + " ".join(names) if names else "")


def _event_name(e: Event) -> str:
    if e.kind == EV_IRET:
        return "IRET"
    if e.kind == EV_NMI:
        return "NMI"
    if e.kind == EV_INTR:
        return f"intr {e.vector}"
    if e.kind == EV_EXCEPTION:
        return {1: "#DB", 3: "#BP", 13: "#GP", 14: "#PF"}.get(e.vector, f"exc {e.vector}")
    return f"int {e.vector}"


def _side(label: str, m: Machine, vcpu: int, index: int, dis: Disassembler) -> Side:
    t = Trace(outcome(m), vcpu)
    sym = m.symbols.format
    insns = []
    for s in range(max(t.start, index - WINDOW), min(t.end, index + WINDOW + 1)):
        rip = t.rip(s)
        try:
            text = dis.decode(m.read_mem(vcpu, rip, 15), rip).text
        except MachineError:
            text = "?"
        insns.append(InsnRow(s, sym(rip), text, s == index))
    evs = [e for e in t.log.events if (e.kind in DELIVERED or e.kind == EV_IRET)
           and abs(e.seq - index) <= EVENT_WINDOW]
    rows = []
    for e in evs:
        extra = []
        if e.error_code is not None:
            extra.append(f"err {e.error_code:#x}")
        if e.kind == EV_EXCEPTION and e.vector == 1:
            extra.append(f"DR6 {e.dr6:#x}")
        rows.append(EventRow(e.seq, _event_name(e), sym(e.rip), rflags_words(e.rflags),
                             " ".join(extra)))
    seen = [e for e in evs if e.seq <= index]
    if seen:
        e = seen[-1]
        how = "loaded by the IRET" if e.kind == EV_IRET else f"pushed by the {_event_name(e)}"
        rflags = f"{rflags_words(e.rflags)} ({how} at #{e.seq})"
    else:
        rflags = "no event near the divergence"
    return Side(label, insns, rows, rflags)


def side_by_side(scenario: str, policy: str) -> SideBySide:
    """Run the cell again (runs are deterministic) and return both runs at its first
    difference; `same` when the policy's run is the same as hardware."""
    _ctx, recorded, error = run_recorded(scenario, policy)
    first: tuple[str, Machine, Machine, Difference] | None = None
    for part, m in recorded:
        try:
            ref = reference_run(m.observed)       # type: ignore[attr-defined]
        except MachineError as e:
            return SideBySide(scenario, policy, False,
                              error=f"the hardware reference could not be built: {e}")
        diffs = compare_machines(m, ref, m.observed.entries)   # type: ignore[attr-defined]
        if diffs:
            first = (part, m, ref, diffs[0])
            break
    if first is None:
        return SideBySide(scenario, policy, error is None, error=error)
    part, m, ref, d = first
    dis = Disassembler(m.symbols)
    sides = [_side(f"policy {policy}", m, d.vcpu, d.index, dis),
             _side("hardware", ref, d.vcpu, d.index, dis)]
    return SideBySide(scenario, policy, False, d.kind, d.vcpu, d.at, d.detail, part, error,
                      sides)
