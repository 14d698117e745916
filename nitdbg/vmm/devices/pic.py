"""The 8259A programmable interrupt controller pair of a PC (bhyve's vatpic).

Master at 0x20/0x21 (IR0..IR7 = ISA IRQ 0..7, IR2 the slave's INT), slave at 0xA0/0xA1
(IRQ 8..15), the edge/level control registers (ELCR) at 0x4D0/0x4D1 as bhyve has them.
Register names and rules from the Intel 8259A datasheet (order 231468):

- ICW1 (command port, D4=1): LTIM (D3) level mode, SNGL (D1), IC4 (D0). It clears the
  IMR and ISR, resets the priority to IR7 lowest, selects IRR for reads and starts the
  ICW2 (vector base, T7..T3), ICW3 (when SNGL=0) and ICW4 (when IC4=1) sequence on the
  data port. ICW4 AEOI (D1) is auto-EOI; uPM must be 1 (8086 mode).
- OCW1 (data port after initialisation): the interrupt mask register (IMR).
- OCW2 (command port, D4=0, D3=0): R SL EOI in D7..D5: 001 non-specific EOI, 011
  specific EOI of level L2..L0, 101 rotate on non-specific EOI, 111 rotate on specific
  EOI, 110 set priority (L is the lowest), 100/000 set/clear rotate in auto-EOI mode.
- OCW3 (command port, D4=0, D3=1): RR RIS (D1 D0) = 10 read IRR, 11 read ISR; P (D2)
  polls (the next read of the command port is an interrupt acknowledge).
- Fully nested mode: INT is raised for the highest-priority unmasked IRR bit whose
  priority is above every ISR bit. INTA moves it from IRR to ISR (not in auto-EOI mode)
  and gives vector = ICW2 base + IR; with nothing left to acknowledge the 8259A answers
  IR7 (the spurious vector) without setting ISR.
- Edge-triggered inputs set IRR on a rising edge and keep it until INTA; level-triggered
  inputs (LTIM or the ELCR bit) hold IRR while the line is high.

Not modelled: special mask mode, special fully nested mode, buffered mode (the bits are
accepted and ignored), as bhyve. The master's INT output goes to every local APIC's LINT0
and to I/O APIC pin 0 (vatpic_notify_intr); the vmm wires that up with ``on_intr``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nitdbg.vmm.devices.iobus import IoBusError, checked_state

MASTER_PORT, SLAVE_PORT = 0x20, 0xA0
ELCR_PORT = 0x4D0
CASCADE_IRQ = 2

ICW1_IC4, ICW1_SNGL, ICW1_LTIM, ICW1_INIT = 0x01, 0x02, 0x08, 0x10
ICW4_UPM, ICW4_AEOI = 0x01, 0x02
OCW3_RIS, OCW3_RR, OCW3_P, OCW3_SEL = 0x01, 0x02, 0x04, 0x08

Trace = Callable[..., None]


class I8259:
    """One 8259A."""

    _STATE = {"irr": int, "isr": int, "imr": int, "elcr": int, "lines": int,
              "icw_step": int, "icw1": int, "vector_base": int, "icw3": int, "icw4": int,
              "lowprio": int, "read_isr": bool, "poll": bool, "ready": bool}

    def __init__(self, name: str, master: bool, elcr_mask: int):
        self.name = name
        self.master = master
        self.elcr_mask = elcr_mask     # pins whose trigger mode the ELCR may set
        self.irr = self.isr = self.imr = 0
        self.elcr = 0
        self.lines = 0                 # input levels, for edge detection
        self.icw_step = 0              # 0: initialised; 2, 3, 4: next ICW expected
        self.icw1 = 0
        self.vector_base = 0
        self.icw3 = 0
        self.icw4 = 0
        self.lowprio = 7
        self.read_isr = False
        self.poll = False
        self.ready = False             # ICW sequence completed at least once

    # -- inputs --------------------------------------------------------------
    def level_mode(self, irq: int) -> bool:
        return bool(self.icw1 & ICW1_LTIM) or bool(self.elcr >> irq & 1)

    def set_line(self, irq: int, high: bool) -> None:
        bit = 1 << irq
        was = bool(self.lines & bit)
        if high:
            self.lines |= bit
            if self.level_mode(irq) or not was:
                self.irr |= bit            # level: while high; edge: on the rising edge
        else:
            self.lines &= ~bit
            if self.level_mode(irq):
                self.irr &= ~bit

    # -- priority resolution -------------------------------------------------
    def _order(self) -> list[int]:
        """IR levels from highest to lowest priority (lowprio is the lowest)."""
        first = (self.lowprio + 1) & 7
        return [(first + i) & 7 for i in range(8)]

    def pending_irq(self) -> int | None:
        """The IR INT is raised for, or None (fully nested mode)."""
        if not self.ready:
            return None
        req = self.irr & ~self.imr
        for irq in self._order():
            if self.isr >> irq & 1:
                return None                # an in-service level of higher priority
            if req >> irq & 1:
                return irq
        return None

    def acknowledge(self) -> int:
        """INTA: the IR to dispatch (IR7 as spurious if nothing is pending)."""
        irq = self.pending_irq()
        if irq is None:
            return -7                      # spurious: IR7, ISR untouched
        bit = 1 << irq
        if not self.level_mode(irq):
            self.irr &= ~bit
        if not self.icw4 & ICW4_AEOI:
            self.isr |= bit
        return irq

    def _highest_isr(self) -> int | None:
        for irq in self._order():
            if self.isr >> irq & 1:
                return irq
        return None

    # -- registers -----------------------------------------------------------
    def write_command(self, value: int, trace: Trace) -> None:
        if value & ICW1_INIT:
            self.icw1 = value
            self.imr = self.isr = 0
            # The edge sense circuit is reset: an edge input needs a new rising edge.
            self.irr = self.lines if value & ICW1_LTIM else 0
            self.lowprio = 7
            self.read_isr = self.poll = False
            self.icw_step = 2
            trace("%s icw1 %#x", self.name, value)
            return
        if value & OCW3_SEL:
            if value & OCW3_RR:
                self.read_isr = bool(value & OCW3_RIS)
            self.poll = bool(value & OCW3_P)
            return
        # OCW2
        op, level = value >> 5, value & 7
        if op in (1, 5):                   # non-specific EOI (and rotate)
            irq = self._highest_isr()
            if irq is not None:
                self.isr &= ~(1 << irq)
                if op == 5:
                    self.lowprio = irq
            trace("%s eoi %d", self.name, -1 if irq is None else irq)
        elif op in (3, 7):                 # specific EOI (and rotate)
            self.isr &= ~(1 << level)
            if op == 7:
                self.lowprio = level
            trace("%s specific eoi %d", self.name, level)
        elif op == 6:
            self.lowprio = level

    def write_data(self, value: int, trace: Trace) -> None:
        step = self.icw_step
        if step == 2:
            self.vector_base = value & 0xF8
            self.icw_step = 3 if not self.icw1 & ICW1_SNGL else 4
            if self.icw_step == 4 and not self.icw1 & ICW1_IC4:
                self._init_done(trace)
        elif step == 3:
            self.icw3 = value
            self.icw_step = 4
            if not self.icw1 & ICW1_IC4:
                self._init_done(trace)
        elif step == 4:
            self.icw4 = value
            self._init_done(trace)
        else:
            self.imr = value & 0xFF

    def _init_done(self, trace: Trace) -> None:
        self.icw_step = 0
        self.ready = True
        trace("%s initialized: vector base %#x, icw4 %#x", self.name, self.vector_base,
              self.icw4)

    def read_command(self) -> int:
        return self.isr if self.read_isr else self.irr

    def state(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._STATE}

    def load_state(self, st: dict[str, Any]) -> None:
        checked_state(st, self._STATE, self.name)
        for k in self._STATE:
            setattr(self, k, st[k])


class AtPic:
    """The cascaded pair, on the I/O bus. ``on_intr(level)`` follows the master's INT."""

    name = "atpic"

    def __init__(self, on_intr: Callable[[bool], None] | None = None,
                 trace: Trace | None = None):
        self.master = I8259("atpic master", True, 0xF8)   # IRQ 0, 1, 2 are always edge
        self.slave = I8259("atpic slave", False, 0xDE)    # IRQ 8 and 13 too (bhyve)
        self.on_intr = on_intr
        self.trace = trace or _no_trace
        self.intr = False
        self.counters = {"intr_raised": 0, "intack": 0, "spurious": 0}

    # -- interrupt lines -----------------------------------------------------
    def set_irq(self, irq: int, high: bool) -> None:
        """ISA IRQ line 0..15 goes high or low."""
        if not 0 <= irq < 16:
            raise IoBusError(f"atpic: no IRQ {irq}")
        if irq < 8:
            self.master.set_line(irq, high)
        else:
            self.slave.set_line(irq - 8, high)
        self._update()

    def pulse_irq(self, irq: int) -> None:
        self.set_irq(irq, True)
        self.set_irq(irq, False)

    def _update(self) -> None:
        self.master.set_line(CASCADE_IRQ, self.slave.pending_irq() is not None)
        intr = self.master.pending_irq() is not None
        if intr != self.intr:
            self.intr = intr
            if intr:
                self.counters["intr_raised"] += 1
                self.trace("atpic intr asserted (irq %d)", self._pending_isa_irq())
            if self.on_intr is not None:
                self.on_intr(intr)

    def _pending_isa_irq(self) -> int:
        irq = self.master.pending_irq()
        if irq == CASCADE_IRQ:
            s = self.slave.pending_irq()
            return -1 if s is None else 8 + s
        return -1 if irq is None else irq

    def pending_vector(self) -> int | None:
        """The vector an INTA cycle would return now, or None (no INT)."""
        irq = self.master.pending_irq()
        if irq is None:
            return None
        if irq == CASCADE_IRQ:
            s = self.slave.pending_irq()
            return self.slave.vector_base + (7 if s is None else s)
        return self.master.vector_base + irq

    def intack(self) -> int:
        """The CPU's interrupt acknowledge (both INTA cycles): the vector."""
        self.counters["intack"] += 1
        irq = self.master.acknowledge()
        if irq == CASCADE_IRQ:
            s = self.slave.acknowledge()
            vector = self.slave.vector_base + (7 if s < 0 else s)
            if s < 0:
                self.counters["spurious"] += 1
        elif irq < 0:
            self.counters["spurious"] += 1
            vector = self.master.vector_base + 7
        else:
            vector = self.master.vector_base + irq
        self.trace("atpic intack vector %#x", vector)
        self._update()
        return vector

    # -- I/O bus -------------------------------------------------------------
    def _chip(self, port: int) -> I8259:
        return self.master if port < SLAVE_PORT else self.slave

    def io_read(self, port: int, size: int, vcpu: int) -> int:
        if port in (ELCR_PORT, ELCR_PORT + 1):
            return (self.master if port == ELCR_PORT else self.slave).elcr
        chip = self._chip(port)
        if port & 1:
            return chip.imr
        if chip.poll:
            chip.poll = False
            irq = chip.pending_irq()
            if irq is None:
                return 0
            chip.acknowledge()
            self._update()
            return 0x80 | irq
        return chip.read_command()

    def io_write(self, port: int, size: int, value: int, vcpu: int) -> None:
        value &= 0xFF
        if port in (ELCR_PORT, ELCR_PORT + 1):
            chip = self.master if port == ELCR_PORT else self.slave
            chip.elcr = value & chip.elcr_mask
        elif port & 1:
            self._chip(port).write_data(value, self.trace)
        else:
            self._chip(port).write_command(value, self.trace)
        self._update()

    def state(self) -> dict[str, Any]:
        return {"master": self.master.state(), "slave": self.slave.state(),
                "intr": self.intr, "counters": dict(self.counters)}

    def load_state(self, state: dict[str, Any]) -> None:
        st = checked_state(state, {"master": dict, "slave": dict, "intr": bool,
                                   "counters": dict}, self.name)
        self.master.load_state(st["master"])
        self.slave.load_state(st["slave"])
        self.intr = st["intr"]
        self.counters = dict(st["counters"])

    def describe(self) -> str:
        m, s = self.master, self.slave
        return (f"atpic: master base {m.vector_base:#x} irr {m.irr:#04x} isr {m.isr:#04x} "
                f"imr {m.imr:#04x}; slave base {s.vector_base:#x} irr {s.irr:#04x} "
                f"isr {s.isr:#04x} imr {s.imr:#04x}; INT {'high' if self.intr else 'low'}")


def _no_trace(fmt: str, *args: object) -> None:
    pass
