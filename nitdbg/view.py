"""One read-only picture of the machine for every front end (TUI, console, runner).

Plain frozen dataclasses, built from the Machine facade on the thread that owns the machine
(`Machine.view(vcpu)`, `Machine.recent_events(...)`, `Machine.ktr_since(...)`), so a front
end never reaches into `vm.vcpus[i].cpu`, `.vmcb` or `.svm`, and what it holds cannot change
under it. The NMI policy's state is read through `nmi_view()` only: the policy owns it (it
reports it as plain data when it can, `Vcpu.nmi_describe()`).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .machine import Machine
    from .vmm.vcpu import Vcpu

# retirement-log event kinds, by name (nitdbg.x86.retire.EV_NAMES)
EVENT_KINDS = ("exception", "nmi", "intr", "softint", "vmexit", "vmrun", "inject", "iret")
TF, RF = 1 << 8, 1 << 16
DR6_BS = 1 << 14


@dataclass(frozen=True)
class NmiView:
    """The NMI policy's state for one vCPU, as the policy reports it."""

    policy: str
    state: str                   # idle, blocked, tracing, ... (the policy's own words)
    last_unblock: str            # how blocking last ended: precisely, speculatively, ...
    last_transition: str         # the policy's last transition in words ("" if unknown)
    blocked: bool                # no further NMI may be injected now
    pending: bool                # an NMI waits to be injected
    detail: tuple[tuple[str, str], ...] = ()    # the policy's other fields


@dataclass(frozen=True)
class ExitView:
    """One #VMEXIT: what the VMCB's control area and save area were filled from."""

    number: int                  # exits of this vCPU so far, this one included
    vcpu: int
    code: int
    name: str                    # APM name, VMEXIT_IRET
    info1: int
    info2: int
    intinfo: int
    rip: int
    seq: int | None              # retirement count at the exit (None: out of the log)
    time: int | None             # virtual ns at the exit

    def where(self) -> str:
        t = f", virtual time {self.time / 1e6:.6f} ms" if self.time is not None else ""
        return f"exit #{self.number} {self.name} ({self.code:#x}) on vCPU {self.vcpu}{t}"


@dataclass(frozen=True)
class VmcbFields:
    intercepts: tuple[str, ...]
    exitcode: int
    exitname: str
    exitinfo1: int
    exitinfo2: int
    exitintinfo: str
    eventinj: str
    v_irq: int
    v_intr_vector: int
    interrupt_shadow: int
    rflags: int
    rip: int
    dr6: int
    dr7: int


@dataclass(frozen=True)
class TimedEvent:
    """A retirement-log event with its virtual time."""

    seq: int
    time: int
    kind: str                    # EVENT_KINDS
    vector: int
    error_code: int | None
    rip: int
    rflags: int
    dr6: int
    info: int                    # vmexit: the exit code

    @property
    def bs(self) -> bool:
        return bool(self.dr6 & DR6_BS)


@dataclass(frozen=True)
class KtrLine:
    index: int
    cpu: int
    timestamp: int
    message: str


@dataclass(frozen=True)
class VcpuState:
    id: int
    in_guest: bool               # between VMRUN and #VMEXIT (else the VMCB holds the state)
    halted: bool
    in_ddb: bool
    icount: int
    now: int
    regs: dict[str, int]         # the GPRs, rip and rflags as the guest has them now
    nmi: NmiView
    vmcb: VmcbFields
    last_exit: ExitView | None   # None: no exit yet (the save area is the loader's)
    events_total: int = 0        # retirement-log events ever recorded (changes = news)


@dataclass(frozen=True)
class MachineSummary:
    name: str                    # the VM's name (bhyvectl --vm=)
    policy: str                  # the NMI policy
    icounts: tuple[int, ...]     # instructions retired by each vCPU
    now: int                     # the host's virtual time
    surface: str                 # "ddb" while a vCPU is in the debugger, else "guest"

    @property
    def vcpus(self) -> int:
        return len(self.icounts)


# ---------------------------------------------------------------------- builders
def summary(m: Machine) -> MachineSummary:
    return MachineSummary(m.vm.name, m.vm.policy.name,
                          tuple(v.cpu.icount for v in m.vm.vcpus), m.now(), m.surface)


def nmi_view(v: Vcpu) -> NmiView:
    """The policy's state of `v`. Policies that own their state describe it
    (`nmi_describe()`); older ones kept it on the vCPU."""
    describe = getattr(v, "nmi_describe", None)
    if describe is not None:
        d = dict(describe())
    else:
        d = {"policy": v.policy.name, "state": v.nmi_state, "last_unblock": v.last_unblock,
             "blocked": v.policy.nmi_blocked(v)}
    known = ("policy", "state", "last_unblock", "last_transition", "blocked")
    detail = tuple(sorted((k, f"{val:#x}" if isinstance(val, int) and not isinstance(val, bool)
                           else str(val)) for k, val in d.items() if k not in known))
    return NmiView(str(d.get("policy", v.policy.name)), str(d.get("state", "")),
                   str(d.get("last_unblock", "") or ""), str(d.get("last_transition", "") or ""),
                   bool(d.get("blocked", False)), bool(v.nmi_pending), detail)


def _event(log, e) -> TimedEvent:  # noqa: ANN001 - RetireLog, Event
    return TimedEvent(e.seq, log.time_of(e.seq), EVENT_KINDS[e.kind], e.vector, e.error_code,
                      e.rip, e.rflags, e.dr6, e.info)


def last_exit(v: Vcpu) -> ExitView | None:
    from .svm import exitcodes as ec
    e = v.last_exit
    if e is None:
        return None
    log = v.cpu.retire
    seq = time = None
    from .x86.retire import EV_VMEXIT
    for ev in islice(reversed(log.events), 4096):
        if ev.kind == EV_VMEXIT:   # the newest is this exit
            seq, time = ev.seq, log.time_of(ev.seq)
            break
    return ExitView(v.exit_count, v.id, e.code, ec.apm_name(e.code), e.info1, e.info2,
                    e.intinfo, e.rip, seq, time)


def vmcb_fields(v: Vcpu) -> VmcbFields:
    return _fields(v.vmcb)


def _fields(b) -> VmcbFields:  # noqa: ANN001 - nitdbg.svm.vmcb.Vmcb
    from .svm import exitcodes as ec
    from .svm.intinfo import describe
    code = ec.exitcode_from_u64(b.exitcode)
    return VmcbFields(tuple(b.intercept_names()), code, ec.apm_name(code), b.exitinfo1,
                      b.exitinfo2, describe(b.exitintinfo), describe(b.eventinj), b.v_irq,
                      b.v_intr_vector, b.interrupt_shadow, b.rflags, b.rip, b.dr6, b.dr7)


def vcpu_state(m: Machine, vcpu: int) -> VcpuState:
    from .x86.regs import GPR_NAMES
    v = m.vm.vcpus[vcpu]
    c = v.cpu
    regs = {n: c.regs[i] for i, n in enumerate(GPR_NAMES)}
    in_guest = v.svm.in_guest
    if in_guest:
        regs["rip"], regs["rflags"] = c.rip, c.rflags
    else:
        # after #VMEXIT the VMCB's save area holds RAX, RSP, RIP and RFLAGS (APM 15.5.1)
        regs["rax"], regs["rsp"] = v.vmcb.rax, v.vmcb.rsp
        regs["rip"], regs["rflags"] = v.vmcb.rip, v.vmcb.rflags
    guest_rflags = getattr(v, "guest_rflags", None)
    if isinstance(guest_rflags, int) and not in_guest:
        regs["rflags"] = guest_rflags        # a policy may hide its own TF/RF from the guest
    return VcpuState(v.id, in_guest, v.halted, v.id in m.in_kdb, c.icount, v.now(), regs,
                     nmi_view(v), vmcb_fields(v), last_exit(v), c.retire_events_total())


def recent_events(m: Machine, vcpu: int, since_seq: int = 0, limit: int = 4096,
                  skip_exits: frozenset[int] = frozenset(), scan: int = 1 << 16
                  ) -> tuple[TimedEvent, ...]:
    """The vCPU's retirement-log events with seq >= since_seq: the newest `limit` of them,
    leaving out exits with a code in `skip_exits` (looking at the newest `scan` events)."""
    from .x86.retire import EV_VMEXIT
    log = m.vm.vcpus[vcpu].cpu.retire
    out = []
    for e in islice(reversed(log.events), scan):
        if e.seq < since_seq or len(out) >= limit:
            break
        if e.kind == EV_VMEXIT and e.info in skip_exits:
            continue
        out.append(_event(log, e))
    out.reverse()
    return tuple(out)


def retired_among(m: Machine, vcpu: int, start: int, end: int, wanted: set[int]) -> set[int]:
    """Which of the `wanted` addresses retired with a count in [start, end) (as far as the
    retirement ring still holds them)."""
    log = m.vm.vcpus[vcpu].cpu.retire
    start = max(start, end - log.capacity, 0)
    if start >= end or not wanted:
        return set()
    a, b = start & log.mask, end & log.mask
    if a < b:
        return wanted.intersection(log.rips[a:b])
    return wanted.intersection(log.rips[a:]) | wanted.intersection(log.rips[:b])


def read_guest(m: Machine, vcpu: int, addr: int, n: int) -> bytes:
    """Guest-virtual memory as `vcpu` sees it (raises on an unmapped page)."""
    return m.vm.read_guest(m.vm.vcpus[vcpu], addr, n)


def ktr_since(m: Machine, vcpu: int, since_ns: int, limit: int = 2000) -> tuple[KtrLine, ...]:
    """KTR lines of `vcpu` logged at or after virtual time `since_ns` (newest `limit`)."""
    out = []
    for e in reversed(m.vm.ktr.tail(limit)):
        if e.cpu != vcpu:
            continue              # other vCPUs' clocks run apart: only this one's order counts
        if e.timestamp < since_ns:
            break
        out.append(KtrLine(e.index, e.cpu, e.timestamp, e.message))
    out.reverse()
    return tuple(out)


# ---------------------------------------------------------------------- exit history
@dataclass(frozen=True)
class ExitSnapshot:
    """One past #VMEXIT: the VMCB and the guest registers as the exit left them (before
    the hypervisor handled it)."""

    exit: ExitView
    regs: dict[str, int]
    vmcb: VmcbFields


class ExitRecorder:
    """An exit listener of one vCPU keeping the VMCB bytes and the GPRs of its newest
    exits. A callable object (not a closure), so a copied machine (Machine.clone) gets its
    own. Reading it changes nothing in the machine."""

    def __init__(self, keep: int) -> None:
        from collections import deque
        self.ring: deque = deque(maxlen=keep)

    def __call__(self, v: Vcpu, e) -> None:  # noqa: ANN001 - nitdbg.svm.svm.Exit
        # listeners run when the exit is counted, before its handler changes the VMCB
        self.ring.append((v.exit_count, e.code, e.info1, e.info2, e.intinfo, e.rip,
                          v.cpu.icount, v.now(), bytes(v.vmcb.buf), tuple(v.cpu.regs)))


EXIT_HISTORY = 64          # exits kept per vCPU


def exit_recorder(m: Machine, vcpu: int) -> ExitRecorder:
    """The vCPU's recorder, attached on first use (and again after a reset's new VM)."""
    v = m.vm.vcpus[vcpu]
    for cb in v.exit_listeners:
        if isinstance(cb, ExitRecorder):
            return cb
    rec = ExitRecorder(EXIT_HISTORY)
    v.exit_listeners.append(rec)
    return rec


def exit_history(m: Machine, vcpu: int) -> tuple[ExitSnapshot, ...]:
    """The vCPU's recent exits, oldest first, as they were (only those since the history
    was first asked for)."""
    from .svm import exitcodes as ec
    from .svm.vmcb import Vmcb
    from .x86.regs import GPR_NAMES
    out = []
    for number, code, i1, i2, intinfo, rip, seq, time, buf, gprs in exit_recorder(m, vcpu).ring:
        b = Vmcb(buf)
        regs = {n: gprs[i] for i, n in enumerate(GPR_NAMES)}
        # after #VMEXIT the save area holds RAX, RSP, RIP and RFLAGS (APM 15.5.1)
        regs["rax"], regs["rsp"] = b.rax, b.rsp
        regs["rip"], regs["rflags"] = b.rip, b.rflags
        out.append(ExitSnapshot(ExitView(number, vcpu, code, ec.apm_name(code), i1, i2,
                                         intinfo, rip, seq, time), regs, _fields(b)))
    return tuple(out)

