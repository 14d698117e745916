"""Stack pushes and pops in the current mode (SDM vol 1 6.2)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .faults import Fault
from .regs import RSP, SS
from .segments import ATTR_DB

if TYPE_CHECKING:
    from .cpu import Cpu

M64 = 0xFFFF_FFFF_FFFF_FFFF


def _canon(a: int) -> bool:
    return a <= 0x0000_7FFF_FFFF_FFFF or a >= 0xFFFF_8000_0000_0000


def push(c: Cpu, value: int, size: int) -> None:
    """Write first, then commit RSP, so a faulting push leaves RSP unchanged."""
    if c.mode == 64:
        sp = (c.regs[RSP] - size) & M64
        if not _canon(sp):
            raise Fault(12, 0)
        c.wr(sp, size, value)
        c.regs[RSP] = sp
        return
    if c.seg[SS].attrib & ATTR_DB:
        sp = (c.regs[RSP] - size) & 0xFFFF_FFFF
        c.wr((c.seg[SS].base + sp) & 0xFFFF_FFFF, size, value)
        c.regs[RSP] = sp
    else:
        sp = (c.regs[RSP] - size) & 0xFFFF
        c.wr((c.seg[SS].base + sp) & 0xFFFF_FFFF, size, value)
        c.regs[RSP] = (c.regs[RSP] & ~0xFFFF) | sp


def peek(c: Cpu, size: int, offset: int = 0) -> int:
    """Read the stack at RSP+offset without popping."""
    if c.mode == 64:
        a = (c.regs[RSP] + offset) & M64
        if not _canon(a):
            raise Fault(12, 0)
        return c.rd(a, size)
    m = 0xFFFF_FFFF if c.seg[SS].attrib & ATTR_DB else 0xFFFF
    return c.rd((c.seg[SS].base + ((c.regs[RSP] + offset) & m)) & 0xFFFF_FFFF, size)


def adjust(c: Cpu, delta: int) -> None:
    if c.mode == 64:
        c.regs[RSP] = (c.regs[RSP] + delta) & M64
    elif c.seg[SS].attrib & ATTR_DB:
        c.regs[RSP] = (c.regs[RSP] + delta) & 0xFFFF_FFFF
    else:
        c.regs[RSP] = (c.regs[RSP] & ~0xFFFF) | ((c.regs[RSP] + delta) & 0xFFFF)


def pop(c: Cpu, size: int) -> int:
    v = peek(c, size)
    adjust(c, size)
    return v
