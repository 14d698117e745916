"""Nested paging: guest-physical -> host-physical through real AMD64 4-level tables.

The tables live in a sparse host-physical memory owned by the hypervisor (HostMemory), rooted
at N_CR3. A walk follows APM vol 2 15.25.5: every nested access is checked as a *user*
access (so nested entries carry U/S=1 and EXITINFO1.US is always set, as in KVM's
translate_nested_gpa() "NPT walks are always user-walks" and QEMU's stage-2 MMU_USER index);
R/W and NX combine over all levels. A failed walk raises NestedPageFault with the EXITINFO1
error bits of APM vol 2 15.25.6 and bit 32 (final guest-physical address) or bit 33 (guest
page-table access).

The backing (which gpa range is RAM at which hpa) is kept apart from the table contents so
that unmap_all() can drop every leaf, as the seed's "Removing all nested pages" does, and
fault_in() can restore a page on the resulting #NPF the way bhyve's vm_handle_paging() does.
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from dataclasses import dataclass

from nitdbg.svm.exitcodes import (
    NPF_GPA,
    NPF_GPT,
    NPF_ID,
    NPF_P,
    NPF_RSV,
    NPF_RW,
    NPF_US,
    npf_describe,
)

PAGE_SIZE = 0x1000
PAGE_SHIFT = 12
LARGE_PAGE_SIZE = 0x20_0000

PTE_P = 1 << 0
PTE_RW = 1 << 1
PTE_US = 1 << 2
PTE_A = 1 << 5
PTE_D = 1 << 6
PTE_PS = 1 << 7
PTE_NX = 1 << 63
PTE_ADDR = 0x000F_FFFF_FFFF_F000

# Access kinds passed to translate(); the same bit positions as the EXITINFO1 error code.
ACC_READ = 0
ACC_WRITE = NPF_RW
ACC_USER = NPF_US
ACC_FETCH = NPF_ID

GPA_LIMIT = 1 << 48  # 4-level nested tables translate 48 bits of guest-physical address

DEFAULT_TABLE_BASE = 0x80_0000_0000  # host-physical pages for the tables (above any RAM)


class NptError(ValueError):
    """A bad map request (alignment, range, overlap)."""


class NestedPageFault(Exception):  # noqa: N818 - the APM's name for the event
    """#VMEXIT(NPF): EXITINFO1 = error bits, EXITINFO2 = the faulting guest-physical address."""

    def __init__(self, gpa: int, exitinfo1: int) -> None:
        super().__init__(f"nested page fault on gpa {gpa:#x} ({npf_describe(exitinfo1)})")
        self.gpa = gpa
        self.exitinfo1 = exitinfo1

    @property
    def exitinfo2(self) -> int:
        return self.gpa


class HostMemory:
    """Sparse host-physical memory: 4 KiB pages created on first write, zero elsewhere."""

    __slots__ = ("pages",)

    def __init__(self) -> None:
        self.pages: dict[int, bytearray] = {}

    def read_u64(self, hpa: int) -> int:
        page = self.pages.get(hpa >> PAGE_SHIFT)
        if page is None:
            return 0
        o = hpa & 0xFFF
        return int.from_bytes(page[o:o + 8], "little")

    def write_u64(self, hpa: int, value: int) -> None:
        pfn = hpa >> PAGE_SHIFT
        page = self.pages.get(pfn)
        if page is None:
            page = self.pages[pfn] = bytearray(PAGE_SIZE)
        o = hpa & 0xFFF
        page[o:o + 8] = value.to_bytes(8, "little")

    def digest(self) -> str:
        h = hashlib.sha256()
        for pfn in sorted(self.pages):
            h.update(pfn.to_bytes(8, "little"))
            h.update(self.pages[pfn])
        return h.hexdigest()


@dataclass(frozen=True, slots=True)
class MemMap:
    """One guest-physical range backed by host-physical memory (like a bhyve mem_map)."""

    gpa: int
    hpa: int
    size: int
    writable: bool
    executable: bool

    def contains(self, gpa: int) -> bool:
        return self.gpa <= gpa < self.gpa + self.size


@dataclass(frozen=True, slots=True)
class WalkStep:
    level: int          # 4 = PML4 .. 1 = PT
    entry_hpa: int
    entry: int


_LEVEL_SHIFTS = (39, 30, 21, 12)  # PML4, PDPT, PD, PT
_M64 = (1 << 64) - 1
# bit 0 (P) of each of a table's 512 entries, the table read as one little-endian integer
_P_OF_EVERY_ENTRY = sum(1 << (64 * i) for i in range(PAGE_SIZE // 8))
assert PTE_P == 1


def _lanes(n: int) -> tuple[int, int]:
    """(1 in each of n 64-bit lanes, k * PAGE_SIZE in lane k) as integers."""
    ones = sum(1 << (64 * k) for k in range(n))
    return ones, sum((k * PAGE_SIZE) << (64 * k) for k in range(n))


_FULL_TABLE_LANES = _lanes(PAGE_SIZE // 8)


def _leaf_run(first: int, n: int) -> bytes:
    """The n little-endian entries first, first + 4 KiB, ... as bytes: first in every
    64-bit lane plus k pages in lane k, one multiply and add (first + k pages stays below
    2**64, so no lane carries into the next)."""
    ones, steps = _FULL_TABLE_LANES if n == PAGE_SIZE // 8 else _lanes(n)
    return (first * ones + steps).to_bytes(8 * n, "little")


def _entries(page: bytearray) -> array:
    """A table page's 512 entries (little-endian in memory, whatever the host)."""
    a = array("Q", bytes(page))
    if sys.byteorder != "little":   # pragma: no cover - x86 tables are little-endian
        a.byteswap()
    return a


def _to_bytes(a: array) -> bytes:
    if sys.byteorder != "little":   # pragma: no cover
        a.byteswap()
    return a.tobytes()


class NestedPageTable:
    """The hypervisor's nested page tables for one VM."""

    def __init__(self, hostmem: HostMemory | None = None,
                 table_base: int = DEFAULT_TABLE_BASE) -> None:
        if table_base & 0xFFF:
            raise NptError(f"npt: table base {table_base:#x} not page aligned")
        self.hostmem = hostmem if hostmem is not None else HostMemory()
        self._next_table = table_base
        self.memmaps: list[MemMap] = []
        # gpa page number -> (host page address, allowed-access bits); see translate().
        self._cache: dict[int, tuple[int, int]] = {}
        self.n_cr3 = self._alloc_table()

    # -- table storage -------------------------------------------------------------------------

    def _alloc_table(self) -> int:
        hpa = self._next_table
        self._next_table += PAGE_SIZE
        self.hostmem.pages[hpa >> PAGE_SHIFT] = bytearray(PAGE_SIZE)
        return hpa

    def _entry_hpa(self, table: int, gpa: int, shift: int) -> int:
        return table + ((gpa >> shift) & 0x1FF) * 8

    # -- mapping -------------------------------------------------------------------------------

    def map(self, gpa: int, hpa: int, size: int, writable: bool = True,
            executable: bool = True, populate: bool = True) -> None:
        """Back [gpa, gpa+size) with [hpa, hpa+size); install leaves now unless populate=False."""
        if (gpa | hpa | size) & 0xFFF or size <= 0:
            raise NptError(f"npt: map {gpa:#x}/{hpa:#x}/{size:#x} is not page aligned")
        if gpa + size > GPA_LIMIT or hpa + size > (1 << 52):
            raise NptError(f"npt: map {gpa:#x}+{size:#x} beyond the addressable range")
        for m in self.memmaps:
            if gpa < m.gpa + m.size and m.gpa < gpa + size:
                raise NptError(f"npt: map {gpa:#x}+{size:#x} overlaps {m.gpa:#x}+{m.size:#x}")
        mm = MemMap(gpa, hpa, size, writable, executable)
        self.memmaps.append(mm)
        self.memmaps.sort(key=lambda m: m.gpa)
        if populate:
            self._install_run(gpa, hpa, size, writable, executable)
        self._cache.clear()

    def _install_run(self, gpa: int, hpa: int, size: int, writable: bool,
                     executable: bool) -> None:
        """What _install() page by page over [gpa, gpa+size) leaves, one PT at a time: the
        upper levels are walked (and allocated, in the same order) for the first page of each
        PT, then that PT's run of leaves is stored as one slice."""
        flags = PTE_P | PTE_US | (PTE_RW if writable else 0) | (0 if executable else PTE_NX)
        end = gpa + size
        while gpa < end:
            table = self._leaf_table(gpa)
            i = (gpa >> PAGE_SHIFT) & 0x1FF
            n = min(512 - i, (end - gpa) >> PAGE_SHIFT)
            first = hpa | flags     # hpa is page aligned: adding pages never carries into flags
            pfn = table >> PAGE_SHIFT
            page = self.hostmem.pages.get(pfn)
            if page is None:
                page = self.hostmem.pages[pfn] = bytearray(PAGE_SIZE)
            page[i * 8:(i + n) * 8] = _leaf_run(first, n)
            gpa += n * PAGE_SIZE
            hpa += n * PAGE_SIZE

    def _install(self, gpa: int, hpa: int, writable: bool, executable: bool) -> None:
        leaf = hpa | PTE_P | PTE_US
        if writable:
            leaf |= PTE_RW
        if not executable:
            leaf |= PTE_NX
        self.hostmem.write_u64(self._entry_hpa(self._leaf_table(gpa), gpa, 12), leaf)

    def _leaf_table(self, gpa: int) -> int:
        """The PT for gpa, allocating the missing PDPT/PD/PT on the way."""
        mem = self.hostmem
        table = self.n_cr3
        for shift in _LEVEL_SHIFTS[:3]:
            ea = self._entry_hpa(table, gpa, shift)
            e = mem.read_u64(ea)
            if not e & PTE_P:
                nxt = self._alloc_table()
                # Upper levels grant everything; the leaf carries the real permissions.
                mem.write_u64(ea, nxt | PTE_P | PTE_RW | PTE_US)
                table = nxt
            else:
                if e & PTE_PS:
                    raise NptError(f"npt: gpa {gpa:#x} already under a large page")
                table = e & PTE_ADDR
        return table

    def backing(self, gpa: int) -> MemMap | None:
        for m in self.memmaps:
            if m.contains(gpa):
                return m
        return None

    def fault_in(self, gpa: int) -> bool:
        """Install the leaf for gpa's page from its backing; False if gpa is not RAM."""
        m = self.backing(gpa)
        if m is None:
            return False
        page = gpa & ~0xFFF
        self._install(page, m.hpa + (page - m.gpa), m.writable, m.executable)
        self._cache.pop(page >> PAGE_SHIFT, None)
        return True

    def unmap_all(self) -> int:
        """Clear every leaf entry (backing is kept); returns how many leaves were removed."""
        removed = self._clear_leaves(self.n_cr3, 4)
        self._cache.clear()
        return removed

    def _clear_leaves(self, table: int, level: int) -> int:
        mem = self.hostmem
        page = mem.pages.get(table >> PAGE_SHIFT)
        if page is None:
            return 0
        if level == 1:
            # A PT holds only leaves: zero the present ones in one store. The table as one
            # little-endian integer: P (bit 0 of every 64-bit entry) times 2**64-1 is a mask
            # of the present entries, lane by lane (no carry leaves a lane).
            x = int.from_bytes(page, "little")
            present = x & _P_OF_EVERY_ENTRY
            removed = present.bit_count()
            if removed:
                page[:] = (x & ~(present * _M64)).to_bytes(PAGE_SIZE, "little")
            return removed
        entries = _entries(page)
        removed = 0
        for i, e in enumerate(entries):
            if not e & PTE_P:
                continue
            if level in (2, 3) and e & PTE_PS:
                page[i * 8:i * 8 + 8] = bytes(8)
                removed += 1
            else:
                removed += self._clear_leaves(e & PTE_ADDR, level - 1)
        return removed

    def flush(self) -> None:
        """Drop cached translations (the owner's INVLPGA / ASID flush)."""
        self._cache.clear()

    # -- translation ---------------------------------------------------------------------------

    def translate(self, gpa: int, access: int = ACC_READ, walk: bool = False) -> int:
        """Host-physical address for gpa, or raise NestedPageFault.

        access: ACC_WRITE / ACC_FETCH bits (ACC_USER is accepted and changes nothing, because
        nested walks are user accesses anyway). walk=True marks an access the guest's own
        page walker makes (EXITINFO1 bit 33 instead of bit 32).
        """
        hit = self._cache.get(gpa >> PAGE_SHIFT)
        # A hit serves the access only if every right it needs is in the cached set.
        if hit is not None and (access & (NPF_RW | NPF_ID) & ~hit[1]) == 0:
            return hit[0] | (gpa & 0xFFF)
        return self._walk(gpa, access, walk)

    def _fault(self, gpa: int, bits: int, access: int, walk: bool) -> NestedPageFault:
        info1 = bits | (access & (NPF_RW | NPF_ID)) | NPF_US | (NPF_GPT if walk else NPF_GPA)
        return NestedPageFault(gpa, info1)

    def _walk(self, gpa: int, access: int, walk: bool) -> int:
        if not 0 <= gpa < GPA_LIMIT:
            raise self._fault(gpa, 0, access, walk)
        mem = self.hostmem
        table = self.n_cr3
        writable = user = True
        nx = False
        steps: list[int] = []
        leaf = 0
        page_size = PAGE_SIZE
        for level, shift in zip((4, 3, 2, 1), _LEVEL_SHIFTS, strict=True):
            ea = self._entry_hpa(table, gpa, shift)
            e = mem.read_u64(ea)
            if not e & PTE_P:
                raise self._fault(gpa, 0, access, walk)
            if e & PTE_PS and level == 4:
                # APM vol 2 5.3.3: PS is reserved (must be zero) in a PML4 entry.
                raise self._fault(gpa, NPF_P | NPF_RSV, access, walk)
            writable &= bool(e & PTE_RW)
            user &= bool(e & PTE_US)
            nx |= bool(e & PTE_NX)
            steps.append(ea)
            if level == 1 or e & PTE_PS:
                leaf = e
                page_size = 1 << shift
                break
            table = e & PTE_ADDR
        write = bool(access & ACC_WRITE)
        fetch = bool(access & ACC_FETCH)
        if not user or (write and not writable) or (fetch and nx):
            raise self._fault(gpa, NPF_P, access, walk)
        # The processor sets Accessed on every level and Dirty on the leaf of a write.
        for ea in steps:
            e = mem.read_u64(ea)
            if not e & PTE_A:
                mem.write_u64(ea, e | PTE_A)
        leaf_ea = steps[-1]
        dirty = bool(leaf & PTE_D)
        if write and not dirty:
            mem.write_u64(leaf_ea, mem.read_u64(leaf_ea) | PTE_D)
            dirty = True
        base = (leaf & PTE_ADDR) & ~(page_size - 1)
        hpa = base | (gpa & (page_size - 1))
        allowed = NPF_US
        if writable and dirty:
            allowed |= NPF_RW
        if not nx:
            allowed |= NPF_ID
        self._cache[gpa >> PAGE_SHIFT] = (hpa & ~0xFFF, allowed)
        return hpa

    # -- inspection ----------------------------------------------------------------------------

    def walk_steps(self, gpa: int) -> list[WalkStep]:
        """The entries a walk for gpa reads, for display (stops at the first non-present one)."""
        out: list[WalkStep] = []
        table = self.n_cr3
        for level, shift in zip((4, 3, 2, 1), _LEVEL_SHIFTS, strict=True):
            ea = self._entry_hpa(table, gpa, shift)
            e = self.hostmem.read_u64(ea)
            out.append(WalkStep(level, ea, e))
            if not e & PTE_P or level == 1 or e & PTE_PS:
                break
            table = e & PTE_ADDR
        return out

    def leaf_count(self) -> int:
        return self._count_leaves(self.n_cr3, 4)

    def _count_leaves(self, table: int, level: int) -> int:
        page = self.hostmem.pages.get(table >> PAGE_SHIFT)
        if page is None:
            return 0
        if level == 1:
            return (int.from_bytes(page, "little") & _P_OF_EVERY_ENTRY).bit_count()
        entries = _entries(page)
        n = 0
        for e in entries:
            if not e & PTE_P:
                continue
            if level in (2, 3) and e & PTE_PS:
                n += 1
            else:
                n += self._count_leaves(e & PTE_ADDR, level - 1)
        return n

    def digest(self) -> str:
        h = hashlib.sha256(self.hostmem.digest().encode())
        for m in self.memmaps:
            h.update(repr((m.gpa, m.hpa, m.size, m.writable, m.executable)).encode())
        return h.hexdigest()
