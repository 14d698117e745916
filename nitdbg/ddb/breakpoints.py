"""Software breakpoints (after sys/ddb/db_break.c): a list of (address, count); the int3
bytes are in guest memory only while the guest runs under `c` (db_set_breakpoints) and are
taken out again at every debugger entry (db_clear_breakpoints)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .errors import DdbError

BKPT_INST = 0xCC            # int3
NBREAKPOINTS = 100


@dataclass
class Breakpoint:
    address: int
    init_count: int
    count: int
    saved: int | None = None      # the original byte while the int3 is in memory
    temporary: bool = False       # `next`'s return-address breakpoint; not listed


class BreakpointTable:
    def __init__(self) -> None:
        self.list: list[Breakpoint] = []     # newest first, as db_breakpoint_list
        self.inserted = False

    def find(self, addr: int) -> Breakpoint | None:
        for b in self.list:
            if b.address == addr:
                return b
        return None

    def set(self, addr: int, count: int = 1, temporary: bool = False) -> Breakpoint:
        old = self.find(addr)
        if old is not None:
            if temporary:
                return old
            raise DdbError("Already set.")
        if len(self.list) >= NBREAKPOINTS:
            raise DdbError("Too many breakpoints.")
        b = Breakpoint(addr, count, count, temporary=temporary)
        self.list.insert(0, b)
        return b

    def delete(self, addr: int) -> None:
        b = self.find(addr)
        if b is None or b.temporary:
            raise DdbError("Not set.")
        self.list.remove(b)

    def drop_temporary(self) -> None:
        self.list = [b for b in self.list if not b.temporary]

    def user_breakpoints(self) -> list[Breakpoint]:
        return [b for b in self.list if not b.temporary]

    def insert(self, read: Callable[[int, int], bytes],
               write: Callable[[int, bytes], None], skip: int | None = None) -> None:
        """Write int3 at every breakpoint (but `skip`, the one being stepped over)."""
        for b in self.list:
            if b.address == skip or b.saved is not None:
                continue
            b.saved = read(b.address, 1)[0]
            write(b.address, bytes([BKPT_INST]))
        self.inserted = True

    def remove(self, write: Callable[[int, bytes], None]) -> None:
        """Put the original bytes back."""
        for b in self.list:
            if b.saved is not None:
                write(b.address, bytes([b.saved]))
                b.saved = None
        self.inserted = False

    def listing(self, fmt: Callable[[int], str]) -> str:
        bps = self.user_breakpoints()
        if not bps:
            return "No breakpoints set\n"
        # The map column: every breakpoint here is in the kernel map, the current one ("*").
        out = [" Map      Count    Address\n"]
        for b in bps:
            out.append(f"*{'kernel':>8} {b.init_count:5d}    {fmt(b.address)}\n")
        return "".join(out)
