"""Port 0x61: the NMI status and control register (the PC/AT's "port B").

Read (status):
  bit 0  timer 2 gate (as written)          bit 4  refresh cycle toggle
  bit 1  speaker data enable (as written)   bit 5  timer 2 output (OUT2)
  bit 2  SERR#/parity NMI disable (written) bit 6  IOCHK# NMI source status
  bit 3  IOCHK# NMI disable (as written)    bit 7  SERR#/parity NMI source status
Write (control): bits 3:0 are stored, bits 7:4 are read-only and ignored.

Bit 4 flips on every read: on real hardware it follows DRAM refresh (every
15 us) and firmware delay loops poll it for edges; here it toggles per read so
such loops always make progress and the result is deterministic.  No PIT is
emulated, so OUT2 reads 0 unless a ``timer2_out`` callable is supplied.  Bits
6 and 7 read 0: no IOCHK or SERR NMI is ever raised by this platform; every NMI
the guest sees comes from the local APIC (LINT1 or an IPI).

FreeBSD's isa_nmi() reads this port first thing in its NMI handler, which makes
the read the place where the hypervisor's ``debug.nit`` knobs act: the
``on_read(vcpu)`` hook runs on every read, before the value is produced (the
vmm hooks delay_usecs and recursive_nmi there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nitdbg.vmm.devices.iobus import checked_state

NMI_SC_PORT = 0x61

NMISC_TMR2_GATE = 0x01
NMISC_SPKR_DATA = 0x02
NMISC_SERR_DIS = 0x04
NMISC_IOCHK_DIS = 0x08
NMISC_REFRESH = 0x10
NMISC_TMR2_OUT = 0x20
NMISC_IOCHK_STS = 0x40
NMISC_SERR_STS = 0x80
NMISC_CONTROL_MASK = 0x0F


class NmiStatusPort:
    def __init__(
        self,
        name: str = "nmisc",
        on_read: Callable[[int], None] | None = None,
        timer2_out: Callable[[], bool] | None = None,
    ) -> None:
        self.name = name
        self.on_read = on_read
        self.timer2_out = timer2_out
        self.control = 0
        self.refresh = False
        self.reads = 0

    def io_read(self, port: int, size: int, vcpu: int) -> int:
        self.reads += 1
        if self.on_read is not None:
            self.on_read(vcpu)
        self.refresh = not self.refresh
        value = self.control
        if self.refresh:
            value |= NMISC_REFRESH
        if self.timer2_out is not None and self.timer2_out():
            value |= NMISC_TMR2_OUT
        # IOCHK/SERR NMI status (bits 6, 7) stay 0: no such NMI source exists here.
        return value

    def io_write(self, port: int, size: int, value: int, vcpu: int) -> None:
        self.control = value & NMISC_CONTROL_MASK

    def state(self) -> dict[str, Any]:
        return {"control": self.control, "refresh": self.refresh, "reads": self.reads}

    def load_state(self, state: dict[str, Any]) -> None:
        st = checked_state(state, {"control": int, "refresh": bool, "reads": int}, self.name)
        self.control = st["control"] & NMISC_CONTROL_MASK
        self.refresh = st["refresh"]
        self.reads = st["reads"]
