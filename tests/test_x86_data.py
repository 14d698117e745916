"""Data movement (nitdbg/x86/insn/data.py) in 64-bit long mode and 32-bit protected mode:
mov/movabs/moffs, movzx/movsx/movsxd, lea, xchg, push/pop, cmovcc, setcc, bswap, the
accumulator sign extensions and the NOP forms."""

from __future__ import annotations

import pytest
from x86util import (
    STACK_TOP,
    LongModeMachine,
    ProtectedModeMachine,
    halt_label,
    set_gdt_entry,
)

from nitdbg.x86.regs import CF, OF, SF, ZF

TAIL = """
unexpected: hlt
gp: hlt
ss: hlt
pf: hlt
ud: hlt
np: hlt
.align 16
data: .quad 0x8877665544332211, 0xfedcba9876543210, 0, 0
"""
H = {13: "gp", 12: "ss", 14: "pf", 6: "ud", 11: "np"}
RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI = range(8)


def run64(src: str, regs: dict[int, int] | None = None, rflags: int | None = None):
    m = LongModeMachine(src + TAIL, handlers=H)
    for i, v in (regs or {}).items():
        m.cpu.regs[i] = v
    if rflags is not None:
        m.cpu.rflags = rflags | 2
    where = halt_label(m)
    return m, where


def run32(src: str, regs: dict[int, int] | None = None, setup=None):
    m = ProtectedModeMachine(src + TAIL, handlers=H)
    if setup is not None:
        setup(m)
    for i, v in (regs or {}).items():
        m.cpu.regs[i] = v
    where = halt_label(m)
    return m, where


# ---------------------------------------------------------------- mov
def test_mov_forms_64():
    m, where = run64("""
        mov $0x1122334455667788, %rax
        mov %rax, %rbx
        movl $-1, %ecx            # 32-bit write zero-extends
        mov $-1, %rdx             # imm32 sign-extended to 64
        mov %ax, %si              # 16-bit write merges
        mov $0x55, %ah            # high-byte register
        movq $-2, data+16(%rip)   # store imm32 sign-extended
        mov data(%rip), %r8
        movb data+1(%rip), %r9b
        hlt
    """, regs={RSI: 0xAAAA_AAAA_AAAA_AAAA})
    r = m.cpu.regs
    assert where != "unexpected"
    assert r[RBX] == 0x1122334455667788
    assert r[RCX] == 0xFFFF_FFFF
    assert r[RDX] == 0xFFFF_FFFF_FFFF_FFFF
    assert r[RSI] == 0xAAAA_AAAA_AAAA_7788
    assert r[RAX] == 0x1122334455665588
    assert m.mem.read(m.syms["data"] + 16, 8) == 0xFFFF_FFFF_FFFF_FFFE
    assert r[8] == 0x8877665544332211
    assert r[9] & 0xFF == 0x22


def test_movabs_moffs_loads_and_stores_at_a_64bit_absolute_address():
    m, _ = run64("""
        movabs 0x200000, %al
        movabs 0x200000, %rax
        mov %rax, %rbx
        not %rax
        movabs %rax, 0x200008
        movabs %eax, 0x200010
        hlt
    """)
    m2 = m.mem
    assert m.cpu.regs[RBX] == 0
    assert m2.read(0x200008, 8) == 0xFFFF_FFFF_FFFF_FFFF
    assert m2.read(0x200010, 8) == 0xFFFF_FFFF


def test_moffs_with_fs_override_adds_the_fs_base_in_64bit_mode():
    src = """
        movabs %fs:0x10, %rax
        mov %fs:0x18, %ebx
        hlt
    """
    m = LongModeMachine(src + TAIL, handlers=H)
    m.cpu.seg[4].base = m.syms["data"] - 0x10
    assert halt_label(m) != "unexpected"
    assert m.cpu.regs[RAX] == 0x8877665544332211
    assert m.cpu.regs[RBX] == 0x76543210


def test_movzx_movsx_movsxd():
    m, _ = run64("""
        mov $0x80, %eax
        movzbl %al, %ebx
        movsbq %al, %rcx
        mov $0x8001, %edx
        movswl %dx, %esi
        movzwq %dx, %rdi
        mov $0x80000000, %r8d
        movslq %r8d, %r9
        movsbw %al, %r10w
        hlt
    """, regs={10: 0x1111_1111_1111_1111})
    r = m.cpu.regs
    assert r[RBX] == 0x80
    assert r[RCX] == 0xFFFF_FFFF_FFFF_FF80
    assert r[RSI] == 0xFFFF_8001
    assert r[RDI] == 0x8001
    assert r[9] == 0xFFFF_FFFF_8000_0000
    assert r[10] == 0x1111_1111_1111_FF80


# ---------------------------------------------------------------- lea
def test_lea_all_address_sizes_and_operand_sizes():
    m, _ = run64("""
        lea 8(%rax,%rbx,4), %rcx
        lea -1(%eax), %edx          # 32-bit address size (0x67), wraps at 4 GiB
        lea 0x10(%rax), %si         # operand size 16 truncates
        lea (%eax,%ebx,2), %r8      # 0x67: computed in 32 bits, zero-extended
        lea here(%rip), %r9
    here:
        lea %fs:8(%rax), %r10       # LEA ignores segment bases
        hlt
    """, regs={RAX: 0xFFFF_FFFF_0000_0000, RBX: 0x10, RSI: 0x5555_5555_5555_5555})
    r = m.cpu.regs
    assert r[RCX] == 0xFFFF_FFFF_0000_0048
    assert r[RDX] == 0xFFFF_FFFF
    assert r[RSI] == 0x5555_5555_5555_0010
    assert r[8] == 0x20
    assert r[9] == m.syms["here"]
    assert r[10] == 0xFFFF_FFFF_0000_0008


def test_lea_in_32bit_mode_ignores_the_ds_base_and_honours_16bit_addressing():
    def setup(m):
        set_gdt_entry(m, 0x38, 0x1000, 0xFFFFF, 0xC93)
    m, _ = run32("""
        mov $0x38, %ax
        mov %ax, %ds
        lea 4(%ebx), %ecx
        addr16 lea 2(%bx,%si), %edx  # 16-bit address wraps at 64 KiB
        mov $0x10, %ax
        mov %ax, %ds
        hlt
    """, regs={RBX: 0xFFFE, RSI: 0x4}, setup=setup)
    assert m.cpu.regs[RCX] == 0x10002
    assert m.cpu.regs[RDX] == 0x4


# ---------------------------------------------------------------- xchg, cmov, setcc
def test_xchg_register_memory_and_zero_extension():
    m, _ = run64("""
        xchg %rax, %rbx
        xchg %ecx, %ecx             # 87 c9: a 32-bit write, zero-extends
        xchg %rdx, data(%rip)
        xchg %ax, %ax               # 66 90: no change
        hlt
    """, regs={RAX: 1, RBX: 2, RCX: 0xFFFF_FFFF_0000_0005, RDX: 7})
    r = m.cpu.regs
    assert (r[RAX], r[RBX]) == (2, 1)
    assert r[RCX] == 5
    assert r[RDX] == 0x8877665544332211
    assert m.mem.read(m.syms["data"], 8) == 7


def test_xchg_fault_on_memory_leaves_the_register():
    m, where = run64("""
        xchg %rax, (%rbx)
        hlt
    """, regs={RAX: 0x42, RBX: 0x4000_0000})   # above the identity-mapped 1 GiB
    assert where == "pf"
    assert m.cpu.regs[RAX] == 0x42


CC = ["o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g"]


def _cond(cc: str, f: int) -> bool:
    o, c, z, s, p = (bool(f & b) for b in (OF, CF, ZF, SF, 4))
    return {"o": o, "no": not o, "b": c, "ae": not c, "e": z, "ne": not z, "be": c or z,
            "a": not (c or z), "s": s, "ns": not s, "p": p, "np": not p, "l": s != o,
            "ge": s == o, "le": z or s != o, "g": not z and s == o}[cc]


@pytest.mark.parametrize("flags", [0, CF, ZF, SF, OF, SF | OF, CF | ZF, 4, ZF | SF])
def test_cmovcc_and_setcc_all_sixteen_conditions(flags):
    body = "\n".join(f"set{cc} %al\nmov %al, data+{i}(%rip)\ncmov{cc} %rbx, %rcx\n"
                     f"mov %rcx, data+{16 + 8 * i}(%rip)\nmov $0, %rcx" for i, cc in
                     enumerate(CC))
    src = "mov $7, %rbx\nmov $0, %rcx\n" + body + "\nhlt\n" + TAIL + ".fill 256, 1, 0\n"
    m = LongModeMachine(src, handlers=H)
    m.cpu.rflags = flags | 2
    assert halt_label(m) != "unexpected"
    base = m.syms["data"]
    for i, cc in enumerate(CC):
        want = _cond(cc, flags)
        assert m.mem.read(base + i, 1) == int(want), cc
        assert m.mem.read(base + 16 + 8 * i, 8) == (7 if want else 0), cc


def test_cmov_32bit_zero_extends_when_condition_false():
    # SDM vol 2 CMOVcc: in 64-bit mode a 32-bit CMOV clears the upper half of the
    # destination whether or not the condition holds.
    m, _ = run64("""
        xor %eax, %eax          # ZF=1
        cmovne %ebx, %ecx       # condition false
        cmove %ebx, %edx        # condition true
        hlt
    """, regs={RBX: 5, RCX: 0xFFFF_FFFF_0000_0009, RDX: 0xFFFF_FFFF_0000_0009})
    assert m.cpu.regs[RCX] == 9
    assert m.cpu.regs[RDX] == 5


def test_cmov_memory_source_faults_even_when_condition_false():
    m, where = run64("""
        xor %eax, %eax
        cmovne (%rbx), %rcx
        hlt
    """, regs={RBX: 0x4000_0000, RCX: 3})
    assert where == "pf"
    assert m.cpu.regs[RCX] == 3


# ---------------------------------------------------------------- bswap, sign extensions
def test_bswap_and_accumulator_sign_extensions():
    m, _ = run64("""
        mov $0x1122334455667788, %rax
        bswap %rax
        mov %rax, %r8
        mov $0x11223344, %ebx
        bswap %ebx
        mov $0x80, %eax
        cbtw                 # cbw: al -> ax
        mov %rax, %r9
        mov $0x8000, %eax
        cwtl                 # cwde
        mov %rax, %r10
        mov $0x80000000, %eax
        cltq                 # cdqe
        mov %rax, %r11
        cqto                 # cqo: rdx = sign of rax
        mov %rdx, %r12
        mov $0x8000, %eax
        cwtd                 # cwd: dx = sign of ax
        mov %rdx, %r13
        mov $0x7fffffff, %eax
        cltd                 # cdq: edx = 0, zero-extended
        mov %rdx, %r14
        hlt
    """, regs={RBX: 0xFFFF_FFFF_0000_0000})
    r = m.cpu.regs
    assert r[8] == 0x8877665544332211
    assert r[RBX] == 0x44332211
    assert r[9] == 0xFF80
    assert r[10] == 0xFFFF_8000
    assert r[11] == 0xFFFF_FFFF_8000_0000
    assert r[12] == 0xFFFF_FFFF_FFFF_FFFF
    assert r[13] == 0xFFFF_FFFF_FFFF_FFFF   # dx = ffff merged into the old rdx
    assert r[14] == 0


def test_nop_forms_change_nothing():
    m, where = run64("""
        nop
        xchg %ax, %ax
        nopw 0x0(%rax,%rax,1)
        nopl (%rax)
        .byte 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0   # nopw %cs:0(%rax,%rax,1)
        endbr64
        hlt
    """, regs={RAX: 0x4000_0000_0000})   # a NOP's memory operand is not accessed
    assert where not in H.values()
    assert m.cpu.regs[RAX] == 0x4000_0000_0000
    assert m.cpu.icount == 7


# ---------------------------------------------------------------- push / pop
def test_push_pop_imm_reg_mem_sreg_64():
    m, _ = run64("""
        push $-2
        pop %rax
        pushw $0x1234
        popw %bx
        push data(%rip)
        pop data+16(%rip)
        push %fs
        pop %rcx
        pushw %fs
        pop %dx
        push %rsp            # pushes the value before the push
        pop %rsi
        hlt
    """, regs={RBX: 0xAAAA_AAAA_AAAA_AAAA})
    r = m.cpu.regs
    assert r[RAX] == 0xFFFF_FFFF_FFFF_FFFE
    assert r[RBX] == 0xAAAA_AAAA_AAAA_1234
    assert m.mem.read(m.syms["data"] + 16, 8) == 0x8877665544332211
    assert r[RCX] == 0x10
    assert r[RDX] & 0xFFFF == 0x10
    assert r[RSI] == STACK_TOP
    assert r[RSP] == STACK_TOP


def test_pop_rsp_loads_popped_value():
    # SDM vol 2 POP: "POP ESP increments the stack pointer before the popped data is
    # written", so RSP ends as the value read from the stack.
    m, _ = run64("""
        push $0x7000
        pop %rsp
        hlt
    """)
    assert m.cpu.regs[RSP] == 0x7000


def test_pop_into_rsp_based_memory_uses_the_incremented_rsp():
    m, _ = run64("""
        push $0x11
        push $0x22
        popq 8(%rsp)      # the address is computed after RSP += 8
        hlt
    """)
    # after popping 0x22, RSP = STACK_TOP - 8; 8(%rsp) = STACK_TOP
    assert m.mem.read(STACK_TOP, 8) == 0x22
    assert m.cpu.regs[RSP] == STACK_TOP - 8


def test_push_fault_leaves_rsp_unchanged():
    src = """
        push %rax
        hlt
    """ + TAIL
    m = LongModeMachine(src, handlers=H, ist={14: 1})   # #PF on its own stack
    m.cpu.regs[RSP] = 0x4000_0008                      # push writes 0x40000000: unmapped
    assert halt_label(m) == "pf"
    frame = m.cpu.regs[RSP]
    assert m.mem.read(frame + 8, 8) == m.syms["_start"]      # the push is restarted
    assert m.mem.read(frame + 8 + 24, 8) == 0x4000_0008      # interrupted RSP unchanged


def test_pop_fault_on_memory_destination_restores_rsp():
    src = """
        push $5
        popq (%rbx)
        hlt
    """ + TAIL
    m = LongModeMachine(src, handlers=H, ist={14: 1})
    m.cpu.regs[RBX] = 0x4000_0000
    assert halt_label(m) == "pf"
    frame = m.cpu.regs[RSP]
    assert m.mem.read(frame + 8 + 24, 8) == STACK_TOP - 8


def test_push_non_canonical_stack_raises_ss_not_gp():
    # SDM vol 3 6.15 (#SS): a non-canonical address in a stack reference raises #SS(0).
    src = """
        push %rax
        hlt
    """ + TAIL
    m = LongModeMachine(src, handlers=H, ist={12: 1})
    m.cpu.regs[RSP] = 0x8000_0000_0000_0008
    assert halt_label(m) == "ss"
    frame = m.cpu.regs[RSP]
    assert m.mem.read(frame, 8) == 0                        # error code 0
    assert m.mem.read(frame + 8 + 24, 8) == 0x8000_0000_0000_0008


def test_rbp_based_non_canonical_operand_raises_ss_other_bases_raise_gp():
    m, where = run64("mov (%rbp), %rax\nhlt\n", regs={RBP: 0x8000_0000_0000_0000})
    assert where == "ss"
    m, where = run64("mov (%rbx), %rax\nhlt\n", regs={RBX: 0x8000_0000_0000_0000})
    assert where == "gp"
    m, where = run64("mov %ss:(%rbx), %rax\nhlt\n", regs={RBX: 0x8000_0000_0000_0000})
    assert where == "ss"


# ---------------------------------------------------------------- 32-bit protected mode
def test_push_pop_32bit_use_esp_and_16bit_operand_size():
    m, _ = run32("""
        push $-1
        pushw $0x1234
        push %ds
        pushw %es
        pop %ax
        pop %ebx
        pop %cx
        pop %edx
        hlt
    """)
    r = m.cpu.regs
    assert r[RAX] & 0xFFFF == 0x10
    assert r[RBX] == 0x10
    assert r[RCX] & 0xFFFF == 0x1234
    assert r[RDX] == 0xFFFF_FFFF
    assert r[RSP] == STACK_TOP


def test_32bit_memory_operands_add_the_ds_base():
    def setup(m):
        set_gdt_entry(m, 0x38, 0x2000, 0xFFFFF, 0xC93)
        m.mem.write(0x2010, 4, 0xCAFEBABE)
    m, where = run32("""
        mov $0x38, %ax
        mov %ax, %ds
        mov 0x10, %ebx          # moffs through DS: linear 0x2010
        mov $0x10, %esi
        mov (%esi), %ecx
        movl $0x12345678, 4(%esi)
        mov $0x10, %ax
        mov %ax, %ds
        hlt
    """, setup=setup)
    assert where != "unexpected"
    assert m.cpu.regs[RBX] == 0xCAFEBABE
    assert m.cpu.regs[RCX] == 0xCAFEBABE
    assert m.mem.read(0x2014, 4) == 0x12345678


def test_32bit_stack_uses_the_ss_base():
    def setup(m):
        set_gdt_entry(m, 0x38, 0x10000, 0xFFFFF, 0xC93)
    m, _ = run32("""
        mov $0x38, %ax
        mov %ax, %ss
        mov $0x1000, %esp
        push $0xabcd
        pop %ebx
        push $0x77
        hlt
    """, setup=setup)
    assert m.cpu.regs[RBX] == 0xABCD
    assert m.mem.read(0x10000 + 0xFFC, 4) == 0x77
    assert m.cpu.regs[RSP] == 0xFFC


def test_32bit_cmov_setcc_bswap_xchg():
    m, _ = run32("""
        mov $0x11223344, %eax
        bswap %eax
        cmp $1, %ebx          # 0 - 1: CF=1, SF=1
        setb %cl
        cmovb %eax, %edx
        xchg %eax, %esi
        hlt
    """)
    r = m.cpu.regs
    assert r[RCX] & 0xFF == 1
    assert r[RDX] == 0x44332211
    assert r[RSI] == 0x44332211
