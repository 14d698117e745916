"""INS/OUTS with REP: on bare metal through the port map, and under SVM as bhyve's string I/O
exits (IOIO EXITINFO1.STR/REP, APM vol 2 15.10.2) that the hypervisor emulates."""

from __future__ import annotations

import pytest
from x86util import HAVE_AS, LongModeMachine, asm

from nitdbg.machine import Machine
from nitdbg.svm import exitcodes as ec
from nitdbg.x86.hooks import Hooks

pytestmark = pytest.mark.skipif(not HAVE_AS, reason="GNU as is not installed")


class Port:
    """A device that counts up on reads and records writes."""

    def __init__(self) -> None:
        self.n = 0
        self.written: list[tuple[int, int]] = []

    def read(self, port: int, size: int) -> int:
        self.n += 1
        return int.from_bytes(bytes((self.n + i) & 0xFF for i in range(size)), "little")

    def write(self, port: int, size: int, value: int) -> None:
        self.written.append((size, value))


def _bare(src: str, port: int = 0x300) -> tuple[LongModeMachine, Port]:
    hooks, dev = Hooks(), Port()
    hooks.io[port] = dev
    m = LongModeMachine(src + "\nud_handler: hlt\npf_handler: hlt\n", hooks=hooks,
                        handlers={6: "ud_handler", 14: "pf_handler"})
    return m, dev


def test_rep_insb_fills_es_rdi_and_counts_rcx_down():
    m, dev = _bare("""
        lea buf(%rip), %rdi
        mov $5, %ecx
        mov $0x300, %dx
        rep insb
        hlt
        buf: .fill 8, 1, 0xcc
    """)
    m.cpu.run(20)
    c = m.cpu
    buf = m.syms["buf"]
    assert c.last_unsupported is None
    assert m.mem.read_bytes(buf, 8) == bytes([1, 2, 3, 4, 5, 0xCC, 0xCC, 0xCC])
    assert c.regs[1] == 0 and c.regs[7] == buf + 5


def test_rep_outsw_goes_down_with_df_and_honours_a_segment_override():
    m, dev = _bare("""
        std
        lea last(%rip), %rsi
        mov $3, %ecx
        mov $0x300, %dx
        rep fs outsw          # FS base 0 in this machine: the same bytes
        hlt
        .word 0x1111, 0x2222
        last: .word 0x3333
    """)
    m.cpu.run(20)
    assert dev.written == [(2, 0x3333), (2, 0x2222), (2, 0x1111)]
    assert m.cpu.regs[6] == m.syms["last"] - 6


def test_ins_with_tf_runs_one_iteration_per_single_step_trap():
    """SDM vol 3 17.3.1.4: a repeated string instruction traps after each iteration, with
    RIP at the instruction while iterations remain."""
    hooks, dev = Hooks(), Port()
    hooks.io[0x300] = dev
    m = LongModeMachine("""
        lea buf(%rip), %rdi
        mov $3, %ecx
        mov $0x300, %dx
        lea rips(%rip), %r8
        pushfq
        orq $0x100, (%rsp)
        popfq
        ins: rep insb
        after: hlt
        db_handler: mov (%rsp), %rax
        mov %rax, (%r8)
        add $8, %r8
        iretq
        rips: .fill 4, 8, 0
        buf: .fill 4, 1, 0
        ud_handler: hlt
    """, hooks=hooks, handlers={1: "db_handler", 6: "ud_handler"})
    m.cpu.run(60)
    rips = [m.mem.read(m.syms["rips"] + 8 * i, 8) for i in range(3)]
    assert rips == [m.syms["ins"], m.syms["ins"], m.syms["after"]]
    assert m.mem.read_bytes(m.syms["buf"], 4) == bytes([1, 2, 3, 0])


def test_ins_page_fault_does_not_read_the_port():
    m, dev = _bare("""
        movabs $0x7f0000000000, %rdi
        mov $0x300, %dx
        insb
        hlt
    """)
    m.cpu.run(10)
    assert m.cpu.rip == m.syms["pf_handler"] + 1
    assert dev.n == 0


# ---------------------------------------------------------------- under the hypervisor
@pytest.fixture(scope="module")
def started() -> Machine:
    m = Machine(vcpus=1)
    m.step_vcpu(0)
    return m


def _guest(started: Machine, src: str) -> tuple[Machine, list]:
    m = started.clone()
    v = m.vcpus[0]
    code, syms = asm(src, base=v.cpu.rip)
    m.vm.write_guest(v, v.cpu.rip, code)
    exits: list = []
    v.exit_listeners.append(lambda vc, e: exits.append(e) if e.code == ec.VMEXIT_IOIO else None)
    return m, exits


def test_rep_outsb_to_the_debug_console_is_a_string_io_exit_the_hypervisor_emulates(started):
    m, exits = _guest(started, """
        lea msg(%rip), %rsi
        mov $17, %ecx
        mov $0xe9, %dx
        rep outsb
        done: jmp done
        msg: .ascii "hello, string io\\n"
    """)
    m.run(max_insns=200)
    assert bytes(m.vm.debugcon_out).endswith(b"hello, string io\n")
    assert len(exits) == 2                     # 16 per exit, then a restart for the 17th
    io = ec.IoioInfo.decode(exits[0].info1)
    assert io.string and io.rep and not io.is_in and io.port == 0xE9 and io.size == 1
    assert io.addr_size == 64 and io.seg == 3   # DS
    assert exits[0].info2 == exits[0].nrip      # EXITINFO2: the next RIP
    assert m.vcpus[0].cpu.regs[1] == 0


def test_rep_insb_from_an_unclaimed_port_under_svm_reads_all_ones(started):
    m, exits = _guest(started, """
        lea -0x200(%rsp), %rdi
        mov %rdi, %rbx
        mov $40, %ecx
        mov $0x2f0, %dx
        rep insb
        done: jmp done
    """)
    m.run(max_insns=200)
    c = m.vcpus[0].cpu
    assert c.regs[1] == 0 and c.regs[7] == c.regs[3] + 40
    assert m.vm.read_guest(m.vcpus[0], c.regs[3], 41)[:40] == b"\xff" * 40
    assert len(exits) == 3
    assert all(ec.IoioInfo.decode(e.info1).is_in for e in exits)


def test_a_rep_with_an_enormous_count_runs_in_slices_between_iterations():
    """SDM vol 2 REP: an interrupted REP resumes with the registers of the completed
    iterations; one execution here is at most REP_SLICE of them."""
    from nitdbg.x86.insn.string import REP_SLICE
    m = LongModeMachine("""
        lea buf(%rip), %rdi
        mov $-1, %rcx
        go: rep stosb
        hlt
        buf: .byte 0
    """)
    m.cpu.run(3)                 # lea, mov, one slice of the rep
    c = m.cpu
    assert c.rip == m.syms["go"] and c.regs[1] == (1 << 64) - 1 - REP_SLICE
    assert c.regs[7] == m.syms["buf"] + REP_SLICE


def test_rep_outs_with_an_enormous_count_under_svm_keeps_run_bounded(started):
    m, exits = _guest(started, """
        mov $-1, %rcx
        mov $0x2f0, %dx
        rep outsb
        done: jmp done
    """)
    ev = m.run(max_insns=2000)
    assert ev.reason == "budget"
    assert 0 < len(exits) <= 2000 and m.vcpus[0].cpu.regs[1] < (1 << 64) - 1
