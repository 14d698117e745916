"""The PC platform around the vCPUs, wired as bhyve wires it (vmm.c, vatpic.c, vatpit.c,
vrtc.c, vioapic.c):

- 8254 PIT channel 0 -> ISA IRQ 0 -> 8259 master IR0 and I/O APIC pin 2;
- MC146818 RTC IRQF -> ISA IRQ 8 -> 8259 slave IR0 and I/O APIC pin 8;
- COM1's INTR -> ISA IRQ 4 -> I/O APIC pin 4 (bhyve's LPC uart; the 8259 side is not
  wired here: no guest programs the 8259 for it);
- the 8259 master's INT -> every local APIC's LINT0 (ExtINT in virtual-wire mode) and
  I/O APIC pin 0;
- I/O APIC messages -> the local APICs: fixed and lowest priority into IRR (with the
  trigger mode; level EOIs come back), NMI as an NMI, INIT as INIT, ExtINT as an ExtINT
  that the CPU acknowledges at the 8259.

The knob ``hw.vmm.vioapic.bhyve_delmodes`` (default 0, the hardware) makes delivery
behave as bhyve's vlapic_deliver_intr, which accepts only fixed, lowest priority and
ExtINT and drops the rest with "vlapic intr invalid delmode": an NMI-mode I/O APIC pin
then never reaches the guest, so the difference from the hardware can be shown.

The platform clock is vCPU 0's virtual clock: the PIT and RTC deadlines are vCPU 0's
timer deadlines and their registers read that clock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import initsipi
from .devices.ioapic import (
    DM_EXTINT,
    DM_FIXED,
    DM_INIT,
    DM_LOWEST,
    DM_NMI,
    IOAPIC_BASE,
    IOAPIC_SIZE,
    IoApic,
    IoApicMessage,
)
from .devices.pic import ELCR_PORT, MASTER_PORT, SLAVE_PORT, AtPic
from .devices.pit import PIT_PORT, AtPit
from .devices.rtc import RTC_PORT, Rtc
from .sysctl import bind_int
from .vlapic import LVT_PIN_LINT0

if TYPE_CHECKING:
    from .vm import Vm

PIT_IOAPIC_PIN = 2
RTC_IRQ = 8
COM1_IRQ = 4


class CounterGetter:
    """dev.counters[key] as a sysctl getter (an object, so a checkpoint copies it along)."""

    def __init__(self, dev: object, key: str) -> None:
        self.dev, self.key = dev, key

    def __call__(self) -> int:
        return self.dev.counters[self.key]


class _IoApicPage:
    """The I/O APIC page as the guest reaches it: each write may stop the vCPU for the
    injection bhyve would do after emulating the access (Vm.stop_if_kicked)."""

    def __init__(self, ioapic: IoApic, vm: Vm):
        self.ioapic, self.vm = ioapic, vm

    def mmio_read(self, offset: int, size: int) -> int:
        return self.ioapic.mmio_read(offset, size)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        self.ioapic.mmio_write(offset, size, value)
        self.vm.stop_if_kicked()


class PcPlatform:
    def __init__(self, vm: Vm):
        self.vm = vm
        self.bhyve_delmodes = 0
        self.pic = AtPic(on_intr=self._pic_intr, trace=self._trace)
        self.pit = AtPit(on_irq0=self._pit_irq0, trace=self._trace, now=self._now)
        self.rtc = Rtc(on_irq8=self._rtc_irq8, trace=self._trace, now=self._now)
        self.ioapic = IoApic(deliver=self._deliver, trace=self._trace)
        bus = vm.iobus
        bus.register(self.pic, MASTER_PORT, 2)
        bus.register(self.pic, SLAVE_PORT, 2)
        bus.register(self.pic, ELCR_PORT, 2)
        bus.register(self.pit, PIT_PORT, 4)
        bus.register(self.rtc, RTC_PORT, 2)
        vm.mem.map_mmio(IOAPIC_BASE, IOAPIC_SIZE, _IoApicPage(self.ioapic, vm))
        vm.com1.on_irq = self._com1_irq
        vm.npt.map(IOAPIC_BASE, IOAPIC_BASE, IOAPIC_SIZE)
        for vl in vm.vlapics:
            vl.on_eoi = self.ioapic.eoi
            vl.extint = self.pic
        vm.sysctl.add_node("hw.vmm.vioapic", "bhyve virtual I/O APIC")
        bind_int(vm.sysctl, "hw.vmm.vioapic.bhyve_delmodes", self, "bhyve_delmodes",
                 validator=lambda v: v in (0, 1),
                 descr="1: deliver I/O APIC messages as bhyve's vlapic does (NMI and INIT "
                       "dropped); 0: as the hardware")
        # Each device's counters, read-only (sysctl hw.vmm.vioapic.sent, ...).
        for node, dev in (("vioapic", self.ioapic), ("vatpic", self.pic),
                          ("vatpit", self.pit), ("vrtc", self.rtc)):
            if f"hw.vmm.{node}" not in vm.sysctl:
                vm.sysctl.add_node(f"hw.vmm.{node}", f"bhyve {node}")
            for key in dev.counters:
                vm.sysctl.add_int(f"hw.vmm.{node}.{key}", access="ro",
                                  getter=CounterGetter(dev, key),
                                  descr=f"{dev.name} {key.replace('_', ' ')}")

    # -- clock -----------------------------------------------------------------------
    def _now(self) -> int:
        return self.vm.vcpus[0].now()

    def _trace(self, fmt: str, *args: object) -> None:
        vm = self.vm
        vm.ktr.logf(vm.current_vcpu, self._now(), "vm %s: " + fmt, vm.name, *args)

    def next_deadline(self) -> int | None:
        """The earlier of the PIT's and the RTC's next deadlines (None: neither has one)."""
        pit, rtc = self.pit.next_deadline(), self.rtc.next_deadline()
        if pit is None or rtc is None:
            return rtc if pit is None else pit
        return pit if pit <= rtc else rtc

    def fire(self, now: int) -> None:
        self.pit.fire(now)
        self.rtc.fire(now)

    # -- interrupt lines -------------------------------------------------------------------
    def _pit_irq0(self) -> None:
        self.pic.pulse_irq(0)
        self.ioapic.pulse_irq(PIT_IOAPIC_PIN)

    def _rtc_irq8(self, high: bool) -> None:
        self.pic.set_irq(RTC_IRQ, high)
        self.ioapic.set_irq(RTC_IRQ, high)

    def _com1_irq(self, high: bool) -> None:
        self.ioapic.set_irq(COM1_IRQ, high)

    def _pic_intr(self, high: bool) -> None:
        self.ioapic.set_irq(0, high)
        if high:
            for vl in self.vm.vlapics:
                vl.trigger_lvt(LVT_PIN_LINT0)
                self._wake(vl.vcpu_id)

    # -- I/O APIC messages -----------------------------------------------------------------
    def _deliver(self, msg: IoApicMessage) -> None:
        vm = self.vm
        dm = msg.delmode
        if self.bhyve_delmodes and dm not in (DM_FIXED, DM_LOWEST, DM_EXTINT):
            self._trace("vlapic intr invalid delmode %#x", dm << 8)
            return
        dests = [vl.vcpu_id for vl in vm.vlapics if vl.matches(msg.dest, msg.logical)]
        if dm == DM_LOWEST and dests:
            dests = dests[:1]     # no arbitration: the lowest-numbered target, as bhyve
        for d in dests:
            vl = vm.vlapics[d]
            if dm in (DM_FIXED, DM_LOWEST):
                vl.set_intr(msg.vector, level=msg.level)
            elif dm == DM_NMI:
                vm.vcpus[d].inject_nmi()
            elif dm == DM_INIT:
                initsipi.enter_wait_for_sipi(vm, vm.vcpus[d])
            elif dm == DM_EXTINT:
                vl.set_extint()
            else:
                self._trace("ioapic: delivery mode %#x not modelled, dropped", dm << 8)
                continue
            self._wake(d)

    def _wake(self, vcpu: int) -> None:
        v = self.vm.vcpus[vcpu]
        if v.halted and v.wake_pending():
            t = self._now()
            if v.now() < t:
                v.cpu.advance_time(t - v.now())   # wakes no earlier than the interrupt
            v.halted = False
            self.vm.resched = True
        v.kick()
