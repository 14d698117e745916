"""The I/O APIC at 0xFEC00000 (bhyve's vioapic), with the 82093AA datasheet's registers.

Memory-mapped: IOREGSEL at offset 0x00 selects a register, IOWIN at 0x10 reads or writes
it; only aligned 32-bit accesses count (bhyve's vioapic_mmio_rw; others read 0 and are
dropped). Registers:

- IOAPICID (0x00): ID in bits 27..24, read/write.
- IOAPICVER (0x01): version 0x11 and the maximum redirection entry (31) in bits 23..16:
  0x001F0011, as bhyve (32 pins).
- IOAPICARB (0x02): arbitration ID, bits 27..24; reads the ID, as bhyve.
- IOREDTBL[n] (0x10 + 2n low, 0x11 + 2n high): vector (7..0), delivery mode (10..8:
  000 fixed, 001 lowest priority, 010 SMI, 100 NMI, 101 INIT, 111 ExtINT), destination
  mode (11, logical), delivery status (12, read-only), interrupt input pin polarity (13,
  1 = active low), remote IRR (14, read-only), trigger mode (15, 1 = level), mask (16),
  destination (63..56). Every entry resets masked.

Pins follow the datasheet's edge and level rules:

- The pin's input is the ISA line (active high); with polarity active-low the I/O APIC
  sees it inverted.
- Edge: a message is sent on each inactive -> active transition of an unmasked pin; an
  edge while masked is lost.
- Level: while the pin is active and unmasked and remote IRR is 0, a message is sent and
  remote IRR set; the local APIC's EOI for that vector (broadcast for level-triggered
  interrupts, SDM 11.8.5) clears remote IRR, and if the pin is still active the
  interrupt is sent again. Unmasking an active level pin sends it.
- Fixed and lowest-priority messages carry the trigger mode; NMI, INIT and ExtINT are
  always edge (the datasheet: "the trigger mode is ignored" for them) and set no remote
  IRR.
- Delivery status reads 0: a message reaches the local APICs at once here.

How a message reaches the local APICs is the vmm's (``deliver(msg)``): that is where
bhyve's vlapic_deliver_intr drops NMI and INIT messages and the hardware does not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nitdbg.vmm.devices.iobus import checked_state

IOAPIC_BASE = 0xFEC0_0000
IOAPIC_SIZE = 0x1000
IOREGSEL, IOWIN = 0x00, 0x10
IOAPICID, IOAPICVER, IOAPICARB, IOREDTBL = 0x00, 0x01, 0x02, 0x10
NPINS = 32
IOAPIC_VERSION = ((NPINS - 1) << 16) | 0x11

RTE_VECTOR = 0xFF
RTE_DELMOD = 0x700
RTE_DESTMOD_LOGICAL = 1 << 11
RTE_DELIVS = 1 << 12
RTE_INTPOL_LOW = 1 << 13
RTE_REM_IRR = 1 << 14
RTE_TRGRMOD_LEVEL = 1 << 15
RTE_MASKED = 1 << 16
RTE_DEST_SHIFT = 56
RTE_RESET = RTE_MASKED
RTE_READONLY = RTE_DELIVS | RTE_REM_IRR
RTE_WRITABLE = (0xFF << RTE_DEST_SHIFT) | 0x1FFFF & ~RTE_READONLY

DM_FIXED, DM_LOWEST, DM_SMI, DM_NMI, DM_INIT, DM_EXTINT = 0, 1, 2, 4, 5, 7
DM_NAMES = {0: "fixed", 1: "lowest priority", 2: "SMI", 3: "reserved", 4: "NMI",
            5: "INIT", 6: "reserved", 7: "ExtINT"}

Trace = Callable[..., None]


@dataclass(frozen=True)
class IoApicMessage:
    """An interrupt message on its way to the local APICs."""

    pin: int
    vector: int
    delmode: int
    dest: int
    logical: bool
    level: bool

    def describe(self) -> str:
        kind = "logical" if self.logical else "physical"
        trig = "level" if self.level else "edge"
        return (f"pin {self.pin} {DM_NAMES[self.delmode]} vector {self.vector:#x} "
                f"to {kind} {self.dest:#x}, {trig}")


class IoApic:
    name = "ioapic"

    def __init__(self, deliver: Callable[[IoApicMessage], None] | None = None,
                 trace: Trace | None = None):
        self.deliver = deliver
        self.trace = trace or (lambda *a: None)
        self.id = 0
        self.ioregsel = 0
        self.rte = [RTE_RESET] * NPINS
        self.lines = 0                    # ISA line levels (active high), one bit a pin
        self.counters = {"sent": 0, "edge_masked": 0, "level_eoi": 0, "bad_access": 0}

    # -- pins ------------------------------------------------------------------------
    def _active(self, pin: int) -> bool:
        high = bool(self.lines >> pin & 1)
        return high != bool(self.rte[pin] & RTE_INTPOL_LOW)

    def set_irq(self, pin: int, high: bool) -> None:
        if not 0 <= pin < NPINS:
            raise ValueError(f"ioapic: no pin {pin}")
        was = self._active(pin)
        if high:
            self.lines |= 1 << pin
        else:
            self.lines &= ~(1 << pin)
        now = self._active(pin)
        rte = self.rte[pin]
        if rte & RTE_TRGRMOD_LEVEL and self._level_applies(rte):
            if now:
                self._send_level(pin)
        elif now and not was:
            if rte & RTE_MASKED:
                self.counters["edge_masked"] += 1
                self.trace("ioapic pin%d: edge lost, pin masked", pin)
            else:
                self._send(pin)

    def pulse_irq(self, pin: int) -> None:
        self.set_irq(pin, True)
        self.set_irq(pin, False)

    @staticmethod
    def _level_applies(rte: int) -> bool:
        return (rte & RTE_DELMOD) >> 8 in (DM_FIXED, DM_LOWEST)

    def _send_level(self, pin: int) -> None:
        rte = self.rte[pin]
        if rte & RTE_MASKED or rte & RTE_REM_IRR:
            return
        self.rte[pin] = rte | RTE_REM_IRR
        self._send(pin)

    def _send(self, pin: int) -> None:
        rte = self.rte[pin]
        dm = (rte & RTE_DELMOD) >> 8
        msg = IoApicMessage(pin, rte & RTE_VECTOR, dm, rte >> RTE_DEST_SHIFT,
                            bool(rte & RTE_DESTMOD_LOGICAL),
                            bool(rte & RTE_TRGRMOD_LEVEL) and self._level_applies(rte))
        self.counters["sent"] += 1
        self.trace("ioapic %s", msg.describe())
        if self.deliver is not None:
            self.deliver(msg)

    def eoi(self, vector: int) -> None:
        """A local APIC's EOI for a level-triggered ``vector``."""
        for pin in range(NPINS):
            rte = self.rte[pin]
            if rte & RTE_REM_IRR and rte & RTE_VECTOR == vector:
                self.rte[pin] = rte & ~RTE_REM_IRR
                self.counters["level_eoi"] += 1
                self.trace("ioapic pin%d: remote IRR cleared by EOI of vector %#x", pin,
                           vector)
                if self._active(pin):
                    self._send_level(pin)

    # -- registers --------------------------------------------------------------------
    def read_reg(self, reg: int) -> int:
        if reg in (IOAPICID, IOAPICARB):
            return (self.id & 0xF) << 24
        if reg == IOAPICVER:
            return IOAPIC_VERSION
        if IOREDTBL <= reg < IOREDTBL + 2 * NPINS:
            pin, high = divmod(reg - IOREDTBL, 2)
            return (self.rte[pin] >> (32 * high)) & 0xFFFF_FFFF
        return 0

    def write_reg(self, reg: int, value: int) -> None:
        if reg == IOAPICID:
            self.id = (value >> 24) & 0xF
            return
        if not IOREDTBL <= reg < IOREDTBL + 2 * NPINS:
            return                            # VER and ARB are read-only
        pin, high = divmod(reg - IOREDTBL, 2)
        old = self.rte[pin]
        shift = 32 * high
        new = (old & ~(0xFFFF_FFFF << shift)) | (value << shift)
        new = (new & RTE_WRITABLE) | (old & RTE_READONLY)
        if not new & RTE_TRGRMOD_LEVEL:
            new &= ~RTE_REM_IRR               # remote IRR is undefined for edge: keep it 0
        self.rte[pin] = new
        if new != old:
            self.trace("ioapic pin%d: redirection entry %#lx", pin, new)
        # An active level pin that is (still) unmasked sends now (bhyve does the same).
        if new & RTE_TRGRMOD_LEVEL and self._level_applies(new) and self._active(pin):
            self._send_level(pin)

    def mmio_read(self, offset: int, size: int) -> int:
        if size != 4 or offset & 3:
            self.counters["bad_access"] += 1
            return 0
        if offset == IOREGSEL:
            return self.ioregsel
        if offset == IOWIN:
            return self.read_reg(self.ioregsel)
        return 0

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if size != 4 or offset & 3:
            self.counters["bad_access"] += 1
            return
        value &= 0xFFFF_FFFF
        if offset == IOREGSEL:
            self.ioregsel = value & 0xFF
        elif offset == IOWIN:
            self.write_reg(self.ioregsel, value)

    def state(self) -> dict[str, Any]:
        return {"id": self.id, "ioregsel": self.ioregsel, "rte": list(self.rte),
                "lines": self.lines, "counters": dict(self.counters)}

    def load_state(self, state: dict[str, Any]) -> None:
        st = checked_state(state, {"id": int, "ioregsel": int, "rte": list, "lines": int,
                                   "counters": dict}, self.name)
        if len(st["rte"]) != NPINS:
            raise ValueError(f"ioapic: state needs {NPINS} redirection entries")
        self.id, self.ioregsel, self.lines = st["id"], st["ioregsel"], st["lines"]
        self.rte = list(st["rte"])
        self.counters = dict(st["counters"])

    def describe(self) -> str:
        lines = [f"ioapic: id {self.id}, version {IOAPIC_VERSION:#x}"]
        for pin, rte in enumerate(self.rte):
            if rte != RTE_RESET or self.lines >> pin & 1:
                lines.append(f"  pin {pin}: {rte:#018x} ({decode_rte(rte)}), line "
                             f"{'high' if self.lines >> pin & 1 else 'low'}")
        return "\n".join(lines)


def decode_rte(rte: int) -> str:
    parts = [DM_NAMES[(rte & RTE_DELMOD) >> 8], f"vector {rte & RTE_VECTOR:#x}",
             "level" if rte & RTE_TRGRMOD_LEVEL else "edge",
             "active low" if rte & RTE_INTPOL_LOW else "active high",
             f"{'logical' if rte & RTE_DESTMOD_LOGICAL else 'physical'} dest "
             f"{rte >> RTE_DEST_SHIFT:#x}"]
    if rte & RTE_REM_IRR:
        parts.append("remote IRR")
    parts.append("masked" if rte & RTE_MASKED else "unmasked")
    return ", ".join(parts)
