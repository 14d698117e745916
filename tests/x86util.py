"""Test helpers: assemble snippets with GNU as and run them on a bare-metal vCPU.

`asm()` assembles AT&T source into flat bytes at a given address (cached per source).
`LongModeMachine` sets up a 64-bit long-mode CPU with identity-mapped memory, a GDT, a TSS
with IST stacks, and an IDT whose every vector points at a handler you provide (by label).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile

from nitdbg.x86.cpu import Cpu
from nitdbg.x86.hooks import Hooks
from nitdbg.x86.memory import PhysMem
from nitdbg.x86.segments import Segment

HAVE_AS = shutil.which("as") is not None and shutil.which("ld") is not None

CODE = 0x100000
PML4 = 0x1000
GDT = 0x8000
IDT = 0x9000
TSS = 0xA000
STACK_TOP = 0x80000
IST_TOP = [0, 0x70000, 0x68000, 0x60000, 0x58000, 0, 0, 0]


@functools.lru_cache(maxsize=512)
def asm(src: str, base: int = CODE, bits: int = 64) -> tuple[bytes, dict[str, int]]:
    """Assemble AT&T `src` linked at `base`; returns (flat bytes, symbol -> address)."""
    with tempfile.TemporaryDirectory() as td:
        s = os.path.join(td, "t.S")
        o = os.path.join(td, "t.o")
        e = os.path.join(td, "t.elf")
        b = os.path.join(td, "t.bin")
        with open(s, "w") as f:
            f.write(f".code{bits}\n.globl _start\n_start:\n{src}\n")
        flags = ["--64"] if bits == 64 else ["--32"]
        subprocess.run(["as", *flags, "-o", o, s], check=True, capture_output=True)
        emu = "elf_x86_64" if bits == 64 else "elf_i386"
        subprocess.run(["ld", "-m", emu, "-Ttext", hex(base), "--build-id=none", "-N", "-o", e,
                        o], check=True, capture_output=True)
        subprocess.run(["objcopy", "-O", "binary", e, b], check=True, capture_output=True)
        nm = subprocess.run(["nm", e], check=True, capture_output=True, text=True).stdout
        syms = {}
        for line in nm.splitlines():
            parts = line.split()
            if len(parts) == 3:
                syms[parts[2]] = int(parts[0], 16)
        with open(b, "rb") as f:
            return f.read(), syms


def _gdt_entry(base: int, limit: int, attrib: int) -> int:
    return ((limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | ((attrib & 0xFF) << 40)
            | (((limit >> 16) & 0xF) << 48) | (((attrib >> 8) & 0xF) << 52)
            | (((base >> 24) & 0xFF) << 56))


class LongModeMachine:
    """A bare 64-bit machine: code at CODE, identity paging of the first 1 GiB."""

    def __init__(self, src: str, handlers: dict[int, str] | None = None,
                 ist: dict[int, int] | None = None, hooks: Hooks | None = None):
        self.code, self.syms = asm(src)
        self.mem = PhysMem(64 << 20)
        self.cpu = c = Cpu(self.mem, hooks or Hooks())
        m = self.mem
        # page tables: PML4 -> PDPT -> PD with 2 MiB pages (identity, 1 GiB)
        m.write(PML4, 8, (PML4 + 0x1000) | 3)
        m.write(PML4 + 0x1000, 8, (PML4 + 0x2000) | 3)
        for i in range(512):
            m.write(PML4 + 0x2000 + i * 8, 8, (i << 21) | 0x83)
        # GDT: null, 0x08 code64, 0x10 data, 0x1b user data, 0x23 user code64, 0x28 TSS
        ents = [0, _gdt_entry(0, 0xFFFFF, 0xA9B), _gdt_entry(0, 0xFFFFF, 0xC93),
                _gdt_entry(0, 0xFFFFF, 0xCF3), _gdt_entry(0, 0xFFFFF, 0xAFB),
                _gdt_entry(TSS, 0x67, 0x89), 0]
        for i, e in enumerate(ents):
            m.write(GDT + i * 8, 8, e)
        # 64-bit TSS: RSP0 at +4, IST1..7 at +0x24
        m.write(TSS + 4, 8, STACK_TOP - 0x8000)
        for i in range(1, 8):
            m.write(TSS + 0x24 + (i - 1) * 8, 8, IST_TOP[i] or 0)
        m.write_bytes(CODE, self.code)
        handlers = handlers or {}
        ist = ist or {}
        for v in range(256):
            label = handlers.get(v, "unexpected" if "unexpected" in self.syms else None)
            if label is None:
                continue
            off = self.syms[label]
            lo = ((off & 0xFFFF) | (0x08 << 16) | ((ist.get(v, 0) & 7) << 32) | (0x8E << 40)
                  | (((off >> 16) & 0xFFFF) << 48))
            m.write(IDT + v * 16, 8, lo)
            m.write(IDT + v * 16 + 8, 8, off >> 32)
        c.cr0 = 0x80050033
        c.cr4 = 0x20
        c.efer = 0xD01
        c.cr3 = PML4
        c.gdtr.base, c.gdtr.limit = GDT, len(ents) * 8 - 1
        c.idtr.base, c.idtr.limit = IDT, 256 * 16 - 1
        c.seg[1].load(Segment(0x08, 0, 0xFFFFFFFF, 0xA9B))
        for i in (0, 2, 3, 4, 5):
            c.seg[i].load(Segment(0x10, 0, 0xFFFFFFFF, 0xC93))
        c.tr.load(Segment(0x28, TSS, 0x67, 0x8B))
        c.regs[4] = STACK_TOP
        c.rip = self.syms["_start"]
        c.update_mode()

    def run_until(self, label: str, limit: int = 100000) -> None:
        """Run until RIP reaches `label` (checked at instruction boundaries)."""
        target = self.syms[label]
        c = self.cpu
        for _ in range(limit):
            if c.rip == target:
                return
            c.run(1)
            if c.stop_reason in ("hlt", "shutdown"):
                break
        if c.rip != target:
            raise AssertionError(f"did not reach {label}: rip={c.rip:#x} "
                                 f"stop={c.stop_reason}")


TSS2 = 0xA800    # a second 32-bit TSS for task-switch tests (ProtectedModeMachine)


class ProtectedModeMachine:
    """A bare 32-bit protected-mode machine, paging off, code at CODE.

    GDT: 0x08 code32, 0x10 data32, 0x1b user data, 0x23 user code32, 0x28 TSS (the running
    task, busy), 0x30 a second available TSS at TSS2 whose state you fill with `set_task`.
    IDT: 32-bit interrupt gates to `handlers` labels (`trap_gates` makes trap gates, `dpl`
    sets a gate DPL), and task gates {vector: tss selector} from `task_gates`.
    """

    def __init__(self, src: str, handlers: dict[int, str] | None = None,
                 task_gates: dict[int, int] | None = None, trap_gates: tuple[int, ...] = (),
                 dpl: dict[int, int] | None = None, hooks: Hooks | None = None):
        self.code, self.syms = asm(src, bits=32)
        self.mem = m = PhysMem(64 << 20)
        self.cpu = c = Cpu(m, hooks or Hooks())
        ents = [0, _gdt_entry(0, 0xFFFFF, 0xC9B), _gdt_entry(0, 0xFFFFF, 0xC93),
                _gdt_entry(0, 0xFFFFF, 0xCF3), _gdt_entry(0, 0xFFFFF, 0xCFB),
                _gdt_entry(TSS, 0x67, 0x8B), _gdt_entry(TSS2, 0x67, 0x89)]
        for i, e in enumerate(ents):
            m.write(GDT + i * 8, 8, e)
        m.write(TSS + 4, 4, STACK_TOP - 0x8000)     # ESP0
        m.write(TSS + 8, 4, 0x10)                   # SS0
        m.write(TSS + 0x66, 2, 0x68)                # I/O map base beyond the limit
        m.write_bytes(CODE, self.code)
        handlers = handlers or {}
        dpl = dpl or {}
        for v in range(256):
            label = handlers.get(v, "unexpected" if "unexpected" in self.syms else None)
            if v in (task_gates or {}):
                m.write(IDT + v * 8, 8, ((task_gates[v] << 16) | ((0x85 | dpl.get(v, 0) << 5)
                                                                  << 40)))
                continue
            if label is None:
                continue
            off = self.syms[label]
            typ = 0x8F if v in trap_gates else 0x8E
            m.write(IDT + v * 8, 8, (off & 0xFFFF) | (0x08 << 16)
                    | ((typ | dpl.get(v, 0) << 5) << 40) | ((off >> 16) << 48))
        c.cr0 = 0x11
        c.gdtr.base, c.gdtr.limit = GDT, len(ents) * 8 - 1
        c.idtr.base, c.idtr.limit = IDT, 256 * 8 - 1
        c.seg[1].load(Segment(0x08, 0, 0xFFFFFFFF, 0xC9B))
        for i in (0, 2, 3, 4, 5):
            c.seg[i].load(Segment(0x10, 0, 0xFFFFFFFF, 0xC93))
        c.tr.load(Segment(0x28, TSS, 0x67, 0x8B))
        c.regs[4] = STACK_TOP
        c.rip = self.syms["_start"]
        c.update_mode()

    def set_task(self, base: int, eip: int, esp: int, eflags: int = 0x2, cs: int = 0x08,
                 ds: int = 0x10, cr3: int = 0, trap: bool = False) -> None:
        """Fill a 32-bit TSS (SDM figure 7-2) with a runnable ring-0 task."""
        m = self.mem
        m.write(base + 0x1C, 4, cr3)
        m.write(base + 0x20, 4, eip)
        m.write(base + 0x24, 4, eflags)
        m.write(base + 0x38, 4, esp)
        for off in (0x48, 0x50, 0x54, 0x58, 0x5C):
            m.write(base + off, 2, ds)
        m.write(base + 0x4C, 2, cs)
        m.write(base + 0x64, 2, 1 if trap else 0)
        m.write(base + 0x66, 2, 0x68)

    def run_until(self, label: str, limit: int = 100000) -> None:
        LongModeMachine.run_until(self, label, limit)   # type: ignore[arg-type]


# ---------------------------------------------------------------- helpers for either machine
PD32 = 0x20000        # 32-bit paging: page directory, page tables follow it
LM_PML4 = 0x30000     # long-mode identity tables a 32-bit guest can switch to


def set_gdt_entry(m: LongModeMachine | ProtectedModeMachine, sel: int, base: int, limit: int,
                  attrib: int) -> None:
    """Write a code/data descriptor at selector `sel` and grow the GDT limit to cover it."""
    m.mem.write(GDT + (sel & 0xFFF8), 8, _gdt_entry(base, limit, attrib))
    g = m.cpu.gdtr
    g.limit = max(g.limit, (sel & 0xFFF8) + 7)


def paging32(m: ProtectedModeMachine, mib: int = 16) -> None:
    """Turn on 32-bit paging (SDM 4.3) with 4 KiB pages identity-mapping the first `mib` MiB;
    `unmap32` clears single pages for fault tests."""
    mem, c = m.mem, m.cpu
    for t in range((mib + 3) // 4):
        pt = PD32 + 0x1000 * (t + 1)
        mem.write(PD32 + t * 4, 4, pt | 7)
        for i in range(1024):
            mem.write(pt + i * 4, 4, ((t << 22) | (i << 12)) | 7)
    c.cr3 = PD32
    c.cr0 |= 0x8000_0000
    c.flush_tlb()
    c.update_mode()


def unmap32(m: ProtectedModeMachine, lin: int) -> None:
    """Clear the 32-bit PTE of page `lin` (paging32 must be on)."""
    m.mem.write(PD32 + 0x1000 * ((lin >> 22) + 1) + ((lin >> 12) & 0x3FF) * 4, 4, 0)
    m.cpu.flush_tlb()


def long_mode_tables(m: LongModeMachine | ProtectedModeMachine, at: int = LM_PML4) -> int:
    """4-level identity tables of the first 1 GiB (2 MiB pages) at `at`; returns the CR3."""
    mem = m.mem
    mem.write(at, 8, (at + 0x1000) | 3)
    mem.write(at + 0x1000, 8, (at + 0x2000) | 3)
    for i in range(512):
        mem.write(at + 0x2000 + i * 8, 8, (i << 21) | 0x83)
    return at


def halt_label(m: LongModeMachine | ProtectedModeMachine, limit: int = 200000) -> str:
    """Run until the vCPU halts; return the label of the HLT it stopped on (the label whose
    address is RIP - 1), e.g. a fault handler's name, or the address if no label matches."""
    c = m.cpu
    done = 0
    while done < limit:
        done += c.run(limit - done)
        if c.stop_reason in ("hlt", "shutdown") or c.halted:
            break
        if c.stop_reason != "budget":
            break
    at = c.rip - 1
    names = [k for k, v in m.syms.items() if v == at and k != "_start"]
    return names[0] if names else hex(c.rip)
