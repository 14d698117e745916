"""`nitdbg bench`: guest instructions per second of the vCPU, and machine-level figures.

The loops are pre-assembled (source below) and run on a bare long-mode vCPU with the
retirement log on, as it always is:

    a:  mov $2000000000,%ecx ; xor %eax,%eax
    1:  add $3,%rax ; xor %rdx,%rax ; dec %ecx ; jnz 1b ; hlt
    b:  mov $2000000000,%ecx ; lea -0x40(%rsp),%rbx
    2:  mov %rcx,8(%rbx) ; add 8(%rbx),%rax ; push %rax ; pop %rdx ; dec %ecx ; jnz 2b ; hlt
    db: incq -0x10(%rsp) ; iretq          (the #DB handler for case c: b with RFLAGS.TF=1)

Each loop runs with block translation (the default) and on the exact per-instruction path
(`_per_insn`); loop c also with the exact event-delivery and IRETQ paths (`_exact_events`,
x86/fastpath.py off), and per second of this process's CPU time
(`single_step_db_iretq_cpu_ips`: what the loop costs when other processes load the machine).
Loops a and b also run as 32-bit protected-mode code (`_32bit`). The whole machine is the
amd64 guest on 2 vCPUs running the shell's busy loop.
With `--vs-unicorn` (`pip install -e '.[bench]'`) loops a and b also run under Unicorn on the
same bytes, with a Python UC_HOOK_CODE callback and bare, interleaved with nitdbg run by run.

This module is a front end: it reads the wall clock to measure, nothing below it does.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

from .x86.cpu import Cpu
from .x86.memory import PhysMem
from .x86.regs import RSP, TF
from .x86.segments import Segment

CODE = bytes.fromhex(
    "b900943577" "31c0" "4883c003" "4831d0" "ffc9" "75f5" "f4"          # a at 0x00
    "b900943577" "488d5c24c0" "48894b08" "48034308" "50" "5a" "ffc9" "75f2" "f4"  # b at 0x13
    "48ff4424f0" "48cf")                                                  # db at 0x2c
A_OFF, B_OFF, DB_OFF = 0x00, 0x13, 0x2C
# loops a and b assembled for 32-bit protected mode (the same instructions without REX.W;
# `_32bit` figures), at 0x00 and 0x11
CODE32 = bytes.fromhex(
    "b900943577" "31c0" "83c003" "31d0" "ffc9" "75f7" "f4"
    "b900943577" "8d5c24c0" "894b08" "034308" "50" "5a" "ffc9" "75f4" "f4")
A32_OFF, B32_OFF = 0x00, 0x11
BASE = 0x100000
PML4, GDT, IDT, STACK = 0x1000, 0x8000, 0x9000, 0x80000


def _flat(c: Cpu, code_attrib: int) -> Cpu:
    """Flat segments (code 0x08 with `code_attrib`, data 0x10) and the stack: ready to run."""
    c.seg[1].load(Segment(0x08, 0, 0xFFFFFFFF, code_attrib))
    for i in (0, 2, 3, 4, 5):
        c.seg[i].load(Segment(0x10, 0, 0xFFFFFFFF, 0xC93))
    c.update_mode()
    c.regs[RSP] = STACK
    return c


def bare_cpu() -> Cpu:
    """A long-mode vCPU on bare metal: identity paging of 1 GiB, a 64-bit code segment,
    an IDT with the #DB handler at vector 1."""
    mem = PhysMem(16 << 20)
    mem.write(PML4, 8, (PML4 + 0x1000) | 3)
    mem.write(PML4 + 0x1000, 8, (PML4 + 0x2000) | 3)
    for i in range(512):
        mem.write(PML4 + 0x2000 + i * 8, 8, (i << 21) | 0x83)
    mem.write(GDT + 8, 8, 0x00AF9B000000FFFF)     # 0x08: 64-bit code, DPL 0
    mem.write(GDT + 16, 8, 0x00CF93000000FFFF)    # 0x10: data
    h = BASE + DB_OFF
    mem.write(IDT + 16, 8, (h & 0xFFFF) | (0x08 << 16) | (0x8E << 40) | ((h >> 16) << 48))
    mem.write(IDT + 24, 8, h >> 32)
    mem.write_bytes(BASE, CODE)
    c = Cpu(mem)
    c.cr0, c.cr4, c.efer, c.cr3 = 0x80050033, 0x20, 0xD01, PML4
    c.gdtr.base, c.gdtr.limit = GDT, 23
    c.idtr.base, c.idtr.limit = IDT, 256 * 16 - 1
    return _flat(c, 0xA9B)


def bare_cpu32() -> Cpu:
    """A 32-bit protected-mode vCPU on bare metal: no paging, flat 4 GiB code and data
    segments (D=1, B=1), CODE32 loaded."""
    mem = PhysMem(16 << 20)
    mem.write(GDT + 8, 8, 0x00CF9B000000FFFF)     # 0x08: 32-bit code, DPL 0
    mem.write(GDT + 16, 8, 0x00CF93000000FFFF)    # 0x10: data
    mem.write_bytes(BASE, CODE32)
    c = Cpu(mem)
    c.cr0 = 0x11
    c.gdtr.base, c.gdtr.limit = GDT, 23
    return _flat(c, 0xC9B)


def _rate(start: int, tf: bool, seconds: float, blocks: bool = True,
          fast_events: bool = True, clock: Callable[[], float] = time.perf_counter,
          make: Callable[[], Cpu] = bare_cpu) -> float:
    """Instructions per second of `clock` (wall time; `time.process_time`: this process's
    CPU time, which other processes loading the machine do not inflate)."""
    c = make()
    c.blocks_enabled = blocks
    c.fast_events = fast_events
    c.rip = BASE + start
    if tf:
        c.rflags |= TF
        c.attention = True
    c.run(2000)                      # warm the decode cache and the block cache
    n0, t0 = c.icount, clock()
    while clock() - t0 < seconds:
        c.run(50_000)
    return (c.icount - n0) / (clock() - t0)


def median_rate(start: int, tf: bool, runs: int, seconds: float) -> float:
    return statistics.median(_rate(start, tf, seconds) for _ in range(runs))


class WholeMachine:
    """The amd64 guest on 2 vCPUs running the shell's `while [ 1 ]; do : done` (vCPU 0 in
    the loop in ring 3, vCPU 1 idle, the LAPIC timers ticking)."""

    def __init__(self, blocks: bool = True) -> None:
        import os

        from .machine import Machine
        old = os.environ.get("NITDBG_BLOCKS")
        os.environ["NITDBG_BLOCKS"] = "1" if blocks else "0"
        try:
            self.m = Machine(vcpus=2)
        finally:
            if old is None:
                del os.environ["NITDBG_BLOCKS"]
            else:
                os.environ["NITDBG_BLOCKS"] = old
        self.m.boot_to_prompt()
        self.m.type_line("while [ 1 ]; do : done", wait_prompt=False)
        self.m.run(max_insns=300_000)

    def rate(self, seconds: float) -> float:
        m = self.m
        n0, t0 = m.total_retired, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            m.run(max_insns=200_000)
        return (m.total_retired - n0) / (time.perf_counter() - t0)


# ------------------------------------------------------------------ Unicorn, for comparison
def _unicorn(loop: str, hook: bool, iterations: int) -> float:
    """Run loop a or b of CODE under Unicorn from after its counter load, with ECX preset, to
    its HLT; with `hook`, a Python UC_HOOK_CODE callback on every instruction (what a user who
    wants to see each instruction writes). Returns instructions per second."""
    import unicorn as uc
    import unicorn.x86_const as ux
    mu = uc.Uc(uc.UC_ARCH_X86, uc.UC_MODE_64)
    mu.mem_map(BASE, 0x1000)
    mu.mem_write(BASE, CODE)
    mu.mem_map(STACK - 0x10000, 0x20000)
    mu.reg_write(ux.UC_X86_REG_RSP, STACK)
    mu.reg_write(ux.UC_X86_REG_RCX, iterations)
    if loop == "a":
        begin, end, per, extra = A_OFF + 5, A_OFF + 0x12, 4, 1
    else:
        begin, end, per, extra = B_OFF + 5, B_OFF + 0x18, 6, 1
    count = [0]
    if hook:
        def on_code(_mu, _addr, _size, _user) -> None:
            count[0] += 1
        mu.hook_add(uc.UC_HOOK_CODE, on_code)
    t0 = time.perf_counter()
    mu.emu_start(BASE + begin, BASE + end)
    dt = time.perf_counter() - t0
    n = per * iterations + extra
    if hook and count[0] != n:
        raise RuntimeError(f"unicorn ran {count[0]} instructions, expected {n}")
    return n / dt


def release_freed_memory() -> None:
    """Between parts: collect the previous part's machines and hand the heap they freed
    back to the system (glibc keeps freed chunks in its arenas, one per thread that
    allocated, and reuses them poorly for the next part's differently sized blocks). Peak
    RSS then counts each part's own live memory on top of what stays alive, not the previous
    part's leftovers; nothing alive is released."""
    import gc
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):   # not glibc: nothing to trim
        pass


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def machine_figures() -> dict[str, float]:
    """Boot the amd64 guest, take it through an NMI and into ddb: wall times."""
    from .machine import Machine
    t0 = time.perf_counter()
    m = Machine()
    m.boot_to_prompt()
    boot = time.perf_counter() - t0
    m.type_line("sysctl machdep.kdb_on_nmi=1")
    t1 = time.perf_counter()
    m.assert_lapic_lvt(0, 1)
    ev = m.settle()
    nmi = time.perf_counter() - t1
    return {"boot_to_prompt_s": round(boot, 3), "nmi_to_kdb_s": round(nmi, 3),
            "kdb_reached": float(ev.reason == "kdb"),
            "guest_insns_to_prompt": float(m.total_retired)}


def ddb_step_figures(steps: int = 60, vcpus: int = 2, warmup: int = 60) -> dict[str, float]:
    """One ddb `s` on the amd64 guest with 2 vCPUs, stopped in ddb by an NMI: wall time of
    `Machine.debugger("s")` (ddb sets PSL_T in the trapframe and resumes; the guest's IRETQ,
    one instruction, its #DB, trap handler and kdb hypercall; the step audit; the stop
    report). Mean, median, min and max of the wall time over `steps` steps after `warmup`
    steps (the first steps translate the blocks of the trap and stop-CPUs paths), and the
    mean CPU time of the process (what the step costs when other processes load the
    machine)."""
    from .machine import Machine
    m = Machine(vcpus=vcpus)
    m.boot_to_prompt()
    m.type_line("sysctl machdep.kdb_on_nmi=1")
    m.assert_lapic_lvt(0, 1)
    ev = m.settle()
    if ev.reason != "kdb":
        return {"ddb_step_error": f"the guest did not enter ddb ({ev.reason})"}  # type: ignore
    m.enter_debugger(ev)
    for _ in range(warmup):
        m.debugger("s")
    times, cpu = [], []
    n0 = m.total_retired
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        m.debugger("s")
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"ddb_step_ms": round(statistics.mean(times) * 1000, 3),
            "ddb_step_ms_median": round(statistics.median(times) * 1000, 3),
            "ddb_step_ms_min": round(min(times) * 1000, 3),
            "ddb_step_ms_max": round(max(times) * 1000, 3),
            "ddb_step_cpu_ms": round(statistics.mean(cpu) * 1000, 3),
            "ddb_step_guest_insns": round((m.total_retired - n0) / steps, 1)}


def _max_rss_mb() -> float | None:
    """The process's peak resident set so far (MiB), or None where getrusage is missing."""
    try:
        import resource
    except ImportError:   # pragma: no cover - not on this platform
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def idle_figures() -> dict[str, float]:
    """An hour of virtual time on the idle amd64 guest (`sleep 3600` at host$), 1 and 2 vCPUs:
    host seconds, and the idle wake-ups (tickless idle: twice a second per vCPU)."""
    from .machine import Machine
    out: dict[str, float] = {}
    for n in (1, 2):
        m = Machine(vcpus=n)
        m.boot_to_prompt()
        fired = sum(vl.counters["timer_fired"] for vl in m.vm.vlapics)
        t0 = time.perf_counter()
        m.host("sleep 3600")
        out[f"idle_hour_{n}vcpu_host_s"] = round(time.perf_counter() - t0, 2)
        out[f"idle_hour_{n}vcpu_timer_interrupts"] = float(
            sum(vl.counters["timer_fired"] for vl in m.vm.vlapics) - fired)
    return out


def run(argv_json: bool = False, runs: int = 5, seconds: float = 0.6,
        extra: dict[str, Callable[[], dict]] | None = None, vs_unicorn: bool = False) -> int:
    """Every loop is measured `runs` times, the variants interleaved run by run (the machine
    may be shared: the median and the spread say more than one figure)."""
    samples: dict[str, list[float]] = {}

    def add(name: str, v: float) -> None:
        samples.setdefault(name, []).append(v)

    wm = {b: WholeMachine(b) for b in (True, False)}
    for _ in range(runs):
        for blocks in (True, False):
            sfx = "" if blocks else "_per_insn"
            add("alu_branch_loop_ips" + sfx, _rate(A_OFF, False, seconds, blocks))
            add("memory_push_pop_loop_ips" + sfx, _rate(B_OFF, False, seconds, blocks))
            add("single_step_db_iretq_ips" + sfx, _rate(B_OFF, True, seconds, blocks))
            if blocks:
                add("single_step_db_iretq_cpu_ips",
                    _rate(B_OFF, True, seconds, blocks, clock=time.process_time))
                add("single_step_db_iretq_ips_exact_events",
                    _rate(B_OFF, True, seconds, blocks, fast_events=False))
            add("alu_branch_loop_32bit_ips" + sfx,
                _rate(A32_OFF, False, seconds, blocks, make=bare_cpu32))
            add("memory_push_pop_loop_32bit_ips" + sfx,
                _rate(B32_OFF, False, seconds, blocks, make=bare_cpu32))
            add("whole_machine_2vcpu_loop_ips" + sfx, wm[blocks].rate(seconds))
        if vs_unicorn:
            add("unicorn_hook_alu_branch_loop_ips", _unicorn("a", True, 150_000))
            add("unicorn_hook_memory_push_pop_loop_ips", _unicorn("b", True, 100_000))
            add("unicorn_bare_alu_branch_loop_ips", _unicorn("a", False, 20_000_000))
            add("unicorn_bare_memory_push_pop_loop_ips", _unicorn("b", False, 10_000_000))
    del wm
    release_freed_memory()           # the machines' pages before the extras measure
    figs: dict[str, float] = {}
    spread: dict[str, dict[str, float]] = {}
    for name, xs in samples.items():
        st = _stats(xs)
        spread[name] = st
        figs[name] = st["median"]
    if vs_unicorn:
        for loop in ("alu_branch_loop", "memory_push_pop_loop"):
            figs[f"{loop}_vs_unicorn_hook"] = round(
                figs[f"{loop}_ips"] / figs[f"unicorn_hook_{loop}_ips"], 3)
            figs[f"{loop}_vs_unicorn_bare"] = round(
                figs[f"{loop}_ips"] / figs[f"unicorn_bare_{loop}_ips"], 4)
    figs["max_rss_mb_after_loops"] = _max_rss_mb()
    figs.update(machine_figures())
    figs.update(ddb_step_figures())
    figs.update(idle_figures())
    figs["max_rss_mb_after_machine"] = _max_rss_mb()
    release_freed_memory()           # the booted machines of the three parts above
    figs["machine_bytes_per_vcpu_retire_log"] = float(8 * (1 << 18))
    figs["retire_log_bytes_per_insn"] = 8.0     # one array('Q') slot per retired RIP
    for name, fn in (extra or {}).items():
        try:
            figs.update(fn())
        except Exception as e:  # noqa: BLE001 - a missing optional part is reported, not fatal
            figs[name + "_error"] = str(e)  # type: ignore[assignment]
        figs[f"max_rss_mb_after_{name}"] = _max_rss_mb()
        release_freed_memory()
    rss = _max_rss_mb()
    if rss is not None:
        figs["max_rss_mb"] = rss
    if argv_json:
        out = dict(figs)
        for name, st in spread.items():
            out[name + "_min"], out[name + "_max"] = st["min"], st["max"]
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        for k, v in figs.items():
            if k in spread:
                st = spread[k]
                print(f"{k:42} {v / 1e6:9.2f} M instr/s  (median of {runs}, "
                      f"{st['min'] / 1e6:.2f}-{st['max'] / 1e6:.2f})")
            elif k.endswith("_ips"):
                print(f"{k:42} {v / 1e6:9.2f} M instr/s")
            else:
                print(f"{k:42} {v}")
    return 0
