"""Debug facilities of the vCPU: single-step (TF), RF, DR0-DR7 breakpoints, ICEBP, shadows.

Each test names the rule it checks and cites the manual (SDM vol 3 ch. 17, APM vol 2 13.1,
and the rules confirmed on QEMU 7.2 TCG and Bochs in REFERENCE.md).
"""

from __future__ import annotations

from x86util import LongModeMachine

from nitdbg.x86.regs import RF, TF
from nitdbg.x86.retire import EV_EXCEPTION, EV_NMI

# A #DB handler that logs (pushed RIP, DR6, pushed RFLAGS) and resets DR6, then returns.
DB_LOG = """
dbh:
    pushq %rax
    pushq %rcx
    pushq %rsi
    movq cnt(%rip), %rcx
    leaq log(%rip), %rsi
    shlq $5, %rcx
    movq 24(%rsp), %rax
    movq %rax, (%rsi,%rcx)
    movq %dr6, %rax
    movq %rax, 8(%rsi,%rcx)
    movq 40(%rsp), %rax
    movq %rax, 16(%rsi,%rcx)
    incq cnt(%rip)
    movq $0xFFFF0FF0, %rax
    movq %rax, %dr6
    popq %rsi
    popq %rcx
    popq %rax
    iretq
unexpected:
    hlt
    .balign 4096
cnt: .quad 0
log: .fill 128, 8, 0
"""

SET_TF = """
    pushfq
    orq $0x100, (%rsp)
    popfq
"""


def db_log(m: LongModeMachine) -> list[tuple[int, int, int]]:
    n = m.mem.read(m.syms["cnt"], 8)
    base = m.syms["log"]
    return [(m.mem.read(base + 32 * i, 8), m.mem.read(base + 32 * i + 8, 8),
             m.mem.read(base + 32 * i + 16, 8)) for i in range(n)]


def machine(body: str, **kw) -> LongModeMachine:
    handlers = {1: "dbh", **kw.pop("handlers", {})}
    return LongModeMachine(body + DB_LOG, handlers=handlers, **kw)


def test_popf_setting_tf_is_not_followed_by_db_the_next_instruction_is():
    # APM vol 2 13.1.4 / SDM 17.3.1.4: TF is checked at the start of an instruction; the
    # instruction that sets TF is not single-stepped, the one after it is. DR6 = 0xFFFF4FF0
    # after a plain single step from the reset DR6 (REFERENCE.md, QEMU and Bochs).
    m = machine(SET_TF + "a: nop\nb: nop\nc: nop\nd: jmp d\n")
    m.run_until("d")
    log = db_log(m)
    assert [r for r, _, _ in log] == [m.syms["b"], m.syms["c"]]
    assert log[0][1] == 0xFFFF4FF0
    assert log[0][2] & TF          # the pushed RFLAGS keeps TF so stepping resumes


def test_popf_clearing_tf_still_traps_because_tf_was_set_at_its_start():
    # SDM 17.3.1.4: the trap follows every instruction that began with TF=1.
    m = machine(SET_TF + """
a:  pushfq
    andq $~0x100, (%rsp)
p:  popfq
x:  nop
y:  nop
done: jmp done
""")
    m.run_until("done")
    rips = [r for r, _, _ in db_log(m)]
    assert rips[-1] == m.syms["x"]           # the #DB after the TF-clearing POPF
    assert m.syms["y"] not in rips and m.syms["done"] not in rips


def test_mov_ss_delays_the_single_step_db_until_after_the_next_instruction():
    # SDM 6.8.3: MOV SS holds off debug traps until the next instruction completes; the
    # #DB comes after that instruction with BS set (REFERENCE.md: QEMU and Bochs agree).
    m = machine(SET_TF + """
    movw %ss, %ax
m:  movw %ax, %ss
a:  nop
b:  nop
done: jmp done
""")
    m.run_until("done")
    rips = [r for r, _, _ in db_log(m)]
    assert m.syms["m"] in rips               # the instruction before MOV SS traps normally
    assert m.syms["a"] not in rips           # no #DB right after MOV SS ...
    assert m.syms["b"] in rips               # ... it comes after the next instruction
    assert all(d & 0x4000 for _, d, _ in db_log(m))


def test_int_n_handler_runs_with_tf_clear_and_no_single_step_follows_the_int():
    # APM vol 2 13.1.4 (seed "Documentation"): INTn clears TF on entry; the pushed RFLAGS
    # keep TF so stepping resumes after IRET; no #DB is taken for the INT itself.
    m = machine(SET_TF + """
i:  int $0x30
r:  nop
s:  nop
done: jmp done
h30:
    pushfq
    popq %r12
    movq 16(%rsp), %r13
    iretq
""", handlers={0x30: "h30"})
    m.run_until("done")
    c = m.cpu
    assert not c.regs[12] & TF and c.regs[13] & TF
    rips = [r for r, _, _ in db_log(m)]
    assert m.syms["r"] not in rips           # nothing after INT n ...
    assert m.syms["s"] in rips               # ... stepping resumes after the IRET


def test_int3_clears_tf_in_the_handler_and_is_not_single_stepped():
    # SDM vol 2 INT n/INTO/INT3 pseudo-code: TF <- 0 on entry; seed "Documentation".
    m = machine(SET_TF + """
    int3
r:  nop
done: jmp done
h3:
    pushfq
    popq %r12
    movq 16(%rsp), %r13
    iretq
""", handlers={3: "h3"})
    m.run_until("done")
    assert not m.cpu.regs[12] & TF and m.cpu.regs[13] & TF
    assert m.syms["r"] not in [r for r, _, _ in db_log(m)]


def test_icebp_raises_db_without_dr6_bs():
    # SDM 17.3.2 / APM 13.1: INT1 (ICEBP, F1) delivers #DB like a trap, without setting BS.
    m = machine("""
    .byte 0xf1
a:  nop
done: jmp done
""")
    m.run_until("done")
    assert db_log(m) == [(m.syms["a"], 0xFFFF0FF0, db_log(m)[0][2])]


def test_instruction_breakpoint_is_a_fault_pushing_rf_0_and_iret_rf_suppresses_it_once():
    # SDM 17.3.1.1 / APM 13.1.3.1: an instruction breakpoint is a fault (pushed RIP = the
    # instruction) and is the one fault that pushes RF=0; a handler returning with RF=1
    # executes the instruction once without re-triggering; RF is cleared after it.
    m = LongModeMachine("""
    leaq t(%rip), %rax
    movq %rax, %dr0
    movq $0x1, %rax
    movq %rax, %dr7
    movq $2, %rbx
t:  decq %rbx
after: jnz t
done: jmp done
dbrf:
    movq (%rsp), %r12
    movq 16(%rsp), %r13
    movq %dr6, %r14
    incq %r15
    orq $0x10000, 16(%rsp)
    movq $0xFFFF0FF0, %rax
    movq %rax, %dr6
    iretq
unexpected: hlt
""", handlers={1: "dbrf"})
    m.run_until("after")
    c = m.cpu
    assert c.regs[15] == 1 and c.regs[12] == m.syms["t"]
    assert not c.regs[13] & RF and c.regs[14] == 0xFFFF0FF1
    assert c.regs[3] == 1 and not c.rflags & RF     # executed once, RF cleared after it
    m.run_until("done")
    assert c.regs[15] == 2                          # the loop hits the breakpoint again


def test_faults_other_than_the_instruction_breakpoint_push_rf_1():
    # SDM 17.3.1.1: the processor sets RF in the RFLAGS image pushed for faults, so the
    # handler's IRET does not re-trigger an instruction breakpoint.
    m = LongModeMachine("""
u:  ud2
r:  nop
done: jmp done
udh:
    movq 16(%rsp), %r13
    addq $2, (%rsp)
    iretq
unexpected: hlt
""", handlers={6: "udh"})
    m.run_until("r")
    assert m.cpu.regs[13] & RF
    assert m.cpu.rflags & RF          # loaded by IRET, in force for one instruction
    m.run_until("done")
    assert not m.cpu.rflags & RF


def test_data_write_breakpoint_is_a_trap_after_the_write_with_dr6_bn():
    # SDM 17.3.1.2 / APM 13.1.3.2: data breakpoints are traps: the write completes, the #DB
    # pushes the next instruction's RIP, DR6.B1 names the breakpoint.
    m = machine("""
    leaq var(%rip), %rax
    movq %rax, %dr1
    movq $0x00D00004, %rax      # L1, R/W1 = 01 (write), LEN1 = 11 (4 bytes)
    movq %rax, %dr7
    movl var(%rip), %ebx         # a read does not trigger a write breakpoint
    movl $7, var(%rip)
a:  nop
done: jmp done
    .balign 8
var: .long 0
""")
    m.run_until("done")
    assert m.mem.read(m.syms["var"], 4) == 7
    assert [(r, d) for r, d, _ in db_log(m)] == [(m.syms["a"], 0xFFFF0FF2)]


def test_data_read_write_breakpoint_traps_on_a_read():
    # SDM 17.2.5: R/W = 11 breaks on reads and writes of the data.
    m = machine("""
    leaq var(%rip), %rax
    movq %rax, %dr2
    movq $0x0F000010, %rax      # L2, R/W2 = 11, LEN2 = 00 (1 byte)
    movq %rax, %dr7
    movb var(%rip), %bl
a:  nop
done: jmp done
var: .byte 0
""")
    m.run_until("done")
    assert [(r, d) for r, d, _ in db_log(m)] == [(m.syms["a"], 0xFFFF0FF4)]


def test_general_detect_faults_before_mov_dr_and_clears_gd():
    # SDM 17.2.4: with DR7.GD=1 a MOV to/from a debug register raises #DB (a fault, pushed
    # RIP = the MOV) with DR6.BD; GD is cleared so the handler can use the registers.
    m = machine("""
    movq $0x2400, %rax
    movq %rax, %dr7
g:  movq %dr0, %rbx
done: jmp done
""")
    m.run_until("done")
    log = db_log(m)
    assert [(r, d & 0x2000) for r, d, _ in log] == [(m.syms["g"], 0x2000)]
    assert not m.cpu.dr[7] & 0x2000


def test_single_step_db_has_priority_over_a_pending_nmi():
    # SDM vol 3 table 6-2 (traps on the previous instruction before NMI) and seed
    # "Documentation": the #DB handler is entered first, with TF=0; then the NMI is taken
    # at the #DB handler's first instruction.
    m = machine(SET_TF + """
a:  nop
b:  nop
done: jmp done
nmih:
    iretq
""", handlers={2: "nmih"})
    m.run_until("a")
    c = m.cpu
    c.run(1)                       # the NOP completes with TF=1: a #DB trap is pending
    c.raise_nmi()
    m.run_until("done")
    evs = [e for e in c.retire.events if e.kind in (EV_EXCEPTION, EV_NMI)]
    assert (evs[0].kind, evs[0].vector, evs[0].rip) == (EV_EXCEPTION, 1, m.syms["b"])
    assert (evs[1].kind, evs[1].rip) == (EV_NMI, m.syms["dbh"])
    assert not evs[1].rflags & TF            # the #DB entry cleared TF


def test_hlt_with_tf_takes_one_db_after_wakeup_with_rip_after_hlt():
    # REFERENCE.md (QEMU 7.2 TCG and Bochs): HLT with TF=1: one #DB after wake-up, the
    # pushed RIP is the instruction after HLT; the NMI that woke it follows.
    m = machine(SET_TF + """
h:  hlt
after: nop
done: jmp done
nmih:
    iretq
""", handlers={2: "nmih"})
    m.run_until("h")
    c = m.cpu
    c.run(10)
    assert c.halted and c.stop_reason == "hlt" and db_log(m) == []
    c.raise_nmi()
    m.run_until("done")
    evs = [e for e in c.retire.events if e.kind in (EV_EXCEPTION, EV_NMI)]
    assert [(e.vector, e.rip) for e in evs[:2]] == [(1, m.syms["after"]), (2, m.syms["dbh"])]
    assert [r for r, _, _ in db_log(m)].count(m.syms["after"]) == 1


def test_sti_shadow_does_not_hold_off_a_single_step_trap():
    # SDM 6.8.3: only MOV SS / POP SS hold off debug traps; STI's shadow blocks INTR only.
    m = machine("""
    cli
""" + SET_TF + """
    sti
a:  nop
done: jmp done
""")
    m.run_until("done")
    assert m.syms["a"] in [r for r, _, _ in db_log(m)]


def test_local_breakpoint_enables_are_cleared_by_a_task_switch_only():
    # SDM 17.2.4: L0-L3 are cleared on task switches; an IRET does not touch DR7.
    m = machine("""
    movq $0x5, %rax
    movq %rax, %dr7
    int $0x30
done: jmp done
h30: iretq
""", handlers={0x30: "h30"})
    m.run_until("done")
    assert m.cpu.dr[7] & 0x5 == 0x5
