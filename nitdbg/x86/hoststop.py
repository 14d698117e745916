"""Stop conditions of a host debugger (the gdb stub), checked by the vCPU at instruction
boundaries. They are invisible to the guest: no int3 byte in its memory, no DR7 bit, no #DB;
the vCPU just returns to the host with `stop_reason == "host"`.

Two check points per boundary, in the order of SDM vol 3 table 6-2:
  A (before the boundary's events): data watchpoints, which hardware reports as a trap of
    the instruction that made the access, ahead of NMI and INTR;
  B (after the events, before the instruction fetch): breakpoints and single steps, which
    hardware takes as code faults after NMI and INTR (priority 7).
A position in a vCPU's history is (check point, retired count, rip): a boundary is passed
more than once at the same count only when a #VMEXIT comes between (an intercepted IRET,
a nested page fault), and the rip tells those apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .cpu import Cpu

WATCH_WRITE, WATCH_READ, WATCH_ACCESS = 2, 3, 4      # gdb's Z2 / Z3 / Z4


@dataclass(frozen=True)
class Seek:
    """Stop at one position: check point "A" or "B", retired count, rip (None: any)."""

    point: str
    icount: int
    rip: int | None = None


@dataclass
class HostStop:
    bps: frozenset[int] = frozenset()                      # linear addresses
    watches: tuple[tuple[int, int, int, bool], ...] = ()    # (lo, hi, kind, stops)
    step: bool = False              # stop at the first B position other than `resume`
    seek: Seek | None = None
    resume: tuple[int, int] = (-1, -1)     # (icount, rip) the run starts at: no stop there
    # A probe is told of hits of `probe_bps` and of watches that do not stop, and the vCPU
    # goes on: reverse-continue finds earlier hits this way without changing the history.
    probe: Callable[[Cpu, tuple], None] | None = None
    probe_bps: frozenset[int] = frozenset()
    hit: tuple | None = None        # why it stopped: ("swbreak", addr) ("watch", kind, addr)
    #                                   ("step",) ("seek",)
    _watch_hit: tuple | None = field(default=None, repr=False)
    _probe_hit: tuple | None = field(default=None, repr=False)

    # --- called by the vCPU ---
    def access(self, lin: int, size: int, write: bool) -> None:
        """A data access on a page with a watchpoint (the vCPU's slow memory path)."""
        for lo, hi, kind, stops in self.watches:
            if lin < hi and lo < lin + size and (kind != WATCH_WRITE or write) \
                    and (kind != WATCH_READ or not write):
                if stops and self._watch_hit is None:
                    self._watch_hit = ("watch", kind, lo)
                elif not stops and self._probe_hit is None:
                    self._probe_hit = ("watch", kind, lo)

    def watches_page(self, pn: int) -> bool:
        return any(lo >> 12 <= pn <= (hi - 1) >> 12 for lo, hi, _, _ in self.watches)

    def before_events(self, cpu: Cpu) -> bool:
        s = self.seek
        if s is not None and s.point == "A" and cpu.icount == s.icount \
                and (s.rip is None or s.rip == cpu.rip):
            return self._seek_hit(cpu)
        p = self._probe_hit
        if p is not None:
            self._probe_hit = None
            if self.probe is not None:
                self.probe(cpu, p)
        w = self._watch_hit
        if w is not None:
            self._watch_hit = None
            self.hit = w
            return True
        return False

    def _seek_hit(self, cpu: Cpu) -> bool:
        self.hit = ("seek",)
        if self.probe is not None:
            self.probe(cpu, self.hit)
        return True

    def before_fetch(self, cpu: Cpu) -> bool:
        s = self.seek
        rip = cpu.rip
        if s is not None and s.point == "B" and cpu.icount == s.icount \
                and (s.rip is None or s.rip == rip):
            return self._seek_hit(cpu)
        if (cpu.icount, rip) == self.resume:
            return False
        if self.step:
            self.hit = ("step",)
            return True
        if self.bps or self.probe_bps:
            lin = rip if cpu.mode == 64 else (rip + cpu.seg[1].base) & 0xFFFF_FFFF
            if lin in self.probe_bps and self.probe is not None:
                self.probe(cpu, ("swbreak", lin))
            if lin in self.bps:
                self.hit = ("swbreak", lin)
                return True
        return False


def arm(cpu: Cpu, hs: HostStop | None) -> None:
    """Install (or remove) a vCPU's host stop conditions. Watched pages leave the TLBs so
    every access to them takes the checked slow path."""
    cpu.host_stop = hs
    if hs is not None and hs.watches:
        for lo, hi, _, _ in hs.watches:
            for pn in range(lo >> 12, ((hi - 1) >> 12) + 1):
                for r, w in cpu._tlbs.values():
                    r.pop(pn, None)
                    w.pop(pn, None)
    cpu.attention = True
