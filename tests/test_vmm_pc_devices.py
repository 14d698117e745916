"""The PC platform devices as bhyve models them: I/O APIC (82093AA), MC146818 RTC, 8254 PIT,
8259A pair; their wiring to the vLAPICs (ExtINT, level EOI, NMI-mode pins) and INIT/SIPI."""

from __future__ import annotations

import copy

import pytest

from nitdbg.vmm.devices.ioapic import (
    IOAPIC_VERSION,
    IOWIN,
    RTE_MASKED,
    RTE_REM_IRR,
    IoApic,
    IoApicMessage,
)
from nitdbg.vmm.devices.pic import AtPic
from nitdbg.vmm.devices.pit import PIT_HZ, AtPit, ticks_to_ns
from nitdbg.vmm.devices.rtc import Rtc, periodic_hz
from nitdbg.vmm.vm import Vm

LEVEL, ACTIVE_LOW, DM_NMI = 1 << 15, 1 << 13, 4 << 8


def ioapic() -> tuple[IoApic, list[IoApicMessage]]:
    sent: list[IoApicMessage] = []
    return IoApic(deliver=sent.append), sent


def rte_write(io: IoApic, pin: int, low: int, high: int = 0) -> None:
    io.write_reg(0x11 + 2 * pin, high)
    io.write_reg(0x10 + 2 * pin, low)


# -- I/O APIC ----------------------------------------------------------------------------

def test_ioapic_version_register_is_bhyves_0x11_with_32_pins_and_ids_read_back() -> None:
    io, _ = ioapic()
    assert io.read_reg(1) == IOAPIC_VERSION == 0x001F0011
    io.write_reg(0, 0x0500_0000)
    assert io.read_reg(0) == 0x0500_0000
    assert io.read_reg(2) == 0x0500_0000          # arbitration ID reads the ID (bhyve)
    io.write_reg(1, 0)
    assert io.read_reg(1) == IOAPIC_VERSION       # read-only


def test_ioapic_ioregsel_iowin_only_aligned_32bit_accesses_count() -> None:
    io, _ = ioapic()
    io.mmio_write(0, 4, 0x10)
    io.mmio_write(IOWIN, 4, 0x31)
    assert io.mmio_read(IOWIN, 4) == 0x31 and io.mmio_read(0, 4) == 0x10
    io.mmio_write(IOWIN, 1, 0xFF)                 # dropped
    assert io.rte[0] == 0x31
    assert io.mmio_read(IOWIN, 2) == 0
    assert io.counters["bad_access"] == 2


def test_ioapic_every_rte_resets_masked_and_remote_irr_and_delivery_status_are_read_only() -> None:
    io, _ = ioapic()
    assert all(r == RTE_MASKED for r in io.rte)
    rte_write(io, 3, 0xFFFF_FFFF, 0xFFFF_FFFF)
    assert io.rte[3] & RTE_REM_IRR == 0 and io.rte[3] & (1 << 12) == 0
    assert io.read_reg(0x11 + 6) == 0xFF00_0000   # destination is bits 63:56 only


def test_ioapic_edge_pin_sends_on_each_rising_edge_and_an_edge_while_masked_is_lost() -> None:
    io, sent = ioapic()
    io.set_irq(4, True)                           # masked: lost
    io.set_irq(4, False)
    rte_write(io, 4, 0x41, 0x0100_0000)
    assert sent == []                             # unmasking does not replay an edge
    io.set_irq(4, True)
    io.set_irq(4, True)                           # still high: no new edge
    io.set_irq(4, False)
    io.pulse_irq(4)
    assert [(m.pin, m.vector, m.dest, m.level) for m in sent] == [(4, 0x41, 1, False)] * 2
    assert io.counters["edge_masked"] == 1


def test_ioapic_level_pin_sets_remote_irr_until_eoi_and_resends_if_still_asserted() -> None:
    io, sent = ioapic()
    rte_write(io, 9, LEVEL | 0x59)
    io.set_irq(9, True)
    io.set_irq(9, True)
    assert len(sent) == 1 and sent[0].level and io.rte[9] & RTE_REM_IRR
    io.eoi(0x59)                                  # still asserted: sent again
    assert len(sent) == 2 and io.rte[9] & RTE_REM_IRR
    io.set_irq(9, False)
    io.eoi(0x59)
    assert len(sent) == 2 and not io.rte[9] & RTE_REM_IRR
    io.eoi(0x59)                                  # a stray EOI changes nothing
    assert len(sent) == 2


def test_ioapic_unmasking_an_asserted_level_pin_sends_it() -> None:
    io, sent = ioapic()
    rte_write(io, 5, LEVEL | RTE_MASKED | 0x60)
    io.set_irq(5, True)
    assert sent == []
    rte_write(io, 5, LEVEL | 0x60)
    assert len(sent) == 1


def test_ioapic_active_low_polarity_inverts_the_isa_line() -> None:
    io, sent = ioapic()
    rte_write(io, 6, ACTIVE_LOW | 0x66)
    io.set_irq(6, True)                           # electrically high = inactive
    assert sent == []
    io.set_irq(6, False)                          # falling line = rising active edge
    assert len(sent) == 1


def test_ioapic_nmi_init_extint_are_edge_only_and_set_no_remote_irr() -> None:
    io, sent = ioapic()
    rte_write(io, 8, LEVEL | DM_NMI)
    io.set_irq(8, True)
    assert len(sent) == 1 and not sent[0].level and not io.rte[8] & RTE_REM_IRR


# -- RTC ------------------------------------------------------------------------------------

def test_rtc_periodic_rate_table_of_register_a_and_the_divider_requirement() -> None:
    assert [periodic_hz(0x20 | rs) for rs in (0, 1, 2, 3, 6, 15)] == [0, 256, 128, 8192,
                                                                      1024, 2]
    assert periodic_hz(0x06) == 0                 # divider not 32.768 kHz: stopped (bhyve)


def rtc(now: list[int]) -> tuple[Rtc, list[bool]]:
    lines: list[bool] = []
    r = Rtc(on_irq8=lines.append, now=lambda: now[0])
    return r, lines


def rtc_set(r: Rtc, reg: int, v: int) -> None:
    r.io_write(0x70, 1, reg, 0)
    r.io_write(0x71, 1, v, 0)


def rtc_get(r: Rtc, reg: int) -> int:
    r.io_write(0x70, 1, reg, 0)
    return r.io_read(0x71, 1, 0)


def test_rtc_periodic_interrupt_needs_pie_and_register_c_read_clears_it() -> None:
    now = [0]
    r, lines = rtc(now)
    rtc_set(r, 0x0A, 0x26)                        # 1024 Hz
    assert r.next_deadline() is None              # PIE off: no interrupt to schedule
    now[0] = 2_000_000
    assert rtc_get(r, 0x0C) == 0x40               # PF set without PIE, IRQF not
    assert lines == []
    rtc_set(r, 0x0B, 0x42)                        # PIE, 24h
    d = r.next_deadline()
    assert d is not None
    now[0] = d
    assert r.fire(now[0]) and lines == [True]
    assert rtc_get(r, 0x0C) == 0xC0               # IRQF | PF, and the read clears it
    assert lines == [True, False] and rtc_get(r, 0x0C) == 0


def test_rtc_without_reading_register_c_only_one_interrupt_arrives() -> None:
    now = [0]
    r, lines = rtc(now)
    rtc_set(r, 0x0A, 0x26)
    rtc_set(r, 0x0B, 0x42)
    for _ in range(5):
        now[0] = r.next_deadline()
        r.fire(now[0])
    assert lines == [True]


def test_rtc_port_0x70_bit7_is_the_nmi_disable_bit_not_part_of_the_index() -> None:
    r, _ = rtc([0])
    r.io_write(0x70, 1, 0x80 | 0x0D, 0)
    assert r.nmi_disable and r.index == 0x0D
    assert r.io_read(0x71, 1, 0) == 0x80          # register D: VRT


def test_rtc_time_registers_count_virtual_time_in_bcd() -> None:
    now = [0]
    r, _ = rtc(now)
    now[0] = (3600 + 62) * 1_000_000_000
    assert (rtc_get(r, 4), rtc_get(r, 2), rtc_get(r, 0)) == (0x01, 0x01, 0x02)
    assert (rtc_get(r, 9), rtc_get(r, 8), rtc_get(r, 7)) == (0x00, 0x01, 0x01)


# -- 8259A -----------------------------------------------------------------------------------

def pic() -> tuple[AtPic, list[bool]]:
    ints: list[bool] = []
    p = AtPic(on_intr=ints.append)
    for port, v in ((0x20, 0x11), (0xA0, 0x11), (0x21, 0x20), (0xA1, 0x28), (0x21, 4),
                    (0xA1, 2), (0x21, 1), (0xA1, 1)):
        p.io_write(port, 1, v, 0)
    return p, ints


def test_pic_icw1_to_icw4_set_the_vector_base_and_clear_the_imr() -> None:
    p, ints = pic()
    assert p.master.vector_base == 0x20 and p.slave.vector_base == 0x28
    assert p.io_read(0x21, 1, 0) == 0 and ints == []
    p.io_write(0x21, 1, 0xFB, 0)                  # OCW1
    assert p.io_read(0x21, 1, 0) == 0xFB


def test_pic_fully_nested_an_in_service_irq_blocks_lower_priority_ones() -> None:
    p, ints = pic()
    p.pulse_irq(3)
    assert ints == [True] and p.intack() == 0x23
    p.pulse_irq(5)                                # lower priority than IR3 in service
    assert p.pending_vector() is None
    p.pulse_irq(1)                                # higher priority: interrupts IR3
    assert p.intack() == 0x21
    p.io_write(0x20, 1, 0x20, 0)                  # non-specific EOI: IR1
    assert p.master.isr == 1 << 3
    p.io_write(0x20, 1, 0x63, 0)                  # specific EOI of IR3
    assert p.master.isr == 0 and p.intack() == 0x25


def test_pic_ocw3_selects_irr_or_isr_for_reads_of_the_command_port() -> None:
    p, _ = pic()
    p.io_write(0x21, 1, 0xFF, 0)
    p.pulse_irq(4)
    p.io_write(0x20, 1, 0x0A, 0)
    assert p.io_read(0x20, 1, 0) == 1 << 4        # IRR, though masked
    p.io_write(0x20, 1, 0x0B, 0)
    assert p.io_read(0x20, 1, 0) == 0


def test_pic_intack_with_nothing_pending_gives_ir7_without_setting_isr() -> None:
    p, _ = pic()
    assert p.intack() == 0x27 and p.master.isr == 0 and p.counters["spurious"] == 1


def test_pic_slave_interrupts_cascade_through_master_ir2() -> None:
    p, ints = pic()
    p.set_irq(8, True)
    assert ints == [True] and p.pending_vector() == 0x28
    assert p.intack() == 0x28
    assert p.master.isr == 1 << 2 and p.slave.isr == 1


def test_pic_level_mode_irr_follows_the_line_and_survives_intack() -> None:
    p, _ = pic()
    p.io_write(0x4D0, 1, 0x20, 0)                 # ELCR: IRQ 5 level
    p.set_irq(5, True)
    assert p.intack() == 0x25 and p.master.irr & 1 << 5
    p.set_irq(5, False)
    assert not p.master.irr & 1 << 5


def test_pic_auto_eoi_leaves_isr_clear() -> None:
    p, _ = pic()
    p.io_write(0x20, 1, 0x11, 0)
    p.io_write(0x21, 1, 0x20, 0)
    p.io_write(0x21, 1, 0x04, 0)
    p.io_write(0x21, 1, 0x03, 0)                  # uPM | AEOI
    p.pulse_irq(0)
    assert p.intack() == 0x20 and p.master.isr == 0


# -- 8254 --------------------------------------------------------------------------------------

def test_pit_mode2_raises_irq0_once_per_period_and_the_latched_count_runs_down() -> None:
    now = [0]
    irqs: list[int] = []
    pit = AtPit(on_irq0=lambda: irqs.append(now[0]), now=lambda: now[0])
    pit.io_write(0x43, 1, 0x34, 0)
    pit.io_write(0x40, 1, 1193 & 0xFF, 0)
    pit.io_write(0x40, 1, 1193 >> 8, 0)
    period = ticks_to_ns(1193)
    assert pit.next_deadline() == period
    now[0] = period // 2
    pit.io_write(0x43, 1, 0x00, 0)                # counter latch command
    now[0] = period - 1
    count = pit.io_read(0x40, 1, 0) | pit.io_read(0x40, 1, 0) << 8
    assert count == 1193 - (period // 2) * PIT_HZ // 1_000_000_000
    for _k in range(1, 4):
        now[0] = pit.next_deadline()
        assert pit.fire(now[0])
    assert len(irqs) == 3 and irqs[2] == ticks_to_ns(1193 * 3)


def test_pit_mode0_interrupts_once_on_terminal_count() -> None:
    now = [0]
    irqs: list[int] = []
    pit = AtPit(on_irq0=lambda: irqs.append(1), now=lambda: now[0])
    pit.io_write(0x43, 1, 0x30, 0)
    pit.io_write(0x40, 1, 100, 0)
    pit.io_write(0x40, 1, 0, 0)
    now[0] = pit.next_deadline()
    assert pit.fire(now[0]) and pit.next_deadline() is None and irqs == [1]


def test_pit_read_back_latches_the_status_byte() -> None:
    pit = AtPit(now=lambda: 0)
    pit.io_write(0x43, 1, 0x34, 0)
    pit.io_write(0x43, 1, 0xE2, 0)                # read-back: status of counter 0
    assert pit.io_read(0x40, 1, 0) == 0x80 | 0x34


# -- wiring in the VM --------------------------------------------------------------------------

def vm(ncpus: int = 1) -> Vm:
    v = Vm(ncpus=ncpus)
    for vl in v.vlapics:
        vl.mmio_write(0xF0, 4, 0x1FF)             # software-enable every LAPIC
    return v


def test_ioapic_nmi_mode_pin_delivers_an_nmi_as_the_hardware_does() -> None:
    v = vm()
    rte_write(v.pc.ioapic, 8, DM_NMI)
    v.pc.ioapic.pulse_irq(8)
    assert v.vcpus[0].nmi_pending


def test_bhyve_delmodes_knob_drops_an_nmi_mode_pin_as_bhyves_vlapic_deliver_intr() -> None:
    v = vm()
    assert v.sysctl.run(["hw.vmm.vioapic.bhyve_delmodes=1"]).status == 0
    rte_write(v.pc.ioapic, 8, DM_NMI)
    v.pc.ioapic.pulse_irq(8)
    assert not v.vcpus[0].nmi_pending
    assert any("vlapic intr invalid delmode 0x400" in e.message for e in v.ktr.iter_entries())


def test_level_triggered_fixed_interrupt_sets_tmr_and_its_eoi_clears_remote_irr() -> None:
    v = vm()
    io, vl = v.pc.ioapic, v.vlapics[0]
    rte_write(io, 10, LEVEL | 0x70)
    io.set_irq(10, True)
    assert vl.irr & 1 << 0x70 and vl.tmr & 1 << 0x70 and io.rte[10] & RTE_REM_IRR
    vl.intr_accepted(0x70)
    io.set_irq(10, False)
    vl.eoi()
    assert not io.rte[10] & RTE_REM_IRR


def test_pit_irq0_reaches_8259_ir0_and_ioapic_pin2() -> None:
    v = vm()
    rte_write(v.pc.ioapic, 2, 0x50)
    v.pc._pit_irq0()
    assert v.vlapics[0].irr & 1 << 0x50
    assert v.pc.pic.master.irr & 1                # 8259 not initialised: no INT though
    assert v.pc.pic.intr is False


def test_extint_through_lint0_takes_the_vector_from_the_8259_not_from_irr() -> None:
    v = vm()
    p, vl = v.pc.pic, v.vlapics[0]
    for port, val in ((0x20, 0x11), (0x21, 0x30), (0x21, 4), (0x21, 1)):
        p.io_write(port, 1, val, 0)
    vl.mmio_write(0x350, 4, 0x700)                # LINT0: ExtINT
    vl.set_tpr(0xF0)                              # ExtINT ignores the task priority
    p.pulse_irq(1)
    assert vl.pending_intr() == 0x31 and vl.irr == 0
    assert vl.intr_accepted(0x31) == 0x31 and p.master.isr == 1 << 1
    assert vl.pending_intr() is None


def test_lint0_masked_keeps_the_8259_away_from_the_cpu() -> None:
    v = vm()
    p = v.pc.pic
    for port, val in ((0x20, 0x11), (0x21, 0x30), (0x21, 4), (0x21, 1)):
        p.io_write(port, 1, val, 0)
    p.pulse_irq(1)
    assert p.intr and v.vlapics[0].pending_intr() is None


def test_platform_devices_survive_a_deep_copy_checkpoint() -> None:
    v = vm()
    rte_write(v.pc.ioapic, 8, 0x48)
    w = copy.deepcopy(v)
    w.pc.ioapic.pulse_irq(8)
    assert w.vlapics[0].irr & 1 << 0x48 and not v.vlapics[0].irr


@pytest.mark.parametrize("dev", ["atpic", "atpit", "rtc"])
def test_device_state_round_trips_and_bad_state_is_refused(dev: str) -> None:
    v = vm()
    d = v.iobus.devices[dev]
    st = d.state()
    d.load_state(st)
    assert d.state() == st
    with pytest.raises(ValueError):
        d.load_state({"nonsense": 1})
    assert d.state() == st


# -- INIT / SIPI --------------------------------------------------------------------------------

def test_init_ipi_puts_the_ap_in_wait_for_sipi_and_sipi_starts_it_in_real_mode_at_vv000() -> None:
    v = vm(2)
    ap = v.vcpus[1]
    v._ipi(0, [1], "init", 0)
    assert ap.wait_sipi and ap.halted and not ap.wake_pending()
    vm_ = ap.vmcb
    assert (vm_.cr0, vm_.rip, vm_.seg("cs").selector, vm_.seg("cs").base) == (
        0x6000_0010, 0xFFF0, 0xF000, 0xFFFF_0000)
    assert ap.cpu.regs[2] == 0x00800F12           # EDX: CPUID family/model/stepping
    v.vlapics[1].set_intr(0x40)                   # an interrupt does not start it
    assert not ap.wake_pending()
    v._ipi(0, [1], "startup", 0x08)
    assert not ap.wait_sipi and not ap.halted
    assert (vm_.seg("cs").selector, vm_.seg("cs").base, vm_.rip) == (0x0800, 0x8000, 0)


def test_a_sipi_to_a_processor_not_waiting_for_sipi_is_ignored() -> None:
    v = vm(2)
    v._ipi(0, [1], "startup", 0x08)
    assert v.vcpus[1].vmcb.seg("cs").base != 0x8000
    assert any("ignored: vcpu 1 is not waiting" in e.message for e in v.ktr.iter_entries())
    v._ipi(0, [1], "init", 0)
    v._ipi(0, [1], "startup", 0x08)
    v._ipi(0, [1], "startup", 0x09)               # the second SIPI of the pair
    assert v.vcpus[1].vmcb.seg("cs").base == 0x8000


def test_an_nmi_to_a_vcpu_waiting_for_sipi_stays_pending_and_does_not_wake_it() -> None:
    v = vm(2)
    v._ipi(0, [1], "init", 0)
    v.vcpus[1].inject_nmi()
    assert v.vcpus[1].halted and v.vcpus[1].nmi_pending and not v.vcpus[1].wake_pending()


def test_device_counters_are_read_only_sysctls_of_the_vm() -> None:
    v = vm()
    rte_write(v.pc.ioapic, 8, 0x48)
    v.pc.ioapic.pulse_irq(8)
    assert v.sysctl.value("hw.vmm.vioapic.sent") == 1
    assert v.sysctl.run(["hw.vmm.vioapic.sent=5"]).status != 0
    w = copy.deepcopy(v)
    w.pc.ioapic.pulse_irq(8)
    assert (v.sysctl.value("hw.vmm.vioapic.sent"), w.sysctl.value("hw.vmm.vioapic.sent")) == (1, 2)


# -- RTC update cycle (MC146818A datasheet: UIP, UF, UIE) ------------------------------------

def test_rtc_update_ended_flag_is_set_once_a_second_without_uie_and_raises_no_irq8() -> None:
    # Datasheet register C: UF is set at the end of every update cycle; IRQF only with UIE.
    now = [0]
    r, lines = rtc(now)
    assert r.next_deadline() is None              # UIE off: nothing to schedule
    now[0] = 999_999_999
    assert rtc_get(r, 0x0C) == 0                  # the first cycle ends at 1 s
    now[0] = 1_000_000_000
    assert rtc_get(r, 0x0C) == 0x10 and lines == []
    assert rtc_get(r, 0x0C) == 0                  # read-to-clear
    now[0] = 3_500_000_000                        # two more cycles: one UF (a flag)
    assert rtc_get(r, 0x0C) == 0x10 and r.counters["update"] == 3


def test_rtc_uie_raises_irq8_at_the_end_of_each_update_cycle() -> None:
    # Datasheet register B UIE: IRQF = UF & UIE; IRQ 8 goes low when C is read.
    now = [200_000_000]
    r, lines = rtc(now)
    rtc_set(r, 0x0B, 0x12)                        # UIE, 24h
    assert r.next_deadline() == 1_000_000_000
    for k in (1, 2, 3):
        now[0] = r.next_deadline()
        assert now[0] == k * 1_000_000_000
        assert r.fire(now[0])
        assert rtc_get(r, 0x0C) == 0x90           # IRQF | UF
        assert rtc_get(r, 0x00) == k              # the time registers show the new second
    assert lines == [True, False] * 3


def test_rtc_enabling_uie_with_uf_already_set_raises_irq8_at_once() -> None:
    now = [1_500_000_000]
    r, lines = rtc(now)
    rtc_set(r, 0x0B, 0x12)
    assert lines == [True] and rtc_get(r, 0x0C) == 0x90


def test_rtc_uip_is_set_from_244us_before_the_update_cycle_until_it_ends() -> None:
    # Datasheet register A UIP: high tBUC (244 us) before the cycle and during it (tUC =
    # 1984 us at 32.768 kHz); low at least 244 us before a cycle begins.
    now = [0]
    r, _ = rtc(now)
    for t, uip in ((1_000_000_000 - 2_228_001, 0), (1_000_000_000 - 2_228_000, 0x80),
                   (1_000_000_000 - 1, 0x80), (1_000_000_000, 0)):
        now[0] = t
        assert rtc_get(r, 0x0A) & 0x80 == uip, t


def test_rtc_set_bit_stops_the_update_cycle_clears_uie_and_uip() -> None:
    # Datasheet register B SET: updates stop, UIE is cleared; no UF while SET=1, and none
    # for the seconds that passed when the cycle resumes.
    now = [0]
    r, lines = rtc(now)
    rtc_set(r, 0x0B, 0x92)                        # SET | UIE | 24h
    assert rtc_get(r, 0x0B) == 0x82 and r.next_deadline() is None
    now[0] = 2_999_999_000
    assert rtc_get(r, 0x0A) & 0x80 == 0
    assert rtc_get(r, 0x0C) == 0
    rtc_set(r, 0x0B, 0x12)                        # run again, UIE
    assert rtc_get(r, 0x0C) == 0 and lines == []
    assert r.next_deadline() == 3_000_000_000


def test_rtc_divider_other_than_32khz_stops_the_update_cycle() -> None:
    now = [0]
    r, _ = rtc(now)
    rtc_set(r, 0x0A, 0x60)                        # DV = 110: divider reset
    now[0] = 5_000_000_000
    assert rtc_get(r, 0x0C) == 0 and r.counters.get("update", 0) == 0


def test_rtc_state_saved_before_the_update_cycle_was_modelled_still_loads() -> None:
    now = [0]
    r, _ = rtc(now)
    assert "updates_seen" not in r.state()        # no guest has looked: the old shape
    now[0] = 2_500_000_000
    rtc_get(r, 0x0C)
    st = r.state()
    assert st["updates_seen"] == 2
    r.load_state(st)
    assert r.state() == st
    del st["updates_seen"], st["next_uf"]
    r.load_state(st)
    assert r.updates_seen == 0 and r.next_uf is None
