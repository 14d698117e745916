"""VMRUN/#VMEXIT on small guest programs: each intercept fills EXITCODE, EXITINFO1/2,
EXITINTINFO and nRIP the way the AMD APM vol 2 ch. 15 says, read back from the VMCB bytes."""

from __future__ import annotations

from x86util import LongModeMachine

from nitdbg.svm import exitcodes as ec
from nitdbg.svm.intinfo import IntInfo
from nitdbg.svm.npt import NestedPageTable
from nitdbg.svm.svm import Svm
from nitdbg.svm.vmcb import Iopm, Msrpm, Vmcb
from nitdbg.x86.regs import DR6_BS, TF


def guest(src: str, handlers: dict[int, str] | None = None, **intercepts: bool):
    m = LongModeMachine(src, handlers=handlers)
    npt = NestedPageTable()
    npt.map(0, 0, 64 << 20)
    iopm, msrpm = Iopm(), Msrpm()
    iopm.set_all(True)
    msrpm.set_all(True)
    vmcb = Vmcb()
    svm = Svm(m.cpu, vmcb, npt, iopm, msrpm)
    svm.save_guest()                 # the machine's start state becomes the VMCB's
    vmcb.np_enable = 1
    for name, on in intercepts.items():
        vmcb.set_intercept(name, on)
    return m, svm, vmcb


def test_ioio_exit_reports_port_size_direction_and_next_rip():
    m, svm, vmcb = guest("inb $0x61, %al\nafter: hlt", IOIO_PROT=True)
    e = svm.vmrun(100)
    assert vmcb.exitcode == ec.VMEXIT_IOIO
    io = ec.IoioInfo.decode(vmcb.exitinfo1)
    assert (io.port, io.size, io.is_in) == (0x61, 1, True)
    assert vmcb.exitinfo2 == vmcb.nrip == m.syms["after"]       # APM 15.10.2
    assert vmcb.rip == m.syms["_start"] and e.rip == vmcb.rip


def test_iret_intercept_is_taken_before_the_iret_executes():
    # APM 15.9: the IRET intercept is checked before the instruction has any effect, so the
    # frame is still on the stack and RIP is at the IRET.
    src = """
        mov %rsp, %rax
        pushq $0x10
        pushq %rax
        pushfq
        pushq $0x08
        leaq back(%rip), %rax
        pushq %rax
    the_iret: iretq
    back: hlt
    """
    m, svm, vmcb = guest(src, IRET=True)
    svm.vmrun(100)
    assert vmcb.exitcode == ec.VMEXIT_IRET
    assert vmcb.rip == m.syms["the_iret"]
    assert m.cpu.rd(vmcb.rsp, 8) == m.syms["back"]
    vmcb.set_intercept("IRET", False)
    # Without the intercept the IRET runs and the guest halts: HLT is not intercepted here,
    # so the vCPU sleeps in guest mode and VMRUN has no exit to report.
    assert svm.vmrun(100) is None
    assert m.cpu.halted and m.cpu.rip == m.syms["back"] + 1


def test_exception_intercept_gp_reports_error_code_and_faulting_rip():
    src = "movabs $0xdead000000000000, %rax\nfault: movq (%rax), %rbx\nhlt"
    m, svm, vmcb = guest(src)
    vmcb.set_exception_intercept(13)
    svm.vmrun(100)
    assert vmcb.exitcode == ec.vmexit_excp(13)
    assert vmcb.exitinfo1 == 0 and vmcb.rip == m.syms["fault"]


def test_db_intercept_sees_dr6_updated_first():
    # APM 15.12.2: DR6 and DR7 are written before the #DB intercept is taken.
    m, svm, vmcb = guest("nop\nnext: nop\nhlt")
    vmcb.rflags |= TF
    vmcb.set_exception_intercept(1)
    svm.vmrun(100)
    assert vmcb.exitcode == ec.vmexit_excp(1)
    assert vmcb.dr6 & DR6_BS
    assert vmcb.rip == m.syms["next"]


def test_nested_page_fault_reports_gpa_and_restarts_after_mapping():
    src = "movq $0x400000, %rax\nload: movq (%rax), %rbx\ndone: hlt"
    m, svm, vmcb = guest(src)
    svm.npt.unmap_all()
    m.cpu.flush_tlb()
    e = svm.vmrun(100)
    assert e.code == ec.VMEXIT_NPF
    # the first fault is the guest's own page walk for the instruction fetch (its PML4 page),
    # reported with EXITINFO1 bit 33 (APM 15.25.6)
    assert vmcb.exitinfo2 == 0x1000 and vmcb.exitinfo1 & ec.NPF_GPT
    seen = set()
    while e.code == ec.VMEXIT_NPF:
        seen.add(vmcb.exitinfo2 & ~0xFFF)
        assert svm.npt.fault_in(vmcb.exitinfo2)
        m.cpu.flush_tlb()
        e = svm.vmrun(100)
        if e is None:
            break
    assert m.cpu.rip == m.syms["done"] + 1       # ran to the (not intercepted) hlt
    assert {m.syms["_start"] & ~0xFFF, 0x400000} <= seen   # the code page and the data page


def test_eventinj_nmi_is_delivered_before_the_first_instruction():
    m, svm, vmcb = guest("hlt\nhandler: hlt", handlers={2: "handler"}, HLT=True)
    vmcb.eventinj = IntInfo.nmi().encode()
    svm.vmrun(100)
    assert vmcb.exitcode == ec.VMEXIT_HLT
    assert vmcb.rip == m.syms["handler"]
    assert vmcb.eventinj == 0                    # consumed


def test_exitintinfo_holds_the_event_an_npf_interrupted():
    m, svm, vmcb = guest("hlt\nhandler: hlt", handlers={2: "handler"})
    svm.npt.unmap_all()
    svm.npt.fault_in(m.syms["_start"])
    m.cpu.flush_tlb()
    vmcb.eventinj = IntInfo.nmi().encode()
    svm.vmrun(100)
    assert vmcb.exitcode == ec.VMEXIT_NPF        # the IDT or the stack is unmapped
    info = IntInfo.decode(vmcb.exitintinfo)
    assert info.valid and info.type == 2 and info.vector == 2


def test_msr_intercept_reports_read_or_write():
    m, svm, vmcb = guest("movl $0x830, %ecx\nwrmsr\nhlt", MSR_PROT=True)
    svm.vmrun(100)
    assert vmcb.exitcode == ec.VMEXIT_MSR and vmcb.exitinfo1 == 1


def test_vmmcall_intercept_and_nrip():
    m, svm, vmcb = guest("vmmcall\nafter: hlt", VMMCALL=True)
    svm.vmrun(100)
    assert vmcb.exitcode == ec.VMEXIT_VMMCALL and vmcb.nrip == m.syms["after"]


def test_triple_fault_is_a_shutdown_exit():
    m, svm, vmcb = guest("ud2", SHUTDOWN=True)
    vmcb.seg("idtr").limit = 0                    # every delivery faults: #GP, #DF, shutdown
    svm.vmrun(100)
    assert vmcb.exitcode == ec.VMEXIT_SHUTDOWN


def test_vintr_intercept_exits_when_the_interrupt_window_opens():
    m, svm, vmcb = guest("cli\nnop\nsti\nnop\nwindow: nop\nhlt", VINTR=True)
    vmcb.v_irq = 1
    vmcb.v_ign_tpr = 1
    svm.vmrun(100)
    assert vmcb.exitcode == ec.VMEXIT_VINTR
    # after STI the shadow holds for one instruction (the nop), then the window is open
    assert vmcb.rip == m.syms["window"]
