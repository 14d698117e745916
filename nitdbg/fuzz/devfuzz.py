"""The PC devices from guest code, fuzzed: 32-bit code at a multiboot entry (protected mode,
paging off, so physical addresses reach the devices) doing port I/O to the 8259 PICs
(0x20/0x21/0xA0/0xA1, ELCR 0x4D0/1), the 8254 PIT (0x40-0x43), the RTC (0x70/0x71) and odd
ports, and memory accesses of every width and instruction form to the I/O APIC (0xFEC00000)
and the xAPIC page (0xFEE00000), with the APIC relocated or disabled through IA32_APIC_BASE
now and then, and whole programming sequences so device interrupts happen. No internal error
and no host exception, whatever the guest does."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

from hypothesis import strategies as st

from ..machine import Machine, MachineError
from .bootfuzz import RUN_INSNS, aout_kernel
from .targets import Outcome, Target, _escape, run_verdict

PORTS = [0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1, 0x40, 0x41, 0x42, 0x43, 0x61, 0x70, 0x71,
         0x1F, 0x22, 0x3F, 0x44, 0x6F, 0x72, 0x3F8, 0x3FD, 0xE9, 0x402, 0xF4, 0xFFFD, 0xFFFE,
         0xFFFF]
# values that mean something to the devices: ICW1/ICW4, OCW2 EOIs, OCW3 reads, PIT control
# words (counter, access, mode, BCD, read-back), RTC indices with the NMI bit, register B/C
VALUES = [0x00, 0x01, 0x02, 0x04, 0x08, 0x0A, 0x0B, 0x0C, 0x0D, 0x11, 0x13, 0x1F, 0x20, 0x34,
          0x36, 0x3A, 0x3E, 0x40, 0x60, 0x67, 0x80, 0x8A, 0x8B, 0x8C, 0xB6, 0xC0, 0xC2, 0xD0,
          0xE0, 0xE2, 0xF0, 0xFF]
IOAPIC, LAPIC = 0xFEC00000, 0xFEE00000
MMIO = ([IOAPIC + o for o in (0, 1, 2, 3, 4, 0xC, 0xF, 0x10, 0x11, 0x13, 0x20, 0x40, 0xFFC,
                              0xFFE, 0xFFF)]
        + [LAPIC + o for o in (0x20, 0x30, 0x80, 0xB0, 0xD0, 0xE0, 0xF0, 0xF1, 0x100, 0x200,
                               0x280, 0x300, 0x310, 0x320, 0x350, 0x360, 0x370, 0x380, 0x390,
                               0x3E0, 0x3F0, 0x3FC, 0xFFC, 0xFFD, 0xFFF)]
        + [IOAPIC - 4, IOAPIC - 1, LAPIC - 2, LAPIC + 0x1000 - 2, 0xFEBFFFFC])
IOAPIC_INDEX = [0x00, 0x01, 0x02, 0x03, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x2E, 0x2F, 0x30,
                0x3F, 0x40, 0xFF]


def _u32(draw: Callable) -> int:
    return draw(st.sampled_from([0, 1, 0xFF, 0x100, 0x400, 0x500, 0x700, 0x8000, 0x10000,
                                 0x1000002F, 0xFF000000, 0xFFFFFFFF, 0x00004400, 0x000C4500,
                                 0x000C4600, 0x00000830, 0x000400FF])
                | st.integers(0, 0xFFFFFFFF))


@st.composite
def device_insn(draw: Callable) -> bytes:  # noqa: C901 - one branch per instruction form
    k = draw(st.integers(0, 16))
    port = draw(st.sampled_from(PORTS) | st.integers(0, 0xFFFF))
    val = draw(st.sampled_from(VALUES) | st.integers(0, 255))
    addr = draw(st.sampled_from(MMIO) | st.integers(IOAPIC, IOAPIC + 0xFFF)
                | st.integers(LAPIC, LAPIC + 0xFFF))
    a = struct.pack("<I", addr)
    if k == 0:                                    # out dx, al/ax/eax
        w = draw(st.sampled_from([b"\xee", b"\x66\xef", b"\xef"]))
        return b"\x66\xba" + struct.pack("<H", port) + b"\xb8" + struct.pack("<I", val) + w
    if k == 1:                                    # in al/ax/eax, dx
        return b"\x66\xba" + struct.pack("<H", port) + draw(st.sampled_from([b"\xec",
                                                                             b"\x66\xed",
                                                                             b"\xed"]))
    if k == 2:                                    # out imm8, al / in al, imm8
        op = draw(st.sampled_from([b"\xe6", b"\xe7", b"\xe4", b"\xe5"]))
        return b"\xb0" + bytes((val,)) + op + bytes((port & 0xFF,))
    if k == 3:                                    # rep outs/ins through dx from low RAM
        n = draw(st.integers(0, 20))
        op = draw(st.sampled_from([b"\x6e", b"\x6f", b"\x6c", b"\x6d", b"\x66\x6f"]))
        return (b"\x66\xba" + struct.pack("<H", port) + b"\xbe\x00\x20\x00\x00"
                + b"\xbf\x00\x30\x00\x00" + b"\xb9" + struct.pack("<I", n) + b"\xf3" + op)
    if k == 4:                                    # mov [mmio], imm of each width
        w = draw(st.sampled_from(["b", "w", "d"]))
        v = _u32(draw)
        if w == "b":
            return b"\xc6\x05" + a + bytes((v & 0xFF,))
        if w == "w":
            return b"\x66\xc7\x05" + a + struct.pack("<H", v & 0xFFFF)
        return b"\xc7\x05" + a + struct.pack("<I", v)
    if k == 5:                                    # mov reg, [mmio] of each width
        return draw(st.sampled_from([b"\x8a\x05", b"\x66\x8b\x05", b"\x8b\x05",
                                     b"\x0f\xb6\x05", b"\x0f\xb7\x05"])) + a
    if k == 6:                                    # the I/O APIC's index, then its window
        idx = draw(st.sampled_from(IOAPIC_INDEX) | st.integers(0, 255))
        sel = b"\xc7\x05" + struct.pack("<I", IOAPIC) + struct.pack("<I", idx)
        if draw(st.booleans()):
            return sel + b"\xc7\x05" + struct.pack("<I", IOAPIC + 0x10) + \
                struct.pack("<I", _u32(draw))
        return sel + b"\x8b\x05" + struct.pack("<I", IOAPIC + 0x10)
    if k == 7:                                    # read-modify-write forms on MMIO
        return draw(st.sampled_from([b"\xff\x05", b"\x87\x05", b"\xf0\x0f\xc1\x05",
                                     b"\x0f\xab\x05", b"\xf0\x0f\xb1\x05", b"\x81\x0d",
                                     b"\xd1\x25", b"\xf7\x15", b"\x0f\xc7\x0d"])) + a + \
            (struct.pack("<I", _u32(draw)) if draw(st.booleans()) else b"")
    if k == 8:                                    # 6-, 8- and 10-byte operands on MMIO
        return draw(st.sampled_from([b"\x0f\x01\x15", b"\x0f\x01\x1d", b"\x0f\x01\x05",
                                     b"\x0f\x01\x0d", b"\xc4\x05", b"\xc5\x05", b"\x0f\xb2\x05",
                                     b"\xff\x2d", b"\xff\x1d", b"\x62\x05", b"\xdd\x05",
                                     b"\xdb\x2d", b"\x0f\xae\x05"])) + a
    if k == 9:                                    # push/pop through MMIO, stack on MMIO
        return draw(st.sampled_from([b"\xff\x35" + a, b"\x8f\x05" + a,
                                     b"\xbc" + a + b"\x50\x58", b"\xbc" + a + b"\x60\x61",
                                     b"\xbc" + a + b"\x9c\x9d"]))
    if k == 10:                                   # string moves to and from MMIO
        return (b"\xbe" + a + b"\xbf" + struct.pack("<I", draw(st.sampled_from(MMIO)))
                + b"\xb9" + struct.pack("<I", draw(st.integers(0, 9)))
                + draw(st.sampled_from([b"\xf3\xa4", b"\xf3\xa5", b"\x66\xf3\xa5", b"\xa5",
                                        b"\xf3\xa6", b"\xf2\xae", b"\xac", b"\xaa",
                                        b"\xf3\xab", b"\xd7"])))
    if k == 11:                                   # IA32_APIC_BASE: move, disable, x2APIC
        lo = draw(st.sampled_from([0xFEE00900, 0xFEE00800, 0xFEE00000, 0xFEC00900,
                                   0xFEE00D00, 0x00000900, 0xFEE01900, 0xFEF00900]))
        return (b"\xb9\x1b\x00\x00\x00" + b"\xb8" + struct.pack("<I", lo)
                + b"\x31\xd2" + draw(st.sampled_from([b"\x0f\x30", b"\x0f\x32"])))
    if k == 12:                                   # x2APIC MSRs
        msr = draw(st.sampled_from([0x802, 0x803, 0x808, 0x80B, 0x80F, 0x830, 0x832, 0x835,
                                    0x838, 0x83F, 0x8FF, 0x800, 0x831]))
        return (b"\xb9" + struct.pack("<I", msr) + b"\xb8" + struct.pack("<I", _u32(draw))
                + b"\x31\xd2" + draw(st.sampled_from([b"\x0f\x30", b"\x0f\x32"])))
    if k == 13:                                   # let the timers and interrupts happen
        return draw(st.sampled_from([b"\xfb\x90\x90", b"\xfb\xf4", b"\xfa", b"\xfb",
                                     b"\xb9\x00\x04\x00\x00\xe2\xfe", b"\xcc"]))
    if k == 14:                                   # a 16-bit access with a 16-bit address
        return b"\x67\x66\x8b\x06" + struct.pack("<H", addr & 0xFFFF)
    if k == 15:                                   # a whole device set up, odd parameters
        return _setup_sequence(draw)
    return draw(st.binary(min_size=1, max_size=6))


def _out(port: int, value: int) -> bytes:
    return b"\xb0" + bytes((value & 0xFF,)) + b"\xe6" + bytes((port,))


def _setup_sequence(draw: Callable) -> bytes:
    """The programming sequences a kernel uses, with random modes, vectors and rates, so
    interrupts from the PIT, the RTC and the I/O APIC actually happen."""
    which = draw(st.sampled_from(["pic", "pit", "rtc", "ioapic", "lapic"]))
    v = draw(st.sampled_from([0x20, 0x30, 0x40, 0xF8, 0x00, 0x02, 0x08]))
    if which == "pic":            # ICW1..ICW4 to both 8259s, then a mask
        icw1 = draw(st.sampled_from([0x11, 0x19, 0x13, 0x10]))
        seq = [(0x20, icw1), (0x21, v), (0x21, 0x04), (0x21, draw(st.sampled_from([1, 3, 0]))),
               (0xA0, icw1), (0xA1, v + 8), (0xA1, 0x02), (0xA1, 0x01),
               (0x21, draw(st.sampled_from([0x00, 0xFE, 0xFA, 0xFF]))), (0xA1, 0x00)]
        return b"".join(_out(p, x) for p, x in seq)
    if which == "pit":            # a control word, then the count low/high
        cw = draw(st.sampled_from([0x34, 0x36, 0x30, 0x32, 0x38, 0x3A, 0x3E, 0xB6, 0xC2, 0xF0]))
        count = draw(st.sampled_from([0, 1, 2, 3, 100, 1193, 0xFFFF]))
        return _out(0x43, cw) + _out(0x40, count & 0xFF) + _out(0x40, count >> 8)
    if which == "rtc":            # periodic rate in A, PIE/AIE/UIE in B, read C
        a = draw(st.sampled_from([0x26, 0x20, 0x21, 0x23, 0x2F, 0x06, 0x70]))
        b = draw(st.sampled_from([0x42, 0x22, 0x12, 0x72, 0x02, 0x86]))
        nmi = draw(st.sampled_from([0, 0x80]))
        return (_out(0x70, 0x0A | nmi) + _out(0x71, a) + _out(0x70, 0x0B | nmi) + _out(0x71, b)
                + _out(0x70, 0x0C) + b"\xe4\x71")
    if which == "ioapic":         # a redirection entry: vector, delivery mode, mask, dest
        pin = draw(st.integers(0, 25))
        lo = v | draw(st.sampled_from([0, 0x100, 0x200, 0x400, 0x500, 0x700, 0x8000,
                                       0x10000, 0x800]))
        hi = draw(st.sampled_from([0, 0x01000000, 0xFF000000]))
        w = b"\xc7\x05" + struct.pack("<I", IOAPIC)
        d = b"\xc7\x05" + struct.pack("<I", IOAPIC + 0x10)
        return (w + struct.pack("<I", 0x10 + 2 * pin) + d + struct.pack("<I", lo)
                + w + struct.pack("<I", 0x11 + 2 * pin) + d + struct.pack("<I", hi))
    # the local APIC: software enable (SVR), LINT0 ExtINT / NMI, a timer, TPR
    reg = draw(st.sampled_from([(0xF0, 0x1FF), (0x350, 0x700), (0x350, 0x400), (0x360, 0x400),
                                (0x3E0, 0xB), (0x380, 1000), (0x320, 0x20030), (0x320, 0x30),
                                (0x80, 0xF0), (0x300, 0x000C4500), (0x300, 0x4030)]))
    return b"\xc7\x05" + struct.pack("<I", LAPIC + reg[0]) + struct.pack("<I", reg[1])


# an IDT of trap gates at 0x5000 -> a handler at 0x6000 that returns (iret), so a fault or
# an interrupt from a device does not end the run at once
_SETUP = (b"\xbf\x00\x50\x00\x00"              # mov edi, 0x5000
          b"\xb9\x00\x01\x00\x00"              # mov ecx, 256
          b"\xb8\x00\x60\x08\x00"              # mov eax, 0x00086000 (selector 8, offset lo)
          b"\xba\x00\x8f\x00\x00"              # mov edx, 0x00008f00 (P, DPL0, trap gate)
          b"\xab\x89\xd0\xab\xb8\x00\x60\x08\x00\xe2\xf5"   # stosd; mov eax,edx; stosd; loop
          b"\x66\xc7\x05\x00\x40\x00\x00\xff\x07"            # mov word [0x4000], 0x7ff
          b"\xc7\x05\x02\x40\x00\x00\x00\x50\x00\x00"        # mov dword [0x4002], 0x5000
          b"\x0f\x01\x1d\x00\x40\x00\x00"                    # lidt [0x4000]
          b"\xc6\x05\x00\x60\x00\x00\xcf")                   # mov byte [0x6000], iret


@st.composite
def pcdev_case(draw: Callable) -> tuple[bool, bytes]:
    """(with an IDT, the code)."""
    return draw(st.booleans()), b"".join(draw(st.lists(device_insn(), min_size=1,
                                                         max_size=12)))


def pcdev_target(tmpdir: Path) -> Target:
    def run(case: tuple[bool, bytes]) -> Outcome:
        idt, code = case
        p = tmpdir / "pcdev.kernel"
        p.write_bytes(aout_kernel((_SETUP if idt else b"") + code + b"\xeb\xfe", pad=64))
        try:
            m = Machine(kernel=p, vcpus=1)
        except MachineError as e:
            return Outcome("escape", f"the device kernel was refused: {e}")
        try:
            ev = m.run(max_insns=RUN_INSNS)
        except Exception as e:  # noqa: BLE001 - the fuzzer's outermost layer counts escapes
            return _escape(e)
        return run_verdict(m, ev)

    return Target("pcdev", pcdev_case(), run)
