"""EVENTINJ / EXITINTINFO encoding (AMD APM vol 2 15.20 and 15.7.2).

Both fields share one layout: vector 7:0, type 10:8, EV (error code valid) 11, V (valid) 31,
error code 63:32. bhyve's VM_INTINFO_* uses the same layout, so describe() prints what
bhyvectl's print_intinfo() prints after its "pending:\t" / "current:\t" banner.
"""

from __future__ import annotations

from dataclasses import dataclass

TYPE_INTR = 0        # external or virtual interrupt
TYPE_NMI = 2
TYPE_EXCEPTION = 3
TYPE_SOFT_INT = 4    # INTn

INTINFO_EV = 1 << 11
INTINFO_VALID = 1 << 31

_TYPE_NAMES = {TYPE_INTR: "INTR", TYPE_NMI: "NMI", TYPE_EXCEPTION: "EXCEPTION",
               TYPE_SOFT_INT: "SOFT_INT"}


class IntInfoError(ValueError):
    """An event that cannot be encoded."""


@dataclass(frozen=True, slots=True)
class IntInfo:
    vector: int = 0
    type: int = TYPE_INTR
    valid: bool = False
    errcode_valid: bool = False
    errcode: int = 0

    @classmethod
    def nmi(cls) -> IntInfo:
        # The vector field is ignored for NMI injection; bhyve passes IDT_NMI (2) anyway.
        return cls(vector=2, type=TYPE_NMI, valid=True)

    @classmethod
    def exception(cls, vector: int, errcode: int | None = None) -> IntInfo:
        return cls(vector=vector, type=TYPE_EXCEPTION, valid=True,
                   errcode_valid=errcode is not None, errcode=errcode or 0)

    @classmethod
    def interrupt(cls, vector: int) -> IntInfo:
        return cls(vector=vector, type=TYPE_INTR, valid=True)

    @classmethod
    def soft_int(cls, vector: int) -> IntInfo:
        return cls(vector=vector, type=TYPE_SOFT_INT, valid=True)

    def encode(self) -> int:
        if not 0 <= self.vector <= 0xFF:
            raise IntInfoError(f"intinfo: vector {self.vector} not in 0..255")
        if not 0 <= self.type <= 7:
            raise IntInfoError(f"intinfo: type {self.type} not in 0..7")
        if not 0 <= self.errcode <= 0xFFFF_FFFF:
            raise IntInfoError(f"intinfo: error code {self.errcode:#x} wider than 32 bits")
        v = self.vector | self.type << 8 | self.errcode << 32
        if self.errcode_valid:
            v |= INTINFO_EV
        if self.valid:
            v |= INTINFO_VALID
        return v

    @classmethod
    def decode(cls, raw: int) -> IntInfo:
        return cls(vector=raw & 0xFF, type=raw >> 8 & 7, valid=bool(raw & INTINFO_VALID),
                   errcode_valid=bool(raw & INTINFO_EV), errcode=raw >> 32 & 0xFFFF_FFFF)

    @property
    def type_name(self) -> str:
        return _TYPE_NAMES.get(self.type, f"RESERVED{self.type}")

    def describe(self) -> str:
        """bhyvectl print_intinfo() body: 'nmi vector 2', 'exception vector 13 errcode 0'."""
        if not self.valid:
            return "n/a"
        # print_intinfo's switch: every type other than these three prints "exception".
        kind = {TYPE_INTR: "extint", TYPE_NMI: "nmi", TYPE_SOFT_INT: "swint"}.get(
            self.type, "exception")
        s = f"{kind} vector {self.vector}"
        if self.errcode_valid:
            # C's %#x prints a zero value without the 0x prefix.
            s += f" errcode {self.errcode:#x}" if self.errcode else " errcode 0"
        return s


def describe(raw: int) -> str:
    return IntInfo.decode(raw).describe()
