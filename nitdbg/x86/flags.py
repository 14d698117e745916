"""Arithmetic flags, computed eagerly (SDM vol 1 appendix A, APM vol 3 appendix E).

Each function returns the six status flags (CF PF AF ZF SF OF) for a result; callers merge
them into RFLAGS with `(rflags & ~ARITH) | bits`. `r` is the result already masked to size.

Hot paths use the per-size tables (`ADD[size](a, b, r, ci)`), whose functions have the sign
bit and width bound in; `add()` / `sub()` / `logic()` take the size as an argument.

Flags the manuals leave undefined follow QEMU TCG (7.2, the reference), which is what a
guest sees under `qemu-system-x86_64` on any CPU model:
- AF after shifts, MUL/IMUL, LZCNT/TZCNT, BSF/BSR and the logical ops is 0;
- MUL/IMUL set SF, ZF, PF from the low half of the result;
- SHL/SHR/SAR/SHLD/SHRD with a count > 1 compute OF with the count-1 formula from the last
  two steps ("t", the value shifted by count-1, against the result);
- RCL/RCR compute OF as MSB(source) XOR MSB(result), ROL/ROR with the count-1 formula;
- DIV/IDIV leave all flags unchanged; BT* change only CF.
"""

from __future__ import annotations

from collections.abc import Callable

from .regs import AF, ARITH, CF, OF, PF, SF, ZF

PARITY = bytes(PF if bin(i).count("1") % 2 == 0 else 0 for i in range(256))
NOT_ARITH = ~ARITH
SIGN = {1: 0x80, 2: 0x8000, 4: 0x8000_0000, 8: 0x8000_0000_0000_0000}
BITS = {1: 8, 2: 16, 4: 32, 8: 64}
_SIGN = SIGN
_BITS = BITS

AddFlags = Callable[[int, int, int, int], int]
ResFlags = Callable[[int], int]
ShiftFlags = Callable[[int, int], int]


def _make_add(size: int) -> AddFlags:
    sign, bits = SIGN[size], BITS[size]

    def add_flags(a: int, b: int, r: int, ci: int = 0) -> int:
        # CF is the carry out of the top bit: (a + b + ci) >> bits is 0 or 1 = CF.
        f = ((a + b + ci) >> bits) | PARITY[r & 0xFF] | ((a ^ b ^ r) & AF)
        if r == 0:
            f |= ZF
        if r & sign:
            f |= SF
        if (a ^ r) & (b ^ r) & sign:
            f |= OF
        return f
    return add_flags


def _make_sub(size: int) -> AddFlags:
    sign = SIGN[size]

    def sub_flags(a: int, b: int, r: int, bi: int = 0) -> int:
        f = PARITY[r & 0xFF] | ((a ^ b ^ r) & AF)
        if a < b + bi:
            f |= CF
        if r == 0:
            f |= ZF
        if r & sign:
            f |= SF
        if (a ^ b) & (a ^ r) & sign:
            f |= OF
        return f
    return sub_flags


def _make_szp(size: int) -> ResFlags:
    sign = SIGN[size]

    def szp_flags(r: int) -> int:
        f = PARITY[r & 0xFF]
        if r == 0:
            f |= ZF
        if r & sign:
            f |= SF
        return f
    return szp_flags


def _make_shl(size: int) -> ShiftFlags:
    top = BITS[size] - 1
    szp_ = _make_szp(size)

    def shl_flags(t: int, r: int) -> int:
        # t = source << (count - 1): its top bit is the last bit shifted out (CF);
        # OF = CF XOR MSB(result), the count-1 rule applied to every count as QEMU does.
        return szp_(r) | ((t >> top) & 1) | ((((t ^ r) >> top) & 1) << 11)
    return shl_flags


def _make_shr(size: int) -> ShiftFlags:
    top = BITS[size] - 1
    szp_ = _make_szp(size)

    def shr_flags(t: int, r: int) -> int:
        # t = source >> (count - 1): bit 0 is the last bit shifted out (CF);
        # OF = MSB(t) XOR MSB(result): MSB(source) for SHR by 1, 0 for SAR.
        return szp_(r) | (t & 1) | ((((t ^ r) >> top) & 1) << 11)
    return shr_flags


ADD: dict[int, AddFlags] = {s: _make_add(s) for s in (1, 2, 4, 8)}
SUB: dict[int, AddFlags] = {s: _make_sub(s) for s in (1, 2, 4, 8)}
SZP: dict[int, ResFlags] = {s: _make_szp(s) for s in (1, 2, 4, 8)}
SHL: dict[int, ShiftFlags] = {s: _make_shl(s) for s in (1, 2, 4, 8)}
SHR: dict[int, ShiftFlags] = {s: _make_shr(s) for s in (1, 2, 4, 8)}
LOGIC = SZP   # AND/OR/XOR/TEST: CF=OF=0, AF undefined and 0 (QEMU, Bochs, real CPUs)


def szp(r: int, size: int) -> int:
    return SZP[size](r)


def add(a: int, b: int, r: int, size: int, carry_in: int = 0) -> int:
    return ADD[size](a, b, r, carry_in)


def sub(a: int, b: int, r: int, size: int, borrow_in: int = 0) -> int:
    return SUB[size](a, b, r, borrow_in)


def logic(r: int, size: int) -> int:
    return SZP[size](r)


def mul(lo: int, overflow: bool, size: int) -> int:
    """MUL/IMUL: CF = OF = the result does not fit the low half; SF ZF PF from the low half
    (undefined on AMD and Intel, QEMU's choice), AF = 0."""
    return SZP[size](lo) | (CF | OF if overflow else 0)


def cond(cc: int, fl: int) -> bool:
    """Condition code cc (the low nibble of Jcc/SETcc/CMOVcc opcodes) against RFLAGS."""
    return _COND[cc](fl)


_COND = [
    lambda f: bool(f & OF),                                  # 0 O
    lambda f: not f & OF,                                    # 1 NO
    lambda f: bool(f & CF),                                  # 2 B
    lambda f: not f & CF,                                    # 3 AE
    lambda f: bool(f & ZF),                                  # 4 E
    lambda f: not f & ZF,                                    # 5 NE
    lambda f: bool(f & (CF | ZF)),                           # 6 BE
    lambda f: not f & (CF | ZF),                             # 7 A
    lambda f: bool(f & SF),                                  # 8 S
    lambda f: not f & SF,                                    # 9 NS
    lambda f: bool(f & PF),                                  # A P
    lambda f: not f & PF,                                    # B NP
    lambda f: bool(f & SF) != bool(f & OF),                  # C L
    lambda f: bool(f & SF) == bool(f & OF),                  # D GE
    lambda f: bool(f & ZF) or bool(f & SF) != bool(f & OF),  # E LE
    lambda f: not f & ZF and bool(f & SF) == bool(f & OF),   # F G
]
COND_FUNCS = _COND
