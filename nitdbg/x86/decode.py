"""Decode with capstone into pre-analysed instruction objects.

An `Insn` holds the closure that executes it; translators (nitdbg/x86/insn/) build that
closure once per instruction address from a `Decoded` view of capstone's detail.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import capstone
import capstone.x86_const as X

from .operands import Reader, Writer, mem_ea, mem_reader, mem_writer, reg_reader, reg_writer
from .regs import MASK

if TYPE_CHECKING:
    from .cpu import Cpu

Exec = Callable[["Cpu"], None]
Translator = Callable[["Decoded"], Exec]

TRANSLATORS: dict[int, Translator] = {}

# Insn.flags
F_LOADS_RF = 1      # IRET and task switches load RF; it is not cleared after them
F_NO_SSTEP = 2      # INT n / INT3 / INTO / INT1: the handler starts with TF=0, no trap after


def translates(*ids: int) -> Callable[[Translator], Translator]:
    """Register a translator for the given capstone instruction ids (stated explicitly)."""
    def reg(fn: Translator) -> Translator:
        for i in ids:
            if i in TRANSLATORS:
                raise ValueError(f"capstone id {i} registered twice")
            TRANSLATORS[i] = fn
        return fn
    return reg


class Insn:
    """A decoded and translated instruction, cached by linear address."""

    __slots__ = ("addr", "length", "next", "fn", "flags", "mnemonic", "op_str", "code", "id")

    def __init__(self, addr: int, length: int, fn: Exec | None, flags: int, mnemonic: str,
                 op_str: str, code: bytes, id_: int):
        self.addr, self.length, self.next = addr, length, addr + length
        self.fn, self.flags = fn, flags
        self.mnemonic, self.op_str, self.code, self.id = mnemonic, op_str, code, id_

    @property
    def text(self) -> str:
        return f"{self.mnemonic} {self.op_str}".strip()

    def __repr__(self) -> str:
        return f"<Insn {self.addr:#x} {self.text}>"


class Decoded:
    """What a translator sees: capstone's detail plus operand accessor factories."""

    def __init__(self, ci: capstone.CsInsn, mode: int):
        self.ci = ci
        self.id = ci.id
        self.mode = mode
        self.addr = ci.address
        self.length = ci.size
        self.next = ci.address + ci.size
        self.ops = ci.operands
        self.prefix = bytes(ci.prefix)
        self.rep = 0xF3 in self.prefix
        self.repne = 0xF2 in self.prefix
        self.lock = 0xF0 in self.prefix
        self.opsz = 0x66 in self.prefix
        self.addr_size = ci.addr_size
        self.rex_w = bool(ci.rex & 8)
        self.flags = 0
        # BND (F2) and NOTRACK (3E) on a branch do nothing without MPX / CET, which this
        # vCPU does not have (AMD APM vol 3 1.2.7: F2 is ignored where it has no meaning).
        self.mnemonic = ci.mnemonic.removeprefix("bnd ").removeprefix("notrack ")

    def size(self, i: int = 0) -> int:
        return self.ops[i].size

    def kind(self, i: int) -> int:
        return self.ops[i].type

    def is_mem(self, i: int) -> bool:
        return self.ops[i].type == X.X86_OP_MEM

    def is_reg(self, i: int) -> bool:
        return self.ops[i].type == X.X86_OP_REG

    def is_imm(self, i: int) -> bool:
        return self.ops[i].type == X.X86_OP_IMM

    def imm(self, i: int, size: int | None = None) -> int:
        return self.ops[i].imm & MASK[size or self.ops[i].size]

    def ea(self, i: int) -> Reader:
        return mem_ea(self.ops[i].mem, self.mode, self.addr_size, self.next)

    def reader(self, i: int, size: int | None = None) -> Reader:
        op = self.ops[i]
        if op.type == X.X86_OP_REG:
            return reg_reader(op.reg)
        if op.type == X.X86_OP_IMM:
            v = op.imm & MASK[size or op.size]
            return lambda c: v
        return mem_reader(self.ea(i), size or op.size)

    def writer(self, i: int) -> Writer:
        op = self.ops[i]
        if op.type == X.X86_OP_REG:
            return reg_writer(op.reg)
        if op.type == X.X86_OP_MEM:
            return mem_writer(self.ea(i), op.size)
        raise ValueError("immediate operand is not writable")

    def stack_size(self) -> int:
        """Operand size of push/pop/call/ret: 8 in 64-bit mode (2 with 66h), else 4 or 2."""
        if self.mode == 64:
            # REX.W wins over 66h (SDM vol 1 3.6.1, table 3-4)
            return 2 if self.opsz and not self.rex_w else 8
        if self.mode == 32:
            return 2 if self.opsz else 4
        return 4 if self.opsz else 2


class Decoder:
    """capstone handles, one per mode. They hold no guest state, so every vCPU of a thread
    shares one set (making them costs more than a new vCPU's other state); a thread gets its
    own, as capstone does not promise that two calls on one handle may run at once."""

    def __deepcopy__(self, memo: dict) -> Decoder:
        return self

    def decode(self, code: bytes, addr: int, mode: int) -> capstone.CsInsn | None:
        cs = getattr(_THREAD, "cs", None)
        if cs is None:
            cs = _THREAD.cs = _handles()
        for ci in cs[mode].disasm(code, addr, 1):
            return ci
        return None

    def length(self, code: bytes, addr: int, mode: int) -> int | None:
        ci = self.decode(code, addr, mode)
        return ci.size if ci is not None else None

    def translate(self, code: bytes, addr: int, mode: int) -> Insn:
        ci = self.decode(code, addr, mode)
        if ci is None:
            return _bad(addr, code)
        tr = TRANSLATORS.get(ci.id)
        raw = bytes(ci.bytes)
        if tr is None:
            return Insn(addr, ci.size, None, 0, ci.mnemonic, ci.op_str, raw, ci.id)
        d = Decoded(ci, mode)
        fn = tr(d)
        return Insn(addr, ci.size, fn, d.flags, ci.mnemonic, ci.op_str, raw, ci.id)


_THREAD = threading.local()


def _handles() -> dict[int, capstone.Cs]:
    cs = {}
    for mode, cm in ((16, capstone.CS_MODE_16), (32, capstone.CS_MODE_32),
                     (64, capstone.CS_MODE_64)):
        md = capstone.Cs(capstone.CS_ARCH_X86, cm)
        md.detail = True
        cs[mode] = md
    return cs


def _bad(addr: int, code: bytes) -> Insn:
    return Insn(addr, 1, None, 0, "(bad)", "", bytes(code[:15]), 0)


def unsupported_text(insn: Insn) -> str:
    return f"unsupported instruction {insn.code.hex(' ')} ({insn.text}) at {insn.addr:#x}"
