"""The guest-visible comparison of a policy run with the hardware reference.

Per vCPU, the observable trace is the retired guest instructions (the retirement ring) with
every event delivered to the guest through its IDT between them (vector, pushed RIP and
RFLAGS, error code, DR6 at the delivery) and what each IRET loaded; for the machine, the
console output. The first point where a vCPU's two traces part is classified:

  lost_db / extra_db       a #DB the guest gets on hardware is missing / one it does not get
  nmi_early / nmi_late     an NMI delivered before / after hardware delivers it
  nmi_count                an NMI hardware delivers is never delivered, or one more is
  intr_early / intr_late   the same for maskable interrupts; intr_count
  tf_visible               a pushed frame holds TF/RF the guest did not set
  dr6                      the same #DB with another DR6
  event_differs            the same event with another pushed RIP or error code
  frame_overwritten        an IRET returned through a frame that hardware left intact
  insn_skipped             instructions hardware retires are left out
  insn_repeated            an instruction retires again
  control_flow             the guest went elsewhere (none of the above)
  console                  same instructions and events, other console output
  stalled                  the guest retired fewer instructions than on hardware

Only the first divergence of each vCPU is reported: after it the two runs are different
executions and every later difference would be a consequence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from ..x86.regs import DR6_BS, RF, TF
from ..x86.retire import EV_EXCEPTION, EV_INTR, EV_IRET, EV_NMI, EV_SOFTINT, Event
from .outcome import Outcome, outcome

if TYPE_CHECKING:
    from ..machine import Machine

DELIVERED = frozenset({EV_EXCEPTION, EV_NMI, EV_INTR, EV_SOFTINT})
NS_PER_USEC = 1000
LOOKAHEAD = 64        # how far to look for a skipped or repeated instruction


@dataclass(frozen=True)
class Difference:
    kind: str
    vcpu: int
    index: int        # retired-instruction index of the first divergence
    where: str        # sym+off there
    detail: str

    @property
    def at(self) -> str:
        return f"#{self.index} {self.where}"

    def to_json(self) -> dict:
        return {"kind": self.kind, "vcpu": self.vcpu, "at": self.at, "detail": self.detail}

    def line(self) -> str:
        return f"{self.kind} on vCPU {self.vcpu} at {self.at}: {self.detail}"

    def asdict(self) -> dict:
        return asdict(self)


def _name(ev: Event) -> str:
    if ev.kind == EV_NMI:
        return "NMI"
    if ev.kind == EV_INTR:
        return f"interrupt {ev.vector}"
    if ev.kind == EV_EXCEPTION:
        return {1: "#DB", 3: "#BP", 13: "#GP", 14: "#PF", 6: "#UD", 8: "#DF"}.get(
            ev.vector, f"exception {ev.vector}")
    return f"int {ev.vector}"


class Trace:
    """One vCPU's observable trace in a run."""

    def __init__(self, o: Outcome, vcpu: int):
        self.symbols = o.symbols
        vo = o.vcpus[vcpu]
        self.log = vo.log
        self.end = vo.end
        self.start = max(0, self.end - self.log.capacity)
        evs = list(self.log.events)
        if len(evs) == self.log.events.maxlen and evs:
            self.start = max(self.start, evs[0].seq + 1)
        self.events = [e if e.kind != EV_SOFTINT or e.vector not in (3, 4)
                       else Event(e.seq, EV_EXCEPTION, e.vector, e.error_code, e.rip, e.rflags,
                                  e.dr6, e.info) for e in evs if e.kind in DELIVERED]
        self.irets = {e.seq: e for e in evs if e.kind == EV_IRET}
        self.nmi_held = vo.nmi_held

    def where(self, rip: int) -> str:
        """sym+off of `rip` in this run's firmware."""
        return self.symbols.format(rip)

    def rip(self, seq: int) -> int:
        return self.log.rips[seq & self.log.mask]

    def rips(self, lo: int, hi: int) -> list[int]:
        r, mask = self.log.rips, self.log.mask
        return [r[s & mask] for s in range(lo, hi)]

    def time(self, seq: int) -> int:
        return self.log.time_of(seq)


def _kind(e: Event) -> int:
    # INT3 / INTO delivered by the CPU (a software interrupt) and the #BP / #OF a hypervisor
    # reflects through EVENTINJ push the same frame: the guest cannot tell them apart.
    return EV_EXCEPTION if e.kind == EV_SOFTINT and e.vector in (3, 4) else e.kind


def _key(e: Event) -> tuple:
    return (e.seq, _kind(e), e.vector, e.error_code, e.rip, e.rflags, e.dr6 if e.vector == 1
            and e.kind == EV_EXCEPTION else 0)


def _first_insn_diff(p: Trace, r: Trace, lo: int, hi: int) -> int | None:
    """The first index in [lo, hi) where the two rings differ (both rings have the same
    capacity, so index i is slot i & mask in both)."""
    step = 4096
    i = lo
    while i < hi:
        j = min(hi, i + step, (i | p.log.mask) + 1)
        a, b = i & p.log.mask, ((j - 1) & p.log.mask) + 1
        if p.log.rips[a:b] != r.log.rips[a:b]:
            for k in range(i, j):
                if p.rip(k) != r.rip(k):
                    return k
        i = j
    return None


def _find(evs: list[Event], start: int, like: Event) -> Event | None:
    for e in evs[start:]:
        if e.kind == like.kind and e.vector == like.vector:
            return e
    return None


def _event_diff(vcpu: int, p: Trace, r: Trace, j: int) -> Difference:
    ep = p.events[j] if j < len(p.events) else None
    er = r.events[j] if j < len(r.events) else None
    sym = r.symbols
    if ep is not None and er is not None and ep.seq == er.seq and ep.kind == er.kind \
            and ep.vector == er.vector:
        name = _name(er)
        where = r.where(er.rip)
        if er.rflags & TF and not ep.rflags & TF:
            # The hypervisor cleared the guest's own TF before this frame was pushed: the
            # frame's IRET returns without it, so the single-step #DB hardware delivers
            # after that return does not come (looked up in both runs, not assumed).
            hw_db = next((e for e in r.events[j + 1:] if e.kind == EV_EXCEPTION
                          and e.vector == 1 and e.dr6 & DR6_BS), None)
            p_db = next((e for e in p.events[j + 1:] if e.kind == EV_EXCEPTION
                         and e.vector == 1 and e.dr6 & DR6_BS), None)
            if hw_db is not None and (p_db is None or p_db.rip != hw_db.rip):
                return Difference("lost_db", vcpu, er.seq, where,
                                  f"the {name} frame holds RFLAGS {ep.rflags:#x} without the "
                                  f"guest's TF (hardware pushes {er.rflags:#x}): the "
                                  f"single-step #DB hardware delivers at "
                                  f"{sym.format(hw_db.rip)} does not come")
        if (ep.rflags ^ er.rflags) & (TF | RF):
            added = "/".join(n for b, n in ((TF, "TF"), (RF, "RF")) if ep.rflags & b
                             and not er.rflags & b)
            gone = "/".join(n for b, n in ((TF, "TF"), (RF, "RF")) if er.rflags & b
                            and not ep.rflags & b)
            how = " and ".join(([f"with {added} set"] if added else [])
                               + ([f"without the guest's {gone}"] if gone else []))
            return Difference("tf_visible", vcpu, er.seq, where,
                              f"the {name} frame holds RFLAGS {ep.rflags:#x} {how} "
                              f"(hardware pushes {er.rflags:#x})")
        if ep.dr6 != er.dr6:
            return Difference("dr6", vcpu, er.seq, where,
                              f"#DB with DR6 {ep.dr6:#x} (hardware {er.dr6:#x})")
        what = (f"pushed RIP {sym.format(ep.rip)}, hardware {sym.format(er.rip)}"
                if ep.rip != er.rip else f"error code {ep.error_code}, hardware "
                f"{er.error_code}" if ep.error_code != er.error_code
                else f"pushed RFLAGS {ep.rflags:#x}, hardware {er.rflags:#x}")
        return Difference("event_differs", vcpu, er.seq, where, f"the {name}: {what}")
    # One side delivers an event here that the other does not (yet): the earlier of the two,
    # and on a tie the hardware's.
    if er is not None and (ep is None or er.seq <= ep.seq):
        x, other, hw = er, p, True
    else:
        x, other, hw = ep, r, False
    assert x is not None
    match = _find(other.events, j, x)
    name = _name(x)
    where = r.where(x.rip)
    if hw:
        # hardware delivers x at x.seq; the policy later, or never
        if match is None and x.kind == EV_NMI and p.nmi_held:
            us = (p.time(p.end) - p.time(x.seq)) / NS_PER_USEC
            return Difference("nmi_late", vcpu, x.seq, where,
                              f"hardware takes an NMI here (pushed RIP {where}); under the "
                              f"policy it is still held by the hypervisor {p.end - x.seq} "
                              f"guest instructions ({us:.2f} virtual µs) later, at the end "
                              "of the run")
        if match is None:
            kind = {EV_NMI: "nmi_count", EV_INTR: "intr_count"}.get(x.kind, "event_lost")
            if x.kind == EV_EXCEPTION and x.vector == 1:
                kind = "lost_db"
            n_hw = sum(1 for e in r.events if (e.kind, e.vector) == (x.kind, x.vector))
            n_p = sum(1 for e in p.events if (e.kind, e.vector) == (x.kind, x.vector))
            return Difference(kind, vcpu, x.seq, where,
                              f"hardware delivers a {name} here (pushed RIP {where}) that the "
                              f"guest never gets ({n_hw} on hardware, {n_p} under the policy)")
        delay = match.seq - x.seq
        us = (p.time(match.seq) - p.time(x.seq)) / NS_PER_USEC
        late = f"{delay} guest instructions ({us:.2f} virtual µs) after hardware delivers it"
        if x.kind == EV_NMI:
            return Difference("nmi_late", vcpu, x.seq, where, f"NMI delivered {late}")
        if x.kind == EV_INTR:
            return Difference("intr_late", vcpu, x.seq, where, f"{name} delivered {late}")
        if x.kind == EV_EXCEPTION and x.vector == 1:
            return Difference("lost_db", vcpu, x.seq, where,
                              f"the #DB hardware delivers after {where} does not come; a "
                              f"#DB comes {delay} instructions later")
        return Difference("event_late", vcpu, x.seq, where, f"{name} delivered {late}")
    # the policy delivers x before hardware does, or hardware never does
    if x.kind == EV_EXCEPTION and x.vector == 1:
        return Difference("extra_db", vcpu, x.seq, where,
                          f"a #DB (DR6 {x.dr6:#x}) the guest does not get on hardware, "
                          f"pushed RIP {where}")
    if match is None:
        kind = {EV_NMI: "nmi_count", EV_INTR: "intr_count"}.get(x.kind, "extra_event")
        n_hw = sum(1 for e in r.events if (e.kind, e.vector) == (x.kind, x.vector))
        n_p = sum(1 for e in p.events if (e.kind, e.vector) == (x.kind, x.vector))
        return Difference(kind, vcpu, x.seq, where,
                          f"a {name} hardware never delivers ({n_p} under the policy, {n_hw} "
                          "on hardware)")
    delay = match.seq - x.seq
    early = f"{delay} guest instructions before hardware would take it"
    if x.kind == EV_NMI:
        blocked = _open_iret(r, x.seq, match.seq)
        why = f" (before the IRET at {blocked} retired)" if blocked else ""
        return Difference("nmi_early", vcpu, x.seq, where, f"NMI delivered {early}{why}")
    if x.kind == EV_INTR:
        return Difference("intr_early", vcpu, x.seq, where, f"{name} delivered {early}")
    return Difference("extra_event", vcpu, x.seq, where, f"{name} delivered {early}")


def _open_iret(r: Trace, lo: int, hi: int) -> str | None:
    """The IRET hardware retires between lo and hi (the one that unblocked NMIs there)."""
    for s in range(lo, hi):
        if s in r.irets:
            return r.where(r.rip(s))
    return None


def _insn_diff(vcpu: int, p: Trace, r: Trace, d: int, hi: int) -> Difference:
    hw, pol = r.rip(d), p.rip(d)
    where = r.where(hw)
    prev = d - 1
    ip, ir = p.irets.get(prev), r.irets.get(prev)
    if ip is not None and ir is not None and ip.rip != ir.rip:
        return Difference("frame_overwritten", vcpu, d, r.where(r.rip(prev)),
                          f"the IRET returned to {p.where(ip.rip)}; on hardware its frame "
                          f"still held {r.where(ir.rip)}")
    ahead_r = r.rips(d, min(r.end, d + LOOKAHEAD))
    if pol in ahead_r[1:]:
        k = ahead_r.index(pol)
        left = ", ".join(r.where(x) for x in ahead_r[:min(k, 3)])
        return Difference("insn_skipped", vcpu, d, where,
                          f"{k} instruction{'s' * (k > 1)} hardware retires here never "
                          f"ran ({left}{', ...' if k > 3 else ''})")
    ahead_p = p.rips(d, min(p.end, d + LOOKAHEAD))
    if hw in ahead_p[1:]:
        k = ahead_p.index(hw)
        extra = ahead_p[:k]
        back = set(p.rips(max(0, d - LOOKAHEAD), d))
        if all(x in back for x in extra):
            return Difference("insn_repeated", vcpu, d, p.where(pol),
                              f"{p.where(pol)} retired again ({k} extra instruction"
                              f"{'s' * (k > 1)} before {where})")
    return Difference("control_flow", vcpu, d, where,
                      f"the guest executed {p.where(pol)} where hardware executes {where}")


def compare_vcpu(po: Outcome, ro: Outcome, vcpu: int) -> Difference | None:
    p, r = Trace(po, vcpu), Trace(ro, vcpu)
    lo = max(p.start, r.start)
    hi = min(p.end, r.end)
    d = _first_insn_diff(p, r, lo, hi)
    limit = d if d is not None else hi
    # events up to and including those that precede instruction `limit`
    pe = [e for e in p.events if lo <= e.seq <= limit]
    re_ = [e for e in r.events if lo <= e.seq <= limit]
    p.events, r.events = [e for e in p.events if e.seq >= lo], [e for e in r.events
                                                                if e.seq >= lo]
    j = next((i for i, (a, b) in enumerate(zip(pe, re_, strict=False)) if _key(a) != _key(b)),
             None)
    if j is None and len(pe) != len(re_):
        j = min(len(pe), len(re_))
    if j is not None:
        return _event_diff(vcpu, p, r, j)
    if d is not None:
        return _insn_diff(vcpu, p, r, d, hi)
    if p.end < r.end:
        return Difference("stalled", vcpu, p.end, r.where(r.rip(p.end)),
                          f"the guest stops after {p.end} instructions; on hardware it "
                          f"retires {r.end}")
    return None


def _position(entries: list[tuple], d: Difference) -> int:
    """Where in the recording the vCPU reached the divergence: the first slice of that vCPU
    that ran past it."""
    for i, e in enumerate(entries):
        if e[0] == "run" and e[1] == d.vcpu and e[2] >= d.index:
            return i
    return len(entries)


def compare_machines(pm: Machine, rm: Machine,
                     entries: list[tuple] | None = None) -> list[Difference]:
    """`compare_outcomes` of two live machines (the policy's run and its reference)."""
    return compare_outcomes(outcome(pm), outcome(rm), entries)


def compare_outcomes(po: Outcome, ro: Outcome,
                     entries: list[tuple] | None = None) -> list[Difference]:
    """Every vCPU's first divergence, then the console if nothing else differs. With the
    recording, a vCPU that diverges only after another one did is left out: the vCPUs share
    memory, so its difference may be a consequence of the first."""
    out = [d for i in range(len(po.vcpus)) if (d := compare_vcpu(po, ro, i)) is not None]
    if entries is not None and len(out) > 1:
        pos = {d.vcpu: _position(entries, d) for d in out}
        first = min(pos.values())
        # slices of different vCPUs between two inputs ran "at the same time"
        out = [d for d in out if not any(entries[k][0] != "run"
                                         for k in range(first, pos[d.vcpu]))]
    if not out:
        a, b = po.console, ro.console
        if a != b:
            n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                     min(len(a), len(b)))
            out.append(Difference("console", 0, po.vcpus[0].end, "console",
                                  f"output differs from byte {n}: {a[n:n + 30]!r} "
                                  f"(hardware {b[n:n + 30]!r})"))
    return out
