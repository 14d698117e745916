"""Stack pushes and pops in the current mode (SDM vol 1 6.2, APM vol 1 2.4).

The stack address size is 64 bits in 64-bit mode, else SS.B chooses ESP (B=1) or SP (B=0);
in legacy and compatibility mode the SS base is added. Every push writes memory before it
commits RSP, so a push that faults leaves RSP unchanged. In 64-bit mode a non-canonical stack
address raises #SS(0), not #GP(0) (SDM vol 3 6.15 "Interrupt 12", APM vol 2 8.4.2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .faults import Fault
from .regs import RSP, SS, canonical
from .segments import ATTR_DB

if TYPE_CHECKING:
    from .cpu import Cpu

M64 = 0xFFFF_FFFF_FFFF_FFFF



def stack_mask(c: Cpu) -> int:
    """Width of the stack pointer: RSP, ESP or SP."""
    if c.mode == 64:
        return M64
    return 0xFFFF_FFFF if c.seg[SS].attrib & ATTR_DB else 0xFFFF


def stack_lin(c: Cpu, sp: int) -> int:
    """Linear address of stack offset `sp` (already masked to the stack width)."""
    if c.mode == 64:
        if not canonical(sp):
            raise Fault(12, 0)
        return sp
    return (c.seg[SS].base + sp) & 0xFFFF_FFFF


def set_sp(c: Cpu, sp: int) -> None:
    """Write the stack pointer with the stack width: SP merges into RSP, ESP/RSP replace."""
    if c.mode == 64 or c.seg[SS].attrib & ATTR_DB:
        c.regs[RSP] = sp
    else:
        c.regs[RSP] = (c.regs[RSP] & ~0xFFFF) | (sp & 0xFFFF)


def push(c: Cpu, value: int, size: int) -> None:
    """Write first, then commit RSP, so a faulting push leaves RSP unchanged."""
    if c.mode == 64:
        sp = (c.regs[RSP] - size) & M64
        if not canonical(sp):
            raise Fault(12, 0)
        c.wr(sp, size, value)
        c.regs[RSP] = sp
        return
    m = stack_mask(c)
    sp = (c.regs[RSP] - size) & m
    c.wr((c.seg[SS].base + sp) & 0xFFFF_FFFF, size, value)
    set_sp(c, sp)


def push_frame(c: Cpu, values: list[int] | tuple[int, ...], size: int) -> None:
    """Push several values as one access (far CALL, ENTER): all are written before RSP moves,
    so a fault on any of them leaves RSP as it was."""
    m = stack_mask(c)
    sp = c.regs[RSP] & m
    for v in values:
        sp = (sp - size) & m
        c.wr(stack_lin(c, sp), size, v)
    set_sp(c, sp)


def peek(c: Cpu, size: int, offset: int = 0) -> int:
    """Read the stack at RSP+offset without popping."""
    if c.mode == 64:
        a = (c.regs[RSP] + offset) & M64
        if not canonical(a):
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
