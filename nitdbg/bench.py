"""`nitdbg bench`: guest instructions per second of the vCPU, and machine-level figures.

The loops are pre-assembled (source below) and run on a bare long-mode vCPU with the
retirement log on, as it always is:

    a:  mov $2000000000,%ecx ; xor %eax,%eax
    1:  add $3,%rax ; xor %rdx,%rax ; dec %ecx ; jnz 1b ; hlt
    b:  mov $2000000000,%ecx ; lea -0x40(%rsp),%rbx
    2:  mov %rcx,8(%rbx) ; add 8(%rbx),%rax ; push %rax ; pop %rdx ; dec %ecx ; jnz 2b ; hlt
    db: incq -0x10(%rsp) ; iretq          (the #DB handler for case c: b with RFLAGS.TF=1)

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
BASE = 0x100000
PML4, GDT, IDT, STACK = 0x1000, 0x8000, 0x9000, 0x80000


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
    c.seg[1].load(Segment(0x08, 0, 0xFFFFFFFF, 0xA9B))
    for i in (0, 2, 3, 4, 5):
        c.seg[i].load(Segment(0x10, 0, 0xFFFFFFFF, 0xC93))
    c.update_mode()
    c.regs[RSP] = STACK
    return c


def _rate(start: int, tf: bool, seconds: float) -> float:
    c = bare_cpu()
    c.rip = BASE + start
    if tf:
        c.rflags |= TF
        c.attention = True
    c.run(2000)                      # warm the decode cache
    n0, t0 = c.icount, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        c.run(50_000)
    return (c.icount - n0) / (time.perf_counter() - t0)


def median_rate(start: int, tf: bool, runs: int, seconds: float) -> float:
    return statistics.median(_rate(start, tf, seconds) for _ in range(runs))


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


def run(argv_json: bool = False, runs: int = 5, seconds: float = 0.6,
        extra: dict[str, Callable[[], dict]] | None = None) -> int:
    figs: dict[str, float] = {
        "alu_branch_loop_ips": median_rate(A_OFF, False, runs, seconds),
        "memory_push_pop_loop_ips": median_rate(B_OFF, False, runs, seconds),
        "single_step_db_iretq_ips": median_rate(B_OFF, True, runs, seconds),
    }
    figs.update(machine_figures())
    figs["machine_bytes_per_vcpu_retire_log"] = float(8 * (1 << 18))
    for name, fn in (extra or {}).items():
        try:
            figs.update(fn())
        except Exception as e:  # noqa: BLE001 - a missing optional part is reported, not fatal
            figs[name + "_error"] = str(e)  # type: ignore[assignment]
    try:
        import resource
        figs["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    except ImportError:   # pragma: no cover - not on this platform
        pass
    if argv_json:
        print(json.dumps(figs, indent=2, sort_keys=True))
    else:
        loops = ("alu_branch_loop_ips", "memory_push_pop_loop_ips", "single_step_db_iretq_ips")
        for k, v in figs.items():
            if k.endswith("_ips"):
                note = f" (median of {runs})" if k in loops else ""
                print(f"{k:32} {v / 1e6:8.2f} M instr/s{note}")
            else:
                print(f"{k:32} {v}")
    return 0
