"""The retirement log: every retired instruction and every delivered event, per vCPU.

Instructions are one array slot each (their RIP, indexed by the retirement count), so the hot
loop allocates nothing. Events are rare and kept in a separate bounded ring with the
retirement count at which they happened. Virtual time of retirement n is
n * ns_per_insn + the clock offset in force at n (offsets change on HLT and delays).
"""

from __future__ import annotations

import bisect
from array import array
from collections import deque
from dataclasses import dataclass

EV_EXCEPTION, EV_NMI, EV_INTR, EV_SOFTINT, EV_VMEXIT, EV_VMRUN, EV_INJECT, EV_IRET = range(8)
EV_NAMES = ["exception", "nmi", "intr", "softint", "vmexit", "vmrun", "inject", "iret"]
# EV_IRET: an IRET completed (rip/rflags: what it loaded); it is also in the instruction ring


@dataclass(frozen=True, slots=True)
class Event:
    seq: int          # retirement count when it happened (instructions retired before it)
    kind: int
    vector: int
    error_code: int | None
    rip: int          # RIP pushed (delivery) or guest RIP (vmexit/vmrun)
    rflags: int
    dr6: int
    info: int = 0     # vmexit: exit code; otherwise 0

    @property
    def kind_name(self) -> str:
        return EV_NAMES[self.kind]


@dataclass(frozen=True, slots=True)
class Retired:
    seq: int
    rip: int
    time: int


class RetireLog:
    def __init__(self, order: int = 18, ns_per_insn: int = 10, events: int = 65536):
        self.capacity = 1 << order
        self.mask = self.capacity - 1
        self.rips = array("Q", bytes(8 * self.capacity))
        self.events: deque[Event] = deque(maxlen=events)
        self.ns_per_insn = ns_per_insn
        self._mark_seq = [0]
        self._mark_off = [0]

    def time_offset_changed(self, seq: int, offset: int) -> None:
        if self._mark_seq[-1] == seq:
            self._mark_off[-1] = offset
        else:
            self._mark_seq.append(seq)
            self._mark_off.append(offset)
            if len(self._mark_seq) > 2 * self.capacity:
                # keep marks for the instructions still in the ring (and one before them)
                i = max(0, bisect.bisect_right(self._mark_seq, seq - self.capacity) - 1)
                del self._mark_seq[:i]
                del self._mark_off[:i]

    def time_of(self, seq: int) -> int:
        i = bisect.bisect_right(self._mark_seq, seq) - 1
        return seq * self.ns_per_insn + self._mark_off[max(i, 0)]

    def add_event(self, ev: Event) -> None:
        self.events.append(ev)

    def retired(self, start: int, end: int) -> list[Retired]:
        """Instructions retired with sequence numbers in [start, end) still in the ring."""
        start = max(start, end - self.capacity, 0)
        return [Retired(s, self.rips[s & self.mask], self.time_of(s)) for s in range(start, end)]

    def events_between(self, start: int, end: int) -> list[Event]:
        """Events with start <= seq < end; they are appended in seq order, so this walks
        back from the newest only as far as it needs to."""
        out = []
        for e in reversed(self.events):
            if e.seq < start:
                break
            if e.seq < end:
                out.append(e)
        out.reverse()
        return out
