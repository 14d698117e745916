"""The bugs the fuzzers found (python3 -m nitdbg.fuzz, nitdbg/fuzz/), each reproduced."""

from __future__ import annotations

import pytest

from nitdbg.fuzz import digest
from nitdbg.fuzz.bootfuzz import aout_kernel
from nitdbg.fuzz.clirun import run_cli
from nitdbg.fuzz.devfuzz import pcdev_target
from nitdbg.fuzz.targets import internal_errors
from nitdbg.gdb.stub import Stub
from nitdbg.machine import I386_KERNEL, Machine, MachineError
from nitdbg.timeline import Timeline


@pytest.fixture(scope="module")
def booted2() -> Machine:
    m = Machine(vcpus=2)
    m.boot_to_prompt()
    return m


# ---------------------------------------------------------------------- timeline
def test_a_step_back_keeps_the_console_input_typed_between_two_steps(booted2):
    """The position before vCPU 1's last instruction is reached twice in the history: at the
    end of the first step and at the start of the second, with a console input between.
    Going back lands after that input (the instruction ran after it), not before it."""
    m = booted2.clone()
    Timeline(m)
    m.hold("gdb")
    m.run_stops((1,), {1: {"step": True}}, 100_000)
    m.console_input(b"\x03")
    before = digest.parts(m)
    m.run_stops((1,), {1: {"step": True}}, 100_000)
    assert m.step_back(1).reason == "gdb"
    assert digest.changed(before, digest.parts(m)) == []
    assert [op.name for op in m.timeline.ops][-2:] == ["console_input", "run_stops"]


# ---------------------------------------------------------------------- gdb stub
def test_a_refused_gdb_read_before_the_first_instruction_changes_nothing():
    """Before its first VMRUN the guest's paging state is only in the VMCB; a read used to
    load it into the vCPU, so `m` past the end of RAM answered E14 and changed registers."""
    m = Machine(kernel=I386_KERNEL, vcpus=1)
    Timeline(m)
    m.hold("gdb")
    stub = Stub(m)
    before = digest.parts(m)
    assert stub.handle(b"m6cc0996,3a") == b"E14"
    assert stub.handle(b"m100000,4") != b"E14"
    assert digest.changed(before, digest.parts(m)) == []


def test_a_gdb_write_before_the_first_instruction_lands_where_the_guest_reads():
    m = Machine(vcpus=1)
    m.hold("gdb")
    stub = Stub(m)
    rip = m.live_regs(0)["rip"]
    assert stub.handle(f"M{rip:x},1:f4".encode()) == b"OK"
    assert stub.handle(f"m{rip:x},1".encode()) == b"f4"
    m.hold(None)
    m.run(max_insns=10)
    assert m.vcpus[0].halted or m.vcpus[0].cpu.rip == rip + 1


# ---------------------------------------------------------------------- devices
@pytest.mark.parametrize("code", [
    b"\x81\x0d\xfd\x0f\xe0\xfe\x53\x01\x00\x00",     # or dword [0xfee00ffd], 0x153
    b"\x87\x05\xfd\x0f\xe0\xfe",                     # xchg [0xfee00ffd], eax
    b"\x8b\x05\xfe\x0f\xc0\xfe",                     # mov eax, [0xfec00ffe]
])
def test_an_access_over_the_end_of_a_device_page_is_split_into_bytes(code, tmp_path):
    """The part of a split access on the device page is 3 (or 2) bytes long: the bus gives
    the device bytes (as for a straddling access) instead of an internal error."""
    out = pcdev_target(tmp_path).run((False, code))
    assert out.kind == "ok", out.detail


def test_a_dword_read_over_the_xapic_page_end_exits_for_the_next_page(tmp_path):
    """mov eax, [0xfee00ffd]: three bytes from the APIC page, then the nested page fault of
    0xfee01000 (mapped to nothing) goes to the host, as bhyve's unhandled NPF."""
    k = tmp_path / "k"
    k.write_bytes(aout_kernel(b"\x8b\x05\xfd\x0f\xe0\xfe\xf4"))
    m = Machine(kernel=k, vcpus=1)
    ev = m.run(max_insns=100)
    assert internal_errors(m) == []
    assert ev.reason == "unhandled" and ev.info["gpa"] == 0xFEE01000


# ---------------------------------------------------------------------- Machine API
@pytest.mark.parametrize("vcpu", [-1, 1, 9])
def test_an_nmi_to_a_vcpu_the_vm_does_not_have_is_refused(vcpu, tmp_path):
    m = Machine(vcpus=1)
    before = digest.parts(m)
    for call in (m.inject_nmi, m.assert_lapic_lvt):
        with pytest.raises(MachineError, match="no vCPU"):
            call(vcpu)
    assert digest.changed(before, digest.parts(m)) == []


# ---------------------------------------------------------------------- command lines
@pytest.mark.parametrize("argv", [
    ["run", "--max-seconds", "nan"], ["run", "--max-seconds", "inf"],
    ["run", "--max-seconds", "-1"], ["run", "--max-instructions", "0"],
    ["run", "--max-instructions", "-5"], ["run", "--sysctl", "debug.nit"],
    ["run", "--serial-out", "{tmp}"], ["run", "--events-out", "{tmp}"],
    ["run", "--serial-out", "{tmp}/missing/x"],
    ["diff", "--qemu", str(I386_KERNEL), "--timeout", "nan"],
    ["diff", "--qemu", str(I386_KERNEL), "--timeout", "-1"],
    ["diff", "--qemu", str(I386_KERNEL), "--max-instructions", "-1"],
    ["diff", "--qemu", str(I386_KERNEL), "--vcpus", "0"],
    ["replay", "{session}", "--files-dir", "{file}"],
])
def test_a_bad_bound_or_output_path_is_refused_in_one_line_before_running(argv, tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    from nitdbg.fuzz.targets import SESSIONS
    session = SESSIONS / "broadcast-nmi-deadlock.nitrec"
    argv = [a.format(tmp=tmp_path, file=f, session=session) for a in argv]
    code, said, escaped = run_cli(argv)
    assert escaped is None and "Traceback" not in said
    assert code not in (0, None)
    assert said.strip().count("\n") == 0 and said.startswith("nitdbg"), said


# ---------------------------------------------------------------------- unbounded runs
def test_a_run_with_every_vcpu_halted_with_interrupts_off_ends_at_its_budget():
    """IF=0 and hlt: the 100 Hz timer fires but cannot wake the vCPU (only an NMI or INIT
    could). Each such deadline counts toward run(max_insns), so the run ends instead of
    sleeping through virtual time for ever (it hung gdb's `s` and the timeline)."""
    m = Machine(vcpus=1)
    m.boot_to_prompt()
    m.run(max_insns=1_000_000, until=lambda: m.vcpus[0].halted)
    assert m.vcpus[0].halted
    # a periodic LAPIC timer, as a kernel with a 100 Hz tick in idle programs it (this
    # firmware's tickless idle would leave no deadline at all: "idle")
    from nitdbg.vmm.vlapic import LVT_TIMER_PERIODIC
    lapic = m.vm.vlapics[0]
    lapic.wrmsr(0x832, LVT_TIMER_PERIODIC | 0xEF)     # x2APIC LVT timer
    lapic.wrmsr(0x838, 62_500)                        # initial count: 10 ms
    m.write_reg(0, "rflags", 0x2)
    t0 = m.now()
    ev = m.run(max_insns=2_000)
    assert ev.reason == "budget" and m.vcpus[0].halted
    assert m.now() - t0 <= 2_000 * 10_000_000 + 10_000_000      # ~one tick per unit
    m.inject_nmi(0)                                              # an NMI still wakes it
    icount = m.vcpus[0].cpu.icount
    m.run(max_insns=100)
    assert m.vcpus[0].cpu.icount > icount


# ---------------------------------------------------------------------- gdb over TCP
def test_a_ctrl_c_read_together_with_the_resume_packet_stops_that_run():
    """`vCont;c` and ^C in one read: the ^C came after the packet, so it stops the run it
    started (it used to be cleared when the resume began, and the guest ran on)."""
    import socket
    import threading

    from nitdbg.gdb.protocol import frame
    from nitdbg.gdb.server import GdbServer
    m = Machine(vcpus=1)
    m.boot_to_prompt()
    Timeline(m)
    srv = GdbServer(m, "127.0.0.1", 0, log=lambda s: None)
    threading.Thread(target=srv.serve, daemon=True).start()
    c = socket.create_connection(srv.address, timeout=20)
    try:
        c.sendall(frame(b"QStartNoAckMode"))
        buf = b""
        while b"$OK#" not in buf:
            buf += c.recv(4096)
        c.sendall(frame(b"vCont;c") + b"\x03")
        buf = b""
        while b"$T05" not in buf:
            data = c.recv(4096)
            assert data, "the stub closed the connection"
            buf += data
        c.sendall(frame(b"D"))
    finally:
        c.close()


def test_an_unknown_scenario_name_in_the_tui_is_one_error_line_not_an_internal_error():
    pytest.importorskip("textual")
    from nitdbg.tui.messages import Request
    from nitdbg.tui.worker import MachineWorker
    w = MachineWorker({}, lambda msg: None, boot=False)
    w.m = Machine(vcpus=1)
    w._new_builder()
    w._handle(Request("scenario", "nosuch"))
    (text, source), = w._said
    assert source == "error" and text.startswith("no scenario named 'nosuch'")
    assert text.count("\n") == 1


# ---------------------------------------------------------------------- NUL in a file name
def test_a_nul_in_a_file_name_is_a_one_line_refusal_everywhere(tmp_path):
    """The TUI's open-for-replay took "\\0" and raised ValueError out of pathlib; a kernel
    path and a session header's kernel name did the same."""
    import json

    from nitdbg.session.format import SessionError, read_session
    from nitdbg.session.replay import replay
    with pytest.raises(SessionError, match="not a valid file name"):
        read_session("a\0b.nitrec")
    with pytest.raises(MachineError, match="not a valid file name"):
        Machine(kernel="a\0b")
    from nitdbg.fuzz.targets import SESSIONS
    lines = (SESSIONS / "broadcast-nmi-deadlock.nitrec").read_text().splitlines()
    header = json.loads(lines[0])
    header["config"]["kernel"] = "a\0b"
    bad = tmp_path / "nul.nitrec"
    bad.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    with pytest.raises(SessionError, match="not a valid file name"):
        replay(bad)


@pytest.mark.parametrize("line", ["cat /tmp/a\0b", "ktrdump -cto /tmp/a\0b"])
def test_a_nul_in_a_host_file_name_on_disk_is_one_line(line, tmp_path):
    """The console's and the TUI's host$ files are real files (DiskFiles): a NUL in the
    name raised ValueError out of the host shell."""
    from nitdbg.fuzz.targets import host_target
    assert host_target(tmp_path).run((True, line)).kind == "rejected"


def test_recording_to_a_name_with_a_nul_is_one_line_in_the_tui(tmp_path):
    """r, r with the path "\\0": the recorder raised ValueError (the worker's loop would show
    "internal error")."""
    pytest.importorskip("textual")
    from nitdbg.fuzz.tuifuzz import tui_target
    from nitdbg.session.format import SessionError
    from nitdbg.session.record import SessionWriter
    from nitdbg.tui.messages import Request
    with pytest.raises(SessionError, match="not a valid file name"):
        SessionWriter("a\0b.nitrec")
    out = tui_target(tmp_path).run((True, [Request("record", "\0"), Request("record", "\0")]))
    assert out.kind == "ok", out.detail


def test_the_argv_fuzzer_rerecords_a_copy_never_the_repositorys_sessions(tmp_path):
    # the final campaign rewrote sessions/broadcast-nmi-deadlock.nitrec in place through
    # `replay SESSION --rerecord SESSION`; the session it hands out is a scratch copy
    import hashlib

    from nitdbg.fuzz.argvfuzz import argv_target
    from nitdbg.fuzz.targets import SESSIONS

    def digests() -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                for p in SESSIONS.glob("*.nitrec")}

    before = digests()
    target = argv_target(tmp_path)
    session = min(SESSIONS.glob("*.nitrec"), key=lambda p: p.stat().st_size)
    copy = tmp_path / session.name
    assert copy.read_bytes() == session.read_bytes()
    outcome = target.run((["replay", str(copy), "--rerecord", str(copy)], False))
    assert outcome.kind == "ok", outcome
    assert digests() == before
