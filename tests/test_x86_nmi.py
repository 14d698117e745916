"""NMI and INTR inputs of the bare-metal vCPU (SDM vol 3 6.7.1, 6.8, APM vol 2 8.5)."""

from __future__ import annotations

from x86util import LongModeMachine

from nitdbg.x86.retire import EV_EXCEPTION, EV_INTR, EV_NMI

NMI_COUNTER = """
nmih:
    incq %r15
    movq (%rsp), %r14
    iretq
unexpected:
    hlt
"""


def nmis(c) -> list[int]:
    return [e.rip for e in c.retire.events if e.kind == EV_NMI]


def test_nmi_is_blocked_until_the_next_iret_and_one_is_held_pending():
    # SDM 6.7.1: while an NMI handler runs, further NMIs are blocked until the next IRET;
    # one NMI is held pending (more merge into it) and taken after the IRET.
    m = LongModeMachine("""
loop: nop
    jmp loop
nmih:
    incq %r15
    nop
    nop
ir: iretq
""" + "unexpected: hlt\n", handlers={2: "nmih"})
    c = m.cpu
    c.run(3)
    c.raise_nmi()
    c.run(2)                       # in the handler now
    assert c.nmi_blocked and c.regs[15] == 1
    c.raise_nmi()
    c.raise_nmi()                  # merges with the pending one
    m.run_until("ir")
    assert c.regs[15] == 1 and c.nmi_pending
    c.run(1)                       # the IRET
    assert not c.nmi_blocked
    c.run(3)
    assert c.regs[15] == 2 and not c.nmi_pending
    # taken right at the IRET's return point: no instruction runs in between
    assert nmis(c)[1] == nmis(c)[0]


def test_iret_unblocks_nmis_even_when_it_faults():
    # SDM 6.7.1: "the processor ... unblocks NMIs ... even if the IRET instruction causes
    # a fault". Here the NMI handler's IRETQ returns to a non-canonical RIP: #GP(0) on the
    # IRET, and the pending NMI is taken at the #GP handler's first instruction.
    m = LongModeMachine("""
loop: jmp loop
nmih:
    movq $0xdeadbeefbeefdead, %rax
    movq %rax, (%rsp)
    incq %r15
ir: iretq
gph:
    nop
    jmp gph
unexpected: hlt
""", handlers={2: "nmih", 13: "gph"})
    c = m.cpu
    c.run(2)
    c.raise_nmi()
    m.run_until("ir")
    c.raise_nmi()
    c.run(1)      # IRET faults: #GP delivered; the held NMI follows at once, then 1 insn
    evs = [e for e in c.retire.events if e.kind in (EV_EXCEPTION, EV_NMI)]
    assert [(e.kind, e.vector, e.error_code, e.rip) for e in evs] == [
        (EV_NMI, 2, None, m.syms["loop"]),
        (EV_EXCEPTION, 13, 0, m.syms["ir"]),
        (EV_NMI, 2, None, m.syms["gph"]),
    ]


def test_hlt_wakes_on_nmi_and_the_handler_returns_after_the_hlt():
    # SDM vol 2 HLT; REFERENCE.md: NMI while halted -> pushed RIP = the instruction after HLT.
    m = LongModeMachine("""
    cli
h:  hlt
after: nop
done: jmp done
""" + NMI_COUNTER, handlers={2: "nmih"})
    c = m.cpu
    c.run(100)
    assert c.halted and c.stop_reason == "hlt" and c.rip == m.syms["after"]
    c.raise_nmi()
    m.run_until("done")
    assert c.regs[14] == m.syms["after"] and c.regs[15] == 1


def test_blocked_nmi_does_not_wake_hlt():
    # A blocked NMI is held pending; it is not a wake event (SDM 6.7.1, vol 2 HLT).
    m = LongModeMachine("""
loop: jmp loop
nmih:
    hlt
    iretq
unexpected: hlt
""", handlers={2: "nmih"})
    c = m.cpu
    c.run(1)
    c.raise_nmi()
    c.run(10)
    assert c.halted and c.nmi_blocked
    c.raise_nmi()
    assert c.run(10) == 0 and c.stop_reason == "hlt"


def test_intr_is_gated_by_if():
    # SDM 6.8.1: maskable interrupts are taken only with IF=1.
    m = LongModeMachine("""
    cli
    nop
    nop
    sti
s1: nop
s2: nop
done: jmp done
ih: incq %r15
    iretq
unexpected: hlt
""", handlers={0x40: "ih"})
    c = m.cpu
    acks = []
    c.set_intr_line(True, lambda: (acks.append(1), c.set_intr_line(False), 0x40)[2])
    c.run(3)
    assert c.regs[15] == 0 and not acks
    m.run_until("done")
    assert c.regs[15] == 1 and acks == [1]


def test_sti_opens_a_one_instruction_shadow_only_when_if_was_0():
    # SDM vol 2 STI: after STI with IF=0 interrupts are recognised after the next
    # instruction; the idle loop's `sti; hlt` therefore halts before taking the interrupt
    # and wakes with RIP after the HLT. STI with IF=1 opens no shadow.
    m = LongModeMachine("""
    cli
    sti
h:  hlt
after: nop
    sti
s2: nop
done: jmp done
ih: movq (%rsp), %r14
    incq %r15
    iretq
unexpected: hlt
""", handlers={0x40: "ih"})
    c = m.cpu
    c.run(1)                              # cli
    c.set_intr_line(True, lambda: (c.set_intr_line(False), 0x40)[1])
    c.run(1)                              # sti: shadow, interrupt held
    assert c.regs[15] == 0
    c.run(1)                              # hlt executes inside the shadow and halts
    assert c.regs[15] == 0 and c.halted
    m.run_until("s2")
    assert c.regs[14] == m.syms["after"] and c.regs[15] == 1
    assert c.shadow == 0                  # STI with IF=1 opened no shadow
    ev = [e for e in c.retire.events if e.kind == EV_INTR]
    assert len(ev) == 1 and ev[0].rip == m.syms["after"]


def test_mov_ss_shadow_holds_off_nmi_for_one_instruction():
    # SDM 6.8.3: MOV SS blocks interrupts, NMI included, until the next instruction ends.
    m = LongModeMachine("""
    movw %ss, %ax
m:  movw %ax, %ss
a:  nop
b:  nop
done: jmp done
""" + NMI_COUNTER, handlers={2: "nmih"})
    c = m.cpu
    m.run_until("m")
    c.run(1)
    c.raise_nmi()
    m.run_until("done")
    assert c.regs[14] == m.syms["b"]


def test_raise_nmi_and_set_intr_line_set_attention():
    # The hot loop looks at nothing but `attention`: each input must set it.
    m = LongModeMachine("loop: jmp loop\n" + NMI_COUNTER, handlers={2: "nmih"})
    c = m.cpu
    c.run(5)
    c.attention = False
    c.raise_nmi()
    assert c.attention
    c.attention = False
    c.set_intr_line(True, lambda: None)
    assert c.attention
