"""Operand accessors specialised at translation time.

A translator asks for `reader(i)` / `writer(i)` of an operand and gets a small closure
already specialised for the register, immediate or addressing form, so executing the
instruction does no decoding work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import capstone.x86_const as X

from .faults import Fault
from .regs import FS, GS, MASK, REGMAP, RSP, SEGMAP, SS, canonical

if TYPE_CHECKING:
    from .cpu import Cpu

Reader = Callable[["Cpu"], int]
Writer = Callable[["Cpu", int], None]
M64 = 0xFFFF_FFFF_FFFF_FFFF
NO_INDEX = frozenset({X.X86_REG_RIZ, X.X86_REG_EIZ})


def reg_reader(reg: int) -> Reader:
    idx, size, high = REGMAP[reg]
    if high:
        return lambda c: (c.regs[idx] >> 8) & 0xFF
    if size == 8:
        return lambda c: c.regs[idx]
    m = MASK[size]
    return lambda c: c.regs[idx] & m


def reg_writer(reg: int) -> Writer:
    """Register writes: 32-bit results zero-extend into the full register in 64-bit mode
    (SDM vol 1 3.4.1.1); 8- and 16-bit writes merge."""
    idx, size, high = REGMAP[reg]
    if high:
        def w_high(c: Cpu, v: int) -> None:
            c.regs[idx] = (c.regs[idx] & ~0xFF00) | ((v & 0xFF) << 8)
        return w_high
    if size == 8:
        def w64(c: Cpu, v: int) -> None:
            c.regs[idx] = v
        return w64
    if size == 4:
        def w32(c: Cpu, v: int) -> None:
            c.regs[idx] = v & 0xFFFF_FFFF
        return w32
    keep = ~MASK[size] & M64
    m = MASK[size]

    def wn(c: Cpu, v: int) -> None:
        c.regs[idx] = (c.regs[idx] & keep) | (v & m)
    return wn



def mem_segment(mem: X.X86OpMem) -> int:
    """The effective segment of a memory operand: the override, else SS for an rSP/rBP base
    (SDM vol 1 3.7.4), else DS."""
    seg = SEGMAP.get(mem.segment)
    if seg is not None:
        return seg
    if mem.base in (X.X86_REG_RIP, X.X86_REG_EIP):
        return 3
    b = REGMAP[mem.base][0] if mem.base else None
    return SS if b in (RSP, 5) else 3


def mem_offset(mem: X.X86OpMem, addr_size: int, next_rip: int) -> Reader:
    """Effective address (the offset within the segment), truncated to the address size.
    This is what LEA stores: no segment base is added."""
    base_reg, index_reg, scale, disp = mem.base, mem.index, mem.scale, mem.disp
    am = MASK[addr_size]
    if base_reg in (X.X86_REG_RIP, X.X86_REG_EIP):
        return _const_ea((next_rip + disp) & am)
    b = REGMAP[base_reg][0] if base_reg else None
    # A SIB byte with index 100b (and no REX.X) has no index register; capstone names that
    # "riz"/"eiz" (SDM vol 2 table 2-3, "none").
    ix = REGMAP[index_reg][0] if index_reg and index_reg not in NO_INDEX else None
    if b is not None and ix is not None:
        return _bisd(b, ix, scale, disp, am)
    if b is not None:
        return _bd(b, disp, am)
    if ix is not None:
        return _isd(ix, scale, disp, am)
    return _const_ea(disp & am)


def mem_ea(mem: X.X86OpMem, mode: int, addr_size: int, next_rip: int) -> Reader:
    """Linear address of a memory operand: offset plus segment base.

    In 64-bit mode only FS and GS have a base (SDM vol 1 3.3.7.1); elsewhere every segment's
    base is added and the sum wraps at 4 GiB. A non-canonical reference through SS raises
    #SS(0) instead of the #GP(0) that translation raises for the others (SDM vol 3 6.15,
    "Interrupt 12"; APM vol 2 8.4.2).
    """
    ea = mem_offset(mem, addr_size, next_rip)
    seg = mem_segment(mem)
    if mode == 64:
        if seg in (FS, GS):
            off = ea

            def ea_fsgs(c: Cpu) -> int:
                return (off(c) + c.seg[seg].base) & M64
            ea = ea_fsgs
        if seg == SS and addr_size == 8:
            inner = ea

            def ea_stack(c: Cpu) -> int:
                a = inner(c)
                if not canonical(a):
                    raise Fault(12, 0)
                return a
            ea = ea_stack
        return ea
    off32 = ea

    def ea_seg(c: Cpu) -> int:
        return (off32(c) + c.seg[seg].base) & 0xFFFF_FFFF
    return ea_seg


def _const_ea(v: int) -> Reader:
    return lambda c: v


def _bd(b: int, disp: int, am: int) -> Reader:
    if disp == 0 and am == M64:
        return lambda c: c.regs[b]
    return lambda c: (c.regs[b] + disp) & am


def _bisd(b: int, ix: int, scale: int, disp: int, am: int) -> Reader:
    return lambda c: (c.regs[b] + c.regs[ix] * scale + disp) & am


def _isd(ix: int, scale: int, disp: int, am: int) -> Reader:
    return lambda c: (c.regs[ix] * scale + disp) & am


def mem_reader(ea: Reader, size: int) -> Reader:
    def r(c: Cpu) -> int:
        return c.rd(ea(c), size)
    return r


def mem_writer(ea: Reader, size: int) -> Writer:
    def w(c: Cpu, v: int) -> None:
        c.wr(ea(c), size, v)
    return w
