"""Segment registers with their hidden descriptor parts, and descriptor decoding."""

from __future__ import annotations

from dataclasses import dataclass

# attrib is the VMCB save-area format: type 3:0, S 4, DPL 6:5, P 7, AVL 8, L 9, D/B 10, G 11.
ATTR_S, ATTR_P, ATTR_L, ATTR_DB, ATTR_G = 0x10, 0x80, 0x200, 0x400, 0x800


class Segment:
    __slots__ = ("sel", "base", "limit", "attrib")

    def __init__(self, sel: int = 0, base: int = 0, limit: int = 0xFFFF, attrib: int = 0x93):
        self.sel, self.base, self.limit, self.attrib = sel, base, limit, attrib

    @property
    def dpl(self) -> int:
        return (self.attrib >> 5) & 3

    @property
    def present(self) -> bool:
        return bool(self.attrib & ATTR_P)

    @property
    def type(self) -> int:
        return self.attrib & 0xF

    def copy(self) -> Segment:
        return Segment(self.sel, self.base, self.limit, self.attrib)

    def load(self, other: Segment) -> None:
        self.sel, self.base, self.limit, self.attrib = (
            other.sel, other.base, other.limit, other.attrib)

    def __repr__(self) -> str:
        return (f"Segment(sel={self.sel:#x}, base={self.base:#x}, limit={self.limit:#x}, "
                f"attrib={self.attrib:#x})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Segment) and (self.sel, self.base, self.limit, self.attrib) == (
            other.sel, other.base, other.limit, other.attrib)


@dataclass
class DescTable:
    base: int = 0
    limit: int = 0xFFFF


def decode_descriptor(lo: int, hi: int = 0) -> Segment:
    """Decode an 8-byte descriptor (lo) and, for 16-byte system descriptors, the upper half.

    Returns a Segment with selector 0; the caller fills in the selector.
    """
    limit = (lo & 0xFFFF) | ((lo >> 32) & 0xF0000)
    base = ((lo >> 16) & 0xFFFFFF) | (((lo >> 56) & 0xFF) << 24)
    attrib = ((lo >> 40) & 0xFF) | (((lo >> 52) & 0xF) << 8)
    if attrib & ATTR_G:
        limit = (limit << 12) | 0xFFF
    if not attrib & ATTR_S:
        base |= (hi & 0xFFFF_FFFF) << 32
    return Segment(0, base, limit, attrib)
