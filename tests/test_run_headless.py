"""`nitdbg run --kernel`: a small multiboot kernel that writes to the debug console (port
0xE9) and exits through isa-debug-exit gives the same output and exit status as
`qemu-system-x86_64 -kernel` (QEMU: only where it is installed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

KERNEL_S = r"""
    .set MAGIC, 0x1BADB002
    .set FLAGS, 0
    .text
    .align 4
    .long MAGIC, FLAGS, -(MAGIC + FLAGS)
    .code32
    .globl _start
_start:
    movl $stack_top, %esp
    movl $msg, %esi
    call puts
    /* sum 1..1000, a multiply, a division and some flags, printed in hex */
    xorl %eax, %eax
    movl $1000, %ecx
1:  addl %ecx, %eax
    loop 1b
    call puthex
    movl $0x12345678, %eax
    movl $0x9abc, %ebx
    mull %ebx
    call puthex
    movl %edx, %eax
    call puthex
    movl $1000003, %eax
    xorl %edx, %edx
    movl $97, %ebx
    divl %ebx
    call puthex
    movl $0x7fffffff, %eax
    addl $1, %eax
    pushfl
    popl %eax
    andl $0x8d5, %eax
    call puthex
    movl $done, %esi
    call puts
    movl $0x21, %eax
    outl %eax, $0xf4           /* isa-debug-exit: status (0x21 << 1) | 1 = 67 */
    hlt
puts:
    lodsb
    testb %al, %al
    jz 2f
    outb %al, $0xe9
    jmp puts
2:  ret
puthex:                         /* %eax as 8 hex digits and a newline */
    pushl %ecx
    movl $8, %ecx
3:  roll $4, %eax
    pushl %eax
    andl $15, %eax
    movb hexdig(%eax), %al
    outb %al, $0xe9
    popl %eax
    loop 3b
    movb $10, %al
    outb %al, $0xe9
    popl %ecx
    ret
    .data
msg:    .asciz "hello from a multiboot kernel\n"
done:   .asciz "done\n"
hexdig: .ascii "0123456789abcdef"
    .bss
    .space 4096
stack_top:
"""


@pytest.fixture(scope="module")
def kernel(tmp_path_factory) -> str:
    if not (shutil.which("as") and shutil.which("ld")):
        pytest.skip("GNU as/ld not installed")
    d = tmp_path_factory.mktemp("mbk")
    (d / "k.S").write_text(KERNEL_S)
    subprocess.run(["as", "--32", "-o", str(d / "k.o"), str(d / "k.S")], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-Ttext", "0x100000", "--build-id=none",
                    "-o", str(d / "k.elf"), str(d / "k.o")], check=True)
    return str(d / "k.elf")


def run_nitdbg(kernel: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nitdbg", "run", "--kernel", kernel,
                           "--vcpus", "1", *extra], capture_output=True, timeout=120)


def test_run_kernel_output_and_isa_debug_exit_status(kernel):
    r = run_nitdbg(kernel)
    assert r.returncode == 67, r.stderr
    out = r.stdout.decode()
    assert out.startswith("hello from a multiboot kernel\n") and out.endswith("done\n")
    assert "0007a314\n" in out          # sum 1..1000 = 500500


def test_run_kernel_events_file_follows_the_schema(kernel, tmp_path):
    ev = tmp_path / "ev.jsonl"
    r = run_nitdbg(kernel, "--events-out", str(ev), "--trace-instructions")
    assert r.returncode == 67
    recs = [json.loads(line) for line in ev.read_text().splitlines()]
    kinds = {x["type"] for x in recs}
    assert {"vmexit", "insn", "ktr", "end"} <= kinds
    assert recs[-1] == {"type": "end", "reason": "debug_exit",
                        "retired": recs[-1]["retired"], "exit_status": 67}
    exits = [x for x in recs if x["type"] == "vmexit"]
    assert all(x["name"] == "VMEXIT_IOIO" for x in exits)
    insns = [x for x in recs if x["type"] == "insn"]
    assert len(insns) == recs[-1]["retired"]


def test_run_refuses_a_bad_kernel_with_one_line(tmp_path):
    bad = tmp_path / "bad.elf"
    bad.write_bytes(b"this is not an ELF file at all")
    r = run_nitdbg(str(bad))
    assert r.returncode == 1
    err = r.stderr.decode().strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nitdbg: ") and "Traceback" not in err[0]


QEMU = shutil.which("qemu-system-x86_64")


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
def test_run_kernel_matches_qemu(kernel):
    q = subprocess.run([QEMU, "-kernel", kernel, "-debugcon", "stdio", "-display", "none",
                        "-serial", "none", "-monitor", "none", "-no-reboot",
                        "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
                       capture_output=True, timeout=60)
    r = run_nitdbg(kernel)
    assert q.stdout.startswith(b"hello from a multiboot kernel")
    assert (r.stdout, r.returncode) == (q.stdout, q.returncode)
