"""ddb end to end on the real amd64 firmware: the NMI stop, stepping through the return from
the NMI with the step audit, breakpoints, watchpoints, x/i, show registers, bt, and the audit
catching a hypervisor that swallows the guest's single step."""

from __future__ import annotations

import re

import pytest

from nitdbg.ddb import Ddb, DdbResult
from nitdbg.guest.abi import PSL_T
from nitdbg.machine import Machine
from nitdbg.vmm.nmi_policy import NMI_TRACING, IretTracing
from nitdbg.x86.regs import DR6_BS, RF, TF

BUDGET = 2_000_000


class KvmNmiSinglestep(IretTracing):
    """KVM's nmi_singlestep (REFERENCE.md), for the test only: on the #DB after the traced
    IRET it puts back the TF/RF the guest had *before* the IRET and never reinjects, so a
    TF the guest's own IRET popped is lost."""

    name = "kvm-nmi-singlestep"

    def exception_exit(self, v, vector, info1, info2):
        st = self.state(v)
        if st.state == NMI_TRACING and vector == 1 and v.vmcb.dr6 & DR6_BS:
            v.vmcb.rflags = (v.vmcb.rflags & ~(TF | RF)) | st.saved_tf_rf
            self._end_tracing(v, "test: #DB after the IRET")
            return True
        return super().exception_exit(v, vector, info1, info2)


class Session:
    """Drives Ddb as the machine layer will: enter() at each kdb stop, resume on demand."""

    def __init__(self, policy: IretTracing | None = None):
        self.m = Machine(vcpus=1)
        if policy is not None:
            self.m.vm.policy = policy
        self.m.boot_to_prompt()
        self.m.type_line("sysctl machdep.kdb_on_nmi=1")
        self.ddb = Ddb(self.m.vm, self.m.symbols)
        self.last_stop = None

    def nmi(self) -> str:
        self.m.vm.assert_lapic_lvt(0, 1)
        ev = self.m.run(max_insns=BUDGET)
        assert ev.reason == "kdb", ev
        return self.follow(self.ddb.enter(ev.vcpu, ev.info))

    def follow(self, res: DdbResult, budget: int = BUDGET) -> str:
        out = res.output
        while res.resume:
            self.m.leave_kdb(self.ddb.vcpu)
            ev = self.m.run(max_insns=budget)
            self.last_stop = ev
            if ev.reason != "kdb":
                return out
            res = self.ddb.enter(ev.vcpu, ev.info)
            out += res.output
        return out

    def cmd(self, line: str, budget: int = BUDGET) -> str:
        return self.follow(self.ddb.command(line), budget)


@pytest.fixture
def s() -> Session:
    return Session()


def test_nmi_with_kdb_on_nmi_stops_after_the_hlt(s):
    out = s.nmi()
    assert out.startswith("[ thread pid 11 tid 100003 ]\n")
    assert out.endswith("Stopped at\tcpu_idle_acpi+0x2:\tret\n")
    assert s.ddb.active and s.ddb.vcpu == 0 and s.ddb.stop_reason == "T_NMI"


def test_twenty_steps_through_the_return_from_the_nmi_skip_nothing(s):
    s.nmi()
    rips = []
    for _ in range(20):
        out = s.cmd("s")
        assert out.startswith("[ thread pid 11 tid 100003 ]\nStopped at\t")
        rips.append(s.ddb.frame()["tf_rip"])
    assert s.m.symbols.format(rips[0]).startswith("syscall+")   # the ret went back
    assert len(s.ddb.audit.checks) == 20
    assert s.ddb.audit.ok, s.ddb.audit.report()
    assert s.ddb.audit.summary() == "step audit: 20 steps checked, no instruction skipped"
    # each check found exactly the instruction the step started from
    for chk, start in zip(s.ddb.audit.checks[1:], rips, strict=False):
        assert [r.rip for r in chk.executed] == [start]
    # ddb took its PSL_T back out of the frame at each stop
    assert not s.ddb.frame()["tf_rflags"] & PSL_T


def test_s_comma_n_stops_once_after_n_steps_and_a_blank_line_repeats_it(s):
    s.nmi()
    out = s.cmd("s,5")
    assert out.count("Stopped at") == 1
    assert len(s.ddb.audit.checks) == 5
    out = s.cmd("")
    assert out.count("Stopped at") == 1
    assert len(s.ddb.audit.checks) == 10 and s.ddb.audit.ok


def test_breakpoint_set_hit_stepped_over_and_deleted(s):
    s.nmi()
    assert s.cmd("b tty_read") == ""
    assert s.cmd("b tty_read") == "Already set.\n"
    assert s.cmd("show breaks").splitlines()[1].endswith("1    tty_read")
    addr = s.m.symbols.address("tty_read")
    out = s.cmd("c")
    assert out == ("[ thread pid 11 tid 100003 ]\n"
                   f"Breakpoint at\ttty_read:\t{s.ddb.disasm(addr).text}\n")
    assert s.ddb.frame()["tf_rip"] == addr                   # pc fixed up to the int3
    assert s.ddb.read(addr, 1) != b"\xcc"                    # no int3 while in ddb
    # c over the breakpointed instruction: one step first, then the int3 goes back in
    out = s.cmd("c")
    assert "Breakpoint at\ttty_read:" in out
    assert s.ddb.audit.checks and s.ddb.audit.ok
    assert s.cmd("d tty_read") == ""
    assert s.cmd("d tty_read") == "Not set.\n"
    assert s.cmd("show breaks") == "No breakpoints set\n"
    s.cmd("c", budget=300_000)
    assert s.last_stop.reason == "budget"                    # runs on without stopping
    assert s.ddb.read(addr, 1) != b"\xcc"


def test_examine_show_registers_and_bt(s):
    s.nmi()
    assert s.cmd("x/i $rip") == "cpu_idle_acpi+0x2:\tret\n"
    lines = s.cmd("x/i cpu_idle_acpi,3").splitlines()
    assert lines == ["cpu_idle_acpi:\tsti", "cpu_idle_acpi+0x1:\thlt", "cpu_idle_acpi+0x2:\tret"]
    regs = s.cmd("show registers").splitlines()
    rip = s.ddb.frame()["tf_rip"]
    assert f"{'rip':<12s}{rip:#18x}\tcpu_idle_acpi+0x2" in regs
    assert regs[0].startswith("cs") and regs[-1] == "cpu_idle_acpi+0x2:\tret"
    bt = s.cmd("bt").splitlines()
    assert bt[0] == "Tracing pid 11 tid 100003"
    assert bt[1].startswith("cpu_idle_acpi() at cpu_idle_acpi+0x2/frame 0x")
    assert bt[2].startswith("syscall() at syscall+0x")
    # x/gx at the stack shows the return address bt used
    ret = int(s.cmd("x/gx $rsp").split("\t")[1], 16)
    assert s.m.symbols.format(ret) in bt[2]
    assert s.cmd("") .startswith(s.m.symbols.format(s.ddb.frame()["tf_rsp"] + 8))


@pytest.mark.parametrize("line,msg", [
    ("frobnicate", "No such command"),
    ("x/q $rip", "Bad modifier"),
    ("x/i nosuchsym", "Symbol 'nosuchsym' not found"),
    ("x/gx 0xdead00000000", "*** error reading from address dead00000000 ***"),
    ("b (1", "Syntax error"),
    ("show frobs", "No such command"),
])
def test_bad_commands_print_one_line_and_change_nothing(s, line, msg):
    s.nmi()
    before = s.ddb.frame()
    assert s.cmd(line) == msg + "\n"
    assert s.ddb.frame() == before and s.ddb.active


def test_until_stops_at_a_return_instruction(s):
    s.nmi()
    s.cmd("s,8")              # into tty_read
    assert s.m.symbols.format(s.ddb.frame()["tf_rip"]).startswith("tty_read")
    out = s.cmd("until")
    assert out.endswith("\tret\n")
    assert s.ddb.audit.ok


def test_next_steps_over_a_call(s):
    s.nmi()
    s.cmd("s,7")              # at syscall+...: call tty_read
    assert s.ddb.disasm(s.ddb.frame()["tf_rip"]).is_call
    call = s.ddb.disasm(s.ddb.frame()["tf_rip"])
    out = s.cmd("next")
    assert out.endswith(f"Stopped at\t{s.m.symbols.format(call.next)}:\t"
                        f"{s.ddb.disasm(call.next).text}\n")
    assert s.cmd("show breaks") == "No breakpoints set\n"


def test_hardware_watchpoint_on_ticks(s):
    s.nmi()
    ticks = s.m.symbols.address("ticks")
    assert s.cmd("hwatch ticks,4") == ""
    v = s.m.vm.vcpus[0]
    assert v.cpu.dr[0] == ticks and v.vmcb.dr7 & 0x3
    out = s.cmd("c")
    assert "Watchpoint at\t" in out
    assert s.cmd("dhwatch ticks,4") == ""
    assert s.cmd("dhwatch ticks,4") == "hardware watchpoint could not be deleted\n"
    assert not v.vmcb.dr7 & 0xFF


def test_show_idt_and_sysregs(s):
    s.nmi()
    idt = s.cmd("show idt").splitlines()
    assert "  1\tXdbg" in idt and "  2\tXnmi" in idt and "240\tXtimerint" in idt
    sysregs = s.cmd("show sysregs")
    assert "cr0\t0x0000000080050033\n" in sysregs and sysregs.startswith("idtr\t0x")


def test_step_audit_catches_a_hypervisor_that_swallows_the_guests_single_step():
    s = Session(KvmNmiSinglestep())
    s.nmi()
    # the step out of the NMI handler: the guest's iretq pops PSL_T, the policy clears it
    out = s.cmd("s", budget=20_000)
    assert out == "" and s.last_stop.reason == "budget"   # the guest ran away
    out = s.nmi()                                           # stop it with another NMI
    assert "Stopped at" in out
    audit = s.ddb.audit
    assert not audit.ok
    chk = audit.checks[-1]
    assert chk.executed[0].where == "cpu_idle_acpi+0x2"     # the stepped instruction
    assert len(chk.omitted) > 1
    assert "VIOLATION" in audit.summary() and "skipped" in audit.summary()
    rep = audit.report()
    assert "the single-step trap never came" in rep
    assert "omitted:" in rep and re.search(r"syscall\+0x[0-9a-f]+:\tcli", rep)
    assert "VM exits around them:" in rep


def test_stepping_over_an_emulated_hlt_stops_right_after_it(s):
    # The hypervisor completes the intercepted HLT itself; the single-step #DB the HLT owes
    # the guest comes after wake-up with the pushed RIP after the HLT (REFERENCE.md, SDM
    # 17.3.1.4), so the ret after it is the next stop, not skipped.
    s.nmi()
    s.cmd("s,0t76")                      # 76 steps (0t: decimal): back at cpu_idle_acpi+0x1
    assert s.cmd("x/i $rip") == "cpu_idle_acpi+0x1:\thlt\n"
    assert s.ddb.audit.ok
    out = s.cmd("s")
    assert "cpu_idle_acpi+0x2:" in out
    chk = s.ddb.audit.checks[-1]
    assert chk.executed[0].emulated and chk.executed[0].text == "hlt"
    assert not chk.omitted and s.ddb.audit.ok


def test_set_writes_a_trapframe_register_and_write_stores_memory(s):
    s.nmi()
    assert s.cmd("set $rbx = 0x1234") == ""
    assert s.ddb.frame()["tf_rbx"] == 0x1234
    assert re.search(r"^rbx\s+0x1234$", s.cmd("show registers"), re.M)
    assert s.cmd("p $rbx").strip() == "1234"            # print: hex, ddb's default radix
    addr = s.m.symbols.address("ticks")
    out = s.cmd(f"write/l {addr:#x} 0x55")
    assert out.startswith("ticks\t\t") and out.rstrip().endswith("0x55")
    assert s.cmd("x/wx ticks") == "ticks:\t55\n"
    assert s.cmd("set $nosuch = 1") == "Unknown variable $nosuch\n"
    assert s.cmd("write/q 0 1") == "Bad modifier\n"
