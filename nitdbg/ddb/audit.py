"""The step audit: the proof that single-stepping loses nothing.

For every debugger stop that follows a resume with PSL_T set (a step), the retirement log of
that vCPU between the resume and the stop must hold exactly one guest instruction outside
the debugger's own trap path, and it must be the instruction the step started from.

The trap path is everything from the delivery of the event that led to a stop (#DB, #BP,
NMI) until the IRET that returns from it. The walk starts inside the previous stop's
handler (depth 1); each delivery recorded in the log (exception, NMI, interrupt, software
interrupt) opens a nested handler, each retired IRET closes one. An instruction the
hypervisor completes itself (an intercepted HLT, IN/OUT, RDMSR/WRMSR, CPUID, PAUSE: a #VMEXIT
followed by a VMRUN at another RIP) never retires in the vCPU but did execute, so it counts
like a retired one.

Everything is kept as plain data (dataclasses) so that every front end can show it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..guest.symbols import SymbolTable
from ..svm import exitcodes as ec
from ..vmm.vcpu import EMULATED_EXITS  # exits the hypervisor completes itself
from ..vmm.vm import Vm
from ..x86.faults import Fault
from ..x86.retire import EV_EXCEPTION, EV_INTR, EV_NMI, EV_SOFTINT, EV_VMEXIT, EV_VMRUN, Event
from .disasm import Disassembler, DisInsn

DELIVERY_KINDS = frozenset({EV_EXCEPTION, EV_NMI, EV_INTR})
SHOW_MAX = 16          # omitted instructions listed one by one in report()


@dataclass(frozen=True)
class InsnRecord:
    seq: int            # retirement count (for an emulated one: the count it happened at)
    rip: int
    where: str          # sym+off
    text: str           # ddb disassembly
    emulated: bool = False

    def line(self) -> str:
        tag = "  (emulated by the hypervisor)" if self.emulated else ""
        return f"#{self.seq} {self.rip:#x} {self.where}:\t{self.text}{tag}"


@dataclass(frozen=True)
class ExitRecord:
    seq: int
    rip: int
    exitcode: int
    name: str
    where: str

    def line(self) -> str:
        return f"#{self.seq} vmexit {self.name} ({self.exitcode:#x}) at {self.rip:#x} {self.where}"


@dataclass
class StepCheck:
    """One step: from the stop at `from_rip` to the next stop on the same vCPU."""

    number: int
    vcpu: int
    from_seq: int
    to_seq: int
    from_rip: int
    to_rip: int
    to_reason: str                                   # why the later stop happened
    executed: list[InsnRecord] = field(default_factory=list)   # outside the trap path
    exits: list[ExitRecord] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def omitted(self) -> list[InsnRecord]:
        """Instructions that ran after the stepped one without a stop."""
        return self.executed[1:]

    @property
    def stopped_twice(self) -> bool:
        return not self.executed


@dataclass
class _Open:
    seq: int
    rip: int


class StepAudit:
    """Verdict and evidence for every step the debugger made."""

    def __init__(self, vm: Vm, symbols: SymbolTable):
        self.vm = vm
        self.symbols = symbols
        self.dis = Disassembler(symbols)
        self.checks: list[StepCheck] = []
        self._open: dict[int, _Open] = {}        # vcpu -> the step in flight
        self._icache: dict[int, DisInsn] = {}
        # Set from above (nitdbg.reference.audit): for the violations, whether the guest
        # loses the step on hardware too, and why (step number -> lines).
        self.judge: Callable[[StepAudit], dict[int, list[str]]] | None = None

    # ------------------------------------------------------------------ recording
    def resumed(self, vcpu: int, seq: int, rip: int, step: bool) -> None:
        """The debugger resumed `vcpu` at retirement count `seq`; `step`: with PSL_T."""
        if step:
            self._open[vcpu] = _Open(seq, rip)
        else:
            self._open.pop(vcpu, None)

    def stopped(self, vcpu: int, seq: int, rip: int, reason: str) -> StepCheck | None:
        """The debugger was entered on `vcpu`; check the step in flight, if any."""
        op = self._open.pop(vcpu, None)
        if op is None:
            return None
        chk = StepCheck(len(self.checks) + 1, vcpu, op.seq, seq, op.rip, rip, reason)
        self._analyse(chk)
        self.checks.append(chk)
        return chk

    def reset(self) -> None:
        self.checks.clear()
        self._open.clear()

    def mark(self) -> tuple[int, dict[int, _Open]]:
        """What rollback() returns to: the checks so far and the steps in flight."""
        return len(self.checks), dict(self._open)

    def rollback(self, mark: tuple[int, dict[int, _Open]]) -> None:
        """Undo what happened since mark() (a refused debugger command)."""
        n, open_ = mark
        del self.checks[n:]
        self._open = dict(open_)

    # ------------------------------------------------------------------ analysis
    def _decode(self, vcpu: int, rip: int) -> DisInsn:
        d = self._icache.get(rip)
        if d is None:
            v = self.vm.vcpus[vcpu]
            code = b""
            for n in (15, 8, 4, 1):
                try:
                    code = self.vm.read_guest(v, rip, n)
                    break
                except (Fault, ValueError):   # unreadable code: decode what we have
                    continue
            d = self.dis.decode(code, rip) if code else self.dis.decode(b"", rip)
            self._icache[rip] = d
        return d

    def _record(self, vcpu: int, seq: int, rip: int, emulated: bool = False) -> InsnRecord:
        return InsnRecord(seq, rip, self.symbols.format(rip), self._decode(vcpu, rip).text,
                          emulated)

    def _analyse(self, chk: StepCheck) -> None:
        log = self.vm.vcpus[chk.vcpu].cpu.retire
        start, end = chk.from_seq, chk.to_seq
        if end - start > log.capacity:
            chk.problems.append(f"{end - start} instructions ran, more than the retirement "
                                f"log holds ({log.capacity}): the step was lost")
            start = end - log.capacity
        events: list[Event] = log.events_between(start, end + 1)
        # emulated instructions: an advancing #VMEXIT followed by a VMRUN at another RIP
        emulated: set[int] = set()
        for i, e in enumerate(events):
            if e.kind == EV_VMEXIT:
                code = e.info
                chk.exits.append(ExitRecord(e.seq, e.rip, code, ec.ktr_name(code),
                                            self.symbols.format(e.rip)))
                if code in EMULATED_EXITS:
                    nxt = next((x for x in events[i + 1:] if x.kind == EV_VMRUN), None)
                    if nxt is not None and nxt.rip != e.rip:
                        emulated.add(i)
        depth = 1
        ei = 0
        mask = log.mask
        rips = log.rips
        decoded = self._icache      # (_decode's cache, read inline: this loop runs per insn)
        nev = len(events)
        next_ev = events[0].seq if nev else -1
        executed = chk.executed
        for seq in range(start, end + 1):
            soft = 0
            # the events at this boundary, in the order they happened
            if seq == next_ev:
                while ei < nev and events[ei].seq == seq:
                    e = events[ei]
                    if e.kind in DELIVERY_KINDS:
                        depth += 1
                    elif e.kind == EV_SOFTINT:
                        soft += 1           # INT n/INT3 retire after their delivery
                    elif ei in emulated and depth == 0:
                        executed.append(self._record(chk.vcpu, seq, e.rip, True))
                    ei += 1
                next_ev = events[ei].seq if ei < nev else -1
            if seq == end:
                break
            rip = rips[seq & mask]
            d = decoded.get(rip)
            if d is None:
                d = self._decode(chk.vcpu, rip)
            if depth == 0:
                executed.append(self._record(chk.vcpu, seq, rip))
            elif d.is_iret:
                depth -= 1
            depth += soft
        if not executed:
            chk.problems.append("no instruction executed: stopped at "
                                f"{self.symbols.format(chk.to_rip)} twice")
        elif len(executed) > 1:
            chk.problems.append(f"{len(executed) - 1} instruction(s) skipped: ran without a "
                                f"stop after {executed[0].where}")
        if executed and executed[0].rip != chk.from_rip:
            chk.problems.append(f"the step started at {executed[0].where}, not at "
                                f"{self.symbols.format(chk.from_rip)} where the guest stopped")
        if chk.to_reason != "step" and not any("lost" in p for p in chk.problems):
            chk.problems.append(f"the single-step trap never came: the next stop was a "
                                f"{chk.to_reason}")

    # ------------------------------------------------------------------ verdict
    @property
    def violations(self) -> list[StepCheck]:
        return [c for c in self.checks if not c.ok]

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        n = len(self.checks)
        bad = self.violations
        if not bad:
            return f"step audit: {n} step{'s' if n != 1 else ''} checked, no instruction skipped"
        skipped = sum(len(c.omitted) for c in bad)
        twice = sum(1 for c in bad if c.stopped_twice)
        parts = []
        if skipped:
            parts.append(f"{skipped} instruction{'s' if skipped != 1 else ''} skipped")
        if twice:
            parts.append(f"{twice} instruction{'s' if twice != 1 else ''} stopped at twice")
        if not parts:
            parts.append(f"{len(bad)} bad step{'s' if len(bad) != 1 else ''}")
        return f"step audit: {n} step{'s' if n != 1 else ''} checked, VIOLATION: " + \
            ", ".join(parts)

    def report(self) -> str:
        out = [self.summary()]
        judged = self.judge(self) if self.judge is not None and self.violations else {}
        for c in self.checks:
            head = (f"step {c.number} on vCPU {c.vcpu}: {self.symbols.format(c.from_rip)} -> "
                    f"{self.symbols.format(c.to_rip)} (retired #{c.from_seq}..#{c.to_seq})")
            if c.ok:
                out.append(f"{head}: ok, executed {c.executed[0].where}")
                continue
            out.append(f"{head}: VIOLATION")
            out.extend(f"  {p}" for p in c.problems)
            out.extend(f"  {ln}" for ln in judged.get(c.number, []))
            if c.executed:
                out.append(f"  stepped: {c.executed[0].line()}")
            om = c.omitted
            if om:
                out.append("  omitted:")
                out.extend(f"    {r.line()}" for r in om[:SHOW_MAX])
                if len(om) > SHOW_MAX:
                    out.append(f"    ... and {len(om) - SHOW_MAX} more")
            if c.exits:
                lo = c.executed[0].seq - 1 if c.executed else c.from_seq
                hi = om[min(len(om), SHOW_MAX) - 1].seq + 1 if om else c.to_seq
                near = [x for x in c.exits if lo <= x.seq <= hi] or c.exits[-4:]
                out.append("  VM exits around them:")
                out.extend(f"    {x.line()}" for x in near[:SHOW_MAX])
        return "\n".join(out) + "\n"
