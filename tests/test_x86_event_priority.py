"""Priority among simultaneous exceptions and interrupts, row against row (SDM vol 3 6.9
table 6-2, AMD APM vol 2 8.5 table 8-8), the interrupt shadows at those boundaries (SDM
6.8.1, 6.8.3) and the RF image a #DB pushes (SDM 17.3.1.1)."""

from __future__ import annotations

from x86util import LongModeMachine

from nitdbg.x86.regs import DR6_BS, RF
from nitdbg.x86.retire import EV_EXCEPTION, EV_INTR, EV_NMI

NAMES = {EV_EXCEPTION: "exc", EV_INTR: "intr", EV_NMI: "nmi"}
SET_TF = "pushfq\norq $0x100, (%rsp)\npopfq\n"
HANDLERS = """
dbh: iretq
dbrf: orq $0x10000, 16(%rsp)     # RF in the frame: the breakpoint does not refire
    iretq
h40: iretq
nmih: iretq
pfh: hlt
unexpected: hlt
"""


def machine(body: str, db: str = "dbh") -> LongModeMachine:
    return LongModeMachine(body + HANDLERS, handlers={1: db, 0x40: "h40", 2: "nmih",
                                                      14: "pfh"})


def events(m: LongModeMachine) -> list[tuple[str, int, int]]:
    return [(NAMES[e.kind], e.vector, e.rip) for e in m.cpu.retire.events if e.kind in NAMES]


def exec_bp(m: LongModeMachine, addr: int) -> None:
    m.cpu.dr[0] = addr
    m.cpu.dr[7] = 0x401                      # L0, R/W0 = 00 (execute), LEN0 = 00
    m.cpu.update_debug()


def pending_intr(m: LongModeMachine, vector: int) -> None:
    def ack() -> int:
        m.cpu.set_intr_line(False)
        return vector
    m.cpu.set_intr_line(True, ack)


def test_code_breakpoint_is_taken_before_a_page_fault_fetching_the_instruction():
    # Table 6-2: 7 (code breakpoint fault) before 8 (faults from fetching the next
    # instruction): the #DB comes first; after its IRET with RF=1 the fetch faults.
    m = machine("movq $0x40000000, %rax\njmp *%rax\n", db="dbrf")   # 1 GiB: not mapped
    exec_bp(m, 0x40000000)
    m.cpu.run(20)
    assert events(m)[:2] == [("exc", 1, 0x40000000), ("exc", 14, 0x40000000)]


def test_single_step_trap_is_taken_before_a_code_breakpoint_on_the_next_instruction():
    # Table 6-2: 4 (traps on the previous instruction) before 7: the single-step #DB
    # (BS), then, the trap having pushed RF=0, the breakpoint's own #DB (B0) on return.
    m = machine(SET_TF + "a: nop\nb: nop\ndone: jmp done\n")
    exec_bp(m, m.syms["b"])
    m.cpu.run(6)
    dbs = [e for e in m.cpu.retire.events if e.kind == EV_EXCEPTION and e.vector == 1]
    assert [(e.rip, e.dr6 & (DR6_BS | 1)) for e in dbs[:2]] == [
        (m.syms["b"], DR6_BS), (m.syms["b"], DR6_BS | 1)]     # AMD: BS stays (13.1.1.3)


def test_nmi_is_taken_before_a_pending_intr():
    # Table 6-2: 5 (NMI) before 6 (maskable interrupts); the NMI handler's interrupt gate
    # clears IF, so the INTR follows its IRET.
    m = machine("sti\nnop\na: nop\nb: nop\ndone: jmp done\n")
    m.cpu.run(2)
    m.cpu.raise_nmi()
    pending_intr(m, 0x40)
    m.run_until("done")
    assert events(m)[:2] == [("nmi", 2, m.syms["a"]), ("intr", 0x40, m.syms["a"])]


def test_intr_is_taken_before_a_code_breakpoint_on_the_next_instruction():
    # Table 6-2: 6 (maskable interrupts) before 7; the interrupt pushes RF=0, so the
    # breakpoint fires when its IRET returns to the instruction.
    m = machine("sti\nnop\na: nop\ndone: jmp done\n", db="dbrf")
    m.cpu.run(2)
    exec_bp(m, m.syms["a"])
    pending_intr(m, 0x40)
    m.run_until("done")
    assert events(m)[:2] == [("intr", 0x40, m.syms["a"]), ("exc", 1, m.syms["a"])]


def test_sti_then_hlt_runs_the_hlt_in_the_shadow_and_the_intr_returns_after_it():
    # SDM 6.8.1 / vol 2 STI: the INTR pending at STI waits for the boundary after the next
    # instruction, so HLT executes and is woken; the pushed RIP is after the HLT.
    m = machine("cli\nsti\nhlt\nr: nop\ndone: jmp done\n")
    m.cpu.run(1)
    pending_intr(m, 0x40)
    m.run_until("done")
    assert events(m)[:1] == [("intr", 0x40, m.syms["r"])]


def test_sti_shadow_holds_off_a_pending_nmi_for_one_instruction():
    # The interrupt shadow holds off NMI as well as INTR (APM vol 2 15.21.5; SDM 6.8.1
    # allows it): the NMI raised at STI is taken one instruction later.
    m = machine("cli\nsti\na: nop\nb: nop\ndone: jmp done\n")
    m.cpu.run(2)
    m.cpu.raise_nmi()
    m.run_until("done")
    assert events(m)[:1] == [("nmi", 2, m.syms["b"])]


def test_single_step_and_data_breakpoint_on_one_instruction_give_one_db_with_bs_and_bn():
    # SDM 17.3.1.2 / table 17-2 (APM 13.1.1.3): the debug traps of one instruction are
    # reported together, one #DB whose DR6 has BS and the breakpoint's Bn.
    m = machine("""
    leaq var(%rip), %rax
    movq %rax, %dr1
    movq $0x00D00004, %rax       # L1, R/W1 = 01 (write), LEN1 = 11
    movq %rax, %dr7
""" + SET_TF + """
w:  movl $7, var(%rip)
n:  nop
done: jmp done
    .balign 8
var: .long 0
""")
    m.run_until("done")
    dbs = [e for e in m.cpu.retire.events if e.kind == EV_EXCEPTION and e.vector == 1]
    assert dbs[0].rip == m.syms["n"] and dbs[0].dr6 & (DR6_BS | 2) == DR6_BS | 2
    assert [e.rip for e in dbs].count(m.syms["n"]) == 1


def test_general_detect_db_is_a_fault_that_pushes_rf_1_unlike_an_instruction_breakpoint():
    # SDM 17.3.1.1: "for any fault-class exception except a debug exception generated in
    # response to an instruction breakpoint, the value pushed for RF is 1"; GD is a fault.
    m = machine("""
    movq $0x2400, %rax
    movq %rax, %dr7
g:  movq %dr0, %rbx
done: jmp done
""")
    m.run_until("done")
    e = next(e for e in m.cpu.retire.events if e.kind == EV_EXCEPTION and e.vector == 1)
    assert e.rip == m.syms["g"] and e.rflags & RF


def test_a_task_switch_clears_dr7_l0_l3_and_le_and_keeps_g0_g3_and_ge():
    # SDM 17.2.4 (APM 13.1.1.5): the local enables L0-L3 and LE are cleared on a hardware
    # task switch, so a task's local breakpoints do not follow into another task.
    from x86util import TSS2, ProtectedModeMachine

    from nitdbg.x86 import tasks
    m = ProtectedModeMachine("loop: jmp loop\ntsh: jmp tsh\nunexpected: hlt\n")
    m.set_task(TSS2, eip=m.syms["tsh"], esp=0x60000)
    c = m.cpu
    c.dr[7] = 0x400 | 0x3FF                  # L0-L3, G0-G3, LE, GE
    c.update_debug()
    tasks.far_transfer(c, 0x30, "jmp", c.rip)
    assert c.dr[7] == 0x400 | 0x2AA          # G0-G3 and GE remain


def test_data_breakpoint_covers_its_aligned_range_for_any_overlapping_access():
    # SDM 17.2.5 table 17-1 / APM 13.1.1.4: DRn's low bits are ignored for LEN > 1 (the
    # range is aligned); any access overlapping it triggers, one beside it does not.
    m = machine("""
    leaq var+2(%rip), %rax       # unaligned: the 4-byte range is var..var+3
    movq %rax, %dr0
    movq $0x000D0001, %rax       # L0, R/W0 = 01 (write), LEN0 = 11 (4 bytes)
    movq %rax, %dr7
    movb $1, var+4(%rip)         # beside it: nothing
a:  movw $1, var-1(%rip)         # overlaps byte var: a trap after the write
b:  nop
done: jmp done
    .balign 8
    .quad 0
var: .quad 0
""")
    m.run_until("done")
    assert [(v, rip) for _, v, rip in events(m)] == [(1, m.syms["b"])]
