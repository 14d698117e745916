"""Disassembly as ddb prints it (sys/amd64/amd64/db_disasm.c): AT&T syntax, the mnemonic,
a tab, operands joined by "," without spaces, branch targets as sym+off."""

from __future__ import annotations

import re
from dataclasses import dataclass

import capstone
from capstone import x86_const as X

from ..guest.symbols import SymbolTable

MAX_INSN = 15
# capstone spells a few 64-bit mnemonics with a size suffix ddb leaves off.
_MNEMONIC = {"retq": "ret", "callq": "call", "jmpq": "jmp", "leaveq": "leave"}
_HEX = re.compile(r"^0x[0-9a-f]+$")
IRET_IDS = frozenset({X.X86_INS_IRET, X.X86_INS_IRETD, X.X86_INS_IRETQ})
RET_IDS = frozenset({X.X86_INS_RET, X.X86_INS_RETF, X.X86_INS_RETFQ}) | IRET_IDS


@dataclass(frozen=True)
class DisInsn:
    addr: int
    length: int
    mnemonic: str       # ddb's spelling
    operands: str       # ddb's spelling (may be empty)
    id: int             # capstone instruction id (0: undecodable)
    is_call: bool
    is_iret: bool
    is_return: bool     # ret, retf, iret

    @property
    def text(self) -> str:
        return f"{self.mnemonic}\t{self.operands}" if self.operands else self.mnemonic

    @property
    def next(self) -> int:
        return self.addr + self.length


# capstone's reading of (mode, bytes, address) -> (size, mnemonic, operands, id, is_call,
# is_jump), or None for an undecodable first byte: a function of those three alone (the same
# handle options everywhere), so it is kept across disassemblers (every machine a replay
# builds has its own); the symbols are applied per call
_Raw = tuple[int, str, str, int, bool, bool] | None
_decoded: dict[tuple[int, bytes, int], _Raw] = {}
_DECODED_MAX = 1 << 14           # ~300 bytes an entry: a few MB at most
_MISSING = object()


class Disassembler:
    def __deepcopy__(self, memo: dict) -> Disassembler:
        return self     # a capstone handle and the symbol table: no guest state to copy

    def __init__(self, symbols: SymbolTable, mode: int = 64):
        self.symbols = symbols
        self.mode = 64 if mode == 64 else 32
        self._md: capstone.Cs | None = None      # made on the first decode not yet seen

    @property
    def md(self) -> capstone.Cs:
        if self._md is None:
            md = capstone.Cs(capstone.CS_ARCH_X86,
                             capstone.CS_MODE_64 if self.mode == 64 else capstone.CS_MODE_32)
            md.syntax = capstone.CS_OPT_SYNTAX_ATT
            md.detail = True
            self._md = md
        return self._md

    def _read(self, code: bytes, addr: int) -> _Raw:
        for ci in self.md.disasm(code, addr, 1):
            return (ci.size, _MNEMONIC.get(ci.mnemonic, ci.mnemonic),
                    ci.op_str.replace(", ", ","), ci.id, ci.group(capstone.CS_GRP_CALL),
                    ci.group(capstone.CS_GRP_JUMP))
        return None

    def decode(self, code: bytes, addr: int) -> DisInsn:
        """Decode the first instruction of `code`; an undecodable byte prints as ddb's
        "(bad)"-style `.byte`."""
        key = (self.mode, bytes(code), addr)
        raw = _decoded.get(key, _MISSING)
        if raw is _MISSING:
            raw = self._read(code, addr)
            if len(_decoded) < _DECODED_MAX:
                _decoded[key] = raw
        if raw is not None:
            size, mnem, ops, cid, is_call, is_jump = raw      # type: ignore[misc]
            if (is_call or is_jump) and _HEX.match(ops):
                ops = self.symbols.format(int(ops, 16))
            return DisInsn(addr, size, mnem, ops, cid, is_call, cid in IRET_IDS,
                           cid in RET_IDS)
        b = code[0] if code else 0
        return DisInsn(addr, 1, ".byte", f"{b:#x}", 0, False, False, False)
