"""Event order around interrupt shadows and the DR6 bits a #DB leaves (SDM vol 3 6.8.1,
6.8.3, 6.9 table 6-2, 17.2.3; AMD APM vol 2 8.5, 13.1.1.3 where the vendors differ)."""

from __future__ import annotations

from x86util import IDT, LongModeMachine

from nitdbg.x86.regs import DR6_BS
from nitdbg.x86.retire import EV_EXCEPTION, EV_INTR, EV_SOFTINT

SET_TF = "pushfq\norq $0x100, (%rsp)\npopfq\n"
HANDLERS = """
h30: nop
    iretq
h40: iretq
dbh: iretq
unexpected: hlt
"""


def events(m: LongModeMachine) -> list[tuple[str, int, int]]:
    names = {EV_EXCEPTION: "exc", EV_INTR: "intr", EV_SOFTINT: "softint"}
    return [(names[e.kind], e.vector, e.rip) for e in m.cpu.retire.events if e.kind in names]


def machine(body: str, trap_gate: bool = False) -> LongModeMachine:
    m = LongModeMachine(body + HANDLERS, handlers={0x30: "h30", 0x40: "h40", 1: "dbh"})
    if trap_gate:
        m.mem.write(IDT + 0x30 * 16 + 5, 1, 0x8F)     # type 0xF: a 64-bit trap gate
    return m


def pending_intr(m: LongModeMachine, vector: int) -> None:
    def ack() -> int:
        m.cpu.set_intr_line(False)
        return vector
    m.cpu.set_intr_line(True, ack)


def test_sti_then_int_n_through_a_trap_gate_takes_the_intr_before_the_handlers_first_insn():
    # SDM 6.8.1 / vol 2 STI: the shadow inhibits INTR only on the boundary after STI; INT n
    # is a software interrupt, not masked by it. A trap gate leaves IF=1, so the INTR is
    # recognised at the next boundary: the handler's first instruction is the pushed RIP.
    m = machine("cli\nsti\ni: int $0x30\nr: nop\ndone: jmp done\n", trap_gate=True)
    m.cpu.run(1)
    pending_intr(m, 0x40)
    m.run_until("done")
    assert events(m)[:2] == [("softint", 0x30, m.syms["r"]), ("intr", 0x40, m.syms["h30"])]


def test_sti_then_int_n_through_an_interrupt_gate_takes_the_intr_after_the_iret():
    # An interrupt gate clears IF (SDM 6.12.1.3): the INTR waits for the handler's IRET and
    # is taken with the pushed RIP after the INT n.
    m = machine("cli\nsti\ni: int $0x30\nr: nop\ndone: jmp done\n")
    m.cpu.run(1)
    pending_intr(m, 0x40)
    m.run_until("done")
    assert events(m)[:2] == [("softint", 0x30, m.syms["r"]), ("intr", 0x40, m.syms["r"])]


def test_single_step_db_sets_bs_and_leaves_b0_to_b3_set_earlier_apm_13_1_1_3():
    # AMD APM 13.1.1.3: the processor sets DR6 status bits and never clears them; software
    # must. (Intel SDM 17.2.3 allows B0-B3 to be cleared: AMD where the vendors differ.)
    m = machine(SET_TF + "nop\ndone: jmp done\n")
    m.cpu.dr[6] |= 0b0101                              # B0 and B2 from an earlier #DB
    m.cpu.run(20)
    dbs = [e for e in m.cpu.retire.events if e.kind == EV_EXCEPTION and e.vector == 1]
    assert dbs and dbs[0].dr6 & (DR6_BS | 0b0101) == DR6_BS | 0b0101
