"""The vmm's emulated I/O devices: port bus, COM1 16550, debugcon, debug-exit, port 0x61."""

from __future__ import annotations

import json

import pytest

from nitdbg.vmm.devices import (
    COM1_BASE,
    COM1_PORTS,
    DEBUGCON_PORT,
    DEBUGEXIT_PORT,
    DEBUGEXIT_PORTS,
    NMI_SC_PORT,
    DebugCon,
    DebugExit,
    IoBus,
    IoBusError,
    NmiStatusPort,
    Uart16550,
)

THR = RBR = DLL = COM1_BASE
IER = DLM = COM1_BASE + 1
IIR = FCR = COM1_BASE + 2
LCR = COM1_BASE + 3
MCR = COM1_BASE + 4
LSR = COM1_BASE + 5
MSR = COM1_BASE + 6
SCR = COM1_BASE + 7


class Platform:
    """The devices the firmware expects, on one bus."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.dbg = bytearray()
        self.irq_changes: list[bool] = []
        self.nmi_reads: list[int] = []
        self.bus = IoBus()
        self.uart = Uart16550(on_output=self.out.extend, on_irq=self.irq_changes.append)
        self.debugcon = DebugCon(on_output=self.dbg.extend)
        self.debugexit = DebugExit()
        self.nmisc = NmiStatusPort(on_read=self.nmi_reads.append)
        self.bus.register(self.uart, COM1_BASE, COM1_PORTS)
        self.bus.register(self.debugcon, DEBUGCON_PORT)
        self.bus.register(self.debugexit, DEBUGEXIT_PORT, DEBUGEXIT_PORTS)
        self.bus.register(self.nmisc, NMI_SC_PORT)

    def inb(self, port: int, vcpu: int = 0) -> int:
        return self.bus.read(port, 1, vcpu)

    def outb(self, port: int, value: int) -> None:
        self.bus.write(port, 1, value)


@pytest.fixture
def pf() -> Platform:
    return Platform()


# -- the bus --------------------------------------------------------------------


@pytest.mark.parametrize("size,ones", [(1, 0xFF), (2, 0xFFFF), (4, 0xFFFFFFFF)])
def test_unclaimed_port_reads_all_ones_of_the_access_size(pf: Platform, size: int, ones: int):
    assert pf.bus.read(0x80, size) == ones


def test_write_to_unclaimed_port_is_dropped(pf: Platform):
    before = pf.bus.snapshot()
    pf.bus.write(0x80, 1, 0x42)
    pf.bus.write(0x1234, 4, 0xDEADBEEF)
    assert pf.bus.snapshot() == before


def test_overlapping_registration_is_refused_and_changes_nothing(pf: Platform):
    with pytest.raises(IoBusError, match="already claimed"):
        pf.bus.register(DebugCon(name="other"), COM1_BASE + 3, 2)
    assert pf.bus.owner(COM1_BASE + 3) is pf.uart
    assert pf.bus.owner(COM1_BASE + 4) is pf.uart
    assert "other" not in pf.bus.devices


@pytest.mark.parametrize("port,size", [(0x10000, 1), (-1, 1), (0x80, 3)])   # 0xFFFF+2: splits
def test_bad_port_or_size_raises_a_bus_error(pf: Platform, port: int, size: int):
    with pytest.raises(IoBusError):
        pf.bus.read(port, size)


def test_value_wider_than_the_access_is_refused(pf: Platform):
    with pytest.raises(IoBusError, match="does not fit"):
        pf.bus.write(DEBUGCON_PORT, 1, 0x100)
    assert pf.dbg == b""


def test_access_straddling_a_device_edge_is_split_into_bytes(pf: Platform):
    # 0x60 is unclaimed, 0x61 is port B: a 16-bit IN at 0x60 reads 0xFF then port 0x61.
    value = pf.bus.read(0x60, 2, vcpu=3)
    assert value & 0xFF == 0xFF
    assert (value >> 8) & 0x10 == 0x10  # first read of port 0x61: refresh toggled to 1
    assert pf.nmi_reads == [3]


def test_ranges_lists_every_claim(pf: Platform):
    assert pf.bus.ranges() == [
        (NMI_SC_PORT, 1, "nmisc"),
        (DEBUGCON_PORT, 1, "debugcon"),
        (DEBUGEXIT_PORT, 4, "debugexit"),
        (COM1_BASE, 8, "com1"),
    ]


def test_snapshot_is_json_safe_and_restore_brings_every_device_back(pf: Platform):
    pf.uart.feed(b"ab")
    pf.outb(SCR, 0x5A)
    pf.outb(NMI_SC_PORT, 0x03)
    snap = pf.bus.snapshot()
    assert json.loads(json.dumps(snap)) == snap
    assert pf.inb(RBR) == ord("a")
    pf.outb(SCR, 0)
    pf.outb(NMI_SC_PORT, 0)
    pf.outb(DEBUGEXIT_PORT, 1)
    pf.bus.restore(snap)
    assert pf.inb(SCR) == 0x5A
    assert pf.inb(RBR) == ord("a") and pf.inb(RBR) == ord("b")
    assert pf.inb(NMI_SC_PORT) & 0x0F == 0x03
    assert pf.debugexit.exit_status is None


def test_restore_with_a_missing_device_changes_nothing(pf: Platform):
    snap = pf.bus.snapshot()
    del snap["com1"]
    pf.outb(SCR, 0x11)
    with pytest.raises(IoBusError, match="missing"):
        pf.bus.restore(snap)
    assert pf.inb(SCR) == 0x11


def test_restore_with_a_bad_device_state_changes_nothing(pf: Platform):
    snap = pf.bus.snapshot()
    snap["nmisc"]["control"] = "three"
    pf.outb(SCR, 0x22)
    with pytest.raises(IoBusError, match="control"):
        pf.bus.restore(snap)
    assert pf.inb(SCR) == 0x22


# -- COM1 16550 --------------------------------------------------------------------


def test_uart_reset_lsr_says_transmitter_empty_and_no_data(pf: Platform):
    # LSR bit 5 THRE and bit 6 TEMT set, bit 0 DR clear.
    assert pf.inb(LSR) == 0x60


def test_uart_polled_output_goes_to_the_sink(pf: Platform):
    for ch in b"ok\n":
        assert pf.inb(LSR) & 0x20  # THR empty: the polled driver may write
        pf.outb(THR, ch)
    assert bytes(pf.out) == b"ok\n"
    assert pf.uart.output_count == 3
    assert pf.inb(LSR) & 0x60 == 0x60


def test_uart_polled_input_sets_data_ready_until_drained(pf: Platform):
    pf.uart.feed(b"hi")
    assert pf.inb(LSR) & 0x01
    assert pf.inb(RBR) == ord("h")
    assert pf.inb(LSR) & 0x01
    assert pf.inb(RBR) == ord("i")
    assert not pf.inb(LSR) & 0x01
    assert pf.inb(RBR) == 0  # empty receive buffer


def test_uart_dlab_switches_ports_0_and_1_to_the_divisor_latch(pf: Platform):
    pf.outb(LCR, 0x83)  # DLAB, 8N1
    pf.outb(DLL, 0x01)
    pf.outb(DLM, 0x00)
    assert pf.uart.divisor == 1
    assert pf.inb(DLL) == 0x01 and pf.inb(DLM) == 0x00
    pf.outb(LCR, 0x03)
    assert pf.inb(LCR) == 0x03
    pf.outb(THR, ord("x"))  # with DLAB clear port 0 is THR again
    assert bytes(pf.out) == b"x"
    assert pf.uart.divisor == 1


def test_uart_scratch_register_holds_a_byte(pf: Platform):
    pf.outb(SCR, 0xA5)
    assert pf.inb(SCR) == 0xA5


def test_uart_iir_reads_no_interrupt_with_fifo_bits(pf: Platform):
    assert pf.inb(IIR) == 0x01
    pf.outb(FCR, 0x07)  # enable + clear both FIFOs, trigger level 1
    assert pf.inb(IIR) == 0xC1  # bits 7:6 = FIFOs enabled


def test_uart_rx_interrupt_is_pending_while_data_waits(pf: Platform):
    pf.outb(IER, 0x01)  # received data available
    assert not pf.uart.irq_pending()
    pf.uart.feed(b"z")
    assert pf.uart.irq_pending()
    assert pf.inb(IIR) == 0x04
    assert pf.inb(RBR) == ord("z")
    assert not pf.uart.irq_pending()
    assert pf.inb(IIR) == 0x01
    assert pf.irq_changes == [True, False]


def test_uart_fifo_below_trigger_level_reports_character_timeout(pf: Platform):
    pf.outb(FCR, 0x81)  # FIFO on, trigger level 8
    pf.outb(IER, 0x01)
    pf.uart.feed(b"abc")
    assert pf.inb(IIR) == 0xCC  # timeout id 0xC with FIFO bits
    pf.uart.feed(b"defgh")
    assert pf.inb(IIR) == 0xC4  # 8 queued: data available


def test_uart_thre_interrupt_is_raised_by_enabling_it_and_cleared_by_reading_iir(pf: Platform):
    pf.outb(IER, 0x02)
    assert pf.uart.irq_pending()
    assert pf.inb(IIR) == 0x02
    assert not pf.uart.irq_pending()  # reading IIR while THRE is the source clears it
    assert pf.inb(IIR) == 0x01


def test_uart_thre_interrupt_returns_after_each_transmitted_byte(pf: Platform):
    pf.outb(IER, 0x02)
    pf.inb(IIR)
    pf.outb(THR, ord("a"))
    assert pf.inb(IIR) == 0x02


def test_uart_rx_interrupt_outranks_thre(pf: Platform):
    pf.outb(IER, 0x03)
    pf.uart.feed(b"k")
    assert pf.inb(IIR) == 0x04
    pf.inb(RBR)
    assert pf.inb(IIR) == 0x02


def test_uart_fifo_reset_drops_queued_input(pf: Platform):
    pf.outb(FCR, 0x01)
    pf.uart.feed(b"junk")
    pf.outb(FCR, 0x03)
    assert pf.uart.rx_pending == 0
    assert not pf.inb(LSR) & 0x01


def test_uart_loopback_returns_written_bytes_and_mirrors_modem_lines(pf: Platform):
    pf.outb(MCR, 0x10 | 0x0B)  # loop, DTR, RTS, OUT2
    pf.outb(THR, 0x55)
    assert bytes(pf.out) == b""
    assert pf.inb(LSR) & 0x01
    assert pf.inb(RBR) == 0x55
    assert pf.inb(MSR) == 0x10 | 0x20 | 0x80  # CTS=RTS, DSR=DTR, DCD=OUT2
    pf.outb(MCR, 0x00)
    assert pf.inb(MSR) == 0xB0  # outside loopback: CTS, DSR, DCD asserted


def test_uart_wide_in_reads_consecutive_registers(pf: Platform):
    pf.outb(LCR, 0x03)
    pf.outb(MCR, 0x0B)
    assert pf.bus.read(LCR, 2) == 0x0B03


def test_uart_feed_refuses_text(pf: Platform):
    with pytest.raises(TypeError):
        pf.uart.feed("text")  # type: ignore[arg-type]


# -- debugcon, debug-exit ---------------------------------------------------------


def test_debugcon_write_goes_to_the_sink_and_read_returns_0xe9(pf: Platform):
    for ch in b"E9!":
        pf.outb(DEBUGCON_PORT, ch)
    assert bytes(pf.dbg) == b"E9!"
    assert pf.inb(DEBUGCON_PORT) == 0xE9


def test_debugcon_wide_write_sends_only_the_low_byte(pf: Platform):
    pf.bus.write(DEBUGCON_PORT, 2, 0x4241)  # 0x42 lands on unclaimed port 0xEA
    assert bytes(pf.dbg) == b"A"
    pf.debugcon.io_write(DEBUGCON_PORT, 4, 0x44434241, 0)  # a device-wide access
    assert bytes(pf.dbg) == b"AA"


@pytest.mark.parametrize("size,value,status", [(1, 0, 1), (1, 0x10, 0x21), (2, 0x1234, 0x2469),
                                               (4, 0x31, 0x63)])
def test_debug_exit_status_is_value_shifted_left_or_one(pf: Platform, size, value, status):
    pf.bus.write(DEBUGEXIT_PORT, size, value)
    assert pf.debugexit.exit_status == status


def test_debug_exit_first_request_wins_and_callback_fires_once():
    seen: list[int] = []
    dev = DebugExit(on_exit=seen.append)
    bus = IoBus()
    bus.register(dev, DEBUGEXIT_PORT, DEBUGEXIT_PORTS)
    assert dev.exit_status is None
    bus.write(DEBUGEXIT_PORT, 1, 2)
    bus.write(DEBUGEXIT_PORT, 1, 3)
    assert dev.exit_status == 5
    assert seen == [5]
    assert bus.read(DEBUGEXIT_PORT, 1) == 0


# -- port 0x61 -----------------------------------------------------------------------


def test_port61_read_calls_the_hook_with_the_reading_vcpu(pf: Platform):
    pf.inb(NMI_SC_PORT, vcpu=0)
    pf.inb(NMI_SC_PORT, vcpu=2)
    assert pf.nmi_reads == [0, 2]
    assert pf.nmisc.reads == 2


def test_port61_refresh_bit_toggles_on_every_read(pf: Platform):
    bits = [pf.inb(NMI_SC_PORT) & 0x10 for _ in range(4)]
    assert bits == [0x10, 0, 0x10, 0]


def test_port61_write_stores_control_bits_and_ignores_status_bits(pf: Platform):
    pf.outb(NMI_SC_PORT, 0xFF)
    value = pf.inb(NMI_SC_PORT)
    assert value & 0x0F == 0x0F
    assert value & 0xE0 == 0  # OUT2 low (no PIT), no IOCHK/SERR NMI status


def test_port61_timer2_output_comes_from_the_supplied_callable():
    port = NmiStatusPort(timer2_out=lambda: True)
    assert port.io_read(NMI_SC_PORT, 1, 0) & 0x20


def test_port61_hook_runs_before_the_value_is_produced():
    port = NmiStatusPort()
    # The hook changes the control bits; the read must already see the change.
    port.on_read = lambda vcpu: port.io_write(NMI_SC_PORT, 1, 0x08 | vcpu, vcpu)
    assert port.io_read(NMI_SC_PORT, 1, 1) & 0x0F == 0x09
