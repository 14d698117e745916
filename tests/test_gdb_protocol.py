"""The stub's packets without gdb: framing, the schema check before any handler runs, and
bad packets (malformed, oversized, out of order) answered with one Enn that changes
nothing."""

from __future__ import annotations

import pytest

from nitdbg.gdb.protocol import MAX_PACKET, Reader, frame, unescape_binary
from nitdbg.gdb.stub import Resume, Stub
from nitdbg.machine import Machine
from nitdbg.session.checkpoint import take
from nitdbg.timeline import Timeline


@pytest.fixture(scope="module")
def booted() -> Machine:
    m = Machine()
    m.boot_to_prompt()
    return m


@pytest.fixture
def stub(booted: Machine) -> Stub:
    m = booted.clone()
    Timeline(m)
    m.hold("gdb")
    return Stub(m)


def test_frames_carry_the_checksum_mod_256():
    assert frame(b"OK") == b"$OK#9a"
    r = Reader()
    assert r.feed(b"+" + frame(b"g") + b"\x03" + frame(b"m0,1")) == [
        ("ack", 0x2B), ("packet", b"g"), ("interrupt",), ("packet", b"m0,1")]


def test_a_bad_checksum_and_an_oversized_packet_are_reported_not_dispatched():
    r = Reader()
    assert r.feed(b"$g#00") == [("bad", "checksum")]
    big = b"m" * (MAX_PACKET + 10)
    assert r.feed(b"$" + big + b"#00") == [("bad", "oversized")]
    assert r.feed(b"$g#67") == [("packet", b"g")]      # the stream is in sync again


def test_binary_data_unescapes_the_brace():
    assert unescape_binary(b"a}\x03b") == b"a#b"
    assert unescape_binary(b"a}") is None


def test_qsupported_advertises_the_reverse_and_breakpoint_features(stub: Stub):
    reply = stub.handle(b"qSupported:multiprocess+;swbreak+;hwbreak+").decode()
    for feat in ("qXfer:features:read+", "swbreak+", "hwbreak+", "ReverseStep+",
                 "ReverseContinue+", f"PacketSize={MAX_PACKET:x}"):
        assert feat in reply


def test_target_xml_is_x86_64_with_the_core_order_and_segment_bases(stub: Stub):
    xml = stub.handle(b"qXfer:features:read:target.xml:0,3fff")
    assert xml.startswith(b"l")
    text = xml.decode()
    assert "<architecture>i386:x86-64</architecture>" in text
    names = [r.name for r in stub.layout.regs]
    assert names[:17] == ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9",
                          "r10", "r11", "r12", "r13", "r14", "r15", "rip"]
    assert names[17:24] == ["eflags", "cs", "ss", "ds", "es", "fs", "gs"]
    assert names[-2:] == ["fs_base", "gs_base"]
    assert 'name="eflags" bitsize="32"' in text


def test_i386_guests_get_the_i386_layout():
    from nitdbg.machine import I386_KERNEL
    s = Stub(Machine(I386_KERNEL, vcpus=1))
    assert s.layout.arch == "i386"
    assert [r.name for r in s.layout.regs][:9] == ["eax", "ecx", "edx", "ebx", "esp", "ebp",
                                                   "esi", "edi", "eip"]


def test_registers_read_as_the_live_vcpu_state(stub: Stub):
    regs = stub.m.live_regs(0)
    g = bytes.fromhex(stub.handle(b"g").decode())
    assert int.from_bytes(g[16 * 8:17 * 8], "little") == regs["rip"]
    assert stub.handle(b"p10") == regs["rip"].to_bytes(8, "little").hex().encode()


def test_threads_are_the_vcpus(stub: Stub):
    assert stub.handle(b"qfThreadInfo") == b"m1,2"
    assert stub.handle(b"qsThreadInfo") == b"l"
    assert stub.handle(b"T2") == b"OK"
    assert stub.handle(b"T3") == b"E02"
    assert bytes.fromhex(stub.handle(b"qThreadExtraInfo,1").decode()).startswith(b"vCPU 0")


@pytest.mark.parametrize("packet", [
    b"m", b"mzz,4", b"m10", b"m1,", b"M10,2:abc", b"M10,2:abcdef", b"X10,4:ab",
    b"p", b"pxyz", b"P10=12", b"Pff=0000000000000000", b"Z0,10", b"Z9,10,1", b"Z0,10,99",
    b"Hq1", b"Hg7", b"vCont;x", b"vCont;s:1;s:2", b"vCont;c:9", b"vCont",
    b"G00", b"qXfer:features:read:other.xml:0,10", b"qThreadExtraInfo,9",
    b"m" + b"f" * 17 + b",1", b"C5x", b"qsThreadInfo",
    b"m0," + b"%x" % (MAX_PACKET,),
])
def test_bad_packets_get_one_error_reply_and_change_nothing(booted: Machine, packet: bytes):
    m = booted.clone()
    Timeline(m)
    s = Stub(m)
    before = take(m)
    reply = s.handle(packet)
    assert isinstance(reply, bytes) and reply[:1] == b"E" and len(reply) == 3, (packet, reply)
    assert take(m) == before
    assert not s.sw and not s.hw and not s.watches


def test_writing_a_register_the_model_does_not_have_is_refused(stub: Stub):
    n = stub.layout.index("st0")
    before = take(stub.m)
    assert stub.handle(b"P%x=%s" % (n, b"11" * 10)) == b"E01"
    assert take(stub.m) == before


def test_unknown_packets_get_the_empty_reply(stub: Stub):
    assert stub.handle(b"vMustReplyEmpty") == b""
    assert stub.handle(b"qFooBar") == b""


def test_memory_write_then_read_back_and_the_write_is_an_input(stub: Stub):
    m = stub.m
    addr = m.symbols.address("ticks")
    n_ops = len(m.timeline.ops)
    assert stub.handle(b"M%x,4:2a000000" % addr) == b"OK"
    assert stub.handle(b"m%x,4" % addr) == b"2a000000"
    assert len(m.timeline.ops) == n_ops + 1 and m.timeline.ops[-1].name == "write_mem"


def test_step_then_reverse_step_returns_to_the_same_machine_state(stub: Stub):
    m = stub.m
    stub.resume(stub.handle(b"vCont;s:1"), lambda wait=False: False)   # off the HLT
    before = take(m)
    r = stub.handle(b"vCont;s:1")
    assert isinstance(r, Resume)
    assert stub.resume(r, lambda wait=False: False).startswith(b"T05thread:1;")
    assert take(m) != before
    r = stub.handle(b"bs")
    assert stub.resume(r, lambda wait=False: False).startswith(b"T05thread:1;")
    assert take(m) == before


def test_reverse_continue_without_an_earlier_stop_reports_the_start_of_history(stub: Stub):
    r = stub.handle(b"vCont;s:1")
    stub.resume(r, lambda wait=False: False)
    reply = stub.resume(stub.handle(b"bc"), lambda wait=False: False)
    assert b"replaylog:begin;" in reply


def _go(stub: Stub, packet: bytes = b"vCont;c") -> bytes:
    return stub.resume(stub.handle(packet), lambda wait=False: False)


def test_a_hardware_breakpoint_stop_says_hwbreak(stub: Stub):
    idle = stub.m.symbols.address("cpu_idle_acpi")
    assert stub.handle(b"Z1,%x,1" % idle) == b"OK"
    reply = _go(stub)
    assert b"hwbreak:;" in reply and stub.m.live_regs(int(reply[10:11]) - 1)["rip"] == idle


def test_a_read_watchpoint_stops_after_the_read_with_its_address(stub: Stub):
    ticks = stub.m.symbols.address("ticks")
    assert stub.handle(b"Z3,%x,4" % ticks) == b"OK"
    reply = _go(stub)
    assert b"rwatch:%x;" % ticks in reply, reply
    assert stub.handle(b"z3,%x,4" % ticks) == b"OK" and not stub.watches
