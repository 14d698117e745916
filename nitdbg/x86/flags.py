"""Arithmetic flags, computed eagerly (SDM vol 1 appendix A, APM vol 3 appendix E).

Each function returns the six status flags (CF PF AF ZF SF OF) for a result; callers merge
them into RFLAGS with `(rflags & ~ARITH) | bits`. `r` is the result already masked to size.
"""

from __future__ import annotations

from .regs import AF, ARITH, CF, OF, PF, SF, ZF

PARITY = bytes(PF if bin(i).count("1") % 2 == 0 else 0 for i in range(256))
NOT_ARITH = ~ARITH
_SIGN = {1: 0x80, 2: 0x8000, 4: 0x8000_0000, 8: 0x8000_0000_0000_0000}
_BITS = {1: 8, 2: 16, 4: 32, 8: 64}


def szp(r: int, size: int) -> int:
    return (ZF if r == 0 else 0) | (SF if r & _SIGN[size] else 0) | PARITY[r & 0xFF]


def add(a: int, b: int, r: int, size: int, carry_in: int = 0) -> int:
    sign = _SIGN[size]
    f = (ZF if r == 0 else 0) | (SF if r & sign else 0) | PARITY[r & 0xFF] | ((a ^ b ^ r) & AF)
    if (a + b + carry_in) >> _BITS[size]:
        f |= CF
    if (a ^ r) & (b ^ r) & sign:
        f |= OF
    return f


def sub(a: int, b: int, r: int, size: int, borrow_in: int = 0) -> int:
    sign = _SIGN[size]
    f = (ZF if r == 0 else 0) | (SF if r & sign else 0) | PARITY[r & 0xFF] | ((a ^ b ^ r) & AF)
    if a < b + borrow_in:
        f |= CF
    if (a ^ b) & (a ^ r) & sign:
        f |= OF
    return f


def logic(r: int, size: int) -> int:
    # AND/OR/XOR/TEST: CF=OF=0; AF is undefined, real CPUs (and QEMU, Bochs) leave it 0.
    return (ZF if r == 0 else 0) | (SF if r & _SIGN[size] else 0) | PARITY[r & 0xFF]


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
