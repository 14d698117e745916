"""`nitdbg diff --qemu KERNEL [--vcpus N]`: run a multiboot kernel under nitdbg and under
qemu-system-x86_64 single-stepped with an exec/interrupt/CPU trace, and report the first
divergence of the instruction stream, of an event delivery or of register state.

QEMU runs `-accel tcg,thread=single -singlestep -d exec,int,cpu,nochain -dfilter <the ELF's
loaded ranges>`: every instruction of the kernel is one "Trace" line followed by the CPU
state before it; "v=.. e=.. i=.." lines are the interrupts and exceptions it delivers. The
BIOS is not traced (the filter), and comparison starts at the kernel's entry.

At the first divergence, rules.py's checkers (each a rule of the SDM/APM with its
citation) read each side's trace around it and the report says which rule a side breaks,
or that no rule in the list decides the divergence.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..guest.elf import LoadError, parse_elf, read_source
from ..machine import Machine, MachineError
from ..svm import exitcodes as ec
from ..x86.regs import GPR_NAMES
from ..x86.retire import EV_EXCEPTION, EV_INTR, EV_NMI, EV_SOFTINT, Event

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
    mode: int = 32          # 16, 32 or 64: how the instruction at `rip` decodes


@dataclass
class Delivery:
    """One event as a side delivered it, with what that side's trace shows of it (None:
    not in this side's record). `pos` is where compare() places it; `handler_at` is the
    index of the handler's first instruction (one past the INT n of a software
    interrupt, the handler's first instruction otherwise)."""

    pos: int
    vector: int
    error: int | None
    kind: str                        # "exception", "nmi", "intr" or "soft"
    handler_at: int
    at_rip: int | None = None        # RIP when it was delivered
    at_rflags: int | None = None     # RFLAGS when it was delivered (before the push)
    sp: int | None = None            # RSP before the push
    dr6: int | None = None           # DR6 as the handler finds it
    pushed_rip: int | None = None
    pushed_rflags: int | None = None
    frame_from: str = ""             # "stack" (written), "iret" (what the handler's IRET loaded)
    error_seen: bool = True          # False: the side does not say whether one was pushed

    @property
    def after(self) -> int:
        """Index of the last instruction completed before the delivery (for a software
        interrupt, the INT n itself)."""
        return self.handler_at - 1


@dataclass
class Divergence:
    vcpu: int
    index: int
    what: str
    nitdbg: str
    qemu: str
    context: list[int]


# -- QEMU side ------------------------------------------------------------------------------

_TRACE = re.compile(r"^Trace (\d+): 0x[0-9a-f]+ \[([0-9a-f]+)/([0-9a-f]+)/([0-9a-f]+)/")
_EVENT = re.compile(r"^\s*\d+: v=([0-9a-f]+) e=([0-9a-f]+) i=(\d) cpl=\d+ "
                    r"IP=[0-9a-f]+:([0-9a-f]+) pc=[0-9a-f]+(?: SP=[0-9a-f]+:([0-9a-f]+))?")
_REG = re.compile(r"\b(E[A-Z]{2}|R[A-Z]{2}|R\d+|EFL|RFL|DR[0-7])=([0-9a-f]+)")
# QEMU's hflags in the Trace line: HF_CS32 (bit 4), HF_CS64 (bit 15)
_HF_CS32, _HF_CS64 = 1 << 4, 1 << 15


def _qemu_regs(lines: list[str]) -> dict[str, int]:
    regs: dict[str, int] = {}
    for line in lines:
        for name, val in _REG.findall(line):
            n = name.lower()
            if n in ("efl", "rfl"):
                n = "rflags"
            elif n.startswith("e"):
                n = "r" + n[1:]
            elif n.startswith("dr"):
                n = n.lower()
            regs[n] = int(val, 16)
    return regs


_FAULTS = frozenset({0, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19})


@dataclass
class Trace:
    """One side's record of a vCPU: completed instructions and events with their place
    (the number of instructions completed before the event)."""

    steps: list[Step] = field(default_factory=list)
    events: list[tuple[int, int, int | None]] = field(default_factory=list)  # (pos, vec, err)
    deliveries: list[Delivery] = field(default_factory=list)   # the events, in full


def parse_qemu_log(lines: Iterator[str], entry: int) -> dict[int, Trace]:
    """Per vCPU, from the first Trace at the kernel's `entry`. A traced instruction that a
    fault interrupts did not complete and is dropped; a software interrupt (i=1) comes
    from the instruction before it."""
    out: dict[int, Trace] = {}
    started = False
    cur: int | None = None
    dump: list[str] = []
    ev: Delivery | None = None      # the event whose state dump follows its "v=" line

    def close() -> None:
        nonlocal dump, ev
        if ev is not None and dump:
            regs = _qemu_regs(dump)
            ev.at_rflags, ev.dr6 = regs.get("rflags"), regs.get("dr6")
        elif cur is not None and dump and out[cur].steps and not out[cur].steps[-1].regs:
            out[cur].steps[-1].regs = _qemu_regs(dump)
        dump = []
        ev = None

    last_cpu = 0
    for line in lines:
        m = _TRACE.match(line)
        if m:
            close()
            cpu, pc, hf = int(m.group(1)), int(m.group(3), 16), int(m.group(4), 16)
            mode = 64 if hf & _HF_CS64 else 32 if hf & _HF_CS32 else 16
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
            t.steps.append(Step(pc, {}, mode))
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
            ip = int(e.group(4), 16)
            # A #DB at the instruction just traced is a fault (general detect: QEMU traces
            # the MOV DR, then raises); a trap's RIP is the next instruction's.
            if not soft and t.steps and (vec in _FAULTS or (vec == 1 and
                                                             t.steps[-1].rip == ip)):
                t.steps.pop()       # the faulting instruction did not complete
            pos = len(t.steps) - (1 if soft else 0)
            err_v = err if vec in _ERRCODE and not soft else None
            t.events.append((pos, vec, err_v))
            kind = "soft" if soft else "exception" if vec < 32 and vec != 2 else \
                "nmi" if vec == 2 else "intr"
            ev = Delivery(pos, vec, err_v, kind, len(t.steps), at_rip=ip,
                          sp=int(e.group(5), 16) if e.group(5) else None, error_seen=False)
            t.deliveries.append(ev)
            cur = None
            continue
        if (cur is not None or ev is not None) and "=" in line:
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
        mode = 16 if not v.cpu.cr0 & 1 else v.cpu.mode
        before = v.cpu.icount
        done.clear()
        ev = m.step_vcpu(v.id)
        new = _new_events(v, seen)
        rips = list(done)
        rip = None
        if v.cpu.icount > before:
            r = v.cpu.retire
            rip = r.rips[(v.cpu.icount - 1) & r.mask]
            rips.append(rip + (v.cpu.seg[1].base if v.cpu.mode != 64 else 0))
        for e in new:
            pos = len(t.steps)
            t.events.append((pos, e.vector, e.error_code))
            # An INT n / INT1 retires with its delivery (the handler has not run): its
            # pushed RIP is the next instruction's. Otherwise the handler's first
            # instruction is what this step retired.
            follows = rip is not None and e.rip == rip + _insn_len(m, v.id, rips[-1], mode)
            t.deliveries.append(_delivery(pos, e, follows))
        for k, lin in enumerate(rips):
            if inside(lin):
                t.steps.append(Step(lin, regs if k == 0 and not new else {}, mode))
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
    for i in range(4):
        regs[f"dr{i}"] = c.dr[i]
    if v.svm.in_guest:
        regs["rflags"], regs["dr6"], regs["dr7"] = c.rflags, c.dr[6], c.dr[7]
    else:
        regs["rax"], regs["rsp"], regs["rflags"] = v.vmcb.rax, v.vmcb.rsp, v.vmcb.rflags
        regs["dr6"], regs["dr7"] = v.vmcb.dr6, v.vmcb.dr7
    return regs


def _insn_len(m: Machine, vcpu: int, lin: int, mode: int) -> int:
    import capstone
    cs = {16: capstone.CS_MODE_16, 64: capstone.CS_MODE_64}.get(mode, capstone.CS_MODE_32)
    try:
        raw = m.read_mem(vcpu, lin, 16)
    except MachineError:
        return -1
    for i in capstone.Cs(capstone.CS_ARCH_X86, cs).disasm(raw, lin, 1):
        return i.size
    return -1


_KIND = {EV_EXCEPTION: "exception", EV_NMI: "nmi", EV_INTR: "intr", EV_SOFTINT: "soft"}


def _delivery(pos: int, e: Event, follows: bool) -> Delivery:
    # nitdbg's retirement log holds the frame it wrote: the pushed RIP and RFLAGS, and DR6
    # after the delivery. `follows`: the event came after the instruction this step
    # retired (INT n, INT1), whose index is `pos`.
    return Delivery(pos, e.vector, e.error_code, _KIND[e.kind], pos + 1 if follows else pos,
                    dr6=e.dr6, pushed_rip=e.rip, pushed_rflags=e.rflags, frame_from="stack")


def _new_events(v, seen: dict[int, int]) -> list[Event]:  # noqa: ANN001
    total = v.cpu.retire_events_total()
    n = total - seen[v.id]
    seen[v.id] = total
    if n <= 0:
        return []
    evs = list(v.cpu.retire.events)[-n:]
    return [e for e in evs if e.kind in EVENT_KINDS]


# -- comparison -----------------------------------------------------------------------------

def compare(mine: dict[int, Trace], theirs: dict[int, Trace]) -> Divergence | None:
    for cpu in sorted(set(mine) | set(theirs)):
        a, b = mine.get(cpu, Trace()), theirs.get(cpu, Trace())
        n = min(len(a.steps), len(b.steps))
        ea = [e for e in a.events if e[0] <= n]
        eb = [e for e in b.events if e[0] <= n]
        tracked: set[str] = set()
        first: dict[str, tuple[int, int]] = {}   # each register's first values (mine, qemu)
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
                first.setdefault(r, (xv, yv))
                if xv == yv:
                    tracked.add(r)
                elif first[r] == (xv, yv):
                    # each side's own entry value again (the multiboot EBX, saved and
                    # restored around code that happened to agree): still undefined
                    tracked.discard(r)
                elif r in tracked:
                    return Divergence(cpu, i, f"register {r}", f"{xv:#x}", f"{yv:#x}", ctx)
    return None


def _evs(evs: list[tuple[int, int | None]]) -> str:
    if not evs:
        return "no event"
    return ", ".join(f"vector {v:#x}" + (f" error {e:#x}" if e is not None else "")
                     for v, e in evs)


def report(m: Machine, d: Divergence | None, mine: dict[int, Trace],
           theirs: dict[int, Trace], verdicts: list[str] | None = None) -> str:
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
                 f"{d.what}\n"]
    for side, tr in (("nitdbg", mine), ("qemu", theirs)):
        st = tr.get(d.vcpu, Trace()).steps
        # a register is the state before the instruction; an event comes before the
        # handler's first instruction; the stream names the instruction itself
        prep = "before" if d.what.startswith("register") else "at"
        where = (f" {prep} {m.symbols.format(st[d.index].rip)} ({st[d.index].rip:#x})"
                 if d.index < len(st) and d.what != "instruction stream" else "")
        val = d.nitdbg if side == "nitdbg" else d.qemu
        if d.what == "event delivery":
            evs = [e for e in tr.get(d.vcpu, Trace()).deliveries if e.pos == d.index]
            val = "; ".join(_describe(e, m.symbols.format) for e in evs) or "no event"
            where = ""
        out.append(f"  {side + ':':7} {val}{where}\n")
    if d.what == "event delivery" and any(
            e.pos == d.index and e.kind in ("intr", "nmi")
            for tr in (mine, theirs) for e in tr.get(d.vcpu, Trace()).deliveries):
        out.append(f"  (if these are timer interrupts: {TIMER_NOTE})\n")
    if d.context:
        from .rules import Code
        code = Code(lambda addr, n: m.read_mem(d.vcpu, addr, n))
        for side, tr in (("nitdbg", mine), ("qemu", theirs)):
            st = tr.get(d.vcpu, Trace()).steps[max(0, d.index - len(d.context)):d.index + 1]
            out.append(f"  context ({side}):\n")
            for s in st:
                ins = code.at(s.rip, s.mode)
                out.append(f"    {s.rip:#x} {m.symbols.format(s.rip):24} {ins or '?'}\n")
    out.extend(verdicts or [])
    return "".join(out)


def _describe(e: Delivery, sym: Callable[[int], str]) -> str:
    what = {"exception": "exception", "nmi": "NMI", "intr": "interrupt",
            "soft": "software interrupt"}[e.kind]
    text = f"{what} vector {e.vector:#x}" + (f" error {e.error:#x}" if e.error is not None
                                             else "")
    if e.at_rip is not None:
        text += f" at {sym(e.at_rip)} ({e.at_rip:#x})"
    elif e.pushed_rip is not None:
        text += f", pushed RIP {sym(e.pushed_rip)} ({e.pushed_rip:#x})"
    return text


def judge(m: Machine, d: Divergence, mine: dict[int, Trace],
          theirs: dict[int, Trace]) -> list[str]:
    """The rule checkers on each side's trace around the divergence (rules.py)."""
    from .rules import Code, evaluate, resolve_iret_frames, verdict_lines

    def read(addr: int, n: int) -> bytes:
        return m.read_mem(d.vcpu, addr, n)
    code = Code(read)
    sides = {}
    for side, tr in (("nitdbg", mine), ("qemu", theirs)):
        t = tr.get(d.vcpu, Trace())
        resolve_iret_frames(t, code)
        sides[side] = evaluate(side, t, code, d.index)
    return verdict_lines(sides, m.symbols.format)


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
    print(report(m, d, mine, theirs, judge(m, d, mine, theirs) if d else None), end="")
    return 0 if d is None else 1
