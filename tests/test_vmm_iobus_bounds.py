"""The I/O bus and every device take any port and width a guest can produce: an access that
runs past port 0xFFFF is split, its bytes beyond the 64 KiB I/O space float (all ones,
writes dropped), and nothing raises out of Machine.run."""

from __future__ import annotations

import pytest

from nitdbg.machine import Machine
from nitdbg.vmm.devices.iobus import IoBus, IoBusError


class Recorder:
    name = "rec"

    def __init__(self) -> None:
        self.log: list[tuple] = []

    def io_read(self, port: int, size: int, vcpu: int) -> int:
        self.log.append(("r", port, size))
        return 0x5A

    def io_write(self, port: int, size: int, value: int, vcpu: int) -> None:
        self.log.append(("w", port, size, value))

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass


def test_a_word_read_at_port_ffff_splits_and_the_byte_past_it_floats():
    bus, dev = IoBus(), Recorder()
    bus.register(dev, 0xFFFF)
    assert bus.read(0xFFFF, 2) == 0xFF5A
    assert bus.read(0xFFFE, 4) == 0xFFFF5AFF
    assert dev.log == [("r", 0xFFFF, 1), ("r", 0xFFFF, 1)]


def test_a_dword_write_at_port_fffe_reaches_the_ports_below_10000_only():
    bus, dev = IoBus(), Recorder()
    bus.register(dev, 0xFFFE, 2)
    bus.write(0xFFFE, 4, 0x44332211)
    assert dev.log == [("w", 0xFFFE, 1, 0x11), ("w", 0xFFFF, 1, 0x22)]


def test_what_no_in_or_out_can_produce_is_still_a_host_error():
    bus = IoBus()
    with pytest.raises(IoBusError):
        bus.read(0x10000, 1)
    with pytest.raises(IoBusError):
        bus.read(0x60, 3)


@pytest.fixture(scope="module")
def machine() -> Machine:
    m = Machine(vcpus=1)
    m.step_vcpu(0)           # from here on the vCPU's paging state is the loader's
    return m


def test_every_device_takes_every_port_and_width_of_its_range(machine):
    m = machine.clone()
    bus = m.vm.iobus
    for base, count, name in bus.ranges():
        for port in range(max(0, base - 3), min(0x10000, base + count + 1)):
            for size in (1, 2, 4):
                v = bus.read(port, size, 0)
                assert 0 <= v < 1 << (8 * size), (name, port, size)
                bus.write(port, size, (0xA5A5A5A5 >> (32 - 8 * size)) & v, 0)


@pytest.mark.parametrize("code", [
    bytes.fromhex("66bafeff ed ef ebfe"),        # mov $0xfffe,%dx; in %dx,%eax; out; jmp .
    bytes.fromhex("66baffff 66ed 66ef ebfe"),    # 16-bit at 0xffff
    bytes.fromhex("66baffff ec ee ebfe"),        # 8-bit at 0xffff
], ids=["inl-fffe", "inw-ffff", "inb-ffff"])
def test_guest_io_past_port_ffff_runs_without_an_error(machine, code):
    m = machine.clone()
    v = m.vcpus[0]
    m.vm.write_guest(v, v.cpu.rip, code)
    ev = m.run(max_insns=1000)
    assert ev.reason in ("budget", "time", "idle"), ev
    assert v.cpu.regs[0] & 0xFF == 0xFF or m.vm.vcpus[0].vmcb.rax & 0xFF == 0xFF
