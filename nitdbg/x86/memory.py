"""Physical memory: sparse 4 KiB pages plus memory-mapped device regions."""

from __future__ import annotations

import hashlib
from typing import Protocol

PAGE = 4096
PAGE_MASK = PAGE - 1
_ZERO_PAGE = bytes(PAGE)
MMIO_SIZES = (1, 2, 4, 8)      # the widths a device register access can have


class MmioDevice(Protocol):
    def mmio_read(self, offset: int, size: int) -> int: ...
    def mmio_write(self, offset: int, size: int, value: int) -> None: ...


class PhysMem:
    """Host-physical memory of the machine. Pages are allocated on first touch (sparse).

    Accesses beyond `size` read as all-ones and drop writes, like an unbacked bus.
    """

    def __init__(self, size: int):
        self.size = size
        self.pages: dict[int, bytearray] = {}
        self.mmio: dict[int, tuple[MmioDevice, int]] = {}  # ppn -> (device, base)

    def page(self, ppn: int) -> bytearray | None:
        p = self.pages.get(ppn)
        if p is None:
            if ppn << 12 >= self.size or ppn in self.mmio:
                return None
            p = self.pages[ppn] = bytearray(PAGE)
        return p

    def map_mmio(self, base: int, length: int, dev: MmioDevice) -> None:
        for ppn in range(base >> 12, (base + length + PAGE_MASK) >> 12):
            self.mmio[ppn] = (dev, base)

    def read(self, addr: int, size: int) -> int:
        p = self.page(addr >> 12)
        off = addr & PAGE_MASK
        if p is not None and off + size <= PAGE:
            return int.from_bytes(p[off:off + size], "little")
        if off + size > PAGE:
            # an access across a page end: byte by byte, each to its own page (RAM or a
            # device), as the IO bus splits a straddling access
            return sum(self.read(addr + i, 1) << (8 * i) for i in range(size))
        if p is None and (addr >> 12) in self.mmio:
            if size not in MMIO_SIZES:
                # the part of a split access that falls on a device page can have any
                # length (3 bytes at 0xFEE00FFD): bytes, as a straddling access
                return sum(self.read(addr + i, 1) << (8 * i) for i in range(size))
            dev, base = self.mmio[addr >> 12]
            return dev.mmio_read(addr - base, size)
        return int.from_bytes(self.read_bytes(addr, size), "little")

    def write(self, addr: int, size: int, value: int) -> None:
        p = self.page(addr >> 12)
        off = addr & PAGE_MASK
        if p is not None and off + size <= PAGE:
            p[off:off + size] = value.to_bytes(size, "little")
            return
        if off + size > PAGE:
            for i in range(size):
                self.write(addr + i, 1, (value >> (8 * i)) & 0xFF)
            return
        if p is None and (addr >> 12) in self.mmio:
            if size not in MMIO_SIZES:
                for i in range(size):
                    self.write(addr + i, 1, (value >> (8 * i)) & 0xFF)
                return
            dev, base = self.mmio[addr >> 12]
            dev.mmio_write(addr - base, size, value)
            return
        self.write_bytes(addr, value.to_bytes(size, "little"))

    def read_bytes(self, addr: int, n: int) -> bytes:
        out = bytearray()
        while n > 0:
            off = addr & PAGE_MASK
            chunk = min(n, PAGE - off)
            p = self.page(addr >> 12)
            out += p[off:off + chunk] if p is not None else b"\xff" * chunk
            addr += chunk
            n -= chunk
        return bytes(out)

    def write_bytes(self, addr: int, data: bytes) -> None:
        i = 0
        while i < len(data):
            off = addr & PAGE_MASK
            chunk = min(len(data) - i, PAGE - off)
            p = self.page(addr >> 12)
            if p is not None:
                p[off:off + chunk] = data[i:i + chunk]
            addr += chunk
            i += chunk

    def digest(self) -> str:
        h = hashlib.sha256()
        for ppn in sorted(self.pages):
            p = self.pages[ppn]
            if p != _ZERO_PAGE:      # (one memcmp; any() would iterate 4096 ints)
                h.update(ppn.to_bytes(8, "little"))
                h.update(p)
        return h.hexdigest()
