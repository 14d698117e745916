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
