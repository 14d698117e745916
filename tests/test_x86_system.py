"""System instructions (SDM vol 2, APM vol 3), IRET forms, and a guest-byte fuzz."""

from __future__ import annotations

import random

from x86util import GDT, TSS, LongModeMachine, ProtectedModeMachine

from nitdbg.x86.hooks import Hooks
from nitdbg.x86.regs import CR0_TS, IF, RF, SHADOW_STI, TF
from nitdbg.x86.retire import EV_EXCEPTION

TO_USER64 = """
    pushq $0x1b
    pushq $0x40000
    pushq $0x202
    pushq $0x23
    leaq user(%rip), %rax
    pushq %rax
    iretq
"""


def allow_user(m) -> None:
    for a in [0x1000, 0x2000] + [0x3000 + 8 * i for i in range(512)]:
        m.mem.write(a, 8, m.mem.read(a, 8) | 4)


def exc(c) -> list[tuple[int, int | None, int]]:
    return [(e.vector, e.error_code, e.rip) for e in c.retire.events if e.kind == EV_EXCEPTION]


def run_fault(src: str, vector: int, **kw) -> LongModeMachine:
    m = LongModeMachine(src + "\nfh: hlt\nunexpected: hlt\n",
                        handlers={vector: "fh", **kw.pop("handlers", {})}, **kw)
    m.cpu.run(200)
    return m


class Recorder(Hooks):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[tuple[str, int]] = []
        self.out: list[tuple[int, int, int]] = []

    def insn(self, cpu, name, next_rip):
        self.names.append((name, next_rip))

    def io_in(self, cpu, port, size, next_rip):
        return {1: 0xAB, 2: 0xABCD, 4: 0x12345678}[size]

    def io_out(self, cpu, port, size, value, next_rip):
        self.out.append((port, size, value))


def test_sti_opens_the_shadow_only_when_if_was_clear():
    # SDM vol 2 STI: "If IF = 0, maskable hardware interrupts remain inhibited on the
    # instruction boundary following an execution of STI."
    m = LongModeMachine("cli\nsti\nnop\nsti\ndone: jmp done\n")
    c = m.cpu
    c.run(2)
    assert c.shadow == SHADOW_STI and c.rflags & IF
    c.run(2)
    assert c.shadow == 0


def test_cli_at_cpl3_with_iopl0_is_gp():
    # SDM vol 2 CLI: CPL > IOPL -> #GP(0).
    m = LongModeMachine(TO_USER64 + "user: cli\nfh: jmp fh\n", handlers={13: "fh"})
    allow_user(m)
    m.cpu.run(50)
    assert exc(m.cpu)[-1][:2] == (13, 0)


def test_popf_at_cpl3_keeps_iopl_and_if_and_never_sets_rf():
    # SDM vol 2 POPF: at CPL 3 with IOPL 0, IOPL and IF are unchanged; RF is never set.
    m = LongModeMachine(TO_USER64 + """
user:
    pushq $0x13000
    popfq
    pushfq
    popq %rbx
done: jmp done
unexpected: hlt
""")
    allow_user(m)
    m.run_until("done")
    v = m.cpu.regs[3]
    assert v & 0x3000 == 0 and v & IF and not v & RF


def test_pushf_pushes_rf_and_vm_clear():
    # SDM vol 2 PUSHF: the image on the stack has RF and VM cleared.
    m = LongModeMachine("pushfq\npopq %rbx\ndone: jmp done\n")
    m.cpu.rflags |= RF
    m.cpu.attention = True
    m.run_until("done")
    assert not m.cpu.regs[3] & RF


def test_hlt_calls_the_intercept_hook_with_the_next_rip():
    h = Recorder()
    m = LongModeMachine("cli\nh: hlt\nafter: nop\n", hooks=h)
    m.cpu.run(10)
    assert ("hlt", m.syms["after"]) in h.names and m.cpu.halted


def test_hlt_at_cpl3_is_gp_before_the_intercept():
    # APM 15.9 / Bochs: HLT's own #GP comes before the HLT intercept check.
    h = Recorder()
    m = LongModeMachine(TO_USER64 + "user: hlt\nfh: jmp fh\nunexpected: jmp unexpected\n",
                        handlers={13: "fh"}, hooks=h)
    allow_user(m)
    m.cpu.run(30)
    assert not any(n == "hlt" for n, _ in h.names)
    assert exc(m.cpu)[0][:2] == (13, 0)


def test_pause_cpuid_rdtsc_are_intercept_points():
    h = Recorder()
    m = LongModeMachine("pause\nxorl %eax, %eax\ncpuid\nrdtsc\ndone: jmp done\n", hooks=h)
    m.run_until("done")
    assert [n for n, _ in h.names] == ["pause", "cpuid", "rdtsc"]
    assert m.cpu.regs[3] == int.from_bytes(b"Auth", "little")


def test_rdmsr_wrmsr_own_msrs():
    m = LongModeMachine("""
    movl $0xC0000082, %ecx
    movl $0x11223344, %eax
    movl $0xFFFFFFFF, %edx
    wrmsr
    movl $0xC0000101, %ecx
    movl $0x1000, %eax
    xorl %edx, %edx
    wrmsr
    swapgs
    movl $0xC0000080, %ecx
    rdmsr
done: jmp done
unexpected: hlt
""")
    m.run_until("done")
    c = m.cpu
    assert c.lstar == 0xFFFFFFFF11223344
    assert c.kernel_gs_base == 0x1000 and c.seg[5].base == 0
    assert c.regs[0] == 0xD01


def test_wrmsr_of_a_non_canonical_address_msr_is_gp():
    # APM vol 2 4.8 / SDM WRMSR: FS/GS base, LSTAR... must be canonical, else #GP(0).
    m = run_fault("""
    movl $0xC0000082, %ecx
    xorl %eax, %eax
    movl $0x00010000, %edx
w:  wrmsr
""", 13)
    assert exc(m.cpu) == [(13, 0, m.syms["w"])] and m.cpu.lstar == 0


def test_unknown_msr_goes_to_the_hook_and_gp_when_refused():
    h = Hooks()
    h.msrs[0x1234] = 77
    m = LongModeMachine("""
    movl $0x1234, %ecx
    rdmsr
    movl $0x999, %ecx
r:  rdmsr
fh: hlt
unexpected: hlt
""", handlers={13: "fh"}, hooks=h)
    m.cpu.run(20)
    assert m.cpu.regs[0] == 77 and exc(m.cpu) == [(13, 0, m.syms["r"])]


def test_mov_to_and_from_cr_and_dr():
    m = LongModeMachine("""
    movq $0x1234, %rax
    movq %rax, %cr2
    movq %cr2, %rbx
    movq $7, %rax
    movq %rax, %cr8
    movq %cr8, %rsi
    movq %cr0, %rax
    orq $8, %rax
    movq %rax, %cr0
    clts
    movq $0xabc, %rax
    movq %rax, %dr3
    movq %dr3, %rdi
    movq %dr6, %r8
done: jmp done
""")
    m.run_until("done")
    c = m.cpu
    assert (c.regs[3], c.regs[6], c.regs[7], c.regs[8]) == (0x1234, 7, 0xABC, 0xFFFF0FF0)
    assert not c.cr0 & CR0_TS


def test_mov_to_cr1_is_ud():
    m = run_fault("movq %rax, %cr1\n", 6)
    assert exc(m.cpu)[0][0] == 6


def test_lgdt_lidt_sgdt_sidt_roundtrip():
    m = LongModeMachine("""
    sgdt buf(%rip)
    sidt buf+16(%rip)
    lidt buf(%rip)
    sidt buf+32(%rip)
    lidt buf+16(%rip)
done: jmp done
    .balign 16
buf: .fill 48, 1, 0
""")
    m.run_until("done")
    b = m.syms["buf"]
    assert m.mem.read(b, 2) == 55 and m.mem.read(b + 2, 8) == GDT
    assert m.mem.read(b + 32, 10) == m.mem.read(b, 10)


def test_ltr_marks_the_tss_busy_and_ltr_of_a_busy_tss_is_gp():
    # SDM vol 2 LTR: the TSS becomes busy; a busy TSS cannot be loaded (#GP(sel)).
    m = LongModeMachine("""
    movw $0x28, %ax
    ltr %ax
l2: ltr %ax
fh: hlt
unexpected: hlt
""", handlers={13: "fh"})
    m.mem.write(GDT + 0x28 + 5, 1, 0x89)
    m.cpu.run(10)
    assert m.mem.read(GDT + 0x28 + 5, 1) == 0x8B
    assert exc(m.cpu) == [(13, 0x28, m.syms["l2"])]


def test_lldt_null_and_str():
    m = LongModeMachine("xorl %eax, %eax\nlldt %ax\nstr %bx\nsldt %cx\ndone: jmp done\n")
    m.run_until("done")
    assert m.cpu.regs[3] == 0x28 and m.cpu.regs[1] == 0 and m.cpu.ldtr.sel == 0


def test_in_out_imm8_and_dx_forms_sizes_1_2_4():
    h = Recorder()
    m = LongModeMachine("""
    inb $0x61, %al
    movl %eax, %ebx
    movw $0x3f8, %dx
    inw %dx, %ax
    movl %eax, %esi
    inl %dx, %eax
    outb %al, $0xe9
    outw %ax, %dx
    outl %eax, %dx
done: jmp done
""", hooks=h)
    m.run_until("done")
    c = m.cpu
    assert c.regs[3] & 0xFF == 0xAB and c.regs[6] & 0xFFFF == 0xABCD and c.regs[0] == 0x12345678
    assert h.out == [(0xE9, 1, 0x78), (0x3F8, 2, 0x5678), (0x3F8, 4, 0x12345678)]


def test_in_at_cpl3_consults_the_tss_io_bitmap():
    # SDM vol 1 19.5.2: CPL > IOPL -> the TSS I/O permission bitmap decides.
    m = LongModeMachine(TO_USER64 + """
user:
    inb $0x80, %al
f:  inb $0x81, %al
fh: jmp fh
unexpected: jmp unexpected
""", handlers={13: "fh"})
    allow_user(m)
    mem = m.mem
    mem.write(GDT + 0x28, 2, 0x68 + 32)          # TSS limit covers a small bitmap
    mem.write(TSS + 0x66, 2, 0x68)
    mem.write(TSS + 0x68 + 0x10, 1, 0x02)        # port 0x81 denied, 0x80 allowed
    m.cpu.tr.limit = 0x68 + 32
    m.cpu.run(40)
    assert exc(m.cpu) == [(13, 0, m.syms["f"])]


def test_into_is_ud_in_64bit_mode_and_traps_on_of_in_32bit_mode():
    m = run_fault(".byte 0xce\n", 6)
    assert exc(m.cpu)[0][0] == 6
    p = ProtectedModeMachine("""
    movb $0x7f, %al
    addb $1, %al
    into
after: nop
done: jmp done
oh: movl (%esp), %esi
    iret
unexpected: hlt
""", handlers={4: "oh"})
    p.run_until("done")
    assert p.cpu.regs[6] == p.syms["after"]


def test_into_not_taken_is_single_stepped():
    # F_NO_SSTEP covers only a taken INTO: not taken, it is an ordinary instruction.
    p = ProtectedModeMachine("""
    pushfl
    orl $0x100, (%esp)
    popfl
    into
after: nop
done: jmp done
dbh: incl %edi
    iret
unexpected: hlt
""", handlers={1: "dbh"})
    p.run_until("after")
    p.cpu.run(1)
    assert p.cpu.regs[7] == 1


def test_ud2_is_ud_and_vmmcall_vmrun_are_ud_when_not_intercepted():
    # APM vol 3 VMMCALL/VMRUN: #UD unless intercepted (VMRUN: #UD without EFER.SVME).
    h = Recorder()
    m = LongModeMachine("""
u:  ud2
    nop
v:  vmmcall
r:  vmrun
done: jmp done
fh: addq $3, (%rsp)
    iretq
unexpected: hlt
""", handlers={6: "fh"}, hooks=h)
    m.run_until("done")
    assert [v for v, _, _ in exc(m.cpu)] == [6, 6, 6]
    assert ("vmmcall", m.syms["r"]) in h.names


def test_int1_is_offered_to_the_icebp_intercept():
    h = Recorder()
    m = LongModeMachine(".byte 0xf1\nd: jmp d\ndbh: iretq\n", handlers={1: "dbh"}, hooks=h)
    m.run_until("dbh")
    assert ("icebp", m.syms["d"]) in h.names


def test_syscall_sysret_round_trip():
    # APM vol 3 SYSCALL/SYSRET: RCX/R11 hold RIP/RFLAGS; CS/SS from STAR.
    m = LongModeMachine("""
    movl $0xC0000081, %ecx
    xorl %eax, %eax
    movl $0x00130008, %edx       # SYSRET base 0x13 (CS 0x23, SS 0x1b), SYSCALL CS 0x08
    wrmsr
    movl $0xC0000082, %ecx
    leaq entry(%rip), %rax
    xorl %edx, %edx
    wrmsr
    movl $0xC0000084, %ecx
    movl $0x200, %eax
    wrmsr
    pushq $0x202
    popfq
    syscall
ret: nop
done: jmp done
entry:
    pushfq
    popq %rbx
    movq %rcx, %rsi
    sysretq
""")
    allow_user(m)
    m.run_until("done")
    c = m.cpu
    assert c.regs[6] == m.syms["ret"] and not c.regs[3] & IF
    assert c.cpl == 3 and c.seg[1].sel == 0x23 and c.seg[2].sel == 0x1B and c.rflags & IF


# ---------------------------------------------------------------- IRET
def test_iretq_at_the_same_privilege_pops_ss_rsp():
    # SDM 6.14.3: IRET in 64-bit mode always pops SS:RSP.
    m = LongModeMachine("""
    movq %rsp, %rbx
    pushq $0x10
    pushq $0x12340
    pushq $0x2
    pushq $0x08
    leaq t(%rip), %rax
    pushq %rax
    iretq
t:  nop
done: jmp done
""")
    m.run_until("done")
    assert m.cpu.regs[4] == 0x12340


def test_iretq_to_a_non_canonical_rip_is_gp0_before_any_state_change():
    # APM vol 3 IRET: non-canonical return RIP -> #GP(0), nothing committed.
    m = run_fault("""
    pushq $0x10
    pushq $0x12340
    pushq $0x2
    pushq $0x08
    movq $0x0000800000000000, %rax
    pushq %rax
i:  iretq
""", 13)
    c = m.cpu
    assert exc(c) == [(13, 0, m.syms["i"])]
    assert c.seg[1].sel == 0x08 and c.cpl == 0
    assert c.mem.read(c.regs[4] + 32, 8) == 0x80000 - 40    # RSP pushed = before IRETQ


def test_iret_32bit_same_privilege_pops_three_and_to_outer_pops_five():
    # SDM vol 2 IRET: same privilege pops EIP, CS, EFLAGS; outer also ESP, SS.
    p = ProtectedModeMachine("""
    pushfl
    pushl $0x08
    pushl $t
    movl %esp, %ebx
    iret
t:  movl %esp, %ecx
done: jmp done
""")
    p.run_until("done")
    assert p.cpu.regs[1] - p.cpu.regs[3] == 12


def test_iret_to_outer_privilege_nulls_data_segments_the_new_cpl_cannot_use():
    # SDM vol 2 IRET RETURN-TO-OUTER-PRIVILEGE-LEVEL: DS/ES/FS/GS with DPL < CPL -> null.
    p = ProtectedModeMachine("""
    pushl $0x1b
    pushl $0x40000
    pushl $0x2
    pushl $0x23
    pushl $user
    iret
user: jmp user
""")
    p.run_until("user")
    c = p.cpu
    assert c.cpl == 3 and c.seg[3].sel == 0 and c.seg[0].sel == 0 and c.seg[2].sel == 0x1B


def test_iret_in_real_mode():
    m = ProtectedModeMachine("done: jmp done\n")
    c = m.cpu
    c.cr0 = 0x10
    c.update_mode()
    c.seg[1].sel, c.seg[1].base = 0, 0
    c.seg[2].base = 0
    c.regs[4] = 0x7000
    m.mem.write_bytes(0x500, b"\xcf")             # iret
    m.mem.write(0x7000, 2, 0x0600)
    m.mem.write(0x7002, 2, 0x0010)
    m.mem.write(0x7004, 2, 0x0202)
    c.rip = 0x500
    c.run(1)
    assert (c.rip, c.seg[1].sel, c.seg[1].base, c.regs[4]) == (0x600, 0x10, 0x100, 0x7006)
    assert c.rflags & IF


# ---------------------------------------------------------------- robustness
def test_random_guest_bytes_never_raise_out_of_run():
    # DESIGN.md: nothing a guest executes may crash the host; random bytes end in exceptions
    # delivered to the guest (or a triple-fault shutdown), never a Python traceback.
    # Fixed seed: deterministic. (Seeds 1 and 2 of a 600-900 trial version found two
    # translator crashes, now reported as #UD by Cpu.fetch_insn.)
    rng = random.Random(20240611)
    src = "jmp blob\nunexpected: hlt\n.balign 64\nblob:\n"
    stops = set()
    for trial in range(150):
        m = ProtectedModeMachine(src) if trial % 3 == 0 else LongModeMachine(src)
        m.mem.write_bytes(m.syms["blob"], bytes(rng.randrange(256) for _ in range(256)))
        c = m.cpu
        if rng.random() < 0.3:
            c.rflags |= TF
        c.run(300)
        stops.add(c.stop_reason)
        assert c.stop_reason in ("hlt", "shutdown", "budget")
    assert "hlt" in stops and "shutdown" in stops
