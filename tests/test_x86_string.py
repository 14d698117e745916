"""String instructions (nitdbg/x86/insn/string.py): movs, stos, lods, cmps, scas with and
without rep/repe/repne, both directions, address sizes 32 and 64, 32-bit protected mode with
segment bases, and the precise-fault, single-step and data-breakpoint rules."""

from __future__ import annotations

import pytest
from x86util import (
    PML4,
    LongModeMachine,
    ProtectedModeMachine,
    halt_label,
    paging32,
    set_gdt_entry,
    unmap32,
)

from nitdbg.x86.regs import AF, CF, DF, OF, PF, SF, TF, ZF

TAIL = """
unexpected: hlt
gp: hlt
ss: hlt
pf: hlt
ud: hlt
"""
H = {13: "gp", 12: "ss", 14: "pf", 6: "ud"}
RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI = range(8)
SRC, DST = 0x200000, 0x300000
EDGE = 0x200_0000           # lm() leaves the 2 MiB page here unmapped
ARITH = CF | PF | AF | ZF | SF | OF


def lm(src: str, regs: dict[int, int] | None = None, rflags: int = 0,
       handlers: dict[int, str] | None = None) -> LongModeMachine:
    m = LongModeMachine(src + TAIL, handlers={**H, **(handlers or {})}, ist={14: 1, 13: 1})
    m.mem.write(PML4 + 0x2000 + (EDGE >> 21) * 8, 8, 0)     # not present
    for i, v in (regs or {}).items():
        m.cpu.regs[i] = v
    m.cpu.rflags = rflags | 2
    return m


def fill(m, addr: int, data: bytes) -> None:
    m.mem.write_bytes(addr, data)


PATTERN = bytes(range(1, 256)) * 40       # 10200 bytes, crosses pages


# ---------------------------------------------------------------- movs
@pytest.mark.parametrize("suffix,size", [("b", 1), ("w", 2), ("l", 4), ("q", 8)])
@pytest.mark.parametrize("count", [0, 1, 3, 1000])
def test_rep_movs_forward_all_sizes(suffix, size, count):
    m = lm(f"rep movs{suffix}\nhlt\n", regs={RCX: count, RSI: SRC + 3, RDI: DST + 5})
    fill(m, SRC, PATTERN)
    halt_label(m)
    n = count * size
    assert m.mem.read_bytes(DST + 5, n) == PATTERN[3:3 + n]
    assert m.mem.read_bytes(DST + 5 + n, 1) == b"\0"
    r = m.cpu.regs
    assert (r[RCX], r[RSI], r[RDI]) == (0, SRC + 3 + n, DST + 5 + n)


@pytest.mark.parametrize("suffix,size", [("b", 1), ("q", 8)])
def test_rep_movs_backward_with_df_set(suffix, size):
    count = 700
    top = (count - 1) * size
    m = lm(f"std\nrep movs{suffix}\ncld\nhlt\n",
           regs={RCX: count, RSI: SRC + 9 + top, RDI: DST + 1 + top})
    fill(m, SRC, PATTERN)
    halt_label(m)
    n = count * size
    assert m.mem.read_bytes(DST + 1, n) == PATTERN[9:9 + n]
    assert m.mem.read_bytes(DST, 1) == b"\0"
    r = m.cpu.regs
    assert (r[RCX], r[RSI], r[RDI]) == (0, SRC + 9 - size, DST + 1 - size)


def test_rep_with_zero_count_changes_no_register_memory_or_flag():
    m = lm("""
        rep movsb
        rep stosq
        repe cmpsb
        repne scasw
        rep lodsl
        addr32 rep movsb
    done: hlt
    """, regs={RCX: 0, RSI: 0x8000_0000_0000_0000, RDI: 0x8000_0000_0000_0000, RAX: 7},
        rflags=ZF | CF)
    assert halt_label(m) == "done"
    r = m.cpu.regs
    assert (r[RCX], r[RSI], r[RDI], r[RAX]) == (0, 1 << 63, 1 << 63, 7)
    assert m.cpu.rflags & ARITH == ZF | CF


def test_rep_movsb_with_32bit_address_size_uses_esi_edi_ecx():
    m = lm("addr32 rep movsb\nhlt\n",
           regs={RCX: 0xAAAA_0000_0000_0010, RSI: 0xBBBB_0000_0000_0000 | SRC,
                 RDI: 0xCCCC_0000_0000_0000 | DST})
    fill(m, SRC, PATTERN)
    halt_label(m)
    assert m.mem.read_bytes(DST, 16) == PATTERN[:16]
    r = m.cpu.regs
    # 32-bit register writes zero-extend
    assert (r[RCX], r[RSI], r[RDI]) == (0, SRC + 16, DST + 16)


def test_rep_movsb_overlapping_forward_copy_repeats_the_first_byte():
    # Byte-at-a-time semantics: with RDI = RSI + 1 every byte reads the one just written.
    m = lm("rep movsb\nhlt\n", regs={RCX: 3000, RSI: SRC, RDI: SRC + 1})
    fill(m, SRC, b"\x5a" + bytes(range(1, 200)) * 20)
    halt_label(m)
    assert m.mem.read_bytes(SRC, 3001) == b"\x5a" * 3001


def test_rep_movsq_overlapping_backward_copy():
    m = lm("std\nrep movsq\nhlt\n", regs={RCX: 100, RSI: SRC + 8 * 99 + 8, RDI: SRC + 8 * 99})
    data = b"".join(i.to_bytes(8, "little") for i in range(1, 120))
    fill(m, SRC, data)
    halt_label(m)
    # The copy runs from the top and the destination is one element below the source, so
    # every read after the first sees the element the previous iteration just wrote.
    want = bytearray(data)
    for i in range(99, -1, -1):
        want[8 * i:8 * i + 8] = want[8 * (i + 1):8 * (i + 2)]
    assert m.mem.read_bytes(SRC, len(data)) == bytes(want)


def test_movs_source_fs_override_adds_fs_base_destination_ignores_es():
    m = lm("movsq %fs:(%rsi), %es:(%rdi)\nhlt\n", regs={RSI: 0x10, RDI: DST})
    m.cpu.seg[4].base = SRC
    m.cpu.seg[0].base = 0x1234_0000     # ES base is ignored in 64-bit mode
    fill(m, SRC + 0x10, b"ABCDEFGH")
    halt_label(m)
    assert m.mem.read_bytes(DST, 8) == b"ABCDEFGH"
    assert m.cpu.regs[RSI] == 0x18


def test_rep_string_is_one_retired_instruction():
    m = lm("rep movsb\nrep stosb\nhlt\n", regs={RCX: 5000, RSI: SRC, RDI: DST})
    halt_label(m)
    assert m.cpu.icount == 3


# ---------------------------------------------------------------- stos / lods
def test_rep_stos_all_sizes_and_directions():
    m = lm("""
        mov $0x1122334455667788, %rax
        mov $0x300000, %rdi
        mov $5000, %ecx
        rep stosb
        mov $0x310000, %rdi
        mov $600, %ecx
        rep stosq
        std
        mov $0x320000 + 4 * 99, %edi
        mov $100, %ecx
        rep stosl
        mov $0x330000, %edi
        stosw
        cld
        hlt
    """)
    halt_label(m)
    rd = m.mem.read_bytes
    assert rd(0x300000, 5001) == b"\x88" * 5000 + b"\0"
    assert rd(0x310000, 4800) == (0x1122334455667788).to_bytes(8, "little") * 600
    assert rd(0x320000, 400) == (0x55667788).to_bytes(4, "little") * 100
    assert rd(0x320000 - 4, 4) == b"\0" * 4
    assert rd(0x330000, 2) == b"\x88\x77"
    assert m.cpu.regs[RDI] == 0x330000 - 2


def test_lods_loads_the_accumulator_and_advances_rsi():
    m = lm("""
        lodsb
        mov %rax, %r8
        lodsq
        mov %rax, %r9
        mov $3, %ecx
        rep lodsw
        hlt
    """, regs={RSI: SRC, RAX: 0xFFFF_FFFF_FFFF_FFFF})
    fill(m, SRC, bytes(range(1, 40)))
    halt_label(m)
    r = m.cpu.regs
    assert r[8] == 0xFFFF_FFFF_FFFF_FF01
    assert r[9] == int.from_bytes(bytes(range(2, 10)), "little")
    assert r[RAX] & 0xFFFF == int.from_bytes(bytes([14, 15]), "little")
    assert r[RSI] == SRC + 1 + 8 + 6


# ---------------------------------------------------------------- cmps / scas
def _sub_flags(a: int, b: int, bits: int) -> int:
    m = (1 << bits) - 1
    r = (a - b) & m
    f = 0
    f |= CF if a < b else 0
    f |= ZF if r == 0 else 0
    f |= SF if r >> (bits - 1) else 0
    f |= PF if bin(r & 0xFF).count("1") % 2 == 0 else 0
    f |= AF if (a ^ b ^ r) & 0x10 else 0
    f |= OF if ((a ^ b) & (a ^ r)) >> (bits - 1) & 1 else 0
    return f


def test_cmps_flags_are_those_of_sub_source_minus_destination():
    m = lm("cmpsb\nhlt\n", regs={RSI: SRC, RDI: DST})
    fill(m, SRC, b"\x01")
    fill(m, DST, b"\x80")
    halt_label(m)
    assert m.cpu.rflags & ARITH == _sub_flags(0x01, 0x80, 8)
    assert (m.cpu.regs[RSI], m.cpu.regs[RDI]) == (SRC + 1, DST + 1)


def test_repe_cmpsb_stops_after_the_first_difference():
    m = lm("repe cmpsb\nhlt\n", regs={RCX: 100, RSI: SRC, RDI: DST})
    fill(m, SRC, b"hello world")
    fill(m, DST, b"hello there")
    halt_label(m)
    r = m.cpu.regs
    # mismatch at index 6 ('w' vs 't'): 7 iterations ran
    assert (r[RCX], r[RSI], r[RDI]) == (93, SRC + 7, DST + 7)
    assert m.cpu.rflags & ARITH == _sub_flags(ord("w"), ord("t"), 8)


def test_repne_scasb_finds_the_terminator():
    m = lm("xor %eax, %eax\nmov $-1, %rcx\nrepne scasb\nsetz %dl\nnot %rcx\ndec %rcx\nhlt\n",
           regs={RDI: SRC})
    fill(m, SRC, b"nitdbg string\0xyz")
    halt_label(m)
    assert m.cpu.regs[RCX] == len("nitdbg string")
    assert m.cpu.regs[RDX] & 0xFF == 1


def test_repe_scasq_runs_out_of_count_with_zf_still_set():
    m = lm("repe scasq\nhlt\n", regs={RCX: 4, RDI: SRC, RAX: 0})
    halt_label(m)
    assert m.cpu.regs[RCX] == 0 and m.cpu.rflags & ZF
    assert m.cpu.regs[RDI] == SRC + 32


def test_repne_cmpsw_backward_stops_on_equal_words():
    m = lm("std\nrepne cmpsw\ncld\nhlt\n", regs={RCX: 10, RSI: SRC + 18, RDI: DST + 18})
    fill(m, SRC, b"".join(i.to_bytes(2, "little") for i in range(10)))
    fill(m, DST, b"".join((100 + i if i != 4 else 4).to_bytes(2, "little") for i in range(10)))
    halt_label(m)
    r = m.cpu.regs
    # elements 9..4 compared (6 iterations): stops on element 4 (equal)
    assert (r[RCX], r[RSI], r[RDI]) == (4, SRC + 6, DST + 6)
    assert m.cpu.rflags & ZF


def test_scas_compares_accumulator_minus_memory():
    m = lm("scasl\nhlt\n", regs={RDI: SRC, RAX: 0x8000_0000})
    fill(m, SRC, (1).to_bytes(4, "little"))
    halt_label(m)
    assert m.cpu.rflags & ARITH == _sub_flags(0x8000_0000, 1, 32)


def test_repe_cmpsb_long_run_across_pages_stops_at_the_difference():
    n = 9000
    a = bytes((i * 7) & 0xFF for i in range(n))
    b = bytearray(a)
    b[6001] ^= 0x40
    m = lm("repe cmpsb\nhlt\n", regs={RCX: n, RSI: SRC + 0x321, RDI: DST + 0x987})
    fill(m, SRC + 0x321, a)
    fill(m, DST + 0x987, bytes(b))
    halt_label(m)
    r = m.cpu.regs
    assert (r[RCX], r[RSI], r[RDI]) == (n - 6002, SRC + 0x321 + 6002, DST + 0x987 + 6002)
    assert m.cpu.rflags & ARITH == _sub_flags(a[6001], b[6001], 8)


def test_repe_cmpsq_count_exhausted_leaves_the_flags_of_an_equal_compare():
    m = lm("repe cmpsq\nhlt\n", regs={RCX: 700, RSI: SRC, RDI: DST}, rflags=CF | SF)
    fill(m, SRC, PATTERN[:5600])
    fill(m, DST, PATTERN[:5600])
    halt_label(m)
    assert m.cpu.regs[RCX] == 0 and m.cpu.rflags & ARITH == ZF | PF


def test_repne_scasw_ignores_a_match_at_an_odd_byte_offset():
    words = [0x1111] * 3000 + [0x3412, 0x7856] + [0x2222] * 10 + [0x5634] + [0] * 10
    m = lm("repne scasw\nhlt\n", regs={RCX: 5000, RDI: SRC, RAX: 0x5634})
    fill(m, SRC, b"".join(w.to_bytes(2, "little") for w in words))
    halt_label(m)
    found = words.index(0x5634)         # the aligned one, not bytes 12 34 | 56 78
    assert m.cpu.regs[RDI] == SRC + 2 * (found + 1)
    assert m.cpu.regs[RCX] == 5000 - (found + 1)
    assert m.cpu.rflags & ZF


def test_repne_scasb_without_a_match_ends_with_the_flags_of_the_last_compare():
    m = lm("repne scasb\nhlt\n", regs={RCX: 3000, RDI: SRC, RAX: 0})
    fill(m, SRC, b"\x01" * 2999 + b"c")
    halt_label(m)
    assert m.cpu.regs[RCX] == 0
    assert m.cpu.rflags & ARITH == _sub_flags(0, ord("c"), 8)


# ---------------------------------------------------------------- faults mid-way
def _pf_frame(m) -> tuple[int, int]:
    rsp = m.cpu.regs[RSP]
    return m.mem.read(rsp, 8), m.mem.read(rsp + 8, 8)   # error code, RIP


def test_rep_movsb_fault_midway_reports_progress():
    # SDM vol 2 REP: a fault in iteration k is taken with the registers updated for the
    # k-1 iterations that completed and RIP at the instruction, so it can be restarted.
    m = lm("br: rep movsb\nhlt\n", regs={RCX: 5000, RSI: SRC, RDI: EDGE - 3000})
    fill(m, SRC, PATTERN)
    assert halt_label(m) == "pf"
    err, rip = _pf_frame(m)
    assert rip == m.syms["br"] and err == 0x2 and m.cpu.cr2 == EDGE
    r = m.cpu.regs
    assert (r[RCX], r[RSI], r[RDI]) == (2000, SRC + 3000, EDGE)
    assert m.mem.read_bytes(EDGE - 3000, 3000) == PATTERN[:3000]


def test_rep_movsq_fault_on_element_straddling_the_page_reports_progress():
    m = lm("br: rep movsq\nhlt\n", regs={RCX: 100, RSI: SRC, RDI: EDGE - 8 * 10 - 4})
    fill(m, SRC, PATTERN)
    assert halt_label(m) == "pf"
    r = m.cpu.regs
    assert (r[RCX], r[RSI], r[RDI]) == (90, SRC + 80, EDGE - 4)
    # the straddling element wrote nothing
    assert m.mem.read_bytes(EDGE - 4, 4) == b"\0" * 4


def test_rep_movsb_source_fault_backward_reports_progress():
    m = lm("std\nbr: rep movsb\nhlt\n", regs={RCX: 100, RSI: EDGE + 49, RDI: DST + 99})
    assert halt_label(m) == "pf"
    err, rip = _pf_frame(m)
    assert rip == m.syms["br"] and err == 0
    # the first element read faults: nothing happened at all
    assert (m.cpu.regs[RCX], m.cpu.regs[RSI], m.cpu.regs[RDI]) == (100, EDGE + 49, DST + 99)


def test_rep_stosq_fault_midway_reports_progress():
    m = lm("br: rep stosq\nhlt\n", regs={RCX: 1000, RDI: EDGE - 8 * 600, RAX: 0xAB})
    assert halt_label(m) == "pf"
    r = m.cpu.regs
    assert (r[RCX], r[RDI]) == (400, EDGE)
    assert m.mem.read(EDGE - 8, 8) == 0xAB


def test_repe_cmpsb_fault_midway_keeps_flags_of_the_last_completed_iteration():
    m = lm("br: repe cmpsb\nhlt\n", regs={RCX: 10, RSI: SRC, RDI: EDGE - 2})
    fill(m, SRC, b"\x07\x07")
    fill(m, EDGE - 2, b"\x07\x07")
    assert halt_label(m) == "pf"
    r = m.cpu.regs
    assert (r[RCX], r[RSI], r[RDI]) == (8, SRC + 2, EDGE)
    rflags = m.mem.read(m.cpu.regs[RSP] + 8 + 16, 8)
    assert rflags & ZF


def test_repe_scasb_fault_after_a_long_equal_run_keeps_zf_and_progress():
    m = lm("br: repe scasb\nhlt\n", regs={RCX: 5000, RDI: EDGE - 3000, RAX: 0x61},
           rflags=CF)
    fill(m, EDGE - 3000, b"a" * 3000)
    assert halt_label(m) == "pf"
    r = m.cpu.regs
    assert (r[RCX], r[RDI]) == (2000, EDGE)
    rflags = m.mem.read(m.cpu.regs[RSP] + 8 + 16, 8)
    assert rflags & ARITH == ZF | PF


def test_non_canonical_string_address_raises_gp_stack_segment_raises_ss():
    m = lm("movsb\nhlt\n", regs={RSI: 0x8000_0000_0000_0000, RDI: DST})
    assert halt_label(m) == "gp"
    m = lm("movsb %ss:(%rsi), %es:(%rdi)\nhlt\n", regs={RSI: 0x8000_0000_0000_0000, RDI: DST})
    assert halt_label(m) == "ss"


# ---------------------------------------------------------------- TF and data breakpoints
DB_RECORDER = """
db: mov (%rsp), %rax
    mov %rax, (%rbx)
    mov %rcx, 8(%rbx)
    add $16, %rbx
    iretq
"""


def test_rep_movsb_with_tf_traps_after_each_iteration_at_the_same_rip():
    # SDM vol 3 17.3.1.4 / APM vol 2 13.1.4: a single-step trap is taken between iterations
    # of a repeated string instruction; RIP stays on it until the last iteration.
    m = lm("""
        pushfq
        orq $0x100, (%rsp)
        popfq
        mov $3, %ecx
    br: rep movsb
    after: pushfq
        andq $~0x100, (%rsp)
        popfq
        hlt
    """ + DB_RECORDER, regs={RSI: SRC, RDI: DST, RBX: 0x50000}, handlers={1: "db"})
    fill(m, SRC, b"xyz")
    halt_label(m)
    rec = [(m.mem.read(0x50000 + 16 * i, 8), m.mem.read(0x50008 + 16 * i, 8))
           for i in range(6)]
    br, after = m.syms["br"], m.syms["after"]
    assert rec[:4] == [(br, 3), (br, 2), (br, 1), (after, 0)]
    assert m.mem.read_bytes(DST, 3) == b"xyz"


def test_data_breakpoint_ends_rep_movs_after_the_iteration_that_hit():
    m = lm("""
        mov $0x300010, %eax
        mov %rax, %dr0
        mov $0x00010001, %eax       # L0, R/W0 = write, LEN0 = 1 byte
        mov %rax, %dr7
        mov $100, %ecx
    br: rep movsb
        xor %eax, %eax
        mov %rax, %dr7
    done: hlt
    """ + DB_RECORDER, regs={RSI: SRC, RDI: DST, RBX: 0x50000}, handlers={1: "db"})
    fill(m, SRC, PATTERN)
    assert halt_label(m) == "done"
    assert (m.mem.read(0x50000, 8), m.mem.read(0x50008, 8)) == (m.syms["br"], 100 - 0x11)
    assert m.mem.read_bytes(DST, 100) == PATTERN[:100]
    assert m.cpu.regs[RCX] == 0


# ---------------------------------------------------------------- 32-bit protected mode
def test_rep_movsl_32bit_uses_ds_and_es_bases():
    m = ProtectedModeMachine("""
        mov $0x38, %ax
        mov %ax, %ds
        mov $0x40, %ax
        mov %ax, %es
        mov $0x100, %esi
        mov $0x200, %edi
        mov $4, %ecx
        rep movsl
        mov $0x10, %ax
        mov %ax, %ds
        mov %ax, %es
        hlt
    """ + TAIL, handlers=H)
    set_gdt_entry(m, 0x38, SRC, 0xFFFFF, 0xC93)
    set_gdt_entry(m, 0x40, DST, 0xFFFFF, 0xC93)
    fill(m, SRC + 0x100, PATTERN[:16])
    halt_label(m)
    assert m.mem.read_bytes(DST + 0x200, 16) == PATTERN[:16]
    assert (m.cpu.regs[RSI], m.cpu.regs[RDI]) == (0x110, 0x210)


def test_rep_stosb_32bit_paging_fault_midway_reports_progress():
    m = ProtectedModeMachine("br: rep stosb\nhlt\n" + TAIL, handlers=H)
    paging32(m)
    unmap32(m, 0x301000)
    m.cpu.regs[RCX], m.cpu.regs[RDI], m.cpu.regs[RAX] = 0x2000, 0x300800, 0x11
    assert halt_label(m) == "pf"
    esp = m.cpu.regs[RSP]
    assert m.mem.read(esp + 4, 4) == m.syms["br"] and m.cpu.cr2 == 0x301000
    assert (m.cpu.regs[RCX], m.cpu.regs[RDI]) == (0x2000 - 0x800, 0x301000)
    assert m.mem.read_bytes(0x300800, 0x800) == b"\x11" * 0x800


def test_16bit_address_size_string_wraps_si_di_at_64k():
    m = ProtectedModeMachine("addr16 rep movsb\nhlt\n" + TAIL, handlers=H)
    m.cpu.regs[RCX], m.cpu.regs[RSI], m.cpu.regs[RDI] = 4, 0xFFFE, 0x5_0000 | 0x8000
    fill(m, 0xFFFE, b"ab")
    fill(m, 0x0, b"cd")
    halt_label(m)
    assert m.mem.read_bytes(0x8000, 4) == b"abcd"
    assert (m.cpu.regs[RSI], m.cpu.regs[RDI]) == (0x2, 0x5_8004)


def test_flag_df_is_respected_by_single_movs_in_32bit_mode():
    m = ProtectedModeMachine("std\nmovsw\ncld\nhlt\n" + TAIL, handlers=H)
    m.cpu.regs[RSI], m.cpu.regs[RDI] = SRC, DST
    fill(m, SRC, b"QR")
    halt_label(m)
    assert m.mem.read_bytes(DST, 2) == b"QR"
    assert (m.cpu.regs[RSI], m.cpu.regs[RDI]) == (SRC - 2, DST - 2)
    assert not m.cpu.rflags & DF and not m.cpu.rflags & TF
