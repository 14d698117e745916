"""VMCB layout (AMD APM vol 2 appendix B), permission maps, exit codes, EVENTINJ/EXITINTINFO."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nitdbg.svm import exitcodes as ec
from nitdbg.svm.intinfo import IntInfo, IntInfoError, describe
from nitdbg.svm.vmcb import (
    INTERCEPTS,
    IOPM_SIZE,
    MSRPM_SIZE,
    VMCB_SIZE,
    Iopm,
    Msrpm,
    Vmcb,
    VmcbError,
)

# APM vol 2 table B-1 (control area) and table B-2 (state save area, + 0x400).
APM_OFFSETS = {
    "cr_intercepts": 0x000, "dr_intercepts": 0x004, "exception_intercepts": 0x008,
    "ctrl1_intercepts": 0x00C, "ctrl2_intercepts": 0x010, "pause_filter_threshold": 0x03C,
    "pause_filter_count": 0x03E, "iopm_base_pa": 0x040, "msrpm_base_pa": 0x048,
    "tsc_offset": 0x050, "asid": 0x058, "tlb_control": 0x05C, "v_tpr": 0x060, "v_irq": 0x061,
    "v_intr_prio": 0x062, "v_ign_tpr": 0x062, "v_intr_masking": 0x063, "v_intr_vector": 0x064,
    "interrupt_shadow": 0x068, "exitcode": 0x070, "exitinfo1": 0x078, "exitinfo2": 0x080,
    "exitintinfo": 0x088, "np_enable": 0x090, "eventinj": 0x0A8, "n_cr3": 0x0B0,
    "vmcb_clean": 0x0C0, "nrip": 0x0C8, "guest_insn_len": 0x0D0,
    "cpl": 0x4CB, "efer": 0x4D0, "cr4": 0x548, "cr3": 0x550, "cr0": 0x558, "dr7": 0x560,
    "dr6": 0x568, "rflags": 0x570, "rip": 0x578, "rsp": 0x5D8, "rax": 0x5F8, "star": 0x600,
    "lstar": 0x608, "cstar": 0x610, "sfmask": 0x618, "kernel_gs_base": 0x620,
    "sysenter_cs": 0x628, "sysenter_esp": 0x630, "sysenter_eip": 0x638, "cr2": 0x640,
    "g_pat": 0x668, "dbgctl": 0x670,
}


@pytest.mark.parametrize(("name", "offset"), sorted(APM_OFFSETS.items()))
def test_field_offsets_match_apm_appendix_b(name, offset):
    assert Vmcb().field_offset(name) == offset


@pytest.mark.parametrize("name", ["rip", "rflags", "exitinfo1", "eventinj", "n_cr3", "rax"])
def test_u64_field_is_stored_little_endian_at_its_offset(name):
    v = Vmcb()
    v.__setattr__(name, 0x1122334455667788)
    off = v.field_offset(name)
    assert v.buf[off:off + 8] == bytes.fromhex("8877665544332211")
    assert getattr(v, name) == 0x1122334455667788
    assert sum(v.buf) == sum(bytes.fromhex("8877665544332211"))


def test_vmcb_is_4k_and_starts_zeroed():
    v = Vmcb()
    assert len(v.buf) == VMCB_SIZE == 4096
    assert not any(v.buf)


def test_segments_are_selector_attrib_limit_base_records_from_0x400():
    v = Vmcb()
    expected = {"es": 0x400, "cs": 0x410, "ss": 0x420, "ds": 0x430, "fs": 0x440, "gs": 0x450,
                "gdtr": 0x460, "ldtr": 0x470, "idtr": 0x480, "tr": 0x490}
    for name, off in expected.items():
        assert v.seg(name).offset == off
    v.cs.set(0x08, 0xA9B, 0xFFFFFFFF, 0x1234)
    assert v.buf[0x410:0x420] == bytes.fromhex("08009b0affffffff3412000000000000")
    assert v.seg(1).as_tuple() == (0x08, 0xA9B, 0xFFFFFFFF, 0x1234)  # contract: CS = 1


def test_segment_attrib_is_the_12_bit_packed_format():
    v = Vmcb()
    with pytest.raises(VmcbError):
        v.ss.attrib = 0x1000
    assert v.ss.attrib == 0


def test_virq_bitfields_sit_on_their_own_bytes():
    v = Vmcb()
    v.v_tpr = 0x0F
    v.v_irq = 1
    v.v_intr_prio = 0xA
    v.v_ign_tpr = 1
    v.v_intr_masking = 1
    v.v_intr_vector = 0x30
    assert v.buf[0x60:0x65] == bytes([0x0F, 0x01, 0x1A, 0x01, 0x30])
    # bhyvectl --get-vmcb-virq reads the whole quadword at 0x60
    assert v.v_intr_control == 0x30011A010F
    v.v_irq = 0
    assert v.buf[0x61] == 0 and v.v_intr_prio == 0xA


def test_interrupt_shadow_and_guest_interrupt_mask_are_bits_0_and_1_at_0x68():
    v = Vmcb()
    v.interrupt_shadow = 1
    assert v.buf[0x68] == 1
    v.guest_interrupt_mask = 1
    assert v.buf[0x68] == 3
    v.interrupt_shadow = 0
    assert v.buf[0x68] == 2


def test_value_too_wide_is_refused_and_changes_nothing():
    v = Vmcb()
    v.v_intr_prio = 3
    before = bytes(v.buf)
    with pytest.raises(VmcbError, match="v_intr_prio"):
        v.v_intr_prio = 16
    with pytest.raises(VmcbError):
        v.asid = -1
    assert bytes(v.buf) == before


@pytest.mark.parametrize(("name", "offset", "bit"), [
    ("INTR", 0x0C, 0), ("NMI", 0x0C, 1), ("VINTR", 0x0C, 4), ("PUSHF", 0x0C, 16),
    ("POPF", 0x0C, 17), ("CPUID", 0x0C, 18), ("IRET", 0x0C, 20), ("INTn", 0x0C, 21),
    ("PAUSE", 0x0C, 23), ("HLT", 0x0C, 24), ("IOIO_PROT", 0x0C, 27), ("MSR_PROT", 0x0C, 28),
    ("TASK_SWITCH", 0x0C, 29), ("SHUTDOWN", 0x0C, 31), ("VMRUN", 0x10, 0),
    ("VMMCALL", 0x10, 1), ("ICEBP", 0x10, 8), ("WBINVD", 0x10, 9), ("MONITOR", 0x10, 10),
    ("MWAIT", 0x10, 11), ("XSETBV", 0x10, 13), ("CR0_READ", 0x00, 0), ("CR8_WRITE", 0x00, 24),
    ("DR7_WRITE", 0x04, 23),
])
def test_intercept_bits_are_where_apm_table_b1_puts_them(name, offset, bit):
    v = Vmcb()
    assert INTERCEPTS[name] == (offset, bit)
    v.set_intercept(name)
    word = int.from_bytes(v.buf[offset:offset + 4], "little")
    assert word == 1 << bit
    assert v.intercepted(name)
    v.set_intercept(name, False)
    assert not any(v.buf) and not v.intercepted(name)


def test_exception_intercept_bit_is_the_vector():
    v = Vmcb()
    v.set_exception_intercept(1)
    v.set_exception_intercept(13)
    assert v.exception_intercepts == (1 << 1) | (1 << 13)
    assert v.exception_intercepted(1) and not v.exception_intercepted(3)
    with pytest.raises(VmcbError):
        v.set_exception_intercept(32)


def test_intercept_names_lists_set_intercepts_in_vmcb_order():
    v = Vmcb()
    for name in ("VMRUN", "IRET", "CR8_WRITE", "NMI"):
        v.set_intercept(name)
    v.set_exception_intercept(13)
    v.set_exception_intercept(1)
    assert v.intercept_names() == ["CR8_WRITE", "#DB", "#GP", "NMI", "IRET", "VMRUN"]


def test_unknown_intercept_name_is_one_clear_error():
    with pytest.raises(VmcbError, match="unknown intercept 'IRETQ'"):
        Vmcb().set_intercept("IRETQ")


def test_guest_instruction_bytes_hold_at_most_15():
    v = Vmcb()
    v.set_guest_insn_bytes(b"\x48\xcf")
    assert v.guest_insn_len == 2 and v.guest_insn_bytes == b"\x48\xcf"
    assert v.buf[0xD0:0xD3] == b"\x02\x48\xcf"
    with pytest.raises(VmcbError):
        v.set_guest_insn_bytes(bytes(16))


def test_dump_reads_the_bytes_and_digest_tracks_them():
    v = Vmcb()
    d0 = v.digest()
    v.rip = 0xFFFFFFFF80200000
    names = dict(v.dump())
    assert names["rip"] == 0xFFFFFFFF80200000
    assert "cs.attrib" in names and "eventinj" in names
    assert v.digest() != d0
    assert Vmcb(bytes(v.buf)).digest() == v.digest()
    order = [n for n, _ in v.dump()]
    assert order.index("nrip") < order.index("es.selector") < order.index("cpl")


def test_clean_bits_names():
    v = Vmcb()
    v.vmcb_clean = 0b10001
    assert v.clean_names() == ["I", "NP"]


# --- IOPM / MSRPM (APM vol 2 15.10.1, 15.11) ---------------------------------------------------


def test_iopm_multibyte_access_is_intercepted_if_any_port_bit_is_set():
    m = Iopm()
    assert len(m.buf) == IOPM_SIZE == 12 * 1024
    m.set(0x61)
    assert m.io_intercepted(0x61, 1)
    assert m.io_intercepted(0x60, 2) and m.io_intercepted(0x5E, 4)
    assert not m.io_intercepted(0x62, 4) and not m.io_intercepted(0x5D, 4)


def test_iopm_has_bits_past_port_ffff_for_wrapping_accesses():
    m = Iopm()
    m.buf[0x10000 >> 3] = 1           # bit 65536: the first bit past the 64K ports
    assert m.io_intercepted(0xFFFF, 2)
    assert not m.io_intercepted(0xFFFF, 1)


def test_msrpm_two_bits_per_msr_read_then_write():
    m = Msrpm()
    assert len(m.buf) == MSRPM_SIZE == 8 * 1024
    m.set(0x1B, write=True)                       # IA32_APIC_BASE, range 0 at byte 0
    assert m.buf[0x1B * 2 // 8] == 1 << ((0x1B * 2 + 1) % 8)
    assert m.msr_intercepted(0x1B, write=True) and not m.msr_intercepted(0x1B, write=False)
    m.set(0xC0000080, read=True)                  # EFER: second vector at 0x800
    assert m.buf[0x800 + 0x80 * 2 // 8] == 1
    m.set(0xC0010004, read=True, write=True)      # third vector at 0x1000
    assert m.buf[0x1000 + 4 * 2 // 8] == 0b11


def test_msrpm_msr_outside_the_three_vectors_is_always_intercepted():
    m = Msrpm()
    assert m.msr_intercepted(0x4000_0000, write=False)
    assert not m.msr_intercepted(0x802, write=False)   # x2APIC range is inside vector 0
    with pytest.raises(VmcbError):
        m.set(0x4000_0000, read=True)


def test_msrpm_set_range_is_set_on_each_msr_of_the_range():
    # APM vol 2 15.11: two bits per MSR, read then write; a range inside one vector is
    # stored in one masked write, which must leave exactly what set() MSR by MSR leaves
    import random
    rnd = random.Random(5)
    for _ in range(100):
        a = Msrpm(rnd.randbytes(MSRPM_SIZE))
        b = Msrpm(a.buf)
        base = rnd.choice((0, 0xC000_0000, 0xC001_0000))
        first = base + rnd.randrange(0x2000)
        count = rnd.randrange(1, 0x2000 - (first - base) + 1)
        read, write = rnd.choice((None, False, True)), rnd.choice((None, False, True))
        a.set_range(first, count, read=read, write=write)
        for msr in range(first, first + count):
            b.set(msr, read=read, write=write)
        assert a.buf == b.buf, (hex(first), count, read, write)
    m = Msrpm()
    with pytest.raises(VmcbError):
        m.set_range(0x1FFF, 2, read=True)            # runs out of vector 0
    with pytest.raises(VmcbError):
        m.set_range(0x4000_0000, 1, read=True)       # in no vector
    assert m.buf == Msrpm().buf


# --- exit codes --------------------------------------------------------------------------------


def test_exit_codes_from_apm_table_c1():
    assert ec.vmexit_excp(13) == 0x4D
    assert (ec.VMEXIT_INTR, ec.VMEXIT_NMI, ec.VMEXIT_VINTR) == (0x60, 0x61, 0x64)
    assert (ec.VMEXIT_IRET, ec.VMEXIT_PAUSE, ec.VMEXIT_HLT) == (0x74, 0x77, 0x78)
    assert (ec.VMEXIT_IOIO, ec.VMEXIT_MSR, ec.VMEXIT_TASK_SWITCH) == (0x7B, 0x7C, 0x7D)
    assert (ec.VMEXIT_SHUTDOWN, ec.VMEXIT_VMRUN, ec.VMEXIT_VMMCALL) == (0x7F, 0x80, 0x81)
    assert ec.VMEXIT_NPF == 0x400 and ec.VMEXIT_INVALID == -1


@pytest.mark.parametrize(("code", "name"), [
    (0x74, "VMEXIT_IRET"), (0x41, "VMEXIT_EXCP1"), (0x13, "VMEXIT_CR3_WRITE"),
    (0x03, "VMEXIT_CR3_READ"), (0x37, "VMEXIT_DR7_WRITE"), (0x400, "VMEXIT_NPF"),
    (-1, "VMEXIT_INVALID"), (0x7B, "VMEXIT_IOIO"), (0x75, "VMEXIT_SWINT"),
])
def test_apm_names(code, name):
    assert ec.apm_name(code) == name


@pytest.mark.parametrize(("code", "name"), [
    (0x74, "iret"), (0x61, "nmi"), (0x64, "vintr"), (0x400, "nptfault"), (0x78, "hlt"),
    (0x7B, "inout"), (0x81, "vmmcall"), (0x77, "pause"), (0x7C, "msr"), (0x72, "cpuid"),
    (0x60, "extintr"), (0x7F, "shutdown"), (0x52, "mchk"), (-1, "invalvmcb"),
    (0x41, "0x41"), (0x4D, "0x4d"), (0x00, "0"),
])
def test_ktr_names_as_bhyve_exit_reason_to_str_spells_them(code, name):
    # svm.c exit_reason_to_str(): a named table, else snprintf("%#lx") (C prints 0 as "0").
    assert ec.ktr_name(code) == name


def test_invalid_exitcode_is_all_ones_in_the_u64_field():
    v = Vmcb()
    v.exitcode = ec.exitcode_to_u64(ec.VMEXIT_INVALID)
    assert v.buf[0x70:0x78] == b"\xff" * 8
    assert ec.exitcode_from_u64(v.exitcode) == -1


def test_ioio_exitinfo1_for_outl_to_the_hypercall_port():
    info = ec.IoioInfo(port=0xE0, size=4, is_in=False)
    assert info.encode() == 0x00E0_0040
    assert ec.IoioInfo.decode(0x00E0_0040) == info


def test_ioio_exitinfo1_for_inb_from_port_0x61():
    assert ec.IoioInfo(port=0x61, size=1, is_in=True).encode() == 0x0061_0011


def test_ioio_exitinfo1_string_rep_fields():
    info = ec.IoioInfo(port=0x3F8, size=1, is_in=False, string=True, rep=True,
                       addr_size=64, seg=3)
    raw = info.encode()
    assert raw == (0x3F8 << 16) | (3 << 10) | (1 << 9) | (1 << 4) | (1 << 3) | (1 << 2)
    assert ec.IoioInfo.decode(raw) == info
    assert info.describe() == "rep outs port 0x3f8 size 1"


def test_ioio_decode_refuses_missing_size():
    with pytest.raises(ec.ExitInfoError):
        ec.IoioInfo.decode(0x00E0_0000)


@given(st.integers(0, 0xFFFF), st.sampled_from([1, 2, 4]), st.booleans(), st.booleans(),
       st.booleans(), st.sampled_from([0, 16, 32, 64]), st.integers(0, 5))
def test_ioio_roundtrip(port, size, is_in, string, rep, asz, seg):
    info = ec.IoioInfo(port, size, is_in, string, rep, asz, seg)
    assert ec.IoioInfo.decode(info.encode()) == info


def test_npf_exitinfo1_bits():
    assert (ec.NPF_P, ec.NPF_RW, ec.NPF_US, ec.NPF_RSV, ec.NPF_ID) == (1, 2, 4, 8, 16)
    assert (ec.NPF_GPA, ec.NPF_GPT) == (1 << 32, 1 << 33)
    raw = ec.NPF_P | ec.NPF_RW | ec.NPF_US | ec.NPF_GPA
    info = ec.NpfInfo.decode(raw)
    assert info.present and info.write and info.user and info.final_gpa
    assert not info.fetch and not info.page_walk and not info.rsvd
    assert info.encode() == raw
    assert ec.npf_describe(raw) == "P|RW|US|GPA"
    assert ec.npf_describe(0) == "-"


# --- EVENTINJ / EXITINTINFO (APM vol 2 15.20) -----------------------------------------------------


def test_eventinj_nmi_encoding():
    assert IntInfo.nmi().encode() == 0x8000_0202


def test_eventinj_exception_with_error_code_encoding():
    raw = IntInfo.exception(13, 0).encode()
    assert raw == 0x0000_0000_8000_0B0D
    assert IntInfo.exception(14, 0x2).encode() == 0x0000_0002_8000_0B0E


def test_intinfo_describe_in_bhyvectl_format():
    assert IntInfo.nmi().describe() == "nmi vector 2"
    assert IntInfo.exception(13, 0).describe() == "exception vector 13 errcode 0"
    assert IntInfo.exception(14, 0x1F).describe() == "exception vector 14 errcode 0x1f"
    assert IntInfo.exception(1).describe() == "exception vector 1"
    assert IntInfo.interrupt(0x20).describe() == "extint vector 32"
    assert IntInfo.soft_int(0x80).describe() == "swint vector 128"
    assert describe(0) == "n/a"
    # print_intinfo's default branch: reserved types print as "exception"
    assert IntInfo(vector=5, type=1, valid=True).describe() == "exception vector 5"


def test_intinfo_bad_vector_refused():
    with pytest.raises(IntInfoError):
        IntInfo(vector=256, valid=True).encode()


@given(st.integers(0, 255), st.integers(0, 7), st.booleans(), st.booleans(),
       st.integers(0, 0xFFFF_FFFF))
def test_intinfo_roundtrip(vector, typ, valid, ev, err):
    info = IntInfo(vector, typ, valid, ev, err)
    raw = info.encode()
    assert IntInfo.decode(raw) == info
    assert raw & 0x7FFF_F000 == 0   # reserved bits 30:12 stay clear
