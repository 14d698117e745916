"""Mode-dependent behaviour of data movement and control transfer: the protected-mode ->
long-mode switch of a 32-bit guest (SDM vol 3 10.8.5, APM vol 2 14.6), far transfers between
64-bit and compatibility mode, and the 16-bit stack (SS.B=0) of protected mode."""

from __future__ import annotations

from x86util import (
    STACK_TOP,
    LongModeMachine,
    ProtectedModeMachine,
    halt_label,
    long_mode_tables,
    set_gdt_entry,
)

from nitdbg.x86.regs import EFER_LMA, EFER_LME

TAIL = """
unexpected: hlt
gp: hlt
ud: hlt
pf: hlt
"""
H = {13: "gp", 6: "ud", 14: "pf"}
RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI = range(8)
CODE64 = 0x38

SWITCH = """
        mov %cr4, %eax
        or $0x20, %eax            # CR4.PAE
        mov %eax, %cr4
        mov $0x30000, %eax        # long_mode_tables()
        mov %eax, %cr3
        mov $0xC0000080, %ecx     # EFER.LME
        rdmsr
        or $0x100, %eax
        wrmsr
        mov %cr0, %eax
        or $0x80000000, %eax      # CR0.PG: long mode becomes active (EFER.LMA=1)
        mov %eax, %cr0
    compat:
        ljmp $0x38, $long64       # a code segment with L=1: 64-bit mode
    .code64
    long64:
        movabs $0x1122334455667788, %rax
        mov %rax, %rbx
        shl $8, %rbx
        push %rbx                 # 8-byte push on RSP
        call sub64
        pop %rdx
        lea src(%rip), %rsi
        lea dst(%rip), %rdi
        mov $3, %ecx
        rep movsq
        mov dst+16(%rip), %r15
    done:
        hlt
    sub64:
        mov %rsp, %r8
        ret
    .align 8
    src: .quad 1, 2, 0x8000000000000003
    dst: .quad 0, 0, 0
"""


def switching_machine() -> ProtectedModeMachine:
    m = ProtectedModeMachine(SWITCH + TAIL, handlers=H)
    long_mode_tables(m)
    set_gdt_entry(m, CODE64, 0, 0xFFFFF, 0xA9B)
    return m


def test_32bit_program_switching_to_long_mode_runs_64bit_code():
    m = switching_machine()
    c = m.cpu
    assert c.mode == 32
    assert halt_label(m) == "done"
    assert c.mode == 64
    assert c.efer & EFER_LMA and c.efer & EFER_LME
    assert c.regs[RAX] == 0x1122334455667788
    assert c.regs[RDX] == 0x2233445566778800
    assert c.regs[8] == STACK_TOP - 16          # the 8-byte push and the 8-byte return
    assert c.regs[RSP] == STACK_TOP
    assert c.regs[15] == 0x8000000000000003


def test_setting_cr0_pg_with_efer_lme_enters_compatibility_mode_first():
    # APM vol 2 14.6.1: after paging is enabled with LME=1, EFER.LMA=1 but CS (L=0) still
    # selects compatibility mode until a far transfer loads a 64-bit code segment.
    m = switching_machine()
    m.run_until("compat")
    c = m.cpu
    assert c.efer & EFER_LMA
    assert c.mode == 32
    # the 4-level tables are in use: the code is fetched through them
    assert c.translate(c.rip, 0) == c.rip


def test_far_jump_to_a_64bit_segment_without_long_mode_active_stays_32bit():
    # Without EFER.LMA the L bit means nothing: the segment is 32-bit code (D=1) or 16-bit.
    m = ProtectedModeMachine("""
        ljmp $0x38, $t
    t:  mov $1, %eax
        hlt
    """ + TAIL, handlers=H)
    set_gdt_entry(m, 0x38, 0, 0xFFFFF, 0xE9B)    # L=1, D=1: harmless outside long mode
    assert halt_label(m) != "gp"
    assert m.cpu.mode == 32 and m.cpu.regs[RAX] == 1


def test_lcall_from_64bit_to_compatibility_code_and_lret_back():
    m = LongModeMachine("""
        lcall *ptr(%rip)
    back:
        mov %rax, %rbx
        hlt
    .code32
    c32:
        mov %esp, %eax
        lret
    .code64
    ptr: .long c32
         .word 0x38
    """ + TAIL, handlers=H)
    set_gdt_entry(m, 0x38, 0, 0xFFFFF, 0xC9B)
    assert halt_label(m) != "ud"
    c = m.cpu
    assert c.mode == 64
    assert c.rip == m.syms["back"] + 4
    assert c.regs[RBX] == STACK_TOP - 8        # 4-byte CS + 4-byte EIP pushed
    assert c.regs[RSP] == STACK_TOP


def test_push_pop_with_a_16bit_stack_segment_use_sp_and_keep_the_upper_esp():
    # SS.B=0: the stack pointer is SP; it wraps at 64 KiB and the upper half of ESP stays.
    m = ProtectedModeMachine("""
        mov $0x38, %ax
        mov %ax, %ss
        mov $0x12340000, %esp
        push $0xabcd
        mov %esp, %ebx
        pop %ecx
        mov %esp, %edx
        mov $0x10, %ax
        mov %ax, %ss
        mov $0x80000, %esp
        hlt
    """ + TAIL, handlers=H)
    set_gdt_entry(m, 0x38, 0x40000, 0xFFFF, 0x093)    # 16-bit data, byte granular
    halt_label(m)
    r = m.cpu.regs
    assert r[RBX] == 0x1234FFFC
    assert r[RCX] == 0xABCD
    assert r[RDX] == 0x12340000
    assert m.mem.read(0x40000 + 0xFFFC, 4) == 0xABCD


def test_real_mode_far_jmp_call_ret_load_cs_base_as_selector_times_16():
    # SDM vol 2 JMP/CALL/RET, real-address mode: CS <- selector, base = selector << 4, IP
    # <- offset; the far CALL pushes CS then IP, the far RET pops them.
    from x86util import asm

    from nitdbg.x86.cpu import Cpu
    from nitdbg.x86.hooks import Hooks
    from nitdbg.x86.memory import PhysMem

    code, syms = asm("""
        ljmp $0x07F0, $(there - 0x7F00)
    there:
        lcall $0x07F0, $(sub - 0x7F00)
    back: hlt
    sub:
        lret
    """, base=0x8000, bits=16)
    mem = PhysMem(2 << 20)
    mem.write_bytes(0x8000, code)
    c = Cpu(mem, Hooks())
    c.cr0 = 0x10
    c.seg[1].sel, c.seg[1].base, c.seg[1].limit, c.seg[1].attrib = 0x0800, 0x8000, 0xFFFF, 0x9B
    c.regs[4] = 0x7000
    c.rip = 0
    c.update_mode()
    c.run(2)
    assert (c.seg[1].sel, c.seg[1].base, c.rip) == (0x07F0, 0x7F00, syms["sub"] - 0x7F00)
    assert c.rd(0x7000 - 4, 2) == syms["back"] - 0x7F00 and c.rd(0x7000 - 2, 2) == 0x07F0
    c.run(1)
    assert (c.seg[1].sel, c.rip, c.regs[4]) == (0x07F0, syms["back"] - 0x7F00, 0x7000)
