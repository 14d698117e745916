"""Exception and interrupt delivery through the IDT (SDM vol 3 6.12-6.15, APM vol 2 8.7-8.9)."""

from __future__ import annotations

from x86util import (
    CODE,
    GDT,
    IDT,
    IST_TOP,
    PML4,
    STACK_TOP,
    LongModeMachine,
    ProtectedModeMachine,
    _gdt_entry,
)

from nitdbg.x86.regs import IF
from nitdbg.x86.retire import EV_EXCEPTION

# ring-3 entry: IRETQ to user code 0x23 with user stack 0x2b ... (user data 0x1b)
TO_USER64 = """
    pushq $0x1b
    pushq $0x40000
    pushq $0x202
    pushq $0x23
    leaq user(%rip), %rax
    pushq %rax
    iretq
"""


def allow_user(m: LongModeMachine) -> None:
    """Set U/S in the identity map so ring-3 code can run (tests that enter ring 3)."""
    for a in [PML4, PML4 + 0x1000] + [PML4 + 0x2000 + 8 * i for i in range(512)]:
        m.mem.write(a, 8, m.mem.read(a, 8) | 4)


def set_gate_dpl(m: LongModeMachine, vector: int, dpl: int) -> None:
    a = IDT + vector * 16 + 5
    m.mem.write(a, 1, (m.mem.read(a, 1) & ~0x60) | dpl << 5)


def clear_present(m, vector: int, gate_size: int = 16) -> None:
    a = IDT + vector * gate_size + 5
    m.mem.write(a, 1, m.mem.read(a, 1) & ~0x80)


def exc_events(c) -> list[tuple[int, int | None, int]]:
    return [(e.vector, e.error_code, e.rip) for e in c.retire.events if e.kind == EV_EXCEPTION]


def test_ist_gate_switches_to_the_ist_stack_aligned_and_pushes_ss_rsp():
    # SDM 6.14.5: an IST gate always loads RSP from the TSS IST slot; 6.14.2: the new RSP is
    # aligned to 16 and SS:RSP is pushed even without a privilege change.
    m = LongModeMachine("""
    subq $8, %rsp
    int $0x31
done: jmp done
h:  movq %rsp, %r12
    movq 24(%rsp), %r13
    movq 32(%rsp), %r14
    iretq
unexpected: hlt
""", handlers={0x31: "h"}, ist={0x31: 2})
    m.run_until("done")
    c = m.cpu
    assert c.regs[12] == IST_TOP[2] - 40
    assert c.regs[13] == STACK_TOP - 8 and c.regs[14] == 0x10
    assert c.regs[4] == STACK_TOP - 8        # IRETQ popped SS:RSP back


def test_interrupt_from_ring3_uses_rsp0_and_iretq_returns_to_outer_privilege():
    # SDM 6.14.4 / APM 8.9.3: a CPL change loads RSP0 from the TSS and a NULL SS with
    # RPL = new CPL; IRETQ to CPL 3 pops SS:RSP and CPL becomes 3.
    m = LongModeMachine(TO_USER64 + """
user:
    int $0x30
back: jmp back
h:  movq %rsp, %r12
    movq %ss, %r13
    movq 8(%rsp), %r14
    iretq
unexpected: hlt
""", handlers={0x30: "h"})
    set_gate_dpl(m, 0x30, 3)
    allow_user(m)
    m.run_until("back")
    c = m.cpu
    assert c.regs[12] == STACK_TOP - 0x8000 - 40
    assert c.regs[13] == 0 and c.regs[14] == 0x23
    assert c.cpl == 3 and c.regs[4] == 0x40000 and c.seg[1].sel == 0x23


def test_int_n_through_a_gate_with_dpl_below_cpl_is_gp_with_idt_error_code():
    # SDM 6.13: error code = vector*8 + IDT(2); EXT = 0 for INT n. The #GP is a fault on
    # the INT instruction.
    m = LongModeMachine(TO_USER64 + """
user:
i:  int $0x30
back: jmp back
gph:
    popq %r12
    addq $2, (%rsp)
    iretq
h:  iretq
unexpected: hlt
""", handlers={0x30: "h", 13: "gph"})
    allow_user(m)
    m.run_until("back")
    assert exc_events(m.cpu)[0] == (13, 0x30 * 8 + 2, m.syms["i"])
    assert m.cpu.regs[12] == 0x30 * 8 + 2


def test_not_present_gate_for_an_exception_is_np_with_ext_bit():
    # SDM 6.13: EXT=1 when the fault arises delivering an event external to the program
    # (here #UD raised by the CPU); #UD is benign, so #NP is simply delivered.
    m = LongModeMachine("""
u:  ud2
done: jmp done
nph:
    popq %r12
    addq $2, (%rsp)
    iretq
unexpected: hlt
""", handlers={11: "nph", 6: "unexpected"})
    clear_present(m, 6)
    m.run_until("done")
    assert m.cpu.regs[12] == 6 * 8 + 2 + 1
    assert exc_events(m.cpu) == [(11, 0x33, m.syms["u"])]


def test_contributory_fault_while_delivering_a_contributory_one_is_a_double_fault():
    # SDM 6.15 table 6-5: #GP, then #NP delivering it -> #DF with error code 0.
    m = LongModeMachine("""
    movl $0x12345, %ecx
g:  rdmsr
done: jmp done
dfh:
    movq (%rsp), %r12
    movq 8(%rsp), %r13
    hlt
unexpected: hlt
""", handlers={8: "dfh"})
    clear_present(m, 13)
    c = m.cpu
    c.run(100)
    assert c.regs[12] == 0 and c.regs[13] == m.syms["g"]
    assert [v for v, _, _ in exc_events(c)] == [8]


def test_page_fault_while_delivering_a_page_fault_is_a_double_fault():
    # SDM 6.15 table 6-5: #PF then #PF -> #DF. The #PF handler's stack is unmapped.
    m = LongModeMachine("""
    movq $0x40001000, %rsp       # beyond the 1 GiB identity map
    movq (%rsp), %rax
done: jmp done
dfh:
    hlt
unexpected: hlt
""", handlers={8: "dfh"}, ist={8: 1})
    c = m.cpu
    c.run(100)
    assert [v for v, _, _ in exc_events(c)] == [8]
    assert c.rip == m.syms["dfh"] + 1 and c.cr2 == 0x40001000 - 8


def test_fault_while_delivering_double_fault_is_a_triple_fault_shutdown_not_an_exception():
    # SDM 6.15 #DF: "If another exception occurs while attempting to call the double-fault
    # handler, the processor enters shutdown mode"; run() returns, no Python exception.
    m = LongModeMachine("""
    movl $0x12345, %ecx
    rdmsr
done: jmp done
unexpected: hlt
""")
    clear_present(m, 13)
    clear_present(m, 8)
    c = m.cpu
    n = c.run(100)
    assert c.shutdown and c.stop_reason == "shutdown" and n == 1
    assert "#DF" in c.hooks.shutdown_reason or "8" in c.hooks.shutdown_reason
    assert c.run(100) == 0 and c.stop_reason == "shutdown"


def test_benign_exception_while_delivering_is_handled_serially():
    # SDM 6.15 table 6-5: a benign first event (here an NMI) with a contributory second
    # (#NP on the NMI gate): the #NP is delivered, no #DF.
    m = LongModeMachine("""
loop: jmp loop
nph:
    popq %r12
    hlt
unexpected: hlt
""", handlers={11: "nph"})
    clear_present(m, 2)
    c = m.cpu
    c.run(2)
    c.raise_nmi()
    c.run(10)
    assert c.regs[12] == 2 * 8 + 2 + 1
    assert [v for v, _, _ in exc_events(c)] == [11]


def test_non_canonical_handler_offset_is_gp():
    # SDM 6.14: a non-canonical target RIP in a gate is #GP (here with a handler for it).
    m = LongModeMachine("""
    int $0x30
done: jmp done
gph: hlt
unexpected: hlt
""", handlers={13: "gph", 0x30: "gph"})
    m.mem.write(IDT + 0x30 * 16 + 8, 4, 0x00008000)   # offset 63:32 -> non-canonical
    c = m.cpu
    c.run(10)
    assert [v for v, _, _ in exc_events(c)] == [13]


# ---------------------------------------------------------------- 32-bit protected mode
def test_32bit_interrupt_gate_clears_if_and_trap_gate_keeps_it():
    # SDM 6.12.1.3: an interrupt gate clears IF, a trap gate does not.
    m = ProtectedModeMachine("""
    sti
    int $0x30
    int $0x31
done: jmp done
ig: pushfl
    popl %esi
    iret
tg: pushfl
    popl %edi
    iret
unexpected: hlt
""", handlers={0x30: "ig", 0x31: "tg"}, trap_gates=(0x31,))
    m.run_until("done")
    c = m.cpu
    assert not c.regs[6] & IF and c.regs[7] & IF and c.rflags & IF


def test_32bit_exception_pushes_error_code_and_eip_of_the_faulting_instruction():
    # SDM 6.13: #GP pushes its error code; a fault pushes the faulting EIP.
    m = ProtectedModeMachine("""
    movl $0x12345, %ecx
g:  rdmsr
done: jmp done
gph:
    popl %esi
    movl (%esp), %edi
    addl $2, (%esp)
    iret
unexpected: hlt
""", handlers={13: "gph"})
    m.run_until("done")
    assert m.cpu.regs[6] == 0 and m.cpu.regs[7] == m.syms["g"]


def test_32bit_interrupt_from_ring3_switches_to_ss0_esp0_and_iret_returns_outward():
    # SDM 6.12.1: privilege change -> SS0:ESP0 from the TSS; old SS:ESP pushed; IRET to
    # CPL 3 pops them back (SDM vol 2 IRET RETURN-TO-OUTER-PRIVILEGE-LEVEL).
    m = ProtectedModeMachine("""
    pushl $0x1b
    pushl $0x40000
    pushl $0x202
    pushl $0x23
    pushl $user
    iret
user:
    int $0x30
back: jmp back
h:  movl %esp, %esi
    movl 16(%esp), %edi
    movl 12(%esp), %ebp
    iret
unexpected: hlt
""", handlers={0x30: "h"}, dpl={0x30: 3})
    m.run_until("back")
    c = m.cpu
    assert c.regs[6] == STACK_TOP - 0x8000 - 20
    assert c.regs[7] == 0x1b and c.regs[5] == 0x40000
    assert c.cpl == 3 and c.regs[4] == 0x40000 and c.seg[2].sel == 0x1b


def test_32bit_16bit_gate_pushes_a_16bit_frame():
    # SDM 6.12.1: a 16-bit gate pushes 16-bit FLAGS, CS, IP (IP truncated to 16 bits).
    m = ProtectedModeMachine("""
    int $0x30
done: jmp done
h:  iretw
unexpected: hlt
""", handlers={0x30: "h"})
    # a 16-bit gate can only reach offsets < 64 KiB: a code segment based at CODE (0x38)
    m.mem.write(GDT + 0x38, 8, _gdt_entry(CODE, 0xFFFFF, 0xC9B))
    m.cpu.gdtr.limit = 0x3F
    m.mem.write(IDT + 0x30 * 8, 8, (m.syms["h"] - CODE) | 0x38 << 16 | 0x86 << 40)
    c = m.cpu
    c.run(1)
    sp = c.regs[4]
    assert sp == STACK_TOP - 6
    assert [m.mem.read(sp + i, 2) for i in (0, 2, 4)] == [m.syms["done"] & 0xFFFF, 0x08, 0x2]
    assert c.seg[1].base + c.rip == m.syms["h"]


def test_32bit_gate_of_a_bad_type_is_gp_with_the_idt_error_code():
    # SDM 6.12.1.1: a descriptor that is not an interrupt, trap or task gate -> #GP.
    m = ProtectedModeMachine("""
i:  int $0x30
done: jmp done
gph:
    popl %esi
    addl $2, (%esp)
    iret
unexpected: hlt
""", handlers={13: "gph", 0x30: "gph"})
    m.mem.write(IDT + 0x30 * 8 + 5, 1, 0x8C)    # a call gate type in the IDT
    m.run_until("done")
    assert m.cpu.regs[6] == 0x30 * 8 + 2
