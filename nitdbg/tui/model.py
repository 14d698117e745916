"""What the panes show, as plain frozen data (no Textual, no machine here).

The worker builds a `Snapshot` on its thread (nitdbg.tui.snapshot); the UI thread only ever
sees the frozen data, so no pane reads the machine while it runs. This module imports
nothing heavy: the screen needs it before the machine exists (first paint).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..view import VmcbFields


@dataclass(frozen=True)
class Explanation:
    title: str        # what happened
    rule: str         # the rule that made it happen
    source: str       # manual and section
    evidence: str     # the numbers it was derived from

    def line(self) -> str:
        return f"{self.title}: {self.rule} — {self.source}"


@dataclass(frozen=True)
class DisLine:
    addr: int
    where: str              # sym+off
    text: str               # AT&T, ddb spelling
    current: bool = False
    breakpoint: bool = False
    retired: bool = False   # retired since the previous stop
    iret_window: bool = False   # retired between the IRET exit and the unblocking


@dataclass(frozen=True)
class VmcbView(VmcbFields):
    """The machine's VMCB fields, with where the save area comes from."""
    exit: str = ""          # which #VMEXIT the save area is from ("": none yet)
    in_guest: bool = False  # the vCPU is in guest mode: the save area is from the last exit

    def fields(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class TimelineEvent:
    time: int               # virtual ns
    kind: str               # exit, inject, db, nmi, iret, intr, exc
    label: str


@dataclass(frozen=True)
class VcpuView:
    id: int
    in_ddb: bool
    halted: bool
    icount: int
    rip: int
    regs: dict[str, int]            # of the trapframe while in ddb, else the live vCPU:
                                    # the 16 GPRs in nitdbg.x86.regs.GPR_NAMES order, rip
    regs_source: str                # "trapframe" or "vCPU"
    rflags: int
    rflags_source: str
    rflags_now: int | None          # the frame's RFLAGS now (ddb clears PSL_T on entry)
    nmi_state: str
    last_unblock: str
    nmi_pending: bool
    iret_exit_seen: bool            # the last exit was the IRET intercept
    vmcb: VmcbView
    stats: str
    timeline: tuple[TimelineEvent, ...]
    now: int
    # every vCPU carries its own disassembly and explanation, so selecting another vCPU
    # repaints from the snapshot at hand without asking the machine
    disasm: tuple[DisLine, ...] = ()
    explain: tuple[Explanation, ...] = ()
    nmi_blocked: bool = False
    nmi_transition: str = ""        # the policy's last transition in words ("" unknown)


@dataclass(frozen=True)
class Snapshot:
    seq: int                        # requests completed when it was taken
    is_stop: bool                   # False: a progress snapshot while the guest runs
    running: bool
    selected: int
    surface: str                    # "ddb" or "guest"
    policy: str
    vm_name: str
    vcpus: tuple[VcpuView, ...]
    ktr: tuple[tuple[int, int, int, str], ...]    # index, cpu, timestamp, message
    console: str
    audit_summary: str
    audit_ok: bool
    audit_steps: int
    ddb_vcpu: int | None
    breakpoints: tuple[int, ...]
    total_retired: int
    now: int
    status: str = ""
    # KTR bookkeeping so the pane appends instead of re-rendering: entries logged up to the
    # newest one in `ktr`, and a number that changes whenever `ktr` does not continue the
    # previous snapshot's (ring cleared, another machine)
    ktr_total: int = 0
    ktr_epoch: int = 0
    extra: dict = field(default_factory=dict)
    # False: the same stop shown again after a read (v, audit, exits): not a new baseline
    # for the "changed since the last stop" marks
    new_stop: bool = True

    @property
    def vcpu(self) -> VcpuView:
        return self.vcpus[self.selected]

    @property
    def disasm(self) -> tuple[DisLine, ...]:
        return self.vcpu.disasm

    @property
    def explain(self) -> tuple[Explanation, ...]:
        return self.vcpu.explain

    def select(self, vcpu: int) -> Snapshot:
        return self if vcpu == self.selected else replace(self, selected=vcpu)
