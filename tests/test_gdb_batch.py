"""The stub against the real gdb in batch mode (Debian's gdb; skipped where gdb is absent):
`nitdbg run --gdb 127.0.0.1:PORT` holds the machine before its first instruction, and gdb
drives it."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KERNEL = ROOT / "firmware" / "amd64" / "kernel.elf"
GDB = shutil.which("gdb")
pytestmark = pytest.mark.skipif(GDB is None, reason="gdb is not installed")


def _sym(name: str) -> int:
    """A firmware symbol's address (the tests follow the image, not a hard-coded layout)."""
    from elftools.elf.elffile import ELFFile

    from nitdbg.guest.symbols import SymbolTable
    with open(KERNEL, "rb") as f:
        return SymbolTable.from_elffile(ELFFile(f)).address(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gdb_session(*commands: str, extra: tuple[str, ...] = (), kernel: Path = KERNEL) -> str:
    """Start nitdbg with --gdb on a free port, run gdb -batch with `commands`, return what
    gdb printed."""
    port = _free_port()
    srv = subprocess.Popen(
        [sys.executable, "-m", "nitdbg", "run", "--gdb", f"127.0.0.1:{port}",
         "--max-instructions", "1000", *extra],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        line = srv.stderr.readline()
        assert "waiting for a connection" in line, line
        args = [GDB, "-batch", "-nx", "-ex", "set pagination off",
                "-ex", f"target remote 127.0.0.1:{port}"]
        for c in commands:
            args += ["-ex", c]
        out = subprocess.run([*args, str(kernel)], capture_output=True, text=True,
                             timeout=60, cwd=ROOT)
        return out.stdout + out.stderr
    finally:
        srv.kill()
        srv.wait()


def test_gdb_attaches_before_the_first_instruction_and_reads_registers():
    out = gdb_session("info registers rip rsp eflags cs fs_base", "x/4i $pc")
    assert re.search(r"rip\s+0xffffffff802001c6\s+0xffffffff802001c6 <_start>", out), out
    assert re.search(r"cs\s+0x8", out), out
    assert "fs_base" in out
    assert "=> 0xffffffff802001c6 <_start>:\tcli" in out
    assert "<_start+1>:\tcld" in out


def test_break_at_a_firmware_function_continue_and_stepi():
    out = gdb_session("break hammer_time", "continue", "info registers rip",
                      "stepi", "info registers rip", "x/4i $pc")
    assert re.search(r"Breakpoint 1, 0x[0-9a-f]+ in hammer_time \(\)", out), out
    rips = re.findall(r"^rip\s+(0x[0-9a-f]+)", out, re.M)
    assert len(rips) == 2 and int(rips[0], 16) == _sym("hammer_time")
    assert int(rips[1], 16) != int(rips[0], 16)
    assert out.count("=> 0x") == 1


def test_breakpoints_are_hidden_from_memory_reads():
    """The guest's own bytes, not int3 (0xcc): nothing is written into guest memory."""
    out = gdb_session("break hammer_time", "continue",
                      "x/1bx hammer_time", "x/1bx $pc")
    vals = re.findall(r"<hammer_time>:\s+(0x[0-9a-f]{2})", out)
    assert vals and "0xcc" not in vals, out


def test_watchpoint_on_a_kernel_variable_then_reverse_continue_and_reverse_stepi():
    out = gdb_session("watch *(int *)&ticks", "continue", "continue", "reverse-continue",
                      "reverse-stepi", "x/i $pc")
    hits = re.findall(r"Old value = (\d+)\nNew value = (\d+)", out)
    # forward: 0 -> 1, 1 -> 2; backward to the first write again (shown as 2 -> 1)
    assert hits[:2] == [("0", "1"), ("1", "2")], out
    assert hits[2] == ("2", "1"), out
    # reverse-stepi lands on the store that the watchpoint caught (hardclock, clock_intr)
    assert re.search(r"=> 0x[0-9a-f]+ <clock_intr\+\d+>:\s+mov\s+%eax,0x[0-9a-f]+\(%rip\)\s+# "
                     rf"{_sym('ticks'):#x} <ticks>", out), out


def test_two_vcpus_are_two_named_threads():
    out = gdb_session("break cpu_idle_acpi", "continue", "info threads", "thread 1",
                      "info registers rip")
    assert 'Thread 1 "vcpu0"' in out and 'Thread 2 "vcpu1"' in out, out
    assert re.search(r'Thread \d "vcpu\d" hit Breakpoint 1, 0x[0-9a-f]+ in cpu_idle_acpi', out)


def test_nmi_injected_from_the_host_while_gdb_holds_the_machine_reaches_nmi_iret():
    out = gdb_session("break cpu_idle_acpi", "continue", "delete",
                      "monitor bhyvectl --vm=vm2 --assert-lapic-lvt=1 --cpu=0",
                      "break nmi_iret", "continue", "x/i $pc", "stepi",
                      "info registers rip", "reverse-stepi", "x/i $pc")
    nmi_iret = _sym("nmi_iret")
    assert re.search(rf'Thread 1 "vcpu0" hit Breakpoint 2, {nmi_iret:#x}', out), out
    off = nmi_iret - _sym("Xnmi")
    assert out.count(f"{nmi_iret:#x} <Xnmi+{off}>:\tiretq") == 2, out
    rip = re.findall(r"^rip\s+(0x[0-9a-f]+)", out, re.M)
    assert rip and int(rip[0], 16) != nmi_iret


def test_gdb_and_ddb_share_the_machine():
    """The guest enters ddb on an NMI (kdb_on_nmi set by gdb writing guest memory); ddb's
    banner reaches gdb's console, `monitor db` talks to ddb, and ddb's `s` is carried out
    when gdb lets the machine run."""
    out = gdb_session("break cpu_idle_acpi", "continue", "delete",
                      "set var *(int *)&kdb_on_nmi = 1",
                      "monitor bhyvectl --vm=vm2 --assert-lapic-lvt=1 --cpu=1",
                      "continue", "monitor db bt", "monitor db s", "continue")
    assert "Stopped at\tcpu_idle_acpi:\tsti" in out, out
    assert "cpu_idle_acpi() at cpu_idle_acpi/frame" in out
    assert "gdb holds every vCPU" in out          # ddb's `s` waits for gdb's continue
    assert "Stopped at\tcpu_idle_acpi+0x1:\thlt" in out


def test_an_i386_guest_gets_the_i386_register_file():
    i386 = ROOT / "firmware" / "i386" / "kernel.elf"
    out = gdb_session("info registers eip esp", "stepi", "reverse-stepi", "info registers eip",
                      "show architecture", kernel=i386,
                      extra=("--kernel", str(i386), "--vcpus", "1"))
    assert re.search(r"eip\s+0x10000c\s+0x10000c <_start>", out), out
    assert len(re.findall(r"eip\s+0x10000c ", out)) == 2, out
    assert "i386" in out and "x86-64" not in out
