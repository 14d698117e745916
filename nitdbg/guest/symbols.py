"""Guest kernel symbols: address -> "sym+0x1f" (ddb style) and name -> address.

Built from the ELF .symtab. Lookups bisect a sorted address array, so formatting
every line of a disassembly or a retirement log stays cheap.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

ADDR_MASK = (1 << 64) - 1
# ddb's db_maxoff: the farthest an address may be from an unsized symbol and still
# be printed as sym+off (FreeBSD sys/ddb/db_sym.c).
DEFAULT_MAX_OFFSET = 0x10000

_KIND_RANK = {"func": 0, "object": 1, "notype": 2}
_BIND_RANK = {"global": 0, "weak": 1, "local": 2}
_ELF_KIND = {"STT_FUNC": "func", "STT_OBJECT": "object", "STT_NOTYPE": "notype"}
_ELF_BIND = {"STB_GLOBAL": "global", "STB_WEAK": "weak", "STB_LOCAL": "local"}


class SymbolNotFound(KeyError):
    """A name that is not in the symbol table."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "symbol not found"


class BadExpression(ValueError):
    """An address expression that does not parse."""


@dataclass(frozen=True, order=True)
class Symbol:
    addr: int
    name: str
    size: int = 0
    kind: str = "func"  # "func", "object" or "notype" (assembler labels)
    bind: str = "global"


class SymbolTable:
    """Symbols sorted by address; among several at one address the best is kept first."""

    def __init__(self, symbols: Iterable[Symbol] = (), max_offset: int = DEFAULT_MAX_OFFSET):
        self.max_offset = max_offset
        syms = sorted(
            symbols,
            key=lambda s: (s.addr, _KIND_RANK.get(s.kind, 3), _BIND_RANK.get(s.bind, 3), s.name),
        )
        self._by_name: dict[str, Symbol] = {}
        for s in syms:
            # Prefer a global definition when a local of the same name also exists.
            old = self._by_name.get(s.name)
            if old is None or _BIND_RANK.get(s.bind, 3) < _BIND_RANK.get(old.bind, 3):
                self._by_name[s.name] = s
        # One representative per address: the first after sorting (func > object > label).
        self._syms: list[Symbol] = []
        for s in syms:
            if not self._syms or self._syms[-1].addr != s.addr:
                self._syms.append(s)
        self._addrs = [s.addr for s in self._syms]

    @classmethod
    def from_elffile(cls, elf: Any) -> SymbolTable:
        """Functions, objects and assembler labels from a pyelftools ELFFile's .symtab."""
        symtab = elf.get_section_by_name(".symtab")
        if symtab is None or not hasattr(symtab, "iter_symbols"):
            return cls()  # stripped, or a .symtab whose header says it is something else
        out = []
        for sym in symtab.iter_symbols():
            kind = _ELF_KIND.get(sym["st_info"]["type"])
            shndx = sym["st_shndx"]
            name = sym.name
            if kind is None or not name or shndx in ("SHN_UNDEF", "SHN_ABS"):
                continue
            if name.startswith((".L", "$")):  # assembler-local and mapping symbols
                continue
            bind = _ELF_BIND.get(sym["st_info"]["bind"], "local")
            out.append(Symbol(sym["st_value"], name, sym["st_size"], kind, bind))
        return cls(out)

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self):
        return iter(self._syms)

    def names(self) -> list[str]:
        """All names, sorted, for completion."""
        return sorted(self._by_name)

    def symbol(self, name: str) -> Symbol:
        try:
            return self._by_name[name]
        except KeyError:
            raise SymbolNotFound(f"Symbol '{name}' not found") from None

    def address(self, name: str) -> int:
        return self.symbol(name).addr

    def lookup(self, addr: int) -> tuple[str, int] | None:
        """(name, offset) of the nearest symbol at or below `addr`, or None.

        A sized symbol only covers [addr, addr+size); an unsized one (an assembler
        label) covers up to `max_offset` bytes, as ddb's db_maxoff does.
        """
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0:
            return None
        s = self._syms[i]
        off = addr - s.addr
        limit = s.size if s.size else self.max_offset
        if off >= limit:
            return None
        return s.name, off

    def format(self, addr: int) -> str:
        """ddb style: "sym", "sym+0x1f", or plain hex when no symbol is near."""
        hit = self.lookup(addr)
        if hit is None:
            return f"{addr:#x}"
        name, off = hit
        return name if off == 0 else f"{name}+{off:#x}"

    _TOKEN = re.compile(r"\s*(?:([+-])|([0-9][0-9A-Za-z]*)|([A-Za-z_.$][A-Za-z0-9_.$]*))")

    def resolve(self, expr: str) -> int:
        """Value of `sym`, `sym+0x10`, `sym-4`, `0xffff...`, `0t10` (terms joined by + / -).

        Numbers are hexadecimal unless prefixed, as in ddb (radix 16; `0t` decimal,
        `0o` octal, `0x` hex). The result wraps to 64 bits.
        """
        text = expr.strip()
        if not text:
            raise BadExpression("empty address expression")
        pos, total, sign, want_term = 0, 0, 1, True
        while pos < len(text):
            m = self._TOKEN.match(text, pos)
            if m is None or m.end() == pos:
                raise BadExpression(f"bad address expression {expr!r} at {text[pos:]!r}")
            pos = m.end()
            op, num, ident = m.groups()
            if op is not None:
                if op == "-" and m.start() == 0:
                    sign = -1  # leading unary minus
                    continue
                if want_term:
                    raise BadExpression(f"bad address expression {expr!r}: missing term")
                sign = 1 if op == "+" else -1
                want_term = True
                continue
            if not want_term:
                raise BadExpression(f"bad address expression {expr!r}: missing + or -")
            value = _parse_number(num, expr) if num is not None else self.address(ident)
            total += sign * value
            want_term = False
        if want_term:
            raise BadExpression(f"bad address expression {expr!r}: missing term")
        return total & ADDR_MASK


def _parse_number(tok: str, expr: str) -> int:
    low = tok.lower()
    radix, digits = 16, low
    if low.startswith("0x"):
        digits = low[2:]
    elif low.startswith("0t"):
        radix, digits = 10, low[2:]
    elif low.startswith("0o"):
        radix, digits = 8, low[2:]
    try:
        return int(digits, radix)
    except ValueError:
        raise BadExpression(f"bad number {tok!r} in {expr!r}") from None
