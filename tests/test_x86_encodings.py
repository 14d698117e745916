"""Valid encodings that used to reach #UD through an internal error, each executed for real."""

from __future__ import annotations

import pytest
from x86util import HAVE_AS, LongModeMachine

pytestmark = pytest.mark.skipif(not HAVE_AS, reason="GNU as is not installed")

UD = "ud_handler: hlt\n"


def _run(src: str, n: int = 20) -> LongModeMachine:
    m = LongModeMachine(src + "\n" + UD, handlers={6: "ud_handler"})
    m.cpu.run(n)
    assert m.cpu.last_unsupported is None, m.cpu.last_unsupported
    return m


def test_a_sib_byte_without_an_index_addresses_base_plus_displacement():
    """SIB index 100b (no REX.X) means no index register (SDM vol 2 table 2-3)."""
    m = _run("""
        lea data(%rip), %rax
        .byte 0x8b, 0x04, 0x20          # mov (%rax,%riz,1), %eax
        hlt
        data: .long 0x12345678
    """)
    assert m.cpu.regs[0] == 0x12345678


def test_bnd_prefix_on_a_jcc_is_ignored_without_mpx():
    m = _run("""
        xor %eax, %eax                  # ZF=1
        .byte 0xf2, 0x74, 0x02          # bnd je +2
        mov $1, %al
        nop
        nop
        hlt
    """)
    assert m.cpu.regs[0] & 0xFF == 0


def test_a_segment_register_store_with_a_segment_override_writes_the_selector():
    m = _run("""
        lea data(%rip), %rax
        .byte 0x64, 0x8c, 0x18          # mov %ds, %fs:(%rax)  (FS base 0)
        movzwl data(%rip), %ebx
        hlt
        data: .word 0xffff
    """)
    assert m.cpu.regs[3] == 0x10


def test_rex_w_wins_over_the_operand_size_prefix_on_push_and_pop():
    """66h with REX.W: 64-bit operand size (SDM vol 1 table 3-4)."""
    m = _run("""
        mov %rsp, %rbx
        movabs $0x1122334455667788, %rax
        .byte 0x66, 0x48, 0x50          # push %rax (8 bytes)
        .byte 0x66, 0x48, 0x59          # pop %rcx
        hlt
    """)
    c = m.cpu
    assert c.regs[1] == 0x1122334455667788 and c.regs[4] == c.regs[3]


@pytest.mark.parametrize("code", [".byte 0x44, 0x0f, 0x21, 0xc0", ".byte 0x44, 0x0f, 0x23, 0xc0"],
                         ids=["mov-from-dr8", "mov-to-dr8"])
def test_mov_to_or_from_dr8_to_dr15_raises_ud_architecturally(code):
    """APM vol 3 MOV DRn: #UD when an illegal debug register (DR8-DR15) is referenced."""
    m = LongModeMachine(f"bad: {code}\nhlt\n{UD}", handlers={6: "ud_handler"})
    m.cpu.run(5)
    assert m.cpu.rip == m.syms["ud_handler"] + 1
    assert m.cpu.last_unsupported is None          # the #UD is the architecture's, no record
