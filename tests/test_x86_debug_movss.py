"""#DB conditions held by MOV SS / POP SS for one instruction (SDM vol 3 6.8.3 and 6.15
"Interrupt 1", the rule behind CVE-2018-8897), and the debug-register access rules of
SDM vol 3 17.2 / APM vol 2 13.1.1.

What the instruction after MOV SS / POP SS does to a held data-breakpoint trap:
  - an ordinary instruction: the #DB follows it (SDM 6.15: "delivered after completion of
    the instruction after the MOV or POP ... even if the next instruction is INT n, INT3,
    or INTO"); INT n / INT3 / INTO / SYSCALL: the transfer is made, then the #DB is taken
    at the handler's first instruction, at CPL 0;
  - ICEBP (INT1): its own #DB carries the held bits, one #DB in all;
  - a fault (#UD, a general-detect #DB): the fault is delivered, the held trap is
    discarded (SDM 6.9; the behaviour Linux's selftests/x86/mov_ss_trap.c checks);
  - an instruction breakpoint on it is suppressed as if RF were 1 (SDM 6.15);
  - TF: MOV SS's own single-step trap is suppressed, not held (SDM 6.15).
"""

from __future__ import annotations

from x86util import STACK_TOP, LongModeMachine, ProtectedModeMachine

from nitdbg.x86.regs import DR6_BD, DR6_BS, DR7_GD
from nitdbg.x86.retire import EV_EXCEPTION, EV_SOFTINT

B0, B1 = 1, 2
# DR0: read/write breakpoint on 2 bytes (L0, R/W0 = 11, LEN0 = 01)
WATCH_VAR = """
    leaq var(%rip), %rax
    movq %rax, %dr0
    movq $0x70401, %rax
    movq %rax, %dr7
"""
HANDLERS64 = """
h30: iretq
h3: iretq
dbh: iretq
udh: addq $2, (%rsp)
    iretq
sysentry: jmp sysentry
unexpected: hlt
    .balign 8
var: .word 0x10
"""


def events(m) -> list[tuple[str, int, int, int]]:
    names = {EV_EXCEPTION: "exc", EV_SOFTINT: "softint"}
    return [(names[e.kind], e.vector, e.rip, e.dr6) for e in m.cpu.retire.events
            if e.kind in names]


def dbs(m) -> list[tuple[int, int]]:
    return [(rip, dr6) for kind, vec, rip, dr6 in events(m) if kind == "exc" and vec == 1]


def machine64(body: str) -> LongModeMachine:
    return LongModeMachine(WATCH_VAR + body + HANDLERS64,
                           handlers={0x30: "h30", 3: "h3", 1: "dbh", 6: "udh"})


def machine32(body: str) -> ProtectedModeMachine:
    # DR0: read/write breakpoint on the 4-byte stack slot POP SS reads
    src = f"""
    movl ${STACK_TOP - 4:#x}, %eax
    movl %eax, %dr0
    movl $0xF0401, %eax
    movl %eax, %dr7
""" + body + """
h4: iret
dbh: iret
unexpected: hlt
var: .word 0x10
"""
    return ProtectedModeMachine(src, handlers={4: "h4", 1: "dbh"})


def test_mov_ss_data_breakpoint_trap_waits_until_the_next_instruction_completes():
    # SDM vol 3 6.8.3, 6.15 interrupt 1: no #DB on the boundary after MOV SS; it follows
    # the next instruction, DR6.B0 naming the breakpoint.
    m = machine64("movw var(%rip), %ss\na: nop\nb: nop\ndone: jmp done\n")
    m.run_until("done")
    assert dbs(m) == [(m.syms["b"], 0xFFFF0FF1)]


def test_pop_ss_data_breakpoint_trap_waits_until_the_next_instruction_completes():
    # SDM vol 3 6.8.3: POP SS holds debug traps as MOV SS does (32-bit: POP SS is #UD in
    # 64-bit mode).
    # (the next instruction moves ESP away, so no #DB frame lands on the watched slot)
    # The PUSH's write to the slot traps at once (no shadow); POP SS's read waits.
    m = machine32("pushl $0x10\np: popl %ss\na: subl $64, %esp\nb: nop\ndone: jmp done\n")
    m.run_until("done")
    assert dbs(m) == [(m.syms["p"], 0xFFFF0FF1), (m.syms["b"], 0xFFFF0FF1)]


def test_mov_ss_data_breakpoint_then_int_n_is_delivered_at_the_handlers_first_insn():
    # SDM vol 3 6.15 interrupt 1 ("even if the next instruction is INT n"), CVE-2018-8897:
    # INT n transfers to its handler first; the #DB's pushed RIP is the handler's entry.
    m = machine64("movw var(%rip), %ss\ni: int $0x30\nr: nop\ndone: jmp done\n")
    m.run_until("done")
    evs = events(m)
    k = evs.index(("softint", 0x30, m.syms["r"], evs[0][3]))
    assert evs[k + 1] == ("exc", 1, m.syms["h30"], 0xFFFF0FF1)
    assert len(dbs(m)) == 1


def test_mov_ss_data_breakpoint_then_int3_is_delivered_at_the_handlers_first_insn():
    # SDM vol 3 6.15 interrupt 1: the same for INT3 (#BP is a trap, pushed RIP after it).
    m = machine64("movw var(%rip), %ss\nint3\nr: nop\ndone: jmp done\n")
    m.run_until("done")
    assert [(v, rip) for _, v, rip, _ in events(m)] == [(3, m.syms["r"]), (1, m.syms["h3"])]
    assert dbs(m)[0][1] & B0


def test_mov_ss_data_breakpoint_then_into_is_delivered_at_the_handlers_first_insn():
    # SDM vol 3 6.15 interrupt 1: the same for INTO when it is taken (OF=1; 32-bit code,
    # INTO is #UD in 64-bit mode).
    m = machine32("""
    movl $var, %eax
    movl %eax, %dr0
    movb $0x7f, %al
    addb $1, %al            # OF = 1
    movw var, %ss
    into
r:  nop
done: jmp done
""")
    m.run_until("done")
    assert [(v, rip) for _, v, rip, _ in events(m)] == [(4, m.syms["r"]), (1, m.syms["h4"])]
    assert dbs(m)[0][1] & B0


def test_mov_ss_data_breakpoint_then_syscall_is_delivered_at_cpl0_on_the_syscall_entry():
    # CVE-2018-8897 (the SDM 6.8.3 statement it cites): after SYSCALL the #DB is delivered
    # once the transfer to CPL 0 is complete, on the entry point's first instruction.
    m = machine64("""
    movl $0xC0000081, %ecx
    xorl %eax, %eax
    movl $0x00130008, %edx
    wrmsr
    movl $0xC0000082, %ecx
    leaq sysentry(%rip), %rax
    xorl %edx, %edx
    wrmsr
    movw var(%rip), %ss
    syscall
done: jmp done
""")
    m.run_until("sysentry")
    m.cpu.run(1)
    assert dbs(m) == [(m.syms["sysentry"], 0xFFFF0FF1)]
    assert m.cpu.cpl == 0


def test_mov_ss_data_breakpoint_then_icebp_merges_into_one_db_with_the_breakpoint_in_dr6():
    # ICEBP after MOV SS: INT1's own #DB (a trap, pushed RIP after the F1) is the only one
    # taken and its DR6 reports the held breakpoint (SDM 6.8.3; one #DB, as observed on
    # hardware by Linux's mov_ss_trap.c).
    m = machine64("movw var(%rip), %ss\n.byte 0xf1\nr: nop\ndone: jmp done\n")
    m.run_until("done")
    assert dbs(m) == [(m.syms["r"], 0xFFFF0FF1)]


def test_mov_ss_data_breakpoint_then_a_faulting_instruction_drops_the_held_db():
    # SDM vol 3 6.9: the fault is delivered and the held trap discarded; it belongs to an
    # instruction that is not re-executed, so no #DB follows at all.
    m = machine64("movw var(%rip), %ss\nud2\nr: nop\ndone: jmp done\n")
    m.run_until("done")
    assert [(v, rip) for _, v, rip, _ in events(m)] == [(6, m.syms["r"] - 2)]
    assert dbs(m) == []


def test_mov_ss_then_general_detect_mov_dr_faults_with_bd_and_drops_the_held_breakpoint():
    # SDM vol 3 17.2.4: a MOV DR with DR7.GD=1 is a #DB fault with DR6.BD. Being a fault,
    # it discards the data-breakpoint trap MOV SS held (SDM 6.9): one #DB, BD without B0.
    m = machine64("""
    movq $0x72401, %rax          # the same breakpoint, and GD
    movq %rax, %dr7
    movw var(%rip), %ss
g:  movq %dr6, %rbx
done: jmp done
""")
    m.run_until("done")
    assert [(rip, dr6 & (DR6_BD | B0)) for rip, dr6 in dbs(m)] == [(m.syms["g"], DR6_BD)]


def test_mov_ss_suppresses_an_instruction_breakpoint_on_the_next_instruction():
    # SDM vol 3 6.15 interrupt 1: an instruction breakpoint on the instruction after MOV SS
    # is suppressed as if RF were 1; only the held data breakpoint is reported, after it.
    m = machine64("""
    leaq a(%rip), %rax
    movq %rax, %dr1
    movq $0x70405, %rax          # L0 data (as above), L1 execute
    movq %rax, %dr7
    movw var(%rip), %ss
a:  nop
b:  nop
done: jmp done
""")
    m.run_until("done")
    assert [(rip, dr6 & (B0 | B1)) for rip, dr6 in dbs(m)] == [(m.syms["b"], B0)]


def test_mov_ss_with_tf_suppresses_its_own_single_step_so_int_n_after_it_takes_no_db():
    # SDM vol 3 6.15 interrupt 1: after MOV SS "if EFLAGS.TF is 1, no single-step trap is
    # generated": suppressed, not held. INT n is not single-stepped either (it clears TF),
    # so no #DB reaches the handler; stepping resumes after its IRET.
    m = machine64("""
    pushfq
    orq $0x100, (%rsp)
    popfq
    movw %ss, %ax
    movw %ax, %ss
    int $0x30
r:  nop
s:  nop
done: jmp done
""")
    m.run_until("done")
    rips = [rip for rip, _ in dbs(m)]
    assert m.syms["h30"] not in rips
    assert m.syms["s"] in rips and all(d & DR6_BS for _, d in dbs(m))


# ---------------------------------------------------------------- debug-register access
def test_dr4_dr5_alias_dr6_dr7_when_cr4_de_is_clear_and_are_ud_when_it_is_set():
    # SDM vol 3 17.2.2, vol 2 MOV DR; APM vol 2 13.1.1.1: CR4.DE=1 makes DR4/DR5 #UD.
    m = LongModeMachine("""
    movq %dr5, %rbx             # DE=0: DR5 reads DR7
    movq %cr4, %rax
    orq $8, %rax
    movq %rax, %cr4
u:  movq %dr4, %rcx             # DE=1: #UD
r:  nop
done: jmp done
udh: addq $3, (%rsp)
    iretq
unexpected: hlt
""", handlers={6: "udh"})
    m.run_until("done")
    assert m.cpu.regs[3] == m.cpu.dr[7] == 0x400
    assert [(e.vector, e.rip) for e in m.cpu.retire.events if e.kind == EV_EXCEPTION] == [
        (6, m.syms["u"])]


def test_mov_to_dr6_or_dr7_with_bits_63_32_set_is_gp0():
    # SDM vol 2 MOV DR / APM vol 2 13.1.1: bits 63:32 of DR6 and DR7 must be zero.
    m = LongModeMachine("""
    movq $0x100000400, %rax
g:  movq %rax, %dr7
    movq $0x1FFFF0FF0, %rax
h:  movq %rax, %dr6
done: jmp done
gph: addq $8, %rsp
    addq $3, (%rsp)
    iretq
unexpected: hlt
""", handlers={13: "gph"})
    m.run_until("done")
    assert [(e.vector, e.rip, e.error_code) for e in m.cpu.retire.events
            if e.kind == EV_EXCEPTION] == [
        (13, m.syms["g"], 0), (13, m.syms["h"], 0)]
    assert m.cpu.dr[7] == 0x400


def test_entering_the_db_handler_clears_dr7_gd_whatever_the_cause():
    # SDM vol 3 17.2.4: "The processor clears the GD flag upon entering the debug exception
    # handler": a single-step #DB clears it too, so the handler may read DR6.
    m = LongModeMachine("""
    movq $0x2400, %rax
    movq %rax, %dr7
    pushfq
    orq $0x100, (%rsp)
    popfq
    nop
done: jmp done
dbh: movq %dr6, %rbx
d2: andq $~0x100, 16(%rsp)
    iretq
unexpected: hlt
""", handlers={1: "dbh"})
    m.run_until("d2")
    assert not m.cpu.dr[7] & DR7_GD
    m.run_until("done")
    assert [e.vector for e in m.cpu.retire.events if e.kind == EV_EXCEPTION] == [1]
    assert m.cpu.regs[3] & DR6_BS
