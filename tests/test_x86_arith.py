"""Per-instruction tests of integer arithmetic and logic: registers and exact flags.

Each snippet is assembled with GNU as, run on a bare long-mode vCPU, and checked against the
rule in the SDM / APM that the test name states. Cases marked "QEMU" were checked against
qemu-system-x86_64 7.2 TCG (-cpu EPYC) for flags the manuals leave undefined.
"""

from __future__ import annotations

import pytest
from x86util import HAVE_AS, LongModeMachine

from nitdbg.x86.regs import AF, ARITH, CF, GPR_NAMES, OF, PF, SF, ZF

pytestmark = pytest.mark.skipif(not HAVE_AS, reason="GNU as/ld not installed")

DATA = 0x200000
M64 = (1 << 64) - 1


def run(src: str, regs: dict[str, int] | None = None, rflags: int = 0,
        mem: dict[int, int] | None = None, stop: str = "end", handlers=None):
    """Run `src` with registers, RFLAGS and 8-byte memory words preset until a HLT; assert it
    is the HLT at label `stop` (`end` follows the snippet, `de` is a handler label)."""
    m = LongModeMachine(f"{src}\nend: hlt\nde: hlt\nunexpected: hlt\n", handlers=handlers)
    c = m.cpu
    for name, v in (regs or {}).items():
        c.regs[GPR_NAMES.index(name)] = v
    c.rflags = rflags | 2
    for addr, v in (mem or {}).items():
        m.mem.write(addr, 8, v)
    for _ in range(100):
        c.run(100)
        if c.stop_reason in ("hlt", "shutdown"):
            break
    assert c.stop_reason == "hlt" and c.rip == m.syms[stop] + 1, (c.stop_reason, hex(c.rip))
    return m


def R(m, name: str) -> int:
    return m.cpu.regs[GPR_NAMES.index(name)]


def fl(m) -> int:
    return m.cpu.rflags & ARITH


# ----------------------------------------------------------------------------- add/sub family

def test_add_sets_cf_and_af_on_carry_out():
    m = run("add %bl, %al", {"rax": 0xFF, "rbx": 0x01})
    assert R(m, "rax") == 0
    assert fl(m) == CF | AF | ZF | PF


def test_add_sets_of_on_signed_overflow():
    m = run("add %ebx, %eax", {"rax": 0x7FFF_FFFF, "rbx": 1})
    assert R(m, "rax") == 0x8000_0000
    assert fl(m) == OF | SF | AF | PF


def test_add_imm8_is_sign_extended_to_operand_size():
    m = run("add $-1, %ax", {"rax": 0x1234_5678_0000_0005})
    assert R(m, "rax") == 0x1234_5678_0000_0004        # 16-bit write merges
    assert fl(m) == CF | AF


def test_add_imm32_is_sign_extended_to_64_bits():
    m = run("add $-0x80000000, %rax", {"rax": 0x8000_0000})
    assert R(m, "rax") == 0
    assert fl(m) == CF | ZF | PF


def test_32bit_result_zero_extends_into_64bit_register():
    m = run("sub $1, %eax", {"rax": 0xFFFF_FFFF_0000_0010})
    assert R(m, "rax") == 0xF
    m = run("add %ebx, %ecx", {"rcx": 0xFFFF_FFFF_0000_0001, "rbx": 0xAAAA_0000_0000_0001})
    assert R(m, "rcx") == 2


def test_high_byte_register_operands_merge_into_bits_8_to_15():
    m = run("add %bh, %ah", {"rax": 0x11_7F_22, "rbx": 0x33_01_44})
    assert R(m, "rax") == 0x11_80_22
    assert fl(m) == OF | SF | AF


def test_adc_adds_the_carry_in():
    m = run("adc %rbx, %rax", {"rax": M64, "rbx": 0}, rflags=CF)
    assert R(m, "rax") == 0
    assert fl(m) == CF | ZF | PF | AF


def test_sbb_subtracts_the_borrow_in():
    m = run("sbb %bl, %al", {"rax": 0x00, "rbx": 0xFF}, rflags=CF)
    assert R(m, "rax") & 0xFF == 0x00
    assert fl(m) == CF | ZF | PF | AF


def test_sub_borrow_sets_cf_and_af():
    m = run("sub %bx, %ax", {"rax": 0x0010, "rbx": 0x0011})
    assert R(m, "rax") == 0xFFFF
    assert fl(m) == CF | SF | AF | PF


def test_cmp_sets_flags_and_writes_nothing():
    m = run("cmp %rbx, (%rsi)", {"rsi": DATA, "rbx": 5}, mem={DATA: 3})
    assert m.mem.read(DATA, 8) == 3
    assert fl(m) == CF | SF | AF            # 0x...FE: seven bits set, PF = 0


def test_cmp_memory_byte_with_immediate():
    m = run("cmpb $0x80, (%rsi)", {"rsi": DATA}, mem={DATA: 0x7F})
    assert fl(m) == CF | OF | SF | PF


def test_add_to_memory_operand():
    m = run("addl %ebx, 4(%rsi)", {"rsi": DATA, "rbx": 1}, mem={DATA: 0xFFFF_FFFF_0000_0000})
    assert m.mem.read(DATA, 8) == 0x0000_0000_0000_0000
    assert fl(m) == CF | ZF | PF | AF


def test_inc_leaves_cf_unchanged():
    m = run("inc %al", {"rax": 0xFF}, rflags=0)
    assert fl(m) == ZF | PF | AF
    m = run("inc %al", {"rax": 0x01}, rflags=CF)
    assert fl(m) == CF


def test_dec_leaves_cf_unchanged():
    m = run("dec %ecx", {"rcx": 0}, rflags=CF)
    assert R(m, "rcx") == 0xFFFF_FFFF
    assert fl(m) == CF | SF | PF | AF


def test_inc_of_signed_max_sets_of():
    m = run("incw (%rsi)", {"rsi": DATA}, mem={DATA: 0x7FFF})
    assert m.mem.read(DATA, 2) == 0x8000
    assert fl(m) == OF | SF | AF | PF


def test_neg_sets_cf_unless_the_operand_is_zero():
    m = run("neg %rax", {"rax": 0})
    assert fl(m) == ZF | PF
    m = run("neg %rax", {"rax": 1})
    assert R(m, "rax") == M64
    assert fl(m) == CF | SF | PF | AF


def test_neg_of_most_negative_value_sets_of():
    m = run("neg %ah", {"rax": 0x8000})
    assert R(m, "rax") == 0x8000
    assert fl(m) == CF | OF | SF


def test_xadd_exchanges_and_adds_memory():
    m = run("lock xadd %ebx, (%rsi)", {"rsi": DATA, "rbx": 5}, mem={DATA: 0xFFFF_FFFF})
    assert m.mem.read(DATA, 4) == 4
    assert R(m, "rbx") == 0xFFFF_FFFF
    assert fl(m) == CF | AF


def test_xadd_with_the_same_register_keeps_the_sum():
    m = run("xadd %rax, %rax", {"rax": 21})
    assert R(m, "rax") == 42


def test_cmpxchg_equal_stores_source_and_sets_zf():
    m = run("lock cmpxchg %rbx, (%rsi)", {"rsi": DATA, "rax": 7, "rbx": 9}, mem={DATA: 7})
    assert m.mem.read(DATA, 8) == 9
    assert R(m, "rax") == 7
    assert fl(m) == ZF | PF


def test_cmpxchg_unequal_loads_accumulator_and_clears_zf():
    m = run("cmpxchg %ebx, (%rsi)", {"rsi": DATA, "rax": 0xFFFF_FFFF_0000_0003, "rbx": 9},
            mem={DATA: 5})
    assert m.mem.read(DATA, 8) == 5
    assert R(m, "rax") == 5                 # a 32-bit accumulator write zero-extends
    assert fl(m) == CF | SF | AF            # flags of cmp 3, 5


def test_cmpxchg_byte_register_destination():
    m = run("cmpxchg %cl, %dl", {"rax": 0x1142, "rdx": 0x42, "rcx": 0x99})
    assert R(m, "rdx") == 0x99 and R(m, "rax") == 0x1142
    assert fl(m) & ZF


# ----------------------------------------------------------------------------- LOCK

def test_lock_with_register_destination_raises_ud():
    m = run(".byte 0xf0\nadd %ebx, %eax", handlers={6: "de"}, stop="de")
    assert m.mem.read(m.cpu.regs[4], 8) == m.syms["_start"]


def test_lock_on_cmp_raises_ud_even_with_memory_operand():
    m = run(".byte 0xf0\ncmpl $1, (%rsi)", {"rsi": DATA}, handlers={6: "de"}, stop="de")
    assert m.mem.read(m.cpu.regs[4], 8) == m.syms["_start"]


def test_lock_add_to_memory_is_accepted():
    m = run("lock addq $3, (%rsi)", {"rsi": DATA}, mem={DATA: 4})
    assert m.mem.read(DATA, 8) == 7


# ----------------------------------------------------------------------------- mul/div

def test_mul_8bit_writes_ax_and_sets_cf_of_when_ah_is_nonzero():
    m = run("mul %bl", {"rax": 0xAAAA_0010, "rbx": 0x10})
    assert R(m, "rax") == 0xAAAA_0100
    assert fl(m) & (CF | OF) == CF | OF


def test_mul_64bit_writes_rdx_rax():
    m = run("mul %rbx", {"rax": 1 << 32, "rbx": 1 << 32, "rdx": 5})
    assert (R(m, "rdx"), R(m, "rax")) == (1, 0)
    # QEMU: SF ZF PF from the low half, AF = 0
    assert fl(m) == CF | OF | ZF | PF


def test_mul_fitting_in_low_half_clears_cf_of():
    m = run("mul %ecx", {"rax": 3, "rcx": 5, "rdx": 0xFFFF_FFFF_FFFF_FFFF}, rflags=CF | OF)
    assert (R(m, "rdx"), R(m, "rax")) == (0, 15)
    assert fl(m) & (CF | OF) == 0


def test_imul_one_operand_is_signed():
    m = run("imul %bx", {"rax": 0xFFFF, "rbx": 0x0002, "rdx": 0x1234_0000})
    assert R(m, "rax") == 0xFFFE and R(m, "rdx") == 0x1234_FFFF
    assert fl(m) & (CF | OF) == 0           # -2 fits in 16 bits


def test_imul_8bit_minus_128_times_minus_1_overflows():
    m = run("imul %bl", {"rax": 0x80, "rbx": 0xFF})
    assert R(m, "rax") == 0x0080
    assert fl(m) == OF | SF | CF            # QEMU


def test_imul_two_operand_truncates_and_sets_cf_of():
    m = run("imul %ebx, %eax", {"rax": 0x10000, "rbx": 0x10000}, rflags=ARITH)
    assert R(m, "rax") == 0
    assert fl(m) == OF | CF | ZF | PF       # QEMU: ZF PF from the truncated result


def test_imul_three_operand_with_negative_immediate():
    m = run("imul $-5, %rcx, %rdx", {"rcx": 7})
    assert R(m, "rdx") == (-35) & M64
    assert fl(m) & (CF | OF) == 0


def test_imul_three_operand_memory_source():
    m = run("imul $300, (%rsi), %ax", {"rsi": DATA, "rax": 0xFFFF_0000}, mem={DATA: 200})
    assert R(m, "rax") == 0xFFFF_0000 | (60000 & 0xFFFF)
    assert fl(m) & (CF | OF) == CF | OF


def test_div_by_zero_raises_de_before_writing_rdx():
    m = run("div %rcx", {"rax": 10, "rdx": 3, "rcx": 0}, rflags=CF,
            handlers={0: "de"}, stop="de")
    assert (R(m, "rax"), R(m, "rdx")) == (10, 3)
    assert m.mem.read(m.cpu.regs[4], 8) == m.syms["_start"]     # #DE is a fault
    assert fl(m) == CF


def test_div_quotient_overflow_raises_de():
    m = run("div %bl", {"rax": 0x1000, "rbx": 0x10}, handlers={0: "de"}, stop="de")
    assert R(m, "rax") == 0x1000


def test_div_64bit_divides_rdx_rax():
    m = run("div %rbx", {"rdx": 1, "rax": 5, "rbx": 2})
    assert R(m, "rax") == ((1 << 64) + 5) // 2 and R(m, "rdx") == 1


def test_div_leaves_flags_unchanged():
    m = run("div %ebx", {"rax": 0, "rdx": 0, "rbx": 7}, rflags=OF | SF | AF | CF)
    assert fl(m) == OF | SF | AF | CF       # QEMU; undefined on AMD and Intel


def test_idiv_truncates_toward_zero_and_remainder_takes_dividend_sign():
    m = run("idiv %ebx", {"rax": (-7) & 0xFFFF_FFFF, "rdx": 0xFFFF_FFFF, "rbx": 2})
    assert R(m, "rax") == (-3) & 0xFFFF_FFFF and R(m, "rdx") == (-1) & 0xFFFF_FFFF


def test_idiv_byte_memory_operand():
    m = run("idivb (%rsi)", {"rsi": DATA, "rax": 100}, mem={DATA: 0xF9})   # 100 / -7
    assert R(m, "rax") & 0xFFFF == ((2 << 8) | ((-14) & 0xFF))


def test_idiv_most_negative_by_minus_one_raises_de():
    # INT64_MIN / -1 = 2**63 does not fit a signed quotient (SDM vol 2 IDIV)
    m = run("idiv %rcx", {"rax": 1 << 63, "rdx": M64, "rcx": M64},
            handlers={0: "de"}, stop="de")
    assert (R(m, "rax"), R(m, "rdx")) == (1 << 63, M64)


# ----------------------------------------------------------------------------- logic

def test_and_clears_cf_of_and_af():
    m = run("and %bl, %al", {"rax": 0xF0, "rbx": 0x90}, rflags=CF | OF | AF)
    assert R(m, "rax") == 0x90
    assert fl(m) == SF | PF


def test_or_sign_extended_immediate_to_64bit_register():
    m = run("or $-2, %rax", {"rax": 1})
    assert R(m, "rax") == M64
    assert fl(m) == SF | PF


def test_xor_zeroing_idiom_sets_zf_pf():
    m = run("xor %eax, %eax", {"rax": M64}, rflags=CF | OF | SF)
    assert R(m, "rax") == 0
    assert fl(m) == ZF | PF


def test_test_sets_flags_and_writes_nothing():
    m = run("test $0x80, %al", {"rax": 0x180})
    assert R(m, "rax") == 0x180
    assert fl(m) == SF


def test_not_changes_no_flags():
    m = run("not %ax", {"rax": 0x1_00FF}, rflags=CF | ZF | OF)
    assert R(m, "rax") == 0x1_FF00
    assert fl(m) == CF | ZF | OF


def test_logic_on_memory_operand():
    m = run("xorw $0xFFFF, 2(%rsi)", {"rsi": DATA}, mem={DATA: 0x1234_5678})
    assert m.mem.read(DATA, 8) == 0xEDCB_5678
    assert fl(m) == SF
