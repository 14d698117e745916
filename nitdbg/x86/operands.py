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
from .regs import FS, GS, MASK, REGMAP, RSP, SEGMAP, SS

if TYPE_CHECKING:
    from .cpu import Cpu

Reader = Callable[["Cpu"], int]
Writer = Callable[["Cpu", int], None]
M64 = 0xFFFF_FFFF_FFFF_FFFF


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


def _canonical(a: int) -> bool:
    return a <= 0x0000_7FFF_FFFF_FFFF or a >= 0xFFFF_8000_0000_0000


def mem_ea(mem: X.X86OpMem, mode: int, addr_size: int, next_rip: int) -> Reader:
    """Effective linear address of a memory operand (segment base included)."""
    base_reg, index_reg, scale, disp = mem.base, mem.index, mem.scale, mem.disp
    am = MASK[addr_size]
    seg = SEGMAP.get(mem.segment)
    if base_reg == X.X86_REG_RIP or base_reg == X.X86_REG_EIP:
        const = (next_rip + disp) & am
        base_reg = 0
    else:
        const = None
    b = REGMAP[base_reg][0] if base_reg else None
    ix = REGMAP[index_reg][0] if index_reg else None
    stack = b in (RSP, 5)
    if seg is None:
        seg = SS if stack else 3
    if mode == 64:
        segadd = seg in (FS, GS)
    else:
        segadd = True
    if const is not None:
        ea = _const_ea(const)
    elif b is not None and ix is not None:
        ea = _bisd(b, ix, scale, disp, am)
    elif b is not None:
        ea = _bd(b, disp, am)
    elif ix is not None:
        ea = _isd(ix, scale, disp, am)
    else:
        ea = _const_ea(disp & am)
    if segadd:
        inner = ea
        wrap = M64 if mode == 64 else 0xFFFF_FFFF

        def ea_seg(c: Cpu) -> int:
            return (inner(c) + c.seg[seg].base) & wrap
        ea = ea_seg
    if mode == 64 and stack:
        # Stack references with a non-canonical address raise #SS rather than #GP (SDM 6.15).
        inner2 = ea

        def ea_stack(c: Cpu) -> int:
            a = inner2(c)
            if not _canonical(a):
                raise Fault(12, 0)
            return a
        ea = ea_stack
    return ea


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
