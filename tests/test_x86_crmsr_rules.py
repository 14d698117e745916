"""Reserved bits and invalid combinations in MOV to CR0/CR3/CR4/CR8 and WRMSR to EFER and the
other MSRs the vCPU holds: #GP(0) as the manuals say (SDM vol 2 "MOV—Move to/from Control
Registers", vol 3 2.5; AMD APM vol 2 3.1, 15.7), and under SVM the CR-write intercepts with
their EXITINFO1 (APM vol 2 15.8.1, 15.9)."""

from __future__ import annotations

import pytest
from x86util import LongModeMachine, ProtectedModeMachine

from nitdbg.svm import exitcodes as ec
from nitdbg.svm.npt import NestedPageTable
from nitdbg.svm.svm import Svm
from nitdbg.svm.vmcb import Iopm, Msrpm, Vmcb
from nitdbg.x86.retire import EV_EXCEPTION


def faults(c) -> list[tuple[int, int | None, int]]:
    return [(e.vector, e.error_code, e.rip) for e in c.retire.events if e.kind == EV_EXCEPTION]


def run64(src: str) -> LongModeMachine:
    m = LongModeMachine(src + "\ndone: hlt\nfh: hlt\nunexpected: hlt\n", handlers={13: "fh"})
    m.cpu.run(100)
    return m


def run32(src: str) -> ProtectedModeMachine:
    m = ProtectedModeMachine(src + "\ndone: hlt\nfh: hlt\nunexpected: hlt\n",
                             handlers={13: "fh"})
    m.cpu.run(100)
    return m


def gp_at(m, label: str) -> bool:
    return faults(m.cpu) == [(13, 0, m.syms[label])]


# -- CR0 ---------------------------------------------------------------------------------------

def test_mov_cr0_with_bits_63_32_set_is_gp_sdm_2_5_apm_3_1_1() -> None:
    m = run64("movq %cr0, %rax\nbts $32, %rax\nw: movq %rax, %cr0")
    assert gp_at(m, "w") and m.cpu.cr0 == 0x80050033


def test_mov_cr0_nw_without_cd_is_gp_sdm_mov_cr() -> None:
    m = run32("movl %cr0, %eax\norl $0x20000000, %eax\nw: movl %eax, %cr0")
    assert gp_at(m, "w")


def test_mov_cr0_cd_and_nw_together_are_accepted() -> None:
    m = run32("movl %cr0, %eax\norl $0x60000000, %eax\nmovl %eax, %cr0\njmp done")
    assert faults(m.cpu) == [] and m.cpu.cr0 & 0x6000_0000 == 0x6000_0000


def test_mov_cr0_pg_without_pe_is_gp_sdm_mov_cr() -> None:
    m = run32("movl $0x80000010, %eax\nw: movl %eax, %cr0")
    assert gp_at(m, "w")


def test_mov_cr0_clearing_pg_in_64bit_mode_is_gp_apm_14_7() -> None:
    m = run64("movq %cr0, %rax\nbtr $31, %rax\nw: movq %rax, %cr0")
    assert gp_at(m, "w") and m.cpu.cr0 & 1 << 31


def test_mov_cr0_reserved_low_bits_are_ignored_and_et_reads_1_sdm_2_5() -> None:
    m = run32("movl %cr0, %eax\norl $0x0000ffc0, %eax\nandl $~0x10, %eax\n"
              "movl %eax, %cr0\njmp done")
    assert faults(m.cpu) == [] and m.cpu.cr0 & 0xFFC0 == 0 and m.cpu.cr0 & 0x10


def test_mov_cr0_setting_pg_with_lme_and_no_pae_is_gp_sdm_9_8_5() -> None:
    m = run32("""
        movl $0xC0000080, %ecx
        movl $0x100, %eax
        xorl %edx, %edx
        wrmsr
        movl %cr0, %eax
        orl $0x80000000, %eax
    w:  movl %eax, %cr0
    """)
    assert gp_at(m, "w") and not m.cpu.efer & 0x400


# -- CR3, CR4, CR8 -----------------------------------------------------------------------------

def test_mov_cr3_above_maxphyaddr_in_long_mode_is_gp_sdm_4_5_apm_3_1_2() -> None:
    m = run64("movq %cr3, %rax\nbts $48, %rax\nw: movq %rax, %cr3")
    assert gp_at(m, "w")


def test_mov_cr3_within_maxphyaddr_is_accepted() -> None:
    m = run64("movq %cr3, %rax\nmovq %rax, %cr3\njmp done")
    assert faults(m.cpu) == []


@pytest.mark.parametrize("bit, name", [(0, "VME"), (11, "UMIP"), (13, "VMXE"),
                                       (16, "FSGSBASE"), (17, "PCIDE"), (18, "OSXSAVE"),
                                       (20, "SMEP"), (21, "SMAP"), (32, "bit 32")])
def test_mov_cr4_setting_a_bit_of_a_feature_cpuid_does_not_report_is_gp_sdm_2_5(
        bit: int, name: str) -> None:
    m = run64(f"movq %cr4, %rax\nbts ${bit}, %rax\nw: movq %rax, %cr4")
    assert gp_at(m, "w"), name
    assert m.cpu.cr4 == 0x20


@pytest.mark.parametrize("bit", [2, 3, 4, 6, 7, 8, 9, 10])   # 3: DE, CPUID 1 EDX bit 2
def test_mov_cr4_bits_of_reported_features_are_accepted(bit: int) -> None:
    m = run64(f"movq %cr4, %rax\nbts ${bit}, %rax\nmovq %rax, %cr4\njmp done")
    assert faults(m.cpu) == [] and m.cpu.cr4 == 0x20 | 1 << bit


def test_mov_cr4_clearing_pae_in_long_mode_is_gp_sdm_mov_cr() -> None:
    m = run64("movq %cr4, %rax\nbtr $5, %rax\nw: movq %rax, %cr4")
    assert gp_at(m, "w")


def test_mov_cr8_with_bits_63_4_set_is_gp_apm_3_1_5() -> None:
    m = run64("movq $0x10, %rax\nw: movq %rax, %cr8")
    assert gp_at(m, "w") and m.cpu.cr8 == 0


# -- MSRs ----------------------------------------------------------------------------------------

WRMSR = "movl ${msr}, %ecx\nmovl ${lo}, %eax\nmovl ${hi}, %edx\nw: wrmsr\njmp done"


def test_wrmsr_efer_reserved_bit_is_gp_apm_3_1_7() -> None:
    for bit in (1, 9, 13, 14, 15, 16):         # reserved, LMSLE, FFXSR, TCE not offered
        m = run64(WRMSR.format(msr=0xC0000080, lo=0xD01 | 1 << bit, hi=0))
        assert gp_at(m, "w") and m.cpu.efer == 0xD01, bit


def test_wrmsr_efer_svme_is_accepted_and_lma_written_is_ignored() -> None:
    m = run64(WRMSR.format(msr=0xC0000080, lo=0x1901 & ~0x400, hi=0))
    assert faults(m.cpu) == [] and m.cpu.efer == 0x1D01


def test_wrmsr_efer_changing_lme_with_paging_on_is_gp_sdm_9_8_5() -> None:
    m = run64(WRMSR.format(msr=0xC0000080, lo=0xC01, hi=0))
    assert gp_at(m, "w")


def test_wrmsr_sfmask_bits_63_32_are_gp() -> None:
    m = run64(WRMSR.format(msr=0xC0000084, lo=0x200, hi=1))
    assert gp_at(m, "w")


def test_wrmsr_tsc_aux_bits_63_32_are_ignored_on_amd_unlike_intel() -> None:
    m = run64(WRMSR.format(msr=0xC0000103, lo=0x1234, hi=0xFFFF))
    assert faults(m.cpu) == [] and m.cpu.tsc_aux == 0x1234


# -- SVM CR-write intercepts ---------------------------------------------------------------------

def svm_guest(src: str, **intercepts: bool):
    m = LongModeMachine(src + "\ndone: hlt\nfh: hlt\nunexpected: hlt\n", handlers={13: "fh"})
    npt = NestedPageTable()
    npt.map(0, 0, 64 << 20)
    iopm, msrpm = Iopm(), Msrpm()
    vmcb = Vmcb()
    svm = Svm(m.cpu, vmcb, npt, iopm, msrpm)
    svm.save_guest()
    vmcb.np_enable = 1
    for name, on in intercepts.items():
        vmcb.set_intercept(name, on)
    return m, svm, vmcb


def test_cr4_write_intercept_exitinfo1_has_mov_cr_bit63_and_the_gpr_apm_15_8_1() -> None:
    m, svm, vmcb = svm_guest("movq %cr4, %r9\nw: movq %r9, %cr4\nafter: nop", CR4_WRITE=True)
    svm.vmrun(100)
    assert vmcb.exitcode == ec.VMEXIT_CR0_WRITE + 4
    assert vmcb.exitinfo1 == (1 << 63) | 9
    assert vmcb.rip == m.syms["w"] and vmcb.nrip == m.syms["after"]


def test_cr_write_intercept_comes_before_the_reserved_bit_gp_apm_15_7() -> None:
    m, svm, vmcb = svm_guest("movq $0x10, %rax\nw: movq %rax, %cr8", CR8_WRITE=True)
    svm.vmrun(100)
    assert vmcb.exitcode == ec.VMEXIT_CR0_WRITE + 8 and faults(m.cpu) == []


def test_cr0_selective_write_intercept_ignores_ts_and_mp_changes_apm_15_9_1() -> None:
    m, svm, vmcb = svm_guest("movq %cr0, %rax\nxorq $0xa, %rax\nmovq %rax, %cr0\n"
                             "btsq $18, %rax\nbtrq $18, %rax\nbtrq $16, %rax\nw: movq %rax, %cr0",
                             CR0_SEL_WRITE=True)
    svm.vmrun(100)
    assert vmcb.exitcode == ec.VMEXIT_CR0_SEL_WRITE and vmcb.rip == m.syms["w"]
    assert vmcb.exitinfo1 == 1 << 63                     # source GPR 0 (RAX)


def test_cpuid_reports_decode_assists_and_nrip_save_for_the_exitinfo1_gpr() -> None:
    from nitdbg.x86.insn.system import cpuid_values
    m = run64("jmp done")
    assert cpuid_values(m.cpu, 0x8000_0000, 0)[0] >= 0x8000_000A
    edx = cpuid_values(m.cpu, 0x8000_000A, 0)[3]
    assert edx & (1 << 7) and edx & (1 << 3)


def test_clts_and_lmsw_are_cr0_writes_with_exitinfo1_bit63_clear_apm_15_8_1() -> None:
    m, svm, vmcb = svm_guest("w: clts\nnop", CR0_WRITE=True)
    svm.vmrun(100)
    assert (vmcb.exitcode, vmcb.exitinfo1, vmcb.rip) == (ec.VMEXIT_CR0_WRITE, 0, m.syms["w"])
    m, svm, vmcb = svm_guest("movw $0x7, %ax\nw: lmsw %ax\nnop", CR0_SEL_WRITE=True)  # sets EM
    svm.vmrun(100)
    assert (vmcb.exitcode, vmcb.exitinfo1) == (ec.VMEXIT_CR0_SEL_WRITE, 0)


def test_clts_does_not_trigger_the_cr0_selective_write_intercept_apm_15_9_1() -> None:
    m, svm, vmcb = svm_guest("clts\nw: hlt", CR0_SEL_WRITE=True, HLT=True)
    svm.vmrun(100)
    assert vmcb.exitcode == ec.VMEXIT_HLT and vmcb.rip == m.syms["w"]
