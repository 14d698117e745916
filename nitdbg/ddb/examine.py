"""`x` (examine) and `print` (after sys/ddb/db_examine.c)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import DdbError

if TYPE_CHECKING:
    from .main import Ddb

MAX_WIDTH = 79        # db_max_width - 1: where db_end_line breaks a line of values
EXAMINE_MAX = 0x1000  # items one `x` prints: ddb's pager would stop a person long before
FORMAT_CHARS = "bhlgwarxzduocsSiI"
STRING_MAX = 0x400    # bytes of one x/s string


def check_format(fmt: str) -> None:
    """Refuse an `x` format before anything is read or remembered."""
    if any(c not in FORMAT_CHARS for c in fmt):
        raise DdbError("Bad modifier")


class _Out:
    """db_printf with the output position db_end_line uses."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.cur = ""

    @property
    def pos(self) -> int:
        return len(self.cur.expandtabs(8))

    def put(self, s: str) -> None:
        parts = s.split("\n")
        self.cur += parts[0]
        for p in parts[1:]:
            self.lines.append(self.cur)
            self.cur = p

    def text(self) -> str:
        lines = [*self.lines, self.cur] if self.cur else self.lines
        return "".join(line.rstrip(" ") + "\n" for line in lines)


def _signed(v: int, size: int) -> int:
    bits = 8 * size
    return v - (1 << bits) if v >> (bits - 1) else v


def _string(db: Ddb, addr: int) -> tuple[str, int]:
    """A NUL-terminated string of at most STRING_MAX bytes, read a page at a time."""
    s: list[str] = []
    while len(s) < STRING_MAX:
        chunk = db.read(addr, min(STRING_MAX - len(s), 0x1000 - (addr & 0xFFF)))
        nul = chunk.find(0)
        part = chunk if nul < 0 else chunk[:nul]
        s.extend(chr(b) if 0x20 <= b <= 0x7E else f"\\{b:03o}" for b in part)
        addr += len(part)
        if nul >= 0:
            return "".join(s), addr + 1
    return "".join(s), addr


def examine(db: Ddb, addr: int, fmt: str, count: int) -> str:
    """Print `count` items at `addr` in format `fmt`; sets db_next for a repeat."""
    out = _Out()
    for _ in range(count):
        size = 4
        for c in fmt:
            if c in "bhlg":
                size = {"b": 1, "h": 2, "l": 4, "g": 8}[c]
                continue
            if c == "w":              # ddb accepts /w for a 4-byte word as well
                size = 4
                continue
            if c == "a":
                size = 8
                if out.pos:
                    out.put("\n")
                out.put(f"{db.symbols.format(addr)}:\t")
                continue
            if c not in "rxzduocsSiI":
                raise DdbError("Bad modifier")
            if out.pos == 0:
                out.put(f"{db.symbols.format(addr)}:\t")
            width = size * 4
            if c == "i" or c == "I":
                d = db.disasm(addr)
                out.put(d.text)
                addr = d.next
                out.put("\n")
                continue
            if c == "s":
                text, addr = _string(db, addr)
                out.put(text + "\n")
                continue
            if c == "c":
                b = db.read(addr, 1)[0]
                addr += 1
                out.put(chr(b) if 0x20 <= b <= 0x7E else f"\\{b:03o}")
                continue
            if c == "S":
                v = int.from_bytes(db.read(addr, 8), "little")
                addr += 8
                out.put(db.symbols.format(v))
                continue
            v = int.from_bytes(db.read(addr, size), "little")
            addr += size
            if c == "x":
                item = f"{v:x}"
            elif c == "z":
                sv = _signed(v, size)
                item = f"-{-sv:x}" if sv < 0 else f"{sv:x}"
            elif c == "r":
                sv = _signed(v, size)
                item = f"-{-sv:#x}" if sv < 0 else f"+{sv:#x}"
            elif c == "d":
                item = str(_signed(v, size))
            elif c == "u":
                item = str(v)
            else:
                item = f"{v:o}"
            out.put(item.ljust(width))
            if out.pos >= MAX_WIDTH - width:
                out.put("\n")
    db.next_addr = addr
    return out.text()


def print_value(db: Ddb, value: int, fmt: str) -> str:
    """print[/axzduoc] expr"""
    f = fmt[:1] or "x"
    if f == "a":
        return db.symbols.format(value) + "\n"
    if f == "x":
        return f"{value:8x}\n"
    if f == "z":
        sv = _signed(value, 8)
        return f"{'-' if sv < 0 else ''}{abs(sv):x}".rjust(8) + "\n"
    if f == "d":
        return f"{_signed(value, 8):11d}\n"
    if f == "u":
        return f"{value:11d}\n"
    if f == "o":
        return f"{value:16o}\n"
    if f == "r":
        sv = _signed(value, 8)
        return f"{'-' if sv < 0 else '+'}{abs(sv):#x}".rjust(11) + "\n"
    if f == "c":
        b = value & 0xFF
        return (chr(b) if 0x20 <= b <= 0x7E else f"\\{b:03o}") + "\n"
    raise DdbError("Bad modifier")
