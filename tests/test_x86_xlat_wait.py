"""XLAT and WAIT/FWAIT."""

from __future__ import annotations

import pytest
from x86util import HAVE_AS, LongModeMachine

pytestmark = pytest.mark.skipif(not HAVE_AS, reason="GNU as is not installed")


def test_xlat_loads_al_from_rbx_plus_al():
    m = LongModeMachine("""
        lea table(%rip), %rbx
        mov $0x1234, %eax
        mov $3, %al
        xlatb
        hlt
        table: .byte 10, 11, 12, 13, 14
    """)
    m.cpu.run(10)
    assert m.cpu.regs[0] == 0x120D        # AL = table[3]; the rest of RAX untouched


def test_xlat_with_a_32_bit_address_size_wraps_ebx_plus_al():
    m = LongModeMachine("""
        mov $0xffffffff, %ebx
        mov $0x11, %al
        .byte 0x67, 0xd7                 # addr32 xlatb: EBX+AL wraps to 0x10
        hlt
    """)
    m.mem.write(0x10, 1, 0x5A)
    m.cpu.run(10)
    assert m.cpu.regs[0] & 0xFF == 0x5A


@pytest.mark.parametrize("cr0_bits,nm", [(0, False), (2, False), (8, False), (0xA, True)],
                         ids=["none", "MP", "TS", "MP+TS"])
def test_wait_raises_nm_only_when_cr0_mp_and_ts_are_both_set(cr0_bits, nm):
    """SDM vol 2 WAIT/FWAIT: #NM if CR0.MP[bit 1] = 1 and CR0.TS[bit 3] = 1."""
    m = LongModeMachine("""
        start: fwait
        after: hlt
        nm_handler: hlt
        ud_handler: hlt
    """, handlers={7: "nm_handler", 6: "ud_handler"})
    m.cpu.cr0 = (m.cpu.cr0 & ~0xA) | cr0_bits
    m.cpu.run(5)
    assert m.cpu.rip == (m.syms["nm_handler"] if nm else m.syms["after"]) + 1
