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
from dataclasses import FrozenInstanceError, dataclass
from operator import itemgetter

EV_EXCEPTION, EV_NMI, EV_INTR, EV_SOFTINT, EV_VMEXIT, EV_VMRUN, EV_INJECT, EV_IRET = range(8)
EV_NAMES = ["exception", "nmi", "intr", "softint", "vmexit", "vmrun", "inject", "iret"]
# EV_IRET: an IRET completed (rip/rflags: what it loaded); it is also in the instruction ring


class Event(tuple):
    """One delivered event (or VMRUN/#VMEXIT/IRET), immutable.

    Backed by a tuple because the step loop makes two of these on every single-stepped
    instruction (the #DB delivery and its IRETQ): `tuple.__new__` is several times cheaper
    than a frozen dataclass's `__init__`. It behaves as the frozen dataclass it replaced:
    the same fields, keyword construction, repr, equality (only with another Event), hash
    and pickling, no ordering, no assignment."""

    __slots__ = ()
    _fields = ("seq", "kind", "vector", "error_code", "rip", "rflags", "dr6", "info")
    __match_args__ = _fields

    def __new__(cls, seq: int, kind: int, vector: int, error_code: int | None, rip: int,
                rflags: int, dr6: int, info: int = 0) -> Event:
        return tuple.__new__(cls, (seq, kind, vector, error_code, rip, rflags, dr6, info))

    seq = property(itemgetter(0), doc="retirement count when it happened (instructions "
                   "retired before it)")
    kind = property(itemgetter(1), doc="EV_*")
    vector = property(itemgetter(2))
    error_code = property(itemgetter(3))
    rip = property(itemgetter(4), doc="RIP pushed (delivery) or guest RIP (vmexit/vmrun)")
    rflags = property(itemgetter(5))
    dr6 = property(itemgetter(6))
    info = property(itemgetter(7), doc="vmexit: exit code; otherwise 0")

    @property
    def kind_name(self) -> str:
        return EV_NAMES[self[1]]

    def __repr__(self) -> str:
        return ("Event(" + ", ".join(f"{n}={v!r}" for n, v in zip(self._fields, self,
                                                                  strict=True)) + ")")

    # Python asks this class first when the other side is a plain tuple (a subclass's
    # reflected method wins), so a tuple is answered here and never compared field-wise.
    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return tuple.__eq__(self, other)
        return False if isinstance(other, tuple) else NotImplemented

    def __ne__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return tuple.__ne__(self, other)
        return True if isinstance(other, tuple) else NotImplemented

    __hash__ = tuple.__hash__       # = hash of the fields, as the frozen dataclass's

    def _unordered(self, other: object) -> bool:
        if isinstance(other, tuple):
            raise TypeError("Events are not ordered")
        return NotImplemented

    __lt__ = __le__ = __gt__ = __ge__ = _unordered

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __getnewargs__(self) -> tuple:
        return tuple(self)


# RetireLog.events.append(new_event(Event, (seq, kind, ...))): the fields without a call
# through Event.__new__ (CpuState.record_event)
new_event = tuple.__new__


@dataclass(frozen=True, slots=True)
class Retired:
    seq: int
    rip: int
    time: int


_ZERO = (0,)


class RetireLog:
    def __init__(self, order: int = 18, ns_per_insn: int = 10, events: int = 65536):
        self.capacity = 1 << order
        self.mask = self.capacity - 1
        self.rips = array("Q", _ZERO) * self.capacity     # (no temporary bytes object)
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
