"""`nitdbg diff --qemu KERNEL`: the QEMU trace parser, the comparison rules, and real runs
against qemu-system-x86_64 (skipped where QEMU is absent)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nitdbg.qemudiff import Step, Trace, compare, parse_qemu_log

ROOT = Path(__file__).resolve().parent.parent
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                reason="qemu-system-x86_64 not found")


def trace_line(pc: int, cpu: int = 0) -> str:
    return f"Trace {cpu}: 0x7f0000000000 [0000000000000000/{pc:016x}/000000b0/ff000201] f\n"


def dump(eax: int, esp: int = 0x7000) -> list[str]:
    return [f"EAX={eax:08x} EBX=00000000 ECX=00000000 EDX=00000000\n",
            f"ESI=00000000 EDI=00000000 EBP=00000000 ESP={esp:08x}\n",
            "EIP=00100000 EFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0\n"]


def test_qemu_log_starts_at_the_kernel_entry_and_reads_the_state_before_each_insn() -> None:
    log = [trace_line(0xF0000), *dump(9), trace_line(0x100000), *dump(1),
           trace_line(0x100002), *dump(2)]
    t = parse_qemu_log(iter(log), 0x100000)[0]
    assert [(s.rip, s.regs["rax"]) for s in t.steps] == [(0x100000, 1), (0x100002, 2)]


def test_qemu_log_counts_a_rep_instruction_once_as_nitdbg_retires_it() -> None:
    log = [trace_line(0x100000), *dump(1), trace_line(0x100000), *dump(1),
           trace_line(0x100002), *dump(1)]
    assert [s.rip for s in parse_qemu_log(iter(log), 0x100000)[0].steps] == [0x100000,
                                                                              0x100002]


def test_qemu_log_drops_an_instruction_a_fault_interrupts_and_places_int_n_after_it() -> None:
    log = [trace_line(0x100000), *dump(1),
           trace_line(0x100002),                       # faults: did not complete
           "     0: v=0d e=0000 i=0 cpl=0 IP=0008:0000000000100002 pc=0000000000100002\n",
           trace_line(0x200000), *dump(1),
           trace_line(0x200004),                       # int $0x30
           "     1: v=30 e=0000 i=1 cpl=0 IP=0008:0000000000200004 pc=0000000000200004\n",
           trace_line(0x300000), *dump(1)]
    t = parse_qemu_log(iter(log), 0x100000)[0]
    assert [s.rip for s in t.steps] == [0x100000, 0x200000, 0x200004, 0x300000]
    assert t.events == [(1, 0x0D, 0), (2, 0x30, None)]


def test_compare_reports_the_first_event_delivery_that_differs() -> None:
    a = Trace([Step(0x10, {}), Step(0x12, {})], [(1, 2, None)])
    b = Trace([Step(0x10, {}), Step(0x12, {})], [])
    d = compare({0: a}, {0: b})
    assert d is not None and (d.what, d.index, d.qemu) == ("event delivery", 1, "no event")


def test_compare_tracks_a_register_only_once_both_sides_agreed_on_it() -> None:
    a = Trace([Step(0x10, {"rcx": 5}), Step(0x12, {"rcx": 7}), Step(0x14, {"rcx": 8})])
    b = Trace([Step(0x10, {"rcx": 6}), Step(0x12, {"rcx": 7}), Step(0x14, {"rcx": 9})])
    d = compare({0: a}, {0: b})
    assert d is not None and (d.what, d.index, d.nitdbg, d.qemu) == (
        "register rcx", 2, "0x8", "0x9")


def test_compare_reports_a_different_instruction_stream() -> None:
    a = Trace([Step(0x10, {}), Step(0x12, {})])
    b = Trace([Step(0x10, {}), Step(0x13, {})])
    d = compare({0: a}, {0: b})
    assert d is not None and d.what == "instruction stream" and d.qemu == "0x13"


def run_diff(kernel: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nitdbg", "diff", "--qemu",
                           str(ROOT / "tests" / "kernels" / kernel), *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


@needs_qemu
@pytest.mark.parametrize("kernel, vcpus", [("pit_pic.elf", "1"), ("rtc_nmi.elf", "1"),
                                           ("smp2.elf", "2")])
def test_diff_of_a_test_kernel_agrees_with_qemu_before_the_first_timer_event(
        kernel: str, vcpus: str) -> None:
    # The first 3000 instructions of each kernel depend on no timer: the two agree on
    # every instruction, event and register the multiboot contract defines.
    r = run_diff(kernel, "--vcpus", vcpus, "--max-instructions", "3000")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.endswith("no divergence\n")
    assert "vCPU 0: 3000 / 3000" in r.stdout


@needs_qemu
def test_diff_reports_where_the_rtc_makes_the_runs_part() -> None:
    # The RTC ticks in virtual time under nitdbg and in wall-clock time under QEMU: after
    # the timer-free start the runs part, at the first periodic interrupt (an event
    # delivery) or at a register that counts waiting (how long QEMU's wall clock took),
    # whichever comes first in QEMU's run: the report names one of them, with context
    # from both sides, and no rule of the manuals decides when a timer fires. Where QEMU's
    # wall clock happens to put its interrupts where nitdbg's virtual time does (the first
    # is pending at the kernel's STI on both sides), the runs agree for the whole window.
    r = run_diff("rtc_ioapic.elf")
    assert r.returncode in (0, 1) and "Traceback" not in r.stderr, r.stdout + r.stderr
    if r.returncode == 0:
        assert r.stdout.endswith("vCPU 0: 20000 / 20000\nno divergence\n"), r.stdout
        return
    m = re.search(r"first divergence: vCPU 0, instruction #(\d+) since entry: (.*)", r.stdout)
    assert m is not None and int(m.group(1)) >= 3000, r.stdout
    assert m.group(2).startswith(("event delivery", "register")), r.stdout
    assert "context (nitdbg):" in r.stdout and "context (qemu):" in r.stdout, r.stdout
    assert "no rule in nitdbg's list decides this divergence" in r.stdout, r.stdout


def test_diff_of_a_missing_kernel_is_one_line(tmp_path: Path) -> None:
    r = run_diff(str(tmp_path / "nope.elf"))
    assert r.returncode == 2 and r.stdout.count("\n") == 1 and "nitdbg diff:" in r.stdout
    assert "Traceback" not in r.stderr


def test_compare_ignores_a_register_that_returns_to_each_sides_own_entry_value() -> None:
    # The multiboot EBX differs at entry; a handler that pushes it, agrees on a value and
    # pops it again brings back each side's own value: not a divergence. A new value is.
    a = Trace([Step(0x10, {"rbx": 0x9000}), Step(0x12, {"rbx": 12}),
               Step(0x14, {"rbx": 0x9000}), Step(0x16, {"rbx": 12}), Step(0x18, {"rbx": 5})])
    b = Trace([Step(0x10, {"rbx": 0x9500}), Step(0x12, {"rbx": 12}),
               Step(0x14, {"rbx": 0x9500}), Step(0x16, {"rbx": 12}), Step(0x18, {"rbx": 6})])
    d = compare({0: a}, {0: b})
    assert d is not None and (d.what, d.index) == ("register rbx", 4)
