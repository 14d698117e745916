"""Per-instruction tests of shifts, rotates and bit instructions: registers and exact flags.

Cases marked "QEMU" are flags the manuals leave undefined, with the values
qemu-system-x86_64 7.2 TCG (-cpu EPYC) produces for the same inputs.
"""

from __future__ import annotations

import pytest
from test_x86_arith import DATA, M64, R, fl, run
from x86util import HAVE_AS

from nitdbg.x86.regs import AF, ARITH, CF, OF, PF, SF, ZF

pytestmark = pytest.mark.skipif(not HAVE_AS, reason="GNU as/ld not installed")


# ----------------------------------------------------------------------------- shifts

def test_shift_count_zero_changes_no_flags():
    m = run("shl %cl, %eax", {"rax": 0xFFFF_FFFF_8000_0001, "rcx": 0}, rflags=ARITH)
    assert fl(m) == ARITH
    assert R(m, "rax") == 0x8000_0001      # the 32-bit destination is still written


def test_shift_count_is_masked_to_5_bits():
    m = run("shl %cl, %eax", {"rax": 0x4000_0000, "rcx": 33})     # 33 & 31 = 1
    assert R(m, "rax") == 0x8000_0000
    assert fl(m) == SF | OF | PF


def test_shift_count_is_masked_to_6_bits_for_64bit_operands():
    m = run("shr %cl, %rax", {"rax": 1 << 63, "rcx": 0x7F})      # 127 & 63 = 63
    assert R(m, "rax") == 1
    assert fl(m) == 0


def test_masked_count_of_zero_changes_no_flags():
    m = run("sar %cl, %ax", {"rax": 0x8000, "rcx": 32}, rflags=CF | ZF)
    assert R(m, "rax") == 0x8000 and fl(m) == CF | ZF


def test_shl_cf_is_the_last_bit_out_and_of_is_msb_xor_cf():
    m = run("shl $1, %al", {"rax": 0x81})
    assert R(m, "rax") == 0x02
    assert fl(m) == CF | OF


def test_shl_clears_af():
    m = run("shl $4, %bl", {"rbx": 0x0F}, rflags=AF)
    assert R(m, "rbx") == 0xF0 and fl(m) == SF | PF | OF   # QEMU: OF = CF ^ MSB = 0 ^ 1


def test_shl_8bit_by_more_than_the_width_shifts_everything_out():
    m = run("shl %cl, %al", {"rax": 0x81, "rcx": 9}, rflags=ARITH)
    assert R(m, "rax") == 0
    assert fl(m) == ZF | PF                 # QEMU: CF = 0, OF = 0, AF = 0


def test_shl_by_more_than_1_of_is_msb_xor_cf():
    m = run("shl $3, %eax", {"rax": 0x4000_0001})
    assert R(m, "rax") == 8
    assert fl(m) == 0                       # QEMU; CF = bit 29 = 0, OF = 0 ^ 0


def test_shr_by_1_of_is_the_original_msb():
    m = run("shr %ax", {"rax": 0x8001})
    assert R(m, "rax") == 0x4000
    assert fl(m) == CF | OF | PF


def test_shr_by_more_than_1_clears_of():
    m = run("shr %cl, %ax", {"rax": 0x8001, "rcx": 2})
    assert R(m, "rax") == 0x2000 and fl(m) == PF          # QEMU


def test_sar_keeps_the_sign_and_clears_of():
    m = run("sar %cl, %eax", {"rax": 0x8000_0000, "rcx": 31}, rflags=OF)
    assert R(m, "rax") == 0xFFFF_FFFF
    assert fl(m) == SF | PF                 # QEMU: OF = 0 for every count


def test_sar_8bit_by_more_than_the_width_fills_cf_with_the_sign():
    m = run("sar %cl, %bh", {"rbx": 0x8000, "rcx": 12})
    assert R(m, "rbx") == 0xFF00 and fl(m) == CF | SF | PF


def test_shift_memory_operand():
    m = run("shlw $4, (%rsi)", {"rsi": DATA}, mem={DATA: 0x1_1234})
    assert m.mem.read(DATA, 8) == 0x1_2340
    assert fl(m) == CF | OF                 # last bit out: bit 12 of 0x1234; QEMU OF


# ----------------------------------------------------------------------------- rotates

def test_rol_changes_only_cf_and_of():
    m = run("rol %cl, %eax", {"rax": 0x4000_0001, "rcx": 2}, rflags=SF | ZF | PF | AF)
    assert R(m, "rax") == 5
    assert fl(m) == SF | ZF | PF | AF | CF | OF          # QEMU: OF = MSB ^ CF for any count


def test_rol_8bit_count_8_sets_cf_without_rotating():
    # the rotation is COUNT mod 8 = 0, but the masked count is nonzero so CF := LSB
    m = run("rol $8, %al", {"rax": 0x81})
    assert R(m, "rax") == 0x81 and fl(m) == CF


def test_ror_cf_is_msb_and_of_is_xor_of_the_two_top_bits():
    m = run("ror %rax", {"rax": 1})
    assert R(m, "rax") == 1 << 63
    assert fl(m) == CF | OF
    m = run("ror %cl, %rax", {"rax": 1, "rcx": 3})
    assert R(m, "rax") == 1 << 61 and fl(m) == 0


def test_rcl_rotates_through_carry():
    m = run("rcl %cl, %al", {"rax": 0x41, "rcx": 3}, rflags=CF | PF)
    assert R(m, "rax") == 0x0D             # 1_01000001 rotated left 3 in 9 bits
    assert fl(m) == PF                      # CF := bit 6 = 0; QEMU: OF = MSB(src) ^ MSB(res)


def test_rcr_8bit_count_is_taken_modulo_9():
    m = run("rcr $9, %bl", {"rbx": 0x5A}, rflags=CF | OF)
    assert R(m, "rbx") == 0x5A and fl(m) == CF | OF       # a full turn changes nothing


def test_rcr_16bit_by_one_of_is_msb_xor_carry_in():
    m = run("rcr %dx", {"rdx": 0x8001}, rflags=0)
    assert R(m, "rdx") == 0x4000 and fl(m) == CF | OF


def test_rcr_16bit():
    m = run("rcr %cl, %ax", {"rax": 0x8001, "rcx": 5})
    assert R(m, "rax") == 0x1400 and fl(m) == OF          # QEMU


def test_rcl_64bit_by_63():
    m = run("rcl $63, %rax", {"rax": 2}, rflags=CF)
    # a 65-bit rotate left by 63 is a rotate right by 2: bit 1 -> CF, old CF -> bit 62
    assert R(m, "rax") == 1 << 62 and fl(m) & (CF | OF) == CF


# ----------------------------------------------------------------------------- shld/shrd

def test_shld_fills_from_the_source():
    m = run("shld $8, %rbx, %rax", {"rax": 0x0011_2233_4455_6677, "rbx": 0xAB00_0000_0000_0000})
    assert R(m, "rax") == 0x1122_3344_5566_77AB
    assert fl(m) == 0                       # last bit out (bit 56) is 0; 0xAB has odd parity


def test_shrd_fills_from_the_source():
    m = run("shrd %cl, %ebx, %eax", {"rax": 0x1234_5678, "rbx": 0xCD, "rcx": 8})
    assert R(m, "rax") == 0xCD12_3456
    assert fl(m) == SF | PF                 # CF = bit 7 of 0x78 = 0


def test_shld_16bit_count_above_16_shifts_dest_src_dest():
    m = run("shld %cl, %bx, %ax", {"rax": 0x1234, "rbx": 0xABCD, "rcx": 20})
    assert R(m, "rax") == 0xBCD1 and fl(m) == OF | SF | PF     # QEMU (Intel's behaviour)


def test_shrd_16bit_count_above_16_shifts_dest_src_dest():
    m = run("shrd %cl, %bx, %ax", {"rax": 0x1234, "rbx": 0xABCD, "rcx": 20})
    assert R(m, "rax") == 0x4ABC and fl(m) == OF | CF     # QEMU


def test_shrd_64bit_of_for_count_above_1_comes_from_the_destination_alone():
    m = run("shrd $29, %rbx, %rax", {"rax": 0x7FFF_FFFF_FFFF_FFFF, "rbx": 0x6E72_765B_C8CE_BEBF},
            rflags=CF | PF | AF | SF | OF)
    assert R(m, "rax") == 0x4675_F5FB_FFFF_FFFF
    assert fl(m) == CF | PF                 # QEMU: OF = MSB(dest >> 28) ^ MSB(result) = 0


def test_shld_count_zero_changes_no_flags():
    m = run("shld %cl, %ebx, %eax", {"rax": 5, "rbx": M64, "rcx": 0x20}, rflags=OF | CF)
    assert R(m, "rax") == 5 and fl(m) == OF | CF


# ----------------------------------------------------------------------------- bt family

def test_bt_register_offset_is_taken_modulo_the_register_width():
    m = run("bt %rbx, %rax", {"rax": 1, "rbx": 64}, rflags=ZF | SF | OF | PF | AF)
    assert fl(m) == CF | ZF | SF | OF | PF | AF          # only CF changes


def test_bt_leaves_zf_unchanged():
    m = run("bt $3, %eax", {"rax": 0}, rflags=ZF | CF)
    assert fl(m) == ZF


def test_bt_memory_register_offset_addresses_beyond_the_operand():
    # bit 70 of the dword at DATA is bit 6 of the dword at DATA + 8 (SDM "bit base")
    m = run("bt %ebx, (%rsi)", {"rsi": DATA, "rbx": 70}, mem={DATA: 0, DATA + 8: 0x40})
    assert fl(m) == CF


def test_bts_memory_negative_register_offset_addresses_below_the_operand():
    m = run("bts %rbx, 8(%rsi)", {"rsi": DATA, "rbx": (-63) & M64}, mem={DATA: 0, DATA + 8: 0})
    assert m.mem.read(DATA, 8) == 2 and m.mem.read(DATA + 8, 8) == 0
    assert fl(m) == 0


def test_btr_16bit_memory_register_offset_is_signed():
    m = run("btr %bx, 4(%rsi)", {"rsi": DATA, "rbx": 0xFFFF}, mem={DATA: 0xFFFF_FFFF})
    # -1: bit 15 of the word at DATA + 4 - 2
    assert m.mem.read(DATA, 8) == 0x7FFF_FFFF and fl(m) == CF


def test_bt_memory_immediate_offset_is_masked_to_the_operand():
    m = run("btcl $33, (%rsi)", {"rsi": DATA}, mem={DATA: 0x2, DATA + 4: 0})
    assert m.mem.read(DATA, 8) == 0 and fl(m) == CF


def test_bts_btr_btc_return_the_old_bit_in_cf():
    m = run("bts $5, %ax\nsetc %bl\nbtr $5, %ax\nsetc %bh\nbtc $0, %ax\nsetc %cl",
            {"rax": 0, "rbx": 0, "rcx": 0})
    assert R(m, "rax") == 1
    assert R(m, "rbx") == 0x0100 and R(m, "rcx") & 0xFF == 0


def test_lock_bts_memory_is_accepted_and_lock_bt_raises_ud():
    m = run("lock btsq $63, (%rsi)", {"rsi": DATA}, mem={DATA: 0})
    assert m.mem.read(DATA, 8) == 1 << 63
    m = run(".byte 0xf0\nbtq $1, (%rsi)", {"rsi": DATA}, handlers={6: "de"}, stop="de")


# ----------------------------------------------------------------------------- scans, counts

def test_bsf_bsr_find_the_lowest_and_highest_set_bit():
    m = run("bsf %rbx, %rax\nbsr %rbx, %rcx", {"rbx": 0x8080}, rflags=ARITH)
    assert R(m, "rax") == 7 and R(m, "rcx") == 15
    assert fl(m) == 0                       # QEMU: logic flags of the source (PF of 0x80: 0)


def test_bsf_zero_source_sets_zf_and_leaves_the_destination_unchanged():
    # AMD APM: the destination is not changed, all 64 bits (QEMU zero-extends a 32-bit one)
    m = run("bsf %ebx, %eax", {"rax": 0xDEAD_BEEF_0000_0005, "rbx": 0xFFFF_FFFF_0000_0000})
    assert R(m, "rax") == 0xDEAD_BEEF_0000_0005
    assert fl(m) == ZF | PF


def test_bsr_memory_source():
    m = run("bsrw (%rsi), %dx", {"rsi": DATA, "rdx": 0xFFFF}, mem={DATA: 0x0123})
    assert R(m, "rdx") == 8


def test_popcnt_counts_bits_and_sets_only_zf():
    m = run("popcnt %rbx, %rax", {"rbx": 0xFF}, rflags=ARITH)
    assert R(m, "rax") == 8 and fl(m) == 0
    m = run("popcnt %ebx, %eax", {"rbx": 0, "rax": M64})
    assert R(m, "rax") == 0 and fl(m) == ZF


def test_lzcnt_of_zero_is_the_width_and_sets_cf():
    m = run("lzcnt %ebx, %eax", {"rbx": 0}, rflags=ARITH)
    assert R(m, "rax") == 32 and fl(m) == CF
    m = run("lzcnt %rbx, %rax", {"rbx": 1 << 63})
    assert R(m, "rax") == 0 and fl(m) == ZF


def test_tzcnt_counts_trailing_zeros():
    m = run("tzcnt %bx, %ax", {"rbx": 0x8000, "rax": 0x1_0000}, rflags=ARITH)
    assert R(m, "rax") == 0x1_000F and fl(m) == 0
