"""The manual's rules `nitdbg diff --qemu` checks at the first divergence: for each, a trace
that obeys it passes and one that breaks it is named; and on the dbrules kernels, the
rules QEMU breaks are named (skipped only where qemu-system-x86_64 is absent)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nitdbg.qemudiff import Delivery, Step, Trace, parse_qemu_log, run_nitdbg
from nitdbg.qemudiff.core import elf_ranges
from nitdbg.qemudiff.rules import (
    RULES,
    Code,
    data_bp_is_trap,
    error_codes,
    evaluate,
    fault_pushes_rf,
    gate_clears_tf_rf,
    general_detect,
    ibp_faults_before,
    int1_is_db_trap,
    movss_shadow,
    nmi_blocked_until_iret,
    priority_table_6_2,
    resolve_iret_frames,
    rf_suppresses_ibp,
    single_step_sets_bs,
    single_step_trap,
    sti_shadow,
    verdict_lines,
)

ROOT = Path(__file__).resolve().parent.parent
KDIR = ROOT / "tests" / "kernels"
QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not found")

TF, IF, RF = 0x100, 0x200, 0x10000
NOP, UD2, STI, MOVSS, IRET, INT1 = b"\x90", b"\x0f\x0b", b"\xfb", b"\x8e\xd0", b"\xcf", b"\xf1"
MOV_EAX_DR0, MOV_MEM_IMM = b"\x0f\x21\xc0", b"\xc7\x05\x00\x20\x00\x00\x07\x00\x00\x00"
HANDLER = 0x100


def code(at: dict[int, bytes]) -> Code:
    """Instruction bytes at addresses; NOP everywhere else."""
    return Code(lambda a, n: (at.get(a, NOP) + NOP * 16)[:n])


def step(rip: int, rflags: int | None = 0x2, **regs: int) -> Step:
    r = dict(regs)
    if rflags is not None:
        r["rflags"] = rflags
    return Step(rip, r)


def dv(after: int, vector: int, kind: str = "exception", **kw) -> Delivery:  # noqa: ANN003
    kw.setdefault("frame_from", "stack")
    return Delivery(after + 1, vector, kw.pop("error", None), kind, after + 1, **kw)


def broken(rule, trace: Trace, mem: dict[int, bytes]) -> list[str]:  # noqa: ANN001
    """The details of the places where `rule` (a checker) finds the trace breaks it."""
    c = code(mem)
    (r,) = [r for r in RULES if r.check is rule]
    fs = evaluate("side", trace, c, 0, (r,), window=100)
    assert fs, "the rule decides nothing in this trace"
    return [f.detail for f in fs if f.broken]


def test_rule_a_fault_pushes_rf_1_sdm_17_3_1_1() -> None:
    steps = [step(0x10), step(HANDLER)]
    good = Trace(steps, [], [dv(0, 6, at_rip=0x10, pushed_rflags=0x10046)])
    bad = Trace(steps, [], [dv(0, 6, at_rip=0x10, pushed_rflags=0x46)])
    assert broken(fault_pushes_rf, good, {0x10: UD2}) == []
    assert broken(fault_pushes_rf, bad, {0x10: UD2}) == [
        "vector 0x6: pushed RFLAGS 0x46 (written on the stack) has RF=0"]


def test_rule_a_single_step_trap_follows_an_instruction_begun_with_tf_sdm_17_3_1_4() -> None:
    steps = [step(0x10, 0x302), step(HANDLER)]
    assert broken(single_step_trap, Trace(steps, [], [dv(0, 1, dr6=0xFFFF4FF0)]), {}) == []
    assert broken(single_step_trap, Trace(steps, [], [dv(0, 0x30, "intr")]), {}) == [
        "nop: began with TF=1, then vector 0x30 was delivered"]


def test_rule_a_single_step_db_sets_dr6_bs_sdm_17_2_3() -> None:
    steps = [step(0x10, 0x302), step(HANDLER)]
    assert broken(single_step_sets_bs, Trace(steps, [], [dv(0, 1, dr6=0xFFFF4FF0)]), {}) == []
    assert broken(single_step_sets_bs, Trace(steps, [], [dv(0, 1, dr6=0xFFFF0FF0)]), {}) == [
        "DR6 in the #DB handler 0xffff0ff0"]


def test_rule_an_instruction_breakpoint_faults_before_the_instruction_sdm_17_3_1_1() -> None:
    bp = {"dr0": 0x20, "dr1": 0, "dr2": 0, "dr3": 0, "dr7": 0x401}
    good = Trace([step(0x10, **bp), step(HANDLER, **bp)], [],
                 [dv(0, 1, pushed_rip=0x20, dr6=0xFFFF0FF1)])
    missed = Trace([step(0x10, **bp), step(0x20, **bp), step(0x21, **bp)])
    assert broken(ibp_faults_before, good, {}) == []
    assert broken(ibp_faults_before, missed, {}) == [
        "DR0=0x20 enabled, RF=0: the instruction completed without a #DB"]


def test_rule_rf_1_suppresses_an_instruction_breakpoint_for_one_instruction_sdm_17_3_1_1(
        ) -> None:
    bp = {"dr0": 0x20, "dr1": 0, "dr2": 0, "dr3": 0, "dr7": 0x401}
    good = Trace([step(0x20, 0x10002, **bp), step(0x21, **bp)])
    bad = Trace([step(0x10, **bp), step(HANDLER, **bp)], [],
                [dv(0, 1, pushed_rip=0x20, at_rflags=0x10002, dr6=0xFFFF0FF1)])
    assert broken(rf_suppresses_ibp, good, {}) == []
    assert broken(rf_suppresses_ibp, bad, {}) == [
        "#DB for the breakpoint although RFLAGS 0x10002 had RF=1"]


def test_rule_a_general_detect_db_pushes_rf_1_too_sdm_17_3_1_1() -> None:
    steps = [step(0x08), step(HANDLER)]
    bad = Trace(steps, [], [dv(0, 1, pushed_rip=0x10, pushed_rflags=0x46, dr6=0xFFFF2FF0)])
    good = Trace(steps, [], [dv(0, 1, pushed_rip=0x10, pushed_rflags=0x10046,
                                dr6=0xFFFF2FF0)])
    assert broken(fault_pushes_rf, good, {0x10: MOV_EAX_DR0}) == []
    assert broken(fault_pushes_rf, bad, {0x10: MOV_EAX_DR0}) == [
        "vector 0x1: pushed RFLAGS 0x46 (written on the stack) has RF=0"]


def test_rule_with_dr7_gd_a_mov_dr_faults_with_dr6_bd_sdm_17_2_4() -> None:
    good = Trace([step(0x08, dr7=0x2400), step(HANDLER, dr7=0x400)], [],
                 [dv(0, 1, pushed_rip=0x10, dr6=0xFFFF2FF0)])
    bad = Trace([step(0x08, dr7=0x2400), step(0x10, dr7=0x2400), step(0x13, dr7=0x2400)])
    assert broken(general_detect, good, {0x10: MOV_EAX_DR0}) == []
    assert broken(general_detect, bad, {0x10: MOV_EAX_DR0}) == [
        "mov eax, dr0 completed with DR7.GD=1 (DR7 0x2400)"]


def test_rule_a_data_breakpoint_is_a_trap_after_the_access_sdm_17_3_1_2() -> None:
    bp = {"dr1": 0x2000, "dr7": 0x00D00004}
    steps = [step(0x10, **bp), step(HANDLER, **bp)]
    good = Trace(steps, [], [dv(0, 1, pushed_rip=0x1A, dr6=0xFFFF0FF2)])
    bad = Trace(steps, [], [dv(0, 1, pushed_rip=0x10, dr6=0xFFFF0FF2)])
    assert broken(data_bp_is_trap, good, {0x10: MOV_MEM_IMM}) == []
    assert broken(data_bp_is_trap, bad, {0x10: MOV_MEM_IMM}) == [
        "DR1 data breakpoint after mov dword ptr [0x2000], 7: pushed RIP 0x10, next "
        "instruction 0x1a, DR6 0xffff0ff2"]


def test_rule_sti_blocks_interrupts_for_one_instruction_sdm_6_8_3() -> None:
    steps = [step(0x10), step(0x11, IF | 2), step(HANDLER)]
    assert broken(sti_shadow, Trace(steps, [], [dv(1, 0x30, "intr")]), {0x10: STI}) == []
    assert broken(sti_shadow, Trace(steps, [], [dv(0, 0x30, "intr")]), {0x10: STI}) == [
        "interrupt vector 0x30 right after STI"]


def test_rule_mov_ss_blocks_db_nmi_and_interrupts_for_one_instruction_sdm_6_8_3() -> None:
    steps = [step(0x10, 0x302), step(0x12, 0x302), step(HANDLER)]
    good = Trace(steps, [], [dv(1, 1, dr6=0xFFFF4FF0)])
    bad = Trace(steps, [], [dv(0, 2, "nmi")])
    assert broken(movss_shadow, good, {0x10: MOVSS}) == []
    assert broken(movss_shadow, bad, {0x10: MOVSS}) == [
        "vector 0x2 delivered right after mov ss, eax"]


def test_rule_nmis_are_blocked_until_the_next_iret_sdm_6_7_1() -> None:
    steps = [step(0x10), step(HANDLER), step(HANDLER + 1), step(0x11), step(HANDLER)]
    good = Trace(steps, [], [dv(0, 2, "nmi"), dv(3, 2, "nmi")])
    bad = Trace(steps, [], [dv(0, 2, "nmi"), dv(3, 2, "nmi")])
    assert broken(nmi_blocked_until_iret, good, {HANDLER + 1: IRET}) == []
    assert broken(nmi_blocked_until_iret, bad, {}) == [
        "a second NMI with no IRET since the first"]


def test_rule_delivery_through_a_gate_clears_tf_rf_nt_sdm_6_12_1_3() -> None:
    good = Trace([step(0x10, 0x302), step(HANDLER, 0x2)], [], [dv(0, 1)])
    bad = Trace([step(0x10, 0x302), step(HANDLER, 0x10102)], [], [dv(0, 1)])
    assert broken(gate_clears_tf_rf, good, {}) == []
    assert broken(gate_clears_tf_rf, bad, {}) == [
        "vector 0x1: handler starts with RFLAGS 0x10102 (TF, RF set)"]


def test_rule_int1_raises_db_as_a_trap_sdm_table_17_2() -> None:
    good = Trace([step(0x10), step(HANDLER)], [], [dv(0, 1, pushed_rip=0x11)])
    as_ud = Trace([step(0x0F), step(HANDLER)], [], [dv(0, 6, at_rip=0x10)])
    as_fault = Trace([step(0x10), step(HANDLER)], [], [dv(0, 1, pushed_rip=0x10)])
    assert broken(int1_is_db_trap, good, {0x10: INT1}) == []
    assert broken(int1_is_db_trap, as_ud, {0x10: INT1}) == [
        "INT1 delivered vector 0x6, not #DB"]
    assert broken(int1_is_db_trap, as_fault, {0x10: INT1}) == [
        "#DB pushed RIP 0x10 (the next instruction is 0x11)"]


def test_rule_error_codes_pushed_for_8_10_to_14_17_21_and_df_is_0_sdm_6_13() -> None:
    steps = [step(0x10), step(HANDLER)]
    assert broken(error_codes, Trace(steps, [], [dv(0, 8, error=0)]), {}) == []
    assert broken(error_codes, Trace(steps, [], [dv(0, 8, error=4)]), {}) == [
        "#DF error code 0x4"]
    c = code({})
    ok = evaluate("s", Trace(steps, [], [dv(0, 13, error=0x10)]), c, 0, window=100)
    assert not [f for f in ok if f.broken]
    bad = evaluate("s", Trace(steps, [], [dv(0, 6, error=0)]), c, 0, window=100)
    assert [f.detail for f in bad if f.broken] == ["vector 0x6 pushed an error code"]


def test_rule_at_one_boundary_db_before_nmi_before_interrupt_sdm_table_6_2() -> None:
    steps = [step(0x10, 0x302), step(HANDLER)]
    good = Trace(steps, [], [dv(0, 1, dr6=0xFFFF4FF0), dv(0, 2, "nmi")])
    bad = Trace(steps, [], [dv(0, 2, "nmi"), dv(0, 1, dr6=0xFFFF4FF0)])
    assert broken(priority_table_6_2, good, {}) == []
    assert broken(priority_table_6_2, bad, {}) == [
        "at one boundary: vector 0x2, vector 0x1 (in delivery order)"]
    nmi_first = Trace(steps, [], [dv(0, 2, "nmi"), dv(0, 0x30, "intr")])
    intr_first = Trace(steps, [], [dv(0, 0x30, "intr"), dv(0, 2, "nmi")])
    assert broken(priority_table_6_2, nmi_first, {}) == []
    assert broken(priority_table_6_2, intr_first, {}) == [
        "at one boundary: vector 0x30, vector 0x2 (in delivery order)"]


def test_a_frame_qemu_does_not_log_is_read_from_the_handlers_iret() -> None:
    # RSP back at its value before the push after an IRET: that IRET loaded the frame.
    t = Trace([step(0x10), step(HANDLER, rsp=0x6FF4), step(HANDLER + 1),
               Step(0x12, {"rsp": 0x7000, "rflags": 0x46})], [],
              [Delivery(1, 6, None, "exception", 1, at_rip=0x10, sp=0x7000)])
    resolve_iret_frames(t, code({HANDLER + 1: IRET}))
    d = t.deliveries[0]
    assert (d.pushed_rip, d.pushed_rflags, d.frame_from) == (0x12, 0x46, "iret")


def test_the_report_names_the_side_the_rule_the_citation_and_the_place() -> None:
    c = code({0x10: UD2})
    steps = [step(0x10), step(HANDLER)]
    qemu = evaluate("qemu", Trace(steps, [], [dv(0, 6, at_rip=0x10, pushed_rflags=0x46)]),
                    c, 1)
    mine = evaluate("nitdbg", Trace(steps, [], [dv(0, 6, pushed_rip=0x10,
                                                    pushed_rflags=0x10046)]), c, 1)
    text = "".join(verdict_lines({"nitdbg": mine, "qemu": qemu}, lambda a: f"k+{a:#x}"))
    assert "qemu breaks: a fault-class exception pushes RF=1 in the RFLAGS image " \
           "(SDM 17.3.1.1)" in text
    assert "at k+0x10 (0x10)" in text and "nitdbg obeys it at k+0x10" in text
    assert "nitdbg breaks" not in text


def test_the_report_says_no_rule_decides_when_none_is_broken() -> None:
    c = code({})
    f = evaluate("qemu", Trace([step(0x10), step(0x11)]), c, 1)
    text = "".join(verdict_lines({"nitdbg": f, "qemu": f}, hex))
    assert "no rule in nitdbg's list decides this divergence" in text


# -- the dbrules kernels under QEMU ----------------------------------------------------------

def run_diff(kernel: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nitdbg", "diff", "--qemu",
                           str(KDIR / kernel)], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def qemu_says(kernel: str, case: str) -> str:
    """The kernel's own verdict on one case under QEMU: "ok" or "WRONG"."""
    r = subprocess.run([QEMU, "-kernel", str(KDIR / kernel), "-display", "none",
                        "-debugcon", "stdio", "-device", "isa-debug-exit", "-no-reboot"],
                       capture_output=True, text=True, timeout=60)
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith(f"dbrules: {case}:"))
    return line.rsplit(" ", 1)[1]


def test_the_dbrules_kernel_obeys_the_manual_under_nitdbg() -> None:
    r = subprocess.run([sys.executable, "-m", "nitdbg", "run", "--kernel",
                        str(KDIR / "dbrules.elf")], capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
    assert r.stdout.count(" ok\n") == 6 and "WRONG" not in r.stdout, r.stdout
    assert r.returncode == 1, r.stdout      # isa-debug-exit: PASS


def test_a_self_ipi_written_to_the_xapic_page_is_taken_after_the_sti_shadow_free_running() -> None:
    # SDM 6.8.3: the interrupt pending under IF=0 is taken after the instruction after STI.
    # Free running (not single-stepped) the xAPIC write must stop the vCPU for injection, as
    # bhyve's NPF exit for the APIC page does; otherwise the window opens and closes unseen.
    r = subprocess.run([sys.executable, "-m", "nitdbg", "run", "--kernel",
                        str(KDIR / "dbsti.elf")], capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("dbrules: sti:"))
    assert line.endswith(" ok"), r.stdout


@needs_qemu
def test_diff_names_the_rf_rule_qemu_breaks_on_ud2() -> None:
    r = run_diff("dbrules.elf")
    assert r.returncode == 1, r.stdout + r.stderr
    if qemu_says("dbrules.elf", "ud2") == "WRONG":     # QEMU 7.2 pushes RF=0 for #UD
        assert "qemu breaks: a fault-class exception pushes RF=1 in the RFLAGS image " \
               "(SDM 17.3.1.1)" in r.stdout, r.stdout
        assert "nitdbg obeys it at ud_at" in r.stdout, r.stdout
    assert "nitdbg breaks" not in r.stdout, r.stdout


@needs_qemu
def test_diff_names_the_general_detect_rule_qemu_breaks_and_judges_nitdbgs_rf() -> None:
    r = run_diff("dbgd.elf")
    assert r.returncode == 1, r.stdout + r.stderr
    if qemu_says("dbgd.elf", "gd") == "WRONG":         # QEMU 7.2 raises no #DB for DR7.GD
        assert "qemu breaks: with DR7.GD=1 a MOV DR raises a #DB fault before it, with " \
               "DR6.BD (SDM 17.2.4)\n    at gd_at" in r.stdout, r.stdout
        assert "nitdbg obeys it at gd_at" in r.stdout, r.stdout
    nitdbg_rf = "nitdbg breaks: a fault-class exception pushes RF=1" in r.stdout
    assert nitdbg_rf == (nitdbg_says("dbgd.elf", "gd") == "WRONG"), r.stdout


@needs_qemu
def test_diff_names_the_int1_rule_qemu_breaks() -> None:
    r = run_diff("dbicebp.elf")
    assert r.returncode == 1, r.stdout + r.stderr
    if qemu_says("dbicebp.elf", "icebp") == "WRONG":   # QEMU 7.2 raises #UD for F1
        assert "qemu breaks: INT1 (ICEBP) raises #DB as a trap" in r.stdout, r.stdout
        assert "nitdbg obeys it at kmain+" in r.stdout, r.stdout
    assert "nitdbg breaks" not in r.stdout, r.stdout


def test_qemu_log_gives_an_events_state_dr6_and_the_debug_registers() -> None:
    log = ["Trace 0: 0x7f00 [0000000000000000/0000000000100000/000000b0/ff000201] \n",
           "EAX=00000001 EBX=0 ECX=0 EDX=0\n", "ESI=0 EDI=0 EBP=0 ESP=00007000\n",
           "EIP=00100000 EFL=00000302 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0\n",
           "DR0=0000000000100010 DR1=0000000000000000 DR2=0000000000000000 "
           "DR3=0000000000000000 \n", "DR6=00000000ffff0ff0 DR7=0000000000000401\n",
           "     0: v=01 e=0000 i=0 cpl=0 IP=0008:0000000000100001 pc=0000000000100001 "
           "SP=0010:0000000000007000 env->regs[R_EAX]=0000000000000001\n",
           "EAX=00000001 EBX=0 ECX=0 EDX=0\n",
           "EIP=00100001 EFL=00000302 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0\n",
           "DR6=00000000ffff4ff0 DR7=0000000000000401\n",
           "Trace 0: 0x7f00 [0000000000000000/0000000000100100/000000b0/ff000201] \n",
           "EAX=00000001 EBX=0 ECX=0 EDX=0\n"]
    t = parse_qemu_log(iter(log), 0x100000)[0]
    s = t.steps[0]
    assert (s.mode, s.regs["dr0"], s.regs["dr7"], s.regs["rflags"]) == (32, 0x100010, 0x401,
                                                                        0x302)
    (d,) = t.deliveries
    assert (d.vector, d.kind, d.at_rip, d.sp, d.at_rflags, d.dr6, d.handler_at, d.after) == (
        1, "exception", 0x100001, 0x7000, 0x302, 0xFFFF4FF0, 1, 0)


def test_nitdbgs_own_trace_of_the_dbrules_kernels_breaks_none_of_the_rules() -> None:
    # Every case of dbrules.c is a place where a rule decides: nitdbg obeys each one, and
    # the INT1 #DB is placed after the F1 instruction, with the next RIP pushed.
    for kernel in ("dbrules.elf", "dbicebp.elf"):
        _, ranges = elf_ranges(str(KDIR / kernel))
        m, tr = run_nitdbg(str(KDIR / kernel), 1, 5000, ranges)
        c = Code(lambda a, n, m=m: m.read_mem(0, a, n))
        fs = evaluate("nitdbg", tr[0], c, 0, window=10**6)
        assert [f.detail for f in fs if f.broken] == []
        decided = {f.rule.check.__name__ for f in fs}
        assert decided >= {"fault_pushes_rf", "single_step_trap", "single_step_sets_bs",
                           "ibp_faults_before", "rf_suppresses_ibp", "movss_shadow",
                           "gate_clears_tf_rf", "int1_is_db_trap", "data_bp_is_trap"}, decided


def test_the_sti_case_is_decided_on_nitdbgs_stepped_trace() -> None:
    # dbsti: a self-IPI pending under IF=0 is taken after the NOP that follows STI, as the
    # diff's one-instruction steps run it (SDM 6.8.3).
    _, ranges = elf_ranges(str(KDIR / "dbsti.elf"))
    m, tr = run_nitdbg(str(KDIR / "dbsti.elf"), 1, 5000, ranges)
    fs = evaluate("nitdbg", tr[0], Code(lambda a, n: m.read_mem(0, a, n)), 0, window=10**6)
    sti = [f for f in fs if f.rule.check is sti_shadow]
    assert len(sti) == 1 and not sti[0].broken, [f.detail for f in sti]
    assert [f.detail for f in fs if f.broken] == []


def nitdbg_says(kernel: str, case: str) -> str:
    r = subprocess.run([sys.executable, "-m", "nitdbg", "run", "--kernel", str(KDIR / kernel)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith(f"dbrules: {case}:"))
    return line.rsplit(" ", 1)[1]


def test_the_general_detect_case_is_judged_from_nitdbgs_own_frame() -> None:
    # dbgd runs the DR7.GD case first. nitdbg raises the #DB before the MOV DR with DR6.BD
    # (obeying SDM 17.2.4); whether its frame has RF=1 (SDM 17.3.1.1) the kernel itself
    # reports, and the checker must agree with it.
    _, ranges = elf_ranges(str(KDIR / "dbgd.elf"))
    m, tr = run_nitdbg(str(KDIR / "dbgd.elf"), 1, 5000, ranges)
    fs = evaluate("nitdbg", tr[0], Code(lambda a, n: m.read_mem(0, a, n)), 0, window=10**6)
    gd = [f for f in fs if f.rule.check is general_detect]
    assert gd and not any(f.broken for f in gd)
    rf = [f for f in fs if f.rule.check is fault_pushes_rf and f.detail.startswith("vector 0x1")]
    assert len(rf) == 1
    assert rf[0].broken == (nitdbg_says("dbgd.elf", "gd") == "WRONG"), rf[0].detail
