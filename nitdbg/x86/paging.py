"""The page walk of the current paging mode, as one function both the vCPU and the debugger use.

The vCPU's walk sets accessed and dirty bits as it goes (SDM vol 3 4.8, APM vol 2 5.4.2); a
debugger's walk must not: it passes no `update`, as bhyve's vm_gla2gpa_nofault (check_only)
does for its gdb stub, so examining memory leaves the guest's page tables byte for byte as
they were, even when the walk ends in a not-present entry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .faults import Fault, Unsupported
from .hooks import ACC_FETCH, ACC_USER, ACC_WRITE
from .regs import CR0_PG, CR0_WP, CR4_PAE, CR4_PSE, EFER_LMA, EFER_NXE, canonical

ACC_SUPERVISOR = 0x100      # an implicit supervisor access (descriptor tables, the debugger)
PT_A, PT_D, PT_PS = 0x20, 0x40, 0x80
ADDR52 = 0x000F_FFFF_FFFF_F000

PtRead = Callable[[int, int], int]              # (gpa, size) -> entry
PtWrite = Callable[[int, int, int], None]       # (gpa, size, entry)


class PagingState(Protocol):
    mode: int
    cpl: int
    cr0: int
    cr3: int
    cr4: int
    efer: int


def walk(st: PagingState, lin: int, access: int, read: PtRead,
         update: PtWrite | None = None) -> int:
    """Linear -> guest-physical. Raises #PF (SDM 4.7 error code, CR2) or #GP for a
    non-canonical address. With `update`, sets A (and D on a write) in the entries used."""
    if st.mode == 64 and not canonical(lin):
        raise Fault(13, 0)
    if not st.cr0 & CR0_PG:
        return lin & 0xFFFF_FFFF
    user = st.cpl == 3 and not access & ACC_SUPERVISOR
    write = access & ACC_WRITE
    fetch = access & ACC_FETCH
    wp = st.cr0 & CR0_WP
    if st.efer & EFER_LMA or st.cr4 & CR4_PAE:
        if not st.efer & EFER_LMA:
            raise Unsupported("PAE paging outside long mode")
        table = st.cr3 & ADDR52
        ok_w = ok_u = True
        nx = False
        for shift, lvl in ((39, 0), (30, 1), (21, 2), (12, 3)):
            ea = table + ((lin >> shift) & 0x1FF) * 8
            e = read(ea, 8)
            if not e & 1:
                _pf(st, lin, 0, access, user)
            ok_w = ok_w and bool(e & 2)
            ok_u = ok_u and bool(e & 4)
            nx = nx or bool(e >> 63 and st.efer & EFER_NXE)
            if update is not None and not e & PT_A:
                update(ea, 8, e | PT_A)
            if lvl == 3 or (lvl in (1, 2) and e & PT_PS):
                _check_perm(st, lin, access, user, write, fetch, wp, ok_w, ok_u, nx)
                if update is not None and write and not e & PT_D:
                    update(ea, 8, e | PT_A | PT_D)
                page_mask = (1 << shift) - 1
                return ((e & ADDR52) & ~page_mask) | (lin & page_mask)
            table = e & ADDR52
        raise AssertionError("unreachable")
    # 32-bit paging (SDM 4.3)
    ea = (st.cr3 & 0xFFFF_F000) + ((lin >> 22) & 0x3FF) * 4
    pde = read(ea, 4)
    if not pde & 1:
        _pf(st, lin, 0, access, user)
    if update is not None and not pde & PT_A:
        update(ea, 4, pde | PT_A)
    if pde & PT_PS and st.cr4 & CR4_PSE:
        _check_perm(st, lin, access, user, write, fetch, wp, bool(pde & 2), bool(pde & 4),
                    False)
        if update is not None and write and not pde & PT_D:
            update(ea, 4, pde | PT_A | PT_D)
        return (pde & 0xFFC0_0000) | (lin & 0x3F_FFFF)
    ea2 = (pde & 0xFFFF_F000) + ((lin >> 12) & 0x3FF) * 4
    pte = read(ea2, 4)
    if not pte & 1:
        _pf(st, lin, 0, access, user)
    _check_perm(st, lin, access, user, write, fetch, wp, bool(pde & pte & 2),
                bool(pde & pte & 4), False)
    if update is not None and (not pte & PT_A or (write and not pte & PT_D)):
        update(ea2, 4, pte | PT_A | (PT_D if write else 0))
    return (pte & 0xFFFF_F000) | (lin & 0xFFF)


def _check_perm(st: PagingState, lin: int, access: int, user: bool, write: int, fetch: int,
                wp: int, ok_w: bool, ok_u: bool, nx: bool) -> None:
    if (user and not ok_u) or (write and not ok_w and (user or wp)) or (fetch and nx):
        _pf(st, lin, 1, access, user)


def _pf(st: PagingState, lin: int, present: int, access: int, user: bool) -> None:
    code = present | (access & (ACC_WRITE | ACC_FETCH)) | (ACC_USER if user else 0)
    if not st.efer & EFER_NXE:
        code &= ~ACC_FETCH
    raise Fault(14, code, cr2=lin)
