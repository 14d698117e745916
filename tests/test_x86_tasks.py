"""32-bit hardware task switches (SDM vol 3 ch. 7): task gates, IRET with NT=1, JMP/CALL.

The NMI-through-a-task-gate shape is the one the i386 "tsnmi" firmware uses.
"""

from __future__ import annotations

import pytest
from x86util import GDT, TSS, TSS2, LongModeMachine, ProtectedModeMachine

from nitdbg.x86 import tasks
from nitdbg.x86.faults import Fault
from nitdbg.x86.hooks import Hooks
from nitdbg.x86.regs import CR0_TS, NT
from nitdbg.x86.retire import EV_EXCEPTION

TSNMI = """
    movl $0x1234, %ebx
loop: jmp loop
tsh:
    incl count
    movl $0x5555, %ebx
ir: iret
    jmp tsh
count: .long 0
unexpected: hlt
"""


class Recorder(Hooks):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, int, str, int]] = []

    def insn(self, cpu, name, next_rip):
        if name in ("task_switch", "iret"):
            self.seen.append((name, next_rip, cpu.task_switch_reason, cpu.task_switch_sel))


def tsnmi(hooks: Hooks | None = None) -> ProtectedModeMachine:
    m = ProtectedModeMachine(TSNMI, task_gates={2: 0x30}, hooks=hooks)
    m.set_task(TSS2, eip=m.syms["tsh"], esp=0x60000)
    return m


def desc_type(m, sel: int) -> int:
    return m.mem.read(GDT + sel + 5, 1) & 0xF


def test_nmi_through_a_task_gate_nests_sets_nt_busy_back_link_and_ts():
    # SDM 7.3: an interrupt through a task gate saves the old task in its TSS (EIP = the
    # interrupted instruction), writes the back link, sets the new task busy, NT=1 in the
    # new EFLAGS, CR0.TS=1; the old task stays busy.
    m = tsnmi()
    c = m.cpu
    c.run(3)
    c.raise_nmi()
    c.run(1)
    assert c.tr.sel == 0x30 and c.rflags & NT and c.cr0 & CR0_TS
    assert c.rip == m.syms["tsh"] + 6 and c.regs[4] == 0x60000
    assert m.mem.read(TSS2, 2) == 0x28
    assert desc_type(m, 0x28) == 0xB and desc_type(m, 0x30) == 0xB
    assert m.mem.read(TSS + 0x20, 4) == m.syms["loop"]
    assert m.mem.read(TSS + 0x34, 4) == 0x1234              # EBX of the old task
    assert c.nmi_blocked


def test_iret_with_nt_returns_to_the_linked_task_and_frees_the_returning_task():
    # SDM vol 2 IRET (TASK-RETURN) and 7.3 step 5: IRET with NT=1 switches to the back-link
    # task, clears the busy bit of the task it leaves, saves that task with EIP after the
    # IRET and NT=0 in its saved EFLAGS; the NMI block ends (SDM 6.7.1).
    m = tsnmi()
    c = m.cpu
    c.run(3)
    c.raise_nmi()
    m.run_until("ir")
    c.run(1)
    assert c.tr.sel == 0x28 and c.rip == m.syms["loop"] and c.regs[3] == 0x1234
    assert desc_type(m, 0x30) == 0x9 and desc_type(m, 0x28) == 0xB
    assert m.mem.read(TSS2 + 0x20, 4) == m.syms["ir"] + 1   # the JMP after the IRET
    assert not m.mem.read(TSS2 + 0x24, 4) & NT
    assert not c.nmi_blocked and not c.rflags & NT


def test_second_nmi_resumes_the_nmi_task_after_its_iret():
    # The saved EIP of the NMI task is the JMP after its IRET, so the next NMI starts over
    # (firmware/i386 locore.S tsnmi_handler).
    m = tsnmi()
    c = m.cpu
    for _ in range(3):
        c.raise_nmi()
        c.run(20)
    assert m.mem.read(m.syms["count"], 4) == 3 and c.tr.sel == 0x28


def test_task_switch_hook_is_offered_before_a_task_gate_and_a_task_returning_iret():
    # SVM TASK_SWITCH intercept (APM 15.14): checked before the switch, with the reason.
    h = Recorder()
    m = tsnmi(h)
    c = m.cpu
    c.run(3)
    c.raise_nmi()
    m.run_until("ir")
    c.run(1)
    assert h.seen == [("task_switch", m.syms["loop"], "gate", 0x30),
                      ("iret", m.syms["ir"] + 1, "gate", 0x30),
                      ("task_switch", m.syms["ir"] + 1, "iret", 0x28)]


def test_tss_t_flag_raises_db_with_bt_before_the_first_instruction_of_the_new_task():
    # SDM 17.3.1.5 / APM 13.1.3.4 (seed "Documentation"): with TSS.T=1 the #DB comes after
    # the switch, before the new task's first instruction; DR6.BT=1.
    m = ProtectedModeMachine(TSNMI + """
dbh:
    movl (%esp), %esi
    movl %dr6, %edi
    iret
""", task_gates={2: 0x30}, handlers={1: "dbh"})
    m.set_task(TSS2, eip=m.syms["tsh"], esp=0x60000, trap=True)
    c = m.cpu
    c.run(3)
    c.raise_nmi()
    c.run(4)
    assert c.regs[6] == m.syms["tsh"] and c.regs[7] & 0x8000


def test_exception_through_a_task_gate_pushes_its_error_code_on_the_new_stack():
    # SDM 6.13 / 7.3: the error code goes on the new task's stack.
    m = ProtectedModeMachine("""
    movl $0x12345, %ecx
    rdmsr
done: jmp done
gpt:
    popl %esi
    hlt
unexpected: hlt
""", task_gates={13: 0x30})
    m.set_task(TSS2, eip=m.syms["gpt"], esp=0x60000)
    c = m.cpu
    c.run(10)
    assert c.tr.sel == 0x30 and c.regs[6] == 0 and c.regs[4] == 0x60000
    assert m.mem.read(TSS + 0x20, 4) == m.syms["done"] - 2   # EIP of the faulting RDMSR


def test_task_gate_to_a_busy_tss_is_gp_with_the_tss_selector():
    # SDM 7.3 step 3: a task gate naming a busy TSS -> #GP(selector | EXT).
    m = ProtectedModeMachine(TSNMI + "gph: popl %esi\n hlt\n", task_gates={2: 0x28},
                             handlers={13: "gph"})
    c = m.cpu
    c.run(3)
    c.raise_nmi()
    c.run(5)
    assert c.regs[6] == 0x28 | 1 and c.tr.sel == 0x28


def test_jmp_to_a_tss_does_not_nest_and_frees_the_old_task():
    # SDM 7.3 steps 5, 8: JMP clears the old task's busy bit, writes no back link, NT is
    # what the new TSS holds.
    m = tsnmi()
    c = m.cpu
    c.run(2)
    tasks.far_transfer(c, 0x30, "jmp", c.rip)
    assert c.tr.sel == 0x30 and not c.rflags & NT
    assert desc_type(m, 0x28) == 0x9 and desc_type(m, 0x30) == 0xB
    assert m.mem.read(TSS2, 2) == 0


def test_call_through_a_task_gate_in_the_gdt_nests():
    # SDM 7.3: CALL through a task gate nests like an interrupt: NT=1 and a back link.
    m = tsnmi()
    m.mem.write(GDT + 0x38, 8, (0x30 << 16) | (0x85 << 40))   # task gate -> TSS 0x30
    m.cpu.gdtr.limit = 0x3F
    c = m.cpu
    c.run(2)
    tasks.far_transfer(c, 0x38, "call", c.rip)
    assert c.tr.sel == 0x30 and c.rflags & NT and m.mem.read(TSS2, 2) == 0x28


def test_iret_task_return_to_a_tss_that_is_not_busy_is_ts():
    # SDM vol 2 IRET: the back-link TSS must be busy, else #TS(selector).
    m = tsnmi()
    c = m.cpu
    c.run(3)
    c.raise_nmi()
    m.run_until("ir")
    m.mem.write(GDT + 0x28 + 5, 1, 0x89)     # make the linked task look available
    with pytest.raises(Fault) as ei:
        tasks.iret_task_return(c, c.rip + 1)
    assert (ei.value.vector, ei.value.error_code) == (10, 0x28)
    assert c.tr.sel == 0x30 and not c.nmi_blocked


def test_iret_with_nt_in_long_mode_is_gp_and_still_unblocks_nmis():
    # SDM vol 2 IRET: IA-32e mode has no task return; NT=1 -> #GP(0). SDM 6.7.1.
    m = LongModeMachine("""
    pushfq
    orq $0x4000, (%rsp)
    popfq
    pushq $0
i:  iretq
gph: hlt
unexpected: hlt
""", handlers={13: "gph"})
    c = m.cpu
    m.run_until("i")
    c.nmi_blocked = True
    c.run(1)
    ev = [e for e in c.retire.events if e.kind == EV_EXCEPTION]
    assert [(e.vector, e.error_code, e.rip) for e in ev] == [(13, 0, m.syms["i"])]
    assert not c.nmi_blocked
