"""COM1: enough of a National Semiconductor 16550 UART for polled and
interrupt-driven text.

Register map (offset from the base, 0x3F8 for COM1; DLAB = LCR bit 7):

  +0  read: RBR (receive buffer)     write: THR (transmit holding)   [DLAB=0]
      read/write: DLL (divisor latch, low byte)                      [DLAB=1]
  +1  IER (interrupt enable)                                          [DLAB=0]
      DLM (divisor latch, high byte)                                  [DLAB=1]
  +2  read: IIR (interrupt identification)   write: FCR (FIFO control)
  +3  LCR (line control)          +4  MCR (modem control)
  +5  LSR (line status)           +6  MSR (modem status)          +7  SCR (scratch)

Host side: ``feed(bytes)`` queues input (the guest reads it from RBR, LSR.DR
says whether any is waiting); every byte the guest writes to THR goes to the
``on_output(bytes)`` sink at once, so THR and the shift register are always
empty again when the guest next looks (LSR.THRE and LSR.TEMT read 1).  The
input queue is unbounded on the host side and drained one byte per RBR read,
so input is never overrun (bhyve's uart_emul likewise only reads the backend
while the FIFO has room).

Interrupts (IER bit 0 = received data available, bit 1 = THR empty; bits 2/3,
line and modem status, are stored but never fire because no line errors or
modem-line changes happen here).  The source reported by IIR, in the 16550's
priority order:

  * IIR 0x4 received data available -- while input is queued and IER bit 0
    is set (with FIFOs on, 0xC "character timeout" is reported instead while
    fewer bytes than the FCR trigger level are queued: a real 16550 would
    report the timeout after four character times, here it is immediate
    because nothing else can happen in between in virtual time);
  * IIR 0x2 THR empty -- latched when IER bit 1 goes 0->1 or when a THR
    write completes, with IER bit 1 set; cleared by reading IIR while it is
    the reported source, or by writing THR (16550 data sheet, "THRE
    interrupt").
  * otherwise IIR bit 0 = 1, no interrupt pending.

IIR bits 7:6 read 11 when the FIFOs are enabled (FCR bit 0).  ``irq_pending()``
says whether the INTR line is asserted, and ``on_irq(level)`` (if given) is
called whenever that changes.  OUT2 (MCR bit 3) does not gate the line, as in
QEMU's and bhyve's models; there is no interrupt controller routing here, the
vmm decides what the line does.

Loopback (MCR bit 4): THR bytes go to the receive queue instead of the sink,
and MSR reflects MCR (CTS=RTS, DSR=DTR, RI=OUT1, DCD=OUT2).  Outside loopback
MSR reads CTS|DSR|DCD asserted (0xB0), a cable with the other end ready.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from nitdbg.vmm.devices.iobus import IoBusError, checked_state

COM1_BASE = 0x3F8
COM1_PORTS = 8

# Register offsets.
REG_DATA = 0  # RBR / THR / DLL
REG_IER = 1  # IER / DLM
REG_IIR = 2  # IIR (read) / FCR (write)
REG_LCR = 3
REG_MCR = 4
REG_LSR = 5
REG_MSR = 6
REG_SCR = 7

IER_ERBFI = 0x01  # received data available
IER_ETBEI = 0x02  # transmitter holding register empty
IER_ELSI = 0x04  # receiver line status
IER_EDSSI = 0x08  # modem status
IER_MASK = 0x0F

IIR_NOPEND = 0x01
IIR_THRE = 0x02
IIR_RDA = 0x04
IIR_TIMEOUT = 0x0C
IIR_FIFO_ON = 0xC0

FCR_ENABLE = 0x01
FCR_RX_RESET = 0x02
FCR_TX_RESET = 0x04
FCR_TRIGGER_SHIFT = 6
FIFO_TRIGGER = (1, 4, 8, 14)

LCR_DLAB = 0x80

MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOP = 0x10
MCR_MASK = 0x1F

LSR_DR = 0x01
LSR_THRE = 0x20
LSR_TEMT = 0x40

MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80

# QEMU's reset divisor: 0x0C = 9600 baud from the 1.8432 MHz clock.
RESET_DIVISOR = 0x0C


class Uart16550:
    """A 16550 on eight consecutive ports; register it with ``bus.register(u, u.base, 8)``."""

    def __init__(
        self,
        name: str = "com1",
        base: int = COM1_BASE,
        on_output: Callable[[bytes], None] | None = None,
        on_irq: Callable[[bool], None] | None = None,
    ) -> None:
        self.name = name
        self.base = base
        self.on_output = on_output
        self.on_irq = on_irq
        self.output_count = 0  # bytes sent to the sink (or looped back)
        self._rx: deque[int] = deque()
        self.reset()

    def reset(self) -> None:
        self._rx.clear()
        self.ier = 0
        self.lcr = 0
        self.mcr = 0
        self.scr = 0
        self.fcr = 0  # FIFO enable + trigger bits as last written (reset bits self-clear)
        self.dll = RESET_DIVISOR & 0xFF
        self.dlm = RESET_DIVISOR >> 8
        self.thre_pending = False
        self._irq_level = False

    # -- host side ------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Queue input bytes as if typed at the other end of the line."""
        if not isinstance(data, bytes | bytearray):
            raise TypeError("uart input must be bytes")
        self._rx.extend(data)
        self._update_irq()

    @property
    def rx_pending(self) -> int:
        """Input bytes queued and not yet read by the guest."""
        return len(self._rx)

    def irq_pending(self) -> bool:
        """True while the UART's INTR line is asserted."""
        return self._interrupt_id() != IIR_NOPEND

    @property
    def divisor(self) -> int:
        return (self.dlm << 8) | self.dll

    # -- bus side -------------------------------------------------------------

    def io_read(self, port: int, size: int, vcpu: int) -> int:
        value = 0
        for i in range(size):  # a wide IN reads consecutive byte registers
            value |= self._read_reg((port + i - self.base) & 7) << (8 * i)
        return value

    def io_write(self, port: int, size: int, value: int, vcpu: int) -> None:
        for i in range(size):
            self._write_reg((port + i - self.base) & 7, (value >> (8 * i)) & 0xFF)

    def _read_reg(self, reg: int) -> int:
        dlab = bool(self.lcr & LCR_DLAB)
        if reg == REG_DATA:
            if dlab:
                return self.dll
            value = self._rx.popleft() if self._rx else 0
            self._update_irq()
            return value
        if reg == REG_IER:
            return self.dlm if dlab else self.ier
        if reg == REG_IIR:
            iid = self._interrupt_id()
            if iid == IIR_THRE:
                # Reading IIR while THRE is the source clears it (16550 data sheet).
                self.thre_pending = False
                self._update_irq()
            return iid | (IIR_FIFO_ON if self.fcr & FCR_ENABLE else 0)
        if reg == REG_LCR:
            return self.lcr
        if reg == REG_MCR:
            return self.mcr
        if reg == REG_LSR:
            return (LSR_DR if self._rx else 0) | LSR_THRE | LSR_TEMT
        if reg == REG_MSR:
            return self._msr()
        return self.scr

    def _write_reg(self, reg: int, value: int) -> None:
        dlab = bool(self.lcr & LCR_DLAB)
        if reg == REG_DATA:
            if dlab:
                self.dll = value
                return
            self._transmit(value)
        elif reg == REG_IER:
            if dlab:
                self.dlm = value
                return
            newly_thre = (value & IER_ETBEI) and not (self.ier & IER_ETBEI)
            self.ier = value & IER_MASK
            if newly_thre:
                # Enabling the THRE interrupt with THR empty raises it at once.
                self.thre_pending = True
        elif reg == REG_IIR:
            self._write_fcr(value)
        elif reg == REG_LCR:
            self.lcr = value
        elif reg == REG_MCR:
            self.mcr = value & MCR_MASK
        elif reg == REG_SCR:
            self.scr = value
        # LSR and MSR writes are ignored (factory test registers on a real part).
        self._update_irq()

    def _write_fcr(self, value: int) -> None:
        if (value ^ self.fcr) & FCR_ENABLE:
            self._rx.clear()  # changing the FIFO mode clears both FIFOs
        if value & FCR_RX_RESET:
            self._rx.clear()
        # TX reset: nothing to drop, transmission is instantaneous.
        self.fcr = value & (FCR_ENABLE | 0xC0)

    def _transmit(self, byte: int) -> None:
        self.thre_pending = False
        self.output_count += 1
        if self.mcr & MCR_LOOP:
            self._rx.append(byte)
        elif self.on_output is not None:
            self.on_output(bytes([byte]))
        # The byte left THR at once: THR is empty again.
        if self.ier & IER_ETBEI:
            self.thre_pending = True

    def _msr(self) -> int:
        if not self.mcr & MCR_LOOP:
            return MSR_CTS | MSR_DSR | MSR_DCD
        msr = 0
        if self.mcr & MCR_RTS:
            msr |= MSR_CTS
        if self.mcr & MCR_DTR:
            msr |= MSR_DSR
        if self.mcr & MCR_OUT1:
            msr |= MSR_RI
        if self.mcr & MCR_OUT2:
            msr |= MSR_DCD
        return msr

    def _interrupt_id(self) -> int:
        if self.ier & IER_ERBFI and self._rx:
            if self.fcr & FCR_ENABLE:
                trigger = FIFO_TRIGGER[self.fcr >> FCR_TRIGGER_SHIFT]
                if len(self._rx) < trigger:
                    return IIR_TIMEOUT
            return IIR_RDA
        if self.ier & IER_ETBEI and self.thre_pending:
            return IIR_THRE
        return IIR_NOPEND

    def _update_irq(self) -> None:
        level = self.irq_pending()
        if level != self._irq_level:
            self._irq_level = level
            if self.on_irq is not None:
                self.on_irq(level)

    # -- checkpoints ----------------------------------------------------------

    _STATE_SPEC: dict[str, type] = {
        "rx": list, "ier": int, "lcr": int, "mcr": int, "scr": int, "fcr": int,
        "dll": int, "dlm": int, "thre_pending": bool, "output_count": int,
    }

    def state(self) -> dict[str, Any]:
        return {
            "rx": list(self._rx), "ier": self.ier, "lcr": self.lcr, "mcr": self.mcr,
            "scr": self.scr, "fcr": self.fcr, "dll": self.dll, "dlm": self.dlm,
            "thre_pending": self.thre_pending, "output_count": self.output_count,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        st = checked_state(state, self._STATE_SPEC, self.name)
        try:
            rx = bytes(st["rx"])
        except (TypeError, ValueError):
            raise IoBusError(f"{self.name}: state 'rx' must be a list of bytes") from None
        self._rx = deque(rx)
        self.ier = st["ier"] & IER_MASK
        self.lcr = st["lcr"] & 0xFF
        self.mcr = st["mcr"] & MCR_MASK
        self.scr = st["scr"] & 0xFF
        self.fcr = st["fcr"] & (FCR_ENABLE | 0xC0)
        self.dll = st["dll"] & 0xFF
        self.dlm = st["dlm"] & 0xFF
        self.thre_pending = st["thre_pending"]
        self.output_count = st["output_count"]
        # The line level follows from the registers.  It is not reported through
        # on_irq: whoever listens restores its own side from the same checkpoint.
        self._irq_level = self.irq_pending()
