"""`nitdbg diff --qemu KERNEL [--vcpus N]`: run a multiboot kernel under nitdbg and under
qemu-system-x86_64 single-stepped with an exec/interrupt/CPU trace, and report the first
divergence of the instruction stream, of an event delivery or of register state.

QEMU runs `-accel tcg,thread=single -singlestep -d exec,int,cpu,nochain -dfilter <the ELF's
loaded ranges>`: every instruction of the kernel is one "Trace" line followed by the CPU
state before it; "v=.. e=.. i=.." lines are the interrupts and exceptions it delivers. The
BIOS is not traced (the filter), and comparison starts at the kernel's entry.

What is compared, per vCPU, in order:
- the address of each instruction (consecutive repeats of one address are one: QEMU traces
  every iteration of a REP string instruction, nitdbg retires it once);
- each event: vector and error code, and after which instruction it came;
- the general registers and RFLAGS before each instruction. The multiboot contract leaves
  ECX, EDX, ESI, EDI, EBP, ESP and the arithmetic flags undefined at entry: nitdbg's BSP
  starts with QEMU's values for them; a register is compared from the first instruction at
  which both sides hold the same value (EBX, the information structure's address, differs).

Interrupts that come from timers (PIT, RTC, LAPIC timer) arrive in virtual time under
nitdbg and in wall-clock time under QEMU, so a kernel that uses them diverges at its first
such interrupt; the report says so. QEMU's trace of several vCPUs is attributed by its
"Trace N:" lines.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from .guest.elf import LoadError, parse_elf, read_source
from .machine import Machine, MachineError
from .svm import exitcodes as ec
from .x86.regs import GPR_NAMES
from .x86.retire import EV_EXCEPTION, EV_INTR, EV_NMI, EV_SOFTINT

COMPARED_REGS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "rflags")
# Deliveries as the guest sees them (an EVENTINJ is also logged as EV_INJECT: not counted).
EVENT_KINDS = (EV_EXCEPTION, EV_NMI, EV_INTR, EV_SOFTINT)
# What the multiboot contract leaves undefined at entry (spec 3.2): nitdbg's BSP starts with
# QEMU's values for these, so values saved and restored later compare equal.
UNDEFINED_AT_ENTRY = ("rcx", "rdx", "rsi", "rdi", "rbp", "rsp")
TIMER_NOTE = ("timer interrupts arrive in virtual time under nitdbg and in wall-clock time "
              "under QEMU")


class DiffError(Exception):
    """One line for the user (no QEMU, bad kernel, QEMU failed)."""


@dataclass
class Step:
    """One instruction about to execute, with the register state before it."""

    rip: int
    regs: dict[str, int]


@dataclass
class Divergence:
    vcpu: int
    index: int
    what: str
    nitdbg: str
    qemu: str
    context: list[int]


# -- QEMU side ------------------------------------------------------------------------------

_TRACE = re.compile(r"^Trace (\d+): 0x[0-9a-f]+ \[([0-9a-f]+)/([0-9a-f]+)/")
_EVENT = re.compile(r"^\s*\d+: v=([0-9a-f]+) e=([0-9a-f]+) i=(\d)")
_REG = re.compile(r"\b(E[A-Z]{2}|R[A-Z]{2}|R\d+|EFL|RFL)=([0-9a-f]+)")


def _qemu_regs(lines: list[str]) -> dict[str, int]:
    regs: dict[str, int] = {}
    for line in lines:
        for name, val in _REG.findall(line):
            n = name.lower()
            if n in ("efl", "rfl"):
                n = "rflags"
            elif n.startswith("e"):
                n = "r" + n[1:]
            regs[n] = int(val, 16)
    return regs


_FAULTS = frozenset({0, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19})


@dataclass
class Trace:
    """One side's record of a vCPU: completed instructions and events with their place
    (the number of instructions completed before the event)."""

    steps: list[Step] = field(default_factory=list)
    events: list[tuple[int, int, int | None]] = field(default_factory=list)  # (pos, vec, err)


def parse_qemu_log(lines: Iterator[str], entry: int) -> dict[int, Trace]:
    """Per vCPU, from the first Trace at the kernel's `entry`. A traced instruction that a
    fault interrupts did not complete and is dropped; a software interrupt (i=1) comes
    from the instruction before it."""
    out: dict[int, Trace] = {}
    started = False
    cur: int | None = None
    dump: list[str] = []

    def close() -> None:
        nonlocal dump
        if cur is not None and dump and out[cur].steps and not out[cur].steps[-1].regs:
            out[cur].steps[-1].regs = _qemu_regs(dump)
        dump = []

    last_cpu = 0
    for line in lines:
        m = _TRACE.match(line)
        if m:
            close()
            cpu, pc = int(m.group(1)), int(m.group(3), 16)
            if not started:
                if pc != entry:
                    continue
                started = True
            t = out.setdefault(cpu, Trace())
            last_cpu = cpu
            if t.steps and t.steps[-1].rip == pc and not (
                    t.events and t.events[-1][0] == len(t.steps)):
                cur = None          # the same instruction again (a REP iteration)
                continue
            t.steps.append(Step(pc, {}))
            cur = cpu
            continue
        if not started:
            continue
        e = _EVENT.match(line)
        if e:
            close()
            cpu = cur if cur is not None else last_cpu
            t = out.setdefault(cpu, Trace())
            vec, err, soft = int(e.group(1), 16), int(e.group(2), 16), e.group(3) == "1"
            if not soft and vec in _FAULTS and t.steps:
                t.steps.pop()       # the faulting instruction did not complete
            pos = len(t.steps) - (1 if soft else 0)
            t.events.append((pos, vec, err if vec in _ERRCODE and not soft else None))
            cur = None
            continue
        if cur is not None and "=" in line:
            dump.append(line)
    close()
    return out


_ERRCODE = frozenset({8, 10, 11, 12, 13, 14, 17})


def elf_ranges(path: str) -> tuple[int, list[tuple[int, int]]]:
    raw, name = read_source(path, None)
    img = parse_elf(raw, name, ram_size=1 << 32, machines=("EM_386", "EM_X86_64"))
    ranges = [(s.paddr, max(s.memsz, 1)) for s in img.segments]
    return img.entry, ranges


def run_qemu(kernel: str, vcpus: int, max_steps: int, timeout: float,
             qemu: str) -> dict[int, Trace]:
    entry, ranges = elf_ranges(kernel)
    dfilter = ",".join(f"{a:#x}+{n:#x}" for a, n in ranges)
    with tempfile.TemporaryDirectory(prefix="nitdbg-diff-") as tmp:
        log = os.path.join(tmp, "qemu.log")
        args = [qemu, "-kernel", kernel, "-display", "none", "-debugcon", "null",
                "-device", "isa-debug-exit", "-no-reboot", "-smp", str(vcpus),
                "-accel", "tcg,thread=single", "-singlestep",
                "-d", "exec,int,cpu,nochain", "-dfilter", dfilter, "-D", log]
        try:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
        except OSError as e:
            raise DiffError(f"cannot start {qemu}: {e.strerror}") from None
        # Enough trace: a Trace line per instruction and ~20 lines of state each.
        budget = (max_steps + 100) * 2500 * vcpus
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if os.path.exists(log) and os.path.getsize(log) > budget:
                    break
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        if not os.path.exists(log):
            err = proc.stderr.read().decode(errors="replace").strip().splitlines()
            raise DiffError(f"qemu wrote no trace: {err[0] if err else 'no message'}")
        with open(log, errors="replace") as f:
            return parse_qemu_log(iter(f), entry)


# -- nitdbg side ----------------------------------------------------------------------------

def run_nitdbg(kernel: str, vcpus: int, max_steps: int, ranges: list[tuple[int, int]],
               entry_regs: dict[str, int] | None = None) -> tuple[Machine, dict[int, Trace]]:
    """Step the kernel one instruction at a time. Instructions the hypervisor completes
    (OUT to debugcon, HLT, ...) are taken from the exits, the others from the retirement
    log; only those inside `ranges` count, as QEMU's -dfilter does."""
    try:
        m = Machine(kernel=kernel, vcpus=vcpus)
    except MachineError as e:
        raise DiffError(str(e)) from None
    if entry_regs:
        bsp = m.vcpus[0]
        for r in UNDEFINED_AT_ENTRY:
            if r in entry_regs:
                if r == "rsp":
                    bsp.vmcb.rsp = entry_regs[r]
                else:
                    bsp.cpu.regs[GPR_NAMES.index(r)] = entry_regs[r]
        if "rflags" in entry_regs:
            bsp.vmcb.rflags = (entry_regs["rflags"] & 0x8D5) | 2     # arithmetic flags
    out = {v.id: Trace() for v in m.vcpus}
    done: list[int] = []

    def on_exit(v, e) -> None:  # noqa: ANN001
        if e.code in _EMULATED and e.nrip:
            done.append(e.rip + (v.vmcb.seg("cs").base if v.vmcb.efer & 0x400 == 0 else 0))
    for v in m.vcpus:
        v.exit_listeners.append(on_exit)
    seen = {v.id: v.cpu.retire_events_total() for v in m.vcpus}

    def inside(lin: int) -> bool:
        return any(a <= lin < a + n for a, n in ranges)

    while sum(len(t.steps) for t in out.values()) < max_steps * len(m.vcpus):
        v = m.pick()
        if v is None:
            break
        t = out[v.id]
        regs = _nitdbg_regs(v)
        before = v.cpu.icount
        done.clear()
        ev = m.step_vcpu(v.id)
        new = _new_events(v, seen)
        for vec, err in new:
            t.events.append((len(t.steps), vec, err))
        rips = list(done)
        if v.cpu.icount > before:
            r = v.cpu.retire
            rip = r.rips[(v.cpu.icount - 1) & r.mask]
            rips.append(rip + (v.cpu.seg[1].base if v.cpu.mode != 64 else 0))
        for k, lin in enumerate(rips):
            if inside(lin):
                t.steps.append(Step(lin, regs if k == 0 and not new else {}))
        if ev.reason in ("idle", "hlt"):
            continue                  # this vCPU waits; the others go on
        if ev.reason not in ("step", "budget"):
            break                     # isa-debug-exit, shutdown, an unhandled exit
    return m, out


_EMULATED = frozenset({ec.VMEXIT_HLT, ec.VMEXIT_IOIO, ec.VMEXIT_MSR, ec.VMEXIT_CPUID,
                       ec.VMEXIT_PAUSE})


def _nitdbg_regs(v) -> dict[str, int]:  # noqa: ANN001 - nitdbg.vmm.vcpu.Vcpu
    c = v.cpu
    regs = {n: c.regs[i] for i, n in enumerate(GPR_NAMES)}
    if v.svm.in_guest:
        regs["rflags"] = c.rflags
    else:
        regs["rax"], regs["rsp"], regs["rflags"] = v.vmcb.rax, v.vmcb.rsp, v.vmcb.rflags
    return regs


def _new_events(v, seen: dict[int, int]) -> list[tuple[int, int | None]]:  # noqa: ANN001
    total = v.cpu.retire_events_total()
    n = total - seen[v.id]
    seen[v.id] = total
    if n <= 0:
        return []
    evs = list(v.cpu.retire.events)[-n:]
    return [(e.vector, e.error_code) for e in evs if e.kind in EVENT_KINDS]


# -- comparison -----------------------------------------------------------------------------

def compare(mine: dict[int, Trace], theirs: dict[int, Trace]) -> Divergence | None:
    for cpu in sorted(set(mine) | set(theirs)):
        a, b = mine.get(cpu, Trace()), theirs.get(cpu, Trace())
        n = min(len(a.steps), len(b.steps))
        ea = [e for e in a.events if e[0] <= n]
        eb = [e for e in b.events if e[0] <= n]
        tracked: set[str] = set()
        for i in range(n):
            x, y = a.steps[i], b.steps[i]
            ctx = [s.rip for s in a.steps[max(0, i - 5):i]]
            xe = [(v, err) for p, v, err in ea if p == i]
            ye = [(v, err) for p, v, err in eb if p == i]
            if xe != ye:
                return Divergence(cpu, i, "event delivery", _evs(xe), _evs(ye), ctx)
            if x.rip != y.rip:
                return Divergence(cpu, i, "instruction stream", f"{x.rip:#x}", f"{y.rip:#x}",
                                  ctx)
            for r in COMPARED_REGS:
                if r not in x.regs or r not in y.regs:
                    continue
                narrow = y.regs[r] >> 32 == 0 and x.regs[r] >> 32 == 0
                mask = 0xFFFF_FFFF if narrow else (1 << 64) - 1
                xv, yv = x.regs[r] & mask, y.regs[r] & mask
                if r == "rflags":
                    xv, yv = xv & ~0x10000, yv & ~0x10000     # RF: not in QEMU's dump
                if xv == yv:
                    tracked.add(r)
                elif r in tracked:
                    return Divergence(cpu, i, f"register {r}", f"{xv:#x}", f"{yv:#x}", ctx)
    return None


def _evs(evs: list[tuple[int, int | None]]) -> str:
    if not evs:
        return "no event"
    return ", ".join(f"vector {v:#x}" + (f" error {e:#x}" if e is not None else "")
                     for v, e in evs)


def report(m: Machine, d: Divergence | None, mine: dict[int, Trace],
           theirs: dict[int, Trace]) -> str:
    counts = ", ".join(f"vCPU {c}: {len(mine[c].steps) if c in mine else 0} / "
                       f"{len(theirs[c].steps) if c in theirs else 0}"
                       for c in sorted(set(mine) | set(theirs)))
    head = f"compared instructions (nitdbg / qemu): {counts}\n"
    ended = [c for c in sorted(set(mine) & set(theirs))
             if len(mine[c].steps) != len(theirs[c].steps)]
    if ended:
        head += ("(compared up to the shorter trace; one side stopped or exited first on "
                 f"vCPU {', '.join(map(str, ended))})\n")
    if d is None:
        return head + "no divergence\n"
    out = [head, f"first divergence: vCPU {d.vcpu}, instruction #{d.index} since entry: "
                 f"{d.what}\n",
           f"  nitdbg: {d.nitdbg}\n", f"  qemu:   {d.qemu}\n"]
    if d.what == "event delivery":
        out.append(f"  (if these are timer interrupts: {TIMER_NOTE})\n")
    if d.context:
        out.append("  context (nitdbg):\n")
        for rip in d.context:
            out.append(f"    {rip:#x} {m.symbols.format(rip)}\n")
    return "".join(out)


def main_diff(kernel: str, vcpus: int | None, max_steps: int, timeout: float) -> int:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        print("nitdbg diff: qemu-system-x86_64 not found on PATH")
        return 2
    n = vcpus if vcpus is not None else 1
    try:
        _, ranges = elf_ranges(kernel)
        theirs = run_qemu(kernel, n, max_steps, timeout, qemu)
        first = theirs.get(0, Trace()).steps
        m, mine = run_nitdbg(kernel, n, max_steps, ranges, first[0].regs if first else None)
    except (DiffError, LoadError, OSError) as e:
        print(f"nitdbg diff: {e}")
        return 2
    for t in (*mine.values(), *theirs.values()):
        del t.steps[max_steps:]
    d = compare(mine, theirs)
    print(report(m, d, mine, theirs), end="")
    return 0 if d is None else 1
