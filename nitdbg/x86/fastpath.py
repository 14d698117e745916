"""Fast paths for the two events a single-stepped long-mode guest makes on every instruction:
delivery through a 64-bit IDT gate and IRETQ (SDM vol 3 6.14, vol 2 IRET; APM vol 2 8.9).

Why specialised code: with RFLAGS.TF=1 every guest instruction costs a #DB delivery, the
handler and its IRETQ (`nitdbg bench` loop c, ddb's `s`). The exact paths
(`interrupts._deliver64`, `iret.iret_exec`) read each gate, descriptor and stack slot through
a method call, decode it into a fresh Segment and write the frame slot by slot; here the same
bytes are read as one slice each, their decoding is memoised and the frame is one store.

Exact by construction:
- every byte the exact path reads (the IDT gate, the GDT/LDT descriptor, the TSS stack pointer,
  the IRET frame) is read here too, at the same moment, from the page the TLB holds; only the
  decoding of those bytes is memoised, keyed by the bytes themselves, so a guest that rewrites
  its IDT or GDT, or loads IDTR/GDTR/LDTR/TR, is seen at the next event with nothing to
  invalidate;
- a fast path takes only the case where no check fails and every access hits the TLB within
  one page (so no page walk, nested-paging hook, MMIO, watched page, data breakpoint or
  self-modifying-code check can be involved: pages with any of those are never in the TLB);
  anything else returns False before any state has changed, and the exact path runs from the
  start and raises what it raises;
- the commit does what the exact path does, in its order, through the same helpers.
`Cpu.fast_events = False` (or NITDBG_FAST_EVENTS=0) runs the exact paths only; the
differential tests in tests/test_x86_blocks_differential.py compare the two.
"""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING

from . import interrupts
from .insn import iret as _iret
from .regs import CANON_HI, CANON_LO, CS, IF, NT, RF, RSP, SS, TF, VM, canonical
from .retire import EV_IRET
from .segments import Segment, decode_descriptor

if TYPE_CHECKING:
    from .cpu import Cpu

M64 = 0xFFFF_FFFF_FFFF_FFFF
ALIGN16 = ~0xF & M64
_PACK5 = struct.Struct("<5Q").pack_into
_PACK6 = struct.Struct("<6Q").pack_into
_UNPACK5 = struct.Struct("<5Q").unpack_from
_LOAD16 = struct.Struct("<QQ").unpack_from
_LOAD8 = struct.Struct("<Q").unpack_from
# Event kinds the fast delivery takes (INT1/ICEBP and anything new stay on the exact path).
_KINDS = frozenset({"fault", "trap", "nmi", "intr", "soft"})
_MEMO_MAX = 4096

# A gate's low 8 bytes -> (its high 8 bytes, then: the RFLAGS mask the handler starts with,
# DPL, selector, offset, IST), or (high 8 bytes,) where the exact path faults at any CPL: not a
# 64-bit interrupt/trap gate, not present, or a non-canonical offset. Keyed by the low half
# and checked against the high half (two ints, no 128-bit key to build). Process-wide: a pure
# function of the bytes (like mmu._DECODED).
_GATES: dict[int, tuple[int, ...]] = {}
# 8 descriptor bytes -> (base, limit, attrib) as segments.decode_descriptor gives them.
_DESCS: dict[int, tuple[int, int, int]] = {}


def enabled_by_default() -> bool:
    """NITDBG_FAST_EVENTS=0 turns the fast paths off (the exact delivery and IRET only)."""
    return os.environ.get("NITDBG_FAST_EVENTS", "1") != "0"


def _gate(lo: int, hi: int) -> tuple[int, ...]:
    if len(_GATES) >= _MEMO_MAX:
        _GATES.clear()
    gtype = (lo >> 40) & 0x1F
    offset = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF0000) | ((hi & 0xFFFF_FFFF) << 32)
    sel = (lo >> 16) & 0xFFFF
    if gtype not in (0xE, 0xF) or not (lo >> 47) & 1 or not canonical(offset):
        g: tuple[int, ...] = (hi,)
    else:
        # the RFLAGS bits the handler starts with cleared: an interrupt gate clears IF too
        clear = ~(TF | NT | RF | VM | (IF if gtype == 0xE else 0))
        g = (hi, clear, (lo >> 45) & 3, sel, offset, (lo >> 32) & 7)
    _GATES[lo] = g
    return g


def _descriptor(cpu: Cpu, sel: int) -> tuple[int, int, int] | None:
    """The descriptor `sel` names, if it is within its table's limit and in a TLB page;
    None sends the caller to its exact path."""
    table = cpu.ldtr if sel & 4 else cpu.gdtr
    idx = sel & 0xFFF8
    if idx + 7 > table.limit:
        return None
    lin = table.base + idx
    page = cpu._sup_r.get(lin >> 12)
    off = lin & 0xFFF
    if page is None or off > 4088:
        return None
    raw = _LOAD8(page, off)[0]
    d = _DESCS.get(raw)
    if d is None:
        if len(_DESCS) >= _MEMO_MAX:
            _DESCS.clear()
        s = decode_descriptor(raw)
        d = _DESCS[raw] = (s.base, s.limit, s.attrib)
    return d


def deliver64(cpu: Cpu, vector: int, kind: str, error_code: int | None) -> bool:
    """interrupts._deliver64 for a 64-bit gate to a present 64-bit code segment at the same
    or an inner privilege level; True if delivered, False (nothing changed) otherwise."""
    if kind not in _KINDS:
        return False
    idtr = cpu.idtr
    if vector * 16 + 15 > idtr.limit:
        return False
    sup_r = cpu._sup_r
    lin = idtr.base + vector * 16
    page = sup_r.get(lin >> 12)
    off = lin & 0xFFF
    if page is None or off > 4080:
        return False
    lo, hi = _LOAD16(page, off)
    g = _GATES.get(lo)
    if g is None or g[0] != hi:
        g = _gate(lo, hi)
    if len(g) == 1:
        return False
    _hi, clear, dpl, sel, offset, ist = g
    cpl = cpu.cpl
    if kind == "soft" and dpl < cpl:
        return False
    if not sel & 0xFFFC:
        return False
    # the handler's code segment (as _descriptor, inline: this is the hottest path)
    table = cpu.ldtr if sel & 4 else cpu.gdtr
    lin = sel & 0xFFF8
    if lin + 7 > table.limit:
        return False
    lin += table.base
    page = sup_r.get(lin >> 12)
    off = lin & 0xFFF
    if page is None or off > 4088:
        return False
    raw = _LOAD8(page, off)[0]
    d = _DESCS.get(raw)
    if d is None:
        d = _descriptor(cpu, sel)
    base, limit, attrib = d
    # a present code segment (S=1, type bit 3) with L=1 (load_code_descriptor, SDM 6.14.1)
    if attrib & 0x298 != 0x298:
        return False
    new_cpl = cpl if attrib & 0x4 else (attrib >> 5) & 3   # conforming code keeps CPL
    if new_cpl > cpl:
        return False
    old_rsp = cpu.regs[RSP]
    if ist or new_cpl < cpl:
        lin = cpu.tr.base + (0x24 + (ist - 1) * 8 if ist else 4 + new_cpl * 8)
        page = sup_r.get(lin >> 12)
        off = lin & 0xFFF
        if page is None or off > 4088:
            return False
        rsp = _LOAD8(page, off)[0] & ALIGN16
    else:
        rsp = old_rsp & ALIGN16     # 64-bit mode aligns the new stack (SDM 6.14.2)
    if CANON_LO < rsp - 48 < CANON_HI:       # (regs.canonical, inline)
        return False
    lo = rsp - (40 if error_code is None else 48)
    if lo < 0 or lo >> 12 != (rsp - 1) >> 12:
        return False
    page = cpu._sup_w.get(lo >> 12)
    if page is None:
        return False
    # commit, as _deliver64 does
    rflags = interrupts._pushed_rflags(cpu, vector, kind)
    seg = cpu.seg
    cs = seg[CS]
    rip = cpu.rip
    off = lo & 0xFFF
    m = M64
    if error_code is None:
        _PACK5(page, off, rip & m, cs.sel & m, rflags & m, old_rsp & m, seg[SS].sel & m)
    else:
        _PACK6(page, off, error_code & m, rip & m, cs.sel & m, rflags & m, old_rsp & m,
               seg[SS].sel & m)
    if new_cpl != cpl:
        seg[SS].load(Segment(new_cpl, 0, 0xFFFF_FFFF, 0))  # NULL SS with RPL = new CPL
    cpu.regs[RSP] = lo
    cs.sel, cs.base, cs.limit, cs.attrib = (sel & 0xFFFC) | new_cpl, base, limit, attrib
    cpu.rflags = rflags & clear | 0x2
    cpu.rip = offset
    if new_cpl != cpl or cpu.mode != 64:
        cpu.set_cpl(new_cpl)
        cpu.update_mode()
    # else: still 64-bit code at the same CPL, and the caches in use are those of (mode,
    # CPL) -- every change of CR0, EFER, CS or CPL calls update_mode -- so it would change
    # nothing (the caller sets `attention`)
    cpu.record_event(interrupts.EV_KIND[kind], vector, error_code, rip, rflags)
    return True


def iretq(c: Cpu) -> bool:
    """iret.iret_exec for IRETQ in 64-bit mode (NT=0) whose whole frame is in one TLB page
    and whose CS and SS pass every check; True if done, False (nothing changed) otherwise.
    The caller has made the intercept check and unblocked NMIs (SDM 6.7.1)."""
    rsp = c.regs[RSP]
    off = rsp & 0xFFF
    if off > 4056 or CANON_LO < rsp < CANON_HI:    # (a page is all canonical or not)
        return False
    page = c.tlb_r.get(rsp >> 12)
    if page is None:
        return False
    new_rip, cs_sel, popped, new_rsp, ss_sel = _UNPACK5(page, off)
    cs_sel &= 0xFFFF
    ss_sel &= 0xFFFF
    if not cs_sel & 0xFFFC:
        return False
    # the return CS (as _descriptor, inline: this is the hottest path)
    table = c.ldtr if cs_sel & 4 else c.gdtr
    lin = cs_sel & 0xFFF8
    if lin + 7 > table.limit:
        return False
    lin += table.base
    sup_r = c._sup_r
    dpage = sup_r.get(lin >> 12)
    doff = lin & 0xFFF
    if dpage is None or doff > 4088:
        return False
    d = _DESCS.get(_LOAD8(dpage, doff)[0])
    if d is None:
        d = _descriptor(c, cs_sel)
    attrib = d[2]
    rpl = cs_sel & 3
    cpl = c.cpl
    dpl = (attrib >> 5) & 3
    # a present code segment, RPL >= CPL, DPL == RPL (non-conforming) or <= RPL (conforming)
    if attrib & 0x98 != 0x98 or rpl < cpl or (dpl > rpl if attrib & 0x4 else dpl != rpl):
        return False
    target64 = bool(attrib & 0x200)
    if target64:
        if CANON_LO < new_rip < CANON_HI:
            return False
    else:
        new_rip &= 0xFFFF_FFFF
    if not ss_sel & 0xFFFC:
        if not (target64 and rpl < 3):
            return False
        ss: tuple[int, int, int] | None = (0, 0xFFFF_FFFF, 0)
    else:
        # the SS descriptor (as _descriptor, inline)
        table = c.ldtr if ss_sel & 4 else c.gdtr
        lin = ss_sel & 0xFFF8
        if lin + 7 > table.limit:
            return False
        lin += table.base
        dpage = sup_r.get(lin >> 12)
        doff = lin & 0xFFF
        if dpage is None or doff > 4088:
            return False
        ss = _DESCS.get(_LOAD8(dpage, doff)[0])
        if ss is None:
            ss = _descriptor(c, ss_sel)
        sa = ss[2]
        # a present writable data segment with DPL == RPL == the selector's RPL
        if ss_sel & 3 != rpl or sa & 0x9A != 0x92 or (sa >> 5) & 3 != rpl:
            return False
    fl = _iret._new_rflags(c, popped, 8)
    # commit, as iret_exec does
    c.regs[RSP] = new_rsp
    s = c.seg[SS]
    s.sel, (s.base, s.limit, s.attrib) = ss_sel, ss
    s = c.seg[CS]
    s.sel, (s.base, s.limit, s.attrib) = cs_sel, d
    c.rflags = fl
    c.rip = new_rip
    if rpl > cpl:
        _iret.null_outer_data_segments(c, rpl)
    if rpl != cpl or not target64:
        c.set_cpl(rpl)
        c.update_mode()          # (not needed from 64-bit code to 64-bit code at one CPL)
    c.attention = True
    c.record_event(EV_IRET, 0, None, new_rip, fl)
    return True
