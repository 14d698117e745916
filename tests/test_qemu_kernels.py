"""The multiboot test kernels in tests/kernels/ (written from the manuals) give the same
debugcon output and isa-debug-exit status under `python3 -m nitdbg run --kernel K` and
under `qemu-system-x86_64 -kernel K -display none -debugcon stdio -device isa-debug-exit`.

The expected transcripts are what QEMU prints; nitdbg is checked against them always, QEMU
where it is installed (so the two are equal whenever both run)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KDIR = ROOT / "tests" / "kernels"
QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not found")

PASS, FAIL = 1, 3      # isa-debug-exit: (0 << 1) | 1 and (1 << 1) | 1

# (kernel, vCPUs or None for the default, expected debugcon output, exit status)
CASES = {
    "smp2": ("smp2", 2, "smp: BSP apic id 0, starting APs\n"
                        "smp: 1 APs started, apic ids 1\n", PASS),
    "smp4": ("smp4", 4, "smp: BSP apic id 0, starting APs\n"
                        "smp: 3 APs started, apic ids 1 2 3\n", PASS),
    # A multiboot kernel gets one vCPU unless asked, as QEMU's -smp: no AP answers.
    "smp2-default-vcpus": ("smp2", None, "smp: BSP apic id 0, starting APs\n"
                                         "smp: 0 APs started, apic ids\n", FAIL),
    "rtc_ioapic": ("rtc_ioapic", None,
                   "rtc_ioapic: edge: 8 periodic interrupts on vector 0x48, register C IRQF|PF "
                   "0x000000c0\n"
                   "rtc_ioapic: level: 4 interrupts, remote IRR in the handler 1, after EOI 0\n"
                   "rtc_ioapic: masked: 0 interrupts\n", PASS),
    "rtc_uf": ("rtc_uf", None,
               "rtc_uf: UIE: 4 update-ended interrupts on vector 0x48, register C IRQF|PF|UF "
               "0x00000090\n"
               "rtc_uf: seconds advanced by 1 between them: yes, UIP set in the handler: 0\n"
               "rtc_uf: without UIE: UF flagged with register C IRQF|PF|UF 0x000000d0\n",
               PASS),
    "rtc_nmi": ("rtc_nmi", None, "rtc_nmi: halting with IF=0\n"
                                 "rtc_nmi: 3 of 3 HLTs with IF=0 ended by an NMI\n", PASS),
    "pit_pic": ("pit_pic", None,
                "pit_pic: counter runs below the initial count\n"
                "pit_pic: 8259: 5 ticks on vector 0x20, ISR in the handler 0x00000001\n"
                "pit_pic: ioapic pin 2: 5 ticks on vector 0x50\n", PASS),
}


def run_nitdbg(kernel: str, vcpus: int | None, *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "nitdbg", "run", "--kernel", str(KDIR / f"{kernel}.elf")]
    if vcpus is not None:
        args += ["--vcpus", str(vcpus)]
    return subprocess.run([*args, *extra], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def run_qemu(kernel: str, vcpus: int | None) -> subprocess.CompletedProcess:
    args = [QEMU, "-kernel", str(KDIR / f"{kernel}.elf"), "-display", "none",
            "-debugcon", "stdio", "-device", "isa-debug-exit", "-no-reboot"]
    if vcpus is not None:
        args += ["-smp", str(vcpus)]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_under_nitdbg_prints_what_qemu_prints(case: str) -> None:
    kernel, vcpus, out, status = CASES[case]
    r = run_nitdbg(kernel, vcpus)
    assert (r.stdout, r.returncode) == (out, status), r.stderr


@needs_qemu
@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_under_qemu_prints_the_expected_transcript(case: str) -> None:
    kernel, vcpus, out, status = CASES[case]
    r = run_qemu(kernel, vcpus)
    assert (r.stdout, r.returncode) == (out, status), r.stderr


def test_bhyve_delmodes_drops_the_rtc_nmi_so_the_hlt_with_if0_never_wakes(tmp_path) -> None:
    """The knob reproduces bhyve's vlapic_deliver_intr: the NMI-mode I/O APIC pin's
    message is dropped; under the hardware rule (the default) the same kernel passes."""
    ev = tmp_path / "ev.jsonl"
    r = run_nitdbg("rtc_nmi", None, "--sysctl", "hw.vmm.vioapic.bhyve_delmodes=1",
                   "--max-seconds", "0.05", "--events-out", str(ev))
    assert r.stdout == "rtc_nmi: halting with IF=0\n"
    assert r.returncode == 0                      # no isa-debug-exit: the guest is stuck
    assert "vlapic intr invalid delmode 0x400" in ev.read_text()


def test_an_exit_nitdbg_cannot_handle_ends_the_run_with_one_line_and_status_1(tmp_path) -> None:
    src = tmp_path / "npf.S"
    src.write_text(".section .multiboot, \"a\"\n.long 0x1badb002, 0, -0x1badb002\n.text\n"
                   ".globl _start\n_start:\n movl $1, 0xfed00000\n hlt\n")
    if not shutil.which("gcc"):
        pytest.skip("needs gcc")
    elf = tmp_path / "npf.elf"
    subprocess.run(["gcc", "-m32", "-nostdlib", "-static", f"-Wl,-T,{KDIR / 'kernel.ld'}",
                    "-Wl,--build-id=none", "-o", str(elf), str(src)], check=True)
    r = subprocess.run([sys.executable, "-m", "nitdbg", "run", "--kernel", str(elf)],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 1
    assert r.stderr == ("vm vm2: unhandled exit VMEXIT_NPF (0x400) at gpa 0xfed00000, "
                        "guest rip 0x10000c (_start)\n")


@pytest.mark.skipif(not all(shutil.which(t) for t in ("make", "gcc", "ld")),
                    reason="needs make, gcc and ld")
def test_committed_kernels_match_a_fresh_build(tmp_path: Path) -> None:
    subprocess.run(["make", "-s", "-C", str(KDIR), f"O={tmp_path}"], check=True,
                   capture_output=True, text=True)
    for elf in sorted(KDIR.glob("*.elf")):
        assert (tmp_path / elf.name).read_bytes() == elf.read_bytes(), (
            f"tests/kernels/{elf.name} is stale: run `make -C tests/kernels` and commit it")


def test_amd64_firmware_multiboot_entry_starts_its_aps_with_init_sipi_sipi_as_under_qemu() -> None:
    """The amd64 firmware's _start32 (its QEMU entry) sends INIT, SIPI, SIPI through the
    xAPIC and counts the APs that arrive; booted the multiboot way on 2 vCPUs, nitdbg's
    AP comes up in real mode at 0x9000 and the banner says 2 CPUs, as QEMU -smp 2 does."""
    from nitdbg.machine import Machine

    m = Machine(vcpus=2, boot="multiboot")
    assert m.run_until_output(b"# ", max_insns=40_000_000)
    assert m.console_output().replace(b"\r", b"") == b"nitdbg amd64 firmware: 2 CPUs\n# "
