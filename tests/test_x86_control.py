"""Near and far control transfer (nitdbg/x86/insn/control.py, far.py) in 64-bit long mode and
32-bit protected mode."""

from __future__ import annotations

import pytest
from x86util import (
    STACK_TOP,
    LongModeMachine,
    ProtectedModeMachine,
    halt_label,
    set_gdt_entry,
)

TAIL = """
unexpected: hlt
gp: hlt
ss: hlt
pf: hlt
ud: hlt
np: hlt
.align 16
data: .quad 0, 0, 0, 0
"""
H = {13: "gp", 12: "ss", 14: "pf", 6: "ud", 11: "np"}
IST = {13: 1, 12: 1, 14: 1, 11: 1, 6: 1}   # faults on their own stack: RSP may be bad
RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI = range(8)
NONCANON = 0x8000_0000_0000_0000


def lm(src: str, regs: dict[int, int] | None = None) -> LongModeMachine:
    m = LongModeMachine(src + TAIL, handlers=H, ist=IST)
    for i, v in (regs or {}).items():
        m.cpu.regs[i] = v
    return m


def pm(src: str, regs: dict[int, int] | None = None) -> ProtectedModeMachine:
    m = ProtectedModeMachine(src + TAIL, handlers=H)
    for i, v in (regs or {}).items():
        m.cpu.regs[i] = v
    return m


def user_pages(m: LongModeMachine) -> None:
    """Make the identity map user-accessible (U=1 at every level) for ring-3 code."""
    from x86util import PML4
    m.mem.write(PML4, 8, m.mem.read(PML4, 8) | 4)
    m.mem.write(PML4 + 0x1000, 8, m.mem.read(PML4 + 0x1000, 8) | 4)
    for i in range(512):
        a = PML4 + 0x2000 + i * 8
        m.mem.write(a, 8, m.mem.read(a, 8) | 4)


def frame64(m) -> dict[str, int]:
    """The exception frame of a fault with an error code, read at the handler's RSP."""
    rsp = m.cpu.regs[RSP]
    names = ("err", "rip", "cs", "rflags", "rsp", "ss")
    return {n: m.mem.read(rsp + 8 * i, 8) for i, n in enumerate(names)}


def frame32(m, outer: bool = False) -> dict[str, int]:
    esp = m.cpu.regs[RSP]
    names = ("err", "eip", "cs", "eflags") + (("esp", "ss") if outer else ())
    return {n: m.mem.read(esp + 4 * i, 4) for i, n in enumerate(names)}


# ================================================================ near, 64-bit
def test_jmp_jcc_call_ret_and_indirect_forms():
    m = lm("""
        lea t1(%rip), %rax
        jmp *%rax
        hlt
    t1: lea t2(%rip), %rbx
        mov %rbx, data(%rip)
        jmp *data(%rip)
        hlt
    t2: call f
        mov $1, %ecx
        cmp $1, %ecx
        jne bad
        jle t3
    bad: hlt
    t3: lea f(%rip), %rax
        call *%rax
        call *fp(%rip)
        jmp done
    f:  inc %rdx
        ret
    fp: .quad f
    done: hlt
    """)
    assert halt_label(m) == "done"
    assert m.cpu.regs[RDX] == 3
    assert m.cpu.regs[RSP] == STACK_TOP


def test_ret_imm16_releases_the_arguments():
    m = lm("""
        push $1
        push $2
        call f
        jmp done
    f:  ret $16
    done: hlt
    """)
    assert halt_label(m) == "done"
    assert m.cpu.regs[RSP] == STACK_TOP


def test_loop_loope_loopne_and_jrcxz():
    m = lm("""
        mov $5, %ecx
    l1: inc %eax
        loop l1
        mov $10, %ecx
        xor %edx, %edx
    l2: inc %edx
        cmp $3, %edx
        loopne l2            # stops when edx == 3 (ZF=1)
        mov %rcx, %r8
        mov $10, %ecx
        xor %ebx, %ebx
    l3: inc %ebx
        cmp %ebx, %ebx
        loope l3             # ZF stays 1: runs until rcx hits 0
        jrcxz z
        hlt
    z:  mov $0xFFFFFFFF00000000, %rcx
        jecxz z2             # 0x67: only ECX counts
        hlt
    z2: hlt
    """)
    assert halt_label(m) == "z2"
    r = m.cpu.regs
    assert r[RAX] == 5
    assert r[8] == 7
    assert r[RBX] == 10


def test_loop_with_32bit_address_size_zero_extends_ecx():
    m = lm("""
        addr32 loop t
        hlt
    t:  hlt
    """, regs={RCX: 0xFFFF_FFFF_0000_0002})
    assert halt_label(m) == "t"
    assert m.cpu.regs[RCX] == 1


def test_loop_does_not_change_flags():
    m = lm("""
        stc
        mov $2, %ecx
    l:  loop l
        setc %al
        hlt
    """)
    halt_label(m)
    assert m.cpu.regs[RAX] & 0xFF == 1


def test_leave_and_enter_with_nesting_levels():
    m = lm("""
        mov %rsp, %rbp
        push $0x111            # pretend enclosing frames: [rbp-8], [rbp-16]
        push $0x222
        enter $0x20, $3
        mov %rbp, %r8
        mov %rsp, %r9
        mov -8(%rbp), %r10     # copied frame pointer 1
        mov -16(%rbp), %r11    # copied frame pointer 2
        mov -24(%rbp), %r12    # the new frame pointer itself
        mov (%rbp), %r13       # saved rbp
        leave
        hlt
    """)
    halt_label(m)
    r = m.cpu.regs
    frame = STACK_TOP - 16 - 8
    assert r[8] == frame
    assert r[9] == frame - 3 * 8 - 0x20
    assert (r[10], r[11], r[12], r[13]) == (0x111, 0x222, frame, STACK_TOP)
    assert r[RBP] == STACK_TOP
    assert r[RSP] == STACK_TOP - 16


def test_enter_level_zero_and_one():
    m = lm("""
        mov $0x1234, %rbp
        enter $8, $0
        mov %rsp, %r8
        mov %rbp, %r9
        leave
        enter $0, $1
        mov %rsp, %r10
        mov (%rsp), %r11       # level 1 pushes the new frame pointer
        hlt
    """)
    halt_label(m)
    r = m.cpu.regs
    assert r[8] == STACK_TOP - 16 and r[9] == STACK_TOP - 8
    assert r[10] == STACK_TOP - 16 and r[11] == STACK_TOP - 8


@pytest.mark.parametrize("insn", ["jmp *%rax", "call *%rax", "jmp *data(%rip)"])
def test_near_branch_to_non_canonical_target_raises_gp_on_the_branch(insn):
    # SDM vol 2 JMP/CALL, 64-bit mode exceptions: #GP(0) "if the target offset is
    # non-canonical"; the fault is on the branch, so the pushed RIP is the branch.
    m = lm(f"""
        movq %rax, data(%rip)
    br: {insn}
        hlt
    """, regs={RAX: NONCANON})
    assert halt_label(m) == "gp"
    f = frame64(m)
    assert f["err"] == 0 and f["rip"] == m.syms["br"]
    assert f["rsp"] == STACK_TOP       # nothing was pushed by the call


def test_ret_to_non_canonical_target_raises_gp_with_rsp_unchanged():
    m = lm("""
        push %rax
    br: ret
        hlt
    """, regs={RAX: NONCANON})
    assert halt_label(m) == "gp"
    f = frame64(m)
    assert f["rip"] == m.syms["br"] and f["rsp"] == STACK_TOP - 8


def test_call_through_non_canonical_stack_raises_ss():
    m = lm("br: call f\nf: hlt\n", regs={RSP: NONCANON + 8})
    assert halt_label(m) == "ss"
    assert frame64(m)["rsp"] == NONCANON + 8


def test_call_push_fault_leaves_rsp_and_rip():
    m = lm("br: call f\nf: hlt\n", regs={RSP: 0x4000_0008})
    assert halt_label(m) == "pf"
    f = frame64(m)
    assert f["rip"] == m.syms["br"] and f["rsp"] == 0x4000_0008


# ================================================================ near, 32-bit
def test_near_branches_32bit_use_esp():
    m = pm("""
        call f
        push $3
        call g
        mov $3, %ecx
    l:  loop l
        jecxz ok
        hlt
    ok: enter $4, $2
        leave
        jmp *tbl
        hlt
    f:  mov $7, %eax
        ret
    g:  ret $4
    t2: hlt
    tbl: .long t2
    """)
    assert halt_label(m) == "t2"
    assert m.cpu.regs[RAX] == 7
    assert m.cpu.regs[RSP] == STACK_TOP


def test_jcxz_with_16bit_address_size_tests_only_cx():
    m = pm("""
        jcxz t
        hlt
    t:  hlt
    """, regs={RCX: 0x10000})
    assert halt_label(m) == "t"


# ================================================================ far, long mode
CODE32 = 0x38       # a 32-bit (compatibility-mode) code segment added to the long-mode GDT


def test_far_jmp_through_memory_to_compatibility_mode_and_back():
    m = lm("""
        ljmp *ptr(%rip)
    .code32
    c32: mov $0x1234, %eax
        ljmp $0x08, $back
    .code64
    back: mov $0x1122334455667788, %rbx
    done: hlt
    ptr: .long c32
         .word 0x38
    """)
    set_gdt_entry(m, CODE32, 0, 0xFFFFF, 0xC9B)
    assert halt_label(m) == "done"
    assert m.cpu.mode == 64
    assert m.cpu.regs[RBX] == 0x1122334455667788
    assert m.cpu.regs[RAX] == 0x1234


def test_lcall_pushes_return_cs_and_rip():
    m = lm("""
        lcall *ptr(%rip)
    ret1: rex.w lcall *ptr2(%rip)
    ret2: hlt
    f:  mov (%rsp), %r11d
        mov 4(%rsp), %r12d
        lret
    g:  mov (%rsp), %r13
        mov 8(%rsp), %r14
        lretq
    ptr: .long f
         .word 0x08
    ptr2: .long g
          .word 0x08
    """)
    assert halt_label(m) == "ret2"
    r = m.cpu.regs
    assert (r[11], r[12]) == (m.syms["ret1"], 0x08)
    assert (r[13], r[14]) == (m.syms["ret2"], 0x08)
    assert r[RSP] == STACK_TOP


def test_lretq_to_outer_privilege_pops_ss_rsp():
    m = lm("""
        push $0x1b              # SS
        push $0x7000            # RSP
        push $0x23              # CS (user code64, RPL 3)
        lea user(%rip), %rax
        push %rax
        lretq
    user: mov %rsp, %r8
        hlt                     # #GP at CPL 3
    """)
    user_pages(m)
    assert halt_label(m) == "gp"
    assert m.cpu.regs[8] == 0x7000
    f = frame64(m)
    assert f["cs"] == 0x23 and f["ss"] == 0x1b and f["rsp"] == 0x7000
    assert f["rip"] == m.syms["user"] + 3


def test_lret_to_inner_privilege_raises_gp_with_the_selector():
    m = lm("""
        push $0x1b
        push $0x7000
        push $0x23
        lea user(%rip), %rax
        push %rax
        lretq
    user: push $0x08
        push $0
    br: lretq                   # RPL 0 < CPL 3
    """)
    user_pages(m)
    assert halt_label(m) == "gp"
    f = frame64(m)
    assert f["err"] == 0x08 and f["rip"] == m.syms["br"]


FAR_FAULTS = [
    # (selector, descriptor (base, limit, attrib) at 0x38 or None, vector, error code)
    (0x00, None, 13, 0),                         # null selector
    (0x10, None, 13, 0x10),                      # data segment
    (0x23, None, 13, 0x20),                      # non-conforming DPL 3 from CPL 0
    (0x0b, None, 13, 0x08),                      # RPL 3 > CPL 0
    (0x38, (0, 0xFFFFF, 0xA1B), 11, 0x38),       # not present
    (0x38, (0, 0xFFFFF, 0xE9B), 13, 0x38),       # L=1 and D=1
    (0x38, (0, 0xFFFFF, 0xAFF), 13, 0x38),       # conforming with DPL 3 > CPL 0
    (0x38, (0, 0xFFFF, 0x8C), 13, 0x38),         # a call gate: not supported
    (0x400, None, 13, 0x400),                    # beyond the GDT limit
]


@pytest.mark.parametrize("sel,desc,vector,err", FAR_FAULTS)
def test_far_jmp_descriptor_checks(sel, desc, vector, err):
    m = lm(f"""
    br: ljmp *ptr(%rip)
        hlt
    t:  hlt
    ptr: .long t
         .word {sel}
    """)
    if desc is not None:
        set_gdt_entry(m, 0x38, *desc)
    assert halt_label(m) == {13: "gp", 11: "np"}[vector]
    f = frame64(m)
    assert f["err"] == err and f["rip"] == m.syms["br"]


def test_far_jmp_to_conforming_code_keeps_cpl_as_rpl():
    m = lm("""
        ljmp *ptr(%rip)
    t:  mov %cs, %eax
        hlt
    ptr: .long t
         .word 0x38
    """)
    set_gdt_entry(m, 0x38, 0, 0xFFFFF, 0xA9F)    # conforming, DPL 0
    halt_label(m)
    assert m.cpu.regs[RAX] == 0x38 and m.cpu.cpl == 0


def test_far_call_fault_on_stack_leaves_rsp_and_cs():
    m = lm("""
    br: lcall *ptr(%rip)
        hlt
    t:  hlt
    ptr: .long t
         .word 0x08
    """, regs={RSP: 0x4000_0004})    # the second push crosses into unmapped memory
    assert halt_label(m) == "pf"
    f = frame64(m)
    assert f["rip"] == m.syms["br"] and f["rsp"] == 0x4000_0004 and f["cs"] == 0x08


def test_far_jmp_to_64bit_code_with_non_canonical_offset_is_not_possible_from_16_32_pointer():
    # AMD reads a 16:32 pointer even with REX.W (APM vol 3 JMP (Far)); the offset is
    # zero-extended, so the 64-bit target is the low 4 GiB address.
    m = lm("""
        rex.w ljmp *ptr(%rip)
        hlt
    t:  hlt
    ptr: .long t
         .word 0x08
         .long 0xdeadbeef
    """)
    assert halt_label(m) == "t"


# ================================================================ far, 32-bit protected mode
def test_far_jmp_call_ret_32bit_direct_and_indirect():
    m = pm("""
        ljmp $0x08, $t1
        hlt
    t1: lcall $0x08, $f
        lcall *fptr
        ljmp *jptr
        hlt
    t2: push $5
        lcall $0x08, $g
    done: hlt
    f:  mov %cs, %eax
        mov 4(%esp), %ebx
        inc %ecx
        lret
    g:  lret $4
    jptr: .long t2
          .word 0x08
    fptr: .long f
          .word 0x08
    """)
    assert halt_label(m) == "done"
    r = m.cpu.regs
    assert r[RAX] == 0x08 and r[RBX] == 0x08 and r[RCX] == 2
    assert r[RSP] == STACK_TOP


def test_far_transfers_32bit_end_where_expected():
    m = pm("""
        lcall $0x08, $f
        push $5
        lcall $0x08, $g
    done: hlt
    f:  lret
    g:  lret $4
    """)
    assert halt_label(m) == "done"
    assert m.cpu.regs[RSP] == STACK_TOP


def test_lret_to_outer_level_32bit_pops_ss_esp_and_nulls_data_segments():
    # SDM vol 2 RET: after a return to an outer level, ES/DS/FS/GS that hold segments more
    # privileged than the new CPL are loaded with a null selector.
    m = pm("""
        mov $0x1b, %ax
        mov %ax, %fs
        push $0x1b
        push $0x7000
        push $0x23
        push $user
        lret
    user: mov %ds, %eax
        mov %fs, %ebx
        mov %ss, %ecx
        mov %esp, %edx
        hlt
    """)
    assert halt_label(m) == "gp"
    assert m.cpu.cpl == 0   # in the handler again
    r = m.cpu.regs
    assert r[RAX] == 0 and r[RBX] == 0x1b and r[RCX] == 0x1b and r[RDX] == 0x7000
    f = frame32(m, outer=True)
    assert f["cs"] == 0x23 and f["ss"] == 0x1b and f["esp"] == 0x7000


def test_far_jmp_32bit_offset_beyond_limit_raises_gp0():
    m = pm("""
    br: ljmp $0x38, $0x2000
        hlt
    """)
    set_gdt_entry(m, 0x38, 0, 0xFFF, 0x49B)     # byte-granular limit 0xFFF, 32-bit
    assert halt_label(m) == "gp"
    f = frame32(m)
    assert f["err"] == 0 and f["eip"] == m.syms["br"]


def test_far_jmp_to_a_call_gate_raises_gp_with_the_selector():
    m = pm("""
    br: ljmp $0x38, $0
        hlt
    """)
    set_gdt_entry(m, 0x38, 0, 0xFFFF, 0x8C)     # 32-bit call gate: not modelled
    assert halt_label(m) == "gp"
    assert frame32(m)["err"] == 0x38
