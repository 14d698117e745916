"""The guest loaders: bad images refused, amd64 direct boot state, multiboot v1, symbols."""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nitdbg.guest import (
    BadBootConfig,
    BadExpression,
    BadImage,
    LoadError,
    Symbol,
    SymbolNotFound,
    SymbolTable,
    load_amd64,
    load_elf,
    load_kernel,
    load_multiboot,
)
from nitdbg.guest.boot import (
    ATTR_CODE64,
    ATTR_DATA,
    BOOT_STACK_SIZE,
    BOOT_STACK_TOP,
    KERNBASE,
    MAX_VCPUS,
)
from nitdbg.guest.multiboot import CMDLINE_ADDR, MBI_ADDR, find_header

pytestmark = pytest.mark.skipif(
    shutil.which("as") is None or shutil.which("ld") is None, reason="needs GNU as and ld"
)

RAM = 64 << 20
KINDS = ["func", "notype"]

AMD64_ASM = r"""
	.text
	.globl	_start
	.type	_start, @function
_start:
	movabsq	$0x1122334455667788, %rax
	hlt
	jmp	_start
	.size	_start, . - _start
	.globl	helper
	.type	helper, @function
helper:
	nop
	ret
	.size	helper, . - helper
label_after:
	nop
	.data
	.globl	counter
	.type	counter, @object
counter:
	.quad	0xdeadbeef
	.size	counter, 8
	.bss
	.globl	bigbss
	.type	bigbss, @object
bigbss:
	.space	0x3000
	.size	bigbss, 0x3000
"""

AMD64_LD = """
ENTRY(_start)
SECTIONS {
	. = 0xffffffff80200000 + %(offset)s;
	.text : AT(0x200000 + %(offset)s) { *(.text) }
	.data : { *(.data) }
	.bss : { *(.bss) }
}
"""

MB32_ASM = r"""
	.section .multiboot, "a"
	.align	4
	.long	0x1BADB002, 0x3, -(0x1BADB002 + 0x3)
	.text
	.globl	_start
	.type	_start, @function
_start:
	hlt
	jmp	_start
	.size	_start, . - _start
	.bss
	.space	0x2000
"""

MB32_LD = """
ENTRY(_start)
SECTIONS {
	. = 0x100000;
	.text : { *(.multiboot) *(.text) }
	.bss : { *(.bss) }
}
"""

# An ELF64 kernel made bootable by multiboot loaders through the a.out kludge (bit 16).
KLUDGE64_ASM = r"""
	.text
	.globl	mbh
mbh:
	.long	0x1BADB002, 0x10003, -(0x1BADB002 + 0x10003)
	.long	mbh, 0x100000, _edata, _end, entry32
	.code32
	.globl	entry32
entry32:
	hlt
	jmp	entry32
	.code64
payload:
	.quad	0xfeedfacecafebeef
	.globl	_edata
_edata:
	.bss
	.space	0x1000
"""

KLUDGE64_LD = """
ENTRY(entry32)
SECTIONS {
	. = 0x100000;
	.text : { *(.text) }
	.bss : { *(.bss) }
	_end = .;
}
"""


def _build(tmp: Path, name: str, asm: str, script: str, bits: int) -> bytes:
    src, obj, lds, out = (tmp / f"{name}{ext}" for ext in (".S", ".o", ".ld", ".elf"))
    src.write_text(asm)
    lds.write_text(script)
    as_arch, ld_emul = ("--64", "elf_x86_64") if bits == 64 else ("--32", "elf_i386")
    subprocess.run(["as", as_arch, "-o", str(obj), str(src)], check=True)
    subprocess.run(
        ["ld", "-m", ld_emul, "--build-id=none", "-z", "max-page-size=0x1000", "-z",
         "noexecstack", "-T", str(lds), "-o", str(out), str(obj)],
        check=True,
    )  # fmt: skip
    return out.read_bytes()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("elf")
    return {
        "amd64": _build(tmp, "amd64", AMD64_ASM, AMD64_LD % {"offset": 0}, 64),
        "amd64_high": _build(tmp, "high", AMD64_ASM, AMD64_LD % {"offset": "0x3dfe000"}, 64),
        "mb32": _build(tmp, "mb32", MB32_ASM, MB32_LD, 32),
        "kludge64": _build(tmp, "kludge64", KLUDGE64_ASM, KLUDGE64_LD, 64),
        "plain32": _build(tmp, "plain32", "_start: hlt\n", MB32_LD, 32),
    }


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg, f"error message is not one line: {msg!r}"
    return msg


# --- bad images ------------------------------------------------------------


def test_random_bytes_are_not_an_elf_file() -> None:
    junk = b"".join(hashlib.sha256(bytes([i])).digest() for i in range(64))  # fixed bytes
    with pytest.raises(BadImage) as e:
        load_elf(junk, name="kernel.elf")
    assert _one_line(e) == "kernel.elf: not an ELF file"


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(BadImage) as e:
        load_elf(tmp_path / "nope.elf")
    assert "cannot read" in _one_line(e)


@pytest.mark.parametrize("cut", [4, 5, 20, 63, 64, 100, 0x1000, 0x1005])
def test_truncated_elf_is_refused(images: dict[str, bytes], cut: int) -> None:
    with pytest.raises(BadImage) as e:
        load_elf(images["amd64"][:cut], name="k.elf")
    assert "truncated" in _one_line(e)


def test_every_strict_prefix_of_an_elf_is_refused_with_one_line(images: dict[str, bytes]) -> None:
    raw = images["amd64"]
    for cut in range(0, len(raw), 13):
        with pytest.raises(BadImage) as e:
            load_elf(raw[:cut], name="k.elf")
        _one_line(e)


def test_wrong_architecture_is_named(images: dict[str, bytes]) -> None:
    arm = bytearray(images["amd64"])
    struct.pack_into("<H", arm, 18, 40)  # e_machine = EM_ARM
    with pytest.raises(BadImage) as e:
        load_elf(bytes(arm), name="kernel.elf")
    assert _one_line(e) == "kernel.elf: wrong architecture: EM_ARM, need x86-64 or i386"


def test_amd64_boot_refuses_an_i386_elf(images: dict[str, bytes]) -> None:
    with pytest.raises(BadImage) as e:
        load_amd64(images["mb32"], name="k.elf")
    assert "wrong architecture: EM_386, need x86-64" in _one_line(e)


def test_segment_beyond_guest_ram_is_refused(images: dict[str, bytes]) -> None:
    # At phys 0x3ffe000 the 0x3000 bytes of .bss run past 64 MiB.
    (seg,) = load_elf(images["amd64_high"], ram_size=128 << 20).segments
    assert seg.paddr == 0x3FFE000 and seg.paddr + seg.filesz < RAM < seg.paddr + seg.memsz
    with pytest.raises(BadImage) as e:
        load_elf(images["amd64_high"], name="kernel.elf", ram_size=RAM)
    assert _one_line(e) == "kernel.elf: segment at 0x3ffe000 outside guest RAM (64 MiB)"


def test_elf_from_path_and_from_bytes_agree(images: dict[str, bytes], tmp_path: Path) -> None:
    p = tmp_path / "k.elf"
    p.write_bytes(images["amd64"])
    a, b = load_elf(p), load_elf(images["amd64"])
    assert a.segments == b.segments and a.entry == b.entry and a.name == "k.elf"


def test_bss_is_zero_filled_to_memsz(images: dict[str, bytes]) -> None:
    img = load_elf(images["amd64"])
    data = [s for s in img.segments if s.memsz > s.filesz]
    assert data, "the test kernel has a .bss"
    for s in data:
        mem = s.image()
        assert len(mem) == s.memsz and mem[s.filesz :] == bytes(s.memsz - s.filesz)


# --- amd64 direct boot -------------------------------------------------------


def _ram(boot) -> bytearray:
    ram = bytearray(boot.ram_size)
    for addr, blob in boot.memory:
        assert addr + len(blob) <= boot.ram_size
        ram[addr : addr + len(blob)] = blob
    return ram


def _walk(ram: bytearray, cr3: int, va: int) -> tuple[int, int] | None:
    """A 4-level long-mode walk (AMD APM vol 2, 5.3.3): (physical address, PDE flags)."""
    table = cr3 & ~0xFFF
    for level, shift in enumerate((39, 30, 21, 12)):
        entry = struct.unpack_from("<Q", ram, table + ((va >> shift) & 511) * 8)[0]
        if not entry & 1:
            return None
        if level in (1, 2) and entry & 0x80:  # 1 GiB or 2 MiB page
            size = 1 << shift
            return (entry & ~(size - 1) & 0x000F_FFFF_FFFF_F000) | (va & (size - 1)), entry & 0xFFF
        table = entry & 0x000F_FFFF_FFFF_F000
    return (table | (va & 0xFFF)), entry & 0xFFF


def test_amd64_page_tables_map_kernbase_and_identity(images: dict[str, bytes]) -> None:
    boot = load_amd64(images["amd64"], 2, RAM)
    ram = _ram(boot)
    cr3 = boot.vcpus[0].cr3
    for va, pa in [
        (KERNBASE + 0x200000, 0x200000),
        (KERNBASE + 0x3FFF_FFFF, 0x3FFF_FFFF),
        (0x7FFF8, 0x7FFF8),
        (0xFEE00000, 0xFEE00000),  # the xAPIC page, reachable through the identity map
        (0xFFFF_FFFF, 0xFFFF_FFFF),
    ]:
        hit = _walk(ram, cr3, va)
        assert hit is not None, f"{va:#x} not mapped"
        assert hit[0] == pa, f"{va:#x} -> {hit[0]:#x}, want {pa:#x}"
        assert hit[1] & 0x7 == 0x3, "present, writable, supervisor"
    for va in (1 << 32, KERNBASE + (1 << 30), KERNBASE - 0x1000, 0x0000_7FFF_FFFF_F000):
        assert _walk(ram, cr3, va) is None, f"{va:#x} must not be mapped"


def test_amd64_entry_bytes_are_where_the_page_tables_say(images: dict[str, bytes]) -> None:
    boot = load_amd64(images["amd64"], 1, RAM)
    ram = _ram(boot)
    pa, _ = _walk(ram, boot.vcpus[0].cr3, boot.entry)
    assert pa == 0x200000
    # movabs $0x1122334455667788, %rax
    assert ram[pa : pa + 10] == bytes.fromhex("48b88877665544332211")
    counter = boot.symbols.address("counter")
    cpa, _ = _walk(ram, boot.vcpus[0].cr3, counter)
    assert struct.unpack_from("<Q", ram, cpa)[0] == 0xDEADBEEF


def test_amd64_vcpu_start_state_follows_the_contract(images: dict[str, bytes]) -> None:
    boot = load_amd64(images["amd64"], 4, RAM)
    assert boot.mode == "long" and len(boot.vcpus) == 4 and boot.entry == 0xFFFFFFFF80200000
    stacks = []
    for i, v in enumerate(boot.vcpus):
        assert v.rip == boot.entry and v.rflags == 0x2
        assert (v.cr0, v.cr4, v.efer) == (0x80050033, 0x20, 0xD01)
        assert v.gprs == ({"rdi": i, "rsi": 4} if i else {"rsi": 4})
        assert (v.segs["cs"].selector, v.segs["cs"].attrib) == (0x08, ATTR_CODE64)
        for r in ("ds", "es", "fs", "gs", "ss"):
            assert (v.segs[r].selector, v.segs[r].attrib) == (0x10, ATTR_DATA)
        assert {"tr", "ldtr"} <= v.segs.keys()
        stacks.append(v.rsp)
    assert stacks == [BOOT_STACK_TOP - i * BOOT_STACK_SIZE for i in range(4)]
    assert all(s % 16 == 0 and s - BOOT_STACK_SIZE >= 0x9000 for s in stacks)


def test_amd64_loader_gdt_descriptors_decode_to_the_contract_attributes(
    images: dict[str, bytes],
) -> None:
    boot = load_amd64(images["amd64"], 1, RAM)
    ram = _ram(boot)
    base, limit = boot.vcpus[0].gdtr
    assert limit == 23
    descs = struct.unpack_from("<3Q", ram, base)
    assert descs[0] == 0
    for d, attrib in zip(descs[1:], (ATTR_CODE64, ATTR_DATA), strict=True):
        assert ((d >> 40) & 0xFF) | (((d >> 52) & 0xF) << 8) == attrib


@pytest.mark.parametrize("ncpus", [0, MAX_VCPUS + 1, -1])
def test_amd64_bad_vcpu_count_is_refused(images: dict[str, bytes], ncpus: int) -> None:
    with pytest.raises(BadBootConfig) as e:
        load_amd64(images["amd64"], ncpus, RAM)
    assert "vCPU count" in _one_line(e)


def test_bad_ram_size_is_refused(images: dict[str, bytes]) -> None:
    with pytest.raises(BadBootConfig):
        load_amd64(images["amd64"], 1, 1 << 20)
    with pytest.raises(BadBootConfig):
        load_amd64(images["amd64"], 1, (64 << 20) + 1)


def test_load_kernel_picks_the_boot_path(images: dict[str, bytes]) -> None:
    assert load_kernel(images["amd64"], 2, RAM).mode == "long"
    assert load_kernel(images["mb32"], 1, RAM).mode == "protected"
    # An ELF64 kernel that also carries a multiboot header (for QEMU) boots directly.
    assert load_kernel(images["kludge64"], 2, RAM).mode == "long"
    assert load_kernel(images["kludge64"], 1, RAM, boot="multiboot").mode == "protected"
    # A multiboot kernel on several vCPUs: the BSP runs, the APs wait for SIPI (as QEMU).
    smp = load_kernel(images["mb32"], 3, RAM, name="k.elf")
    assert [v.wait_for_sipi for v in smp.vcpus] == [False, True, True]
    assert len(load_kernel(images["mb32"], None, RAM).vcpus) == 1   # QEMU's -smp default
    assert len(load_kernel(images["amd64"], None, RAM).vcpus) == 2
    with pytest.raises(BadBootConfig):
        load_kernel(images["mb32"], 17, RAM, name="k.elf")
    with pytest.raises(BadImage) as e:
        load_kernel(images["plain32"], 1, RAM, name="k.elf")
    assert "without a multiboot header" in _one_line(e)
    with pytest.raises(LoadError):
        load_kernel(images["amd64"], 1, RAM, boot="bios")


# --- multiboot v1 -------------------------------------------------------------


def test_multiboot_vcpu_starts_in_flat_protected_mode(images: dict[str, bytes]) -> None:
    boot = load_multiboot(images["mb32"], RAM)
    (v,) = boot.vcpus
    assert boot.mode == "protected" and v.rip == boot.entry == 0x10000C
    assert v.cr0 & 1 and not v.cr0 & (1 << 31) and v.efer == 0
    assert v.gprs == {"rax": 0x2BADB002, "rbx": MBI_ADDR} and v.rflags == 0x2
    cs = v.segs["cs"]
    assert (cs.base, cs.limit, cs.attrib) == (0, 0xFFFFFFFF, 0xC9B)
    for r in ("ds", "es", "fs", "gs", "ss"):
        s = v.segs[r]
        assert (s.base, s.limit, s.attrib) == (0, 0xFFFFFFFF, 0xC93)
    ram = _ram(boot)
    gdt_base, _ = v.gdtr
    d = struct.unpack_from("<Q", ram, gdt_base + cs.selector)[0]
    assert ((d >> 40) & 0xFF) | (((d >> 52) & 0xF) << 8) == 0xC9B


def test_multiboot_info_struct_fields(images: dict[str, bytes]) -> None:
    boot = load_multiboot(images["mb32"], RAM, cmdline="console=com1 -v")
    ram = _ram(boot)
    flags, mem_lower, mem_upper, boot_dev, cmdline = struct.unpack_from("<5I", ram, MBI_ADDR)
    assert flags & 0x1 and flags & 0x4 and flags & 0x40 and flags & 0x200
    assert (mem_lower, mem_upper) == (640, (64 << 10) - 1024)
    assert cmdline == CMDLINE_ADDR
    end = ram.index(0, cmdline)
    assert ram[cmdline:end] == b"console=com1 -v"
    name_addr = struct.unpack_from("<I", ram, MBI_ADDR + 64)[0]
    assert ram[name_addr : ram.index(0, name_addr)] == b"nitdbg"
    mmap_len, mmap_addr = struct.unpack_from("<II", ram, MBI_ADDR + 44)
    entries, off = [], mmap_addr
    while off < mmap_addr + mmap_len:
        size, base, length, kind = struct.unpack_from("<IQQI", ram, off)
        entries.append((base, length, kind))
        off += size + 4
    usable = sum(length for _, length, kind in entries if kind == 1)
    assert (0x100000, RAM - 0x100000, 1) in entries
    assert usable == 0x9FC00 + RAM - 0x100000
    # The kernel itself is in place and its bss is zero.
    assert ram[0x100000:0x100004] == struct.pack("<I", 0x1BADB002)


def test_multiboot_bad_checksum_is_not_a_header(images: dict[str, bytes]) -> None:
    raw = bytearray(images["mb32"])
    hdr = find_header(bytes(raw))
    assert hdr is not None
    struct.pack_into("<I", raw, hdr.offset + 8, 0)
    assert find_header(bytes(raw)) is None
    with pytest.raises(BadImage) as e:
        load_multiboot(bytes(raw), RAM, name="k.elf")
    assert "bad checksum" in _one_line(e)


def test_multiboot_header_past_8k_is_not_found() -> None:
    hdr = struct.pack("<3I", 0x1BADB002, 0, (-0x1BADB002) & 0xFFFFFFFF)
    assert find_header(bytes(8192) + hdr) is None
    assert find_header(bytes(8176) + hdr) is not None


def test_multiboot_unsupported_required_flag_is_refused(images: dict[str, bytes]) -> None:
    flags = 0x8  # bit 3: undefined requirement
    raw = struct.pack("<3I", 0x1BADB002, flags, (-(0x1BADB002 + flags)) & 0xFFFFFFFF)
    with pytest.raises(BadImage) as e:
        load_multiboot(raw + bytes(64), RAM, name="k")
    assert "unsupported" in _one_line(e)


def test_multiboot_elf64_without_kludge_is_refused() -> None:
    elf64 = bytearray(b"\x7fELF\x02\x01\x01" + bytes(57))
    hdr = struct.pack("<3I", 0x1BADB002, 0, (-0x1BADB002) & 0xFFFFFFFF)
    with pytest.raises(BadImage) as e:
        load_multiboot(bytes(elf64) + hdr, RAM, name="k")
    assert "a.out kludge" in _one_line(e)


def test_multiboot_aout_kludge_loads_elf64_from_header_fields(images: dict[str, bytes]) -> None:
    raw = images["kludge64"]
    boot = load_multiboot(raw, RAM)
    hdr = find_header(raw)
    assert hdr is not None and hdr.aout_kludge
    assert boot.entry == hdr.entry_addr == boot.symbols.address("entry32")
    ram = _ram(boot)
    payload = boot.symbols.address("_edata") - 8
    assert struct.unpack_from("<Q", ram, payload)[0] == 0xFEEDFACECAFEBEEF
    (region,) = [(a, b) for a, b in boot.memory if a == 0x100000]
    assert len(region[1]) == hdr.bss_end_addr - hdr.load_addr


def _kludge(load_addr: int, header_addr: int, load_end: int, bss_end: int, entry: int) -> bytes:
    flags = 0x10000
    return struct.pack(
        "<8I", 0x1BADB002, flags, (-(0x1BADB002 + flags)) & 0xFFFFFFFF,
        header_addr, load_addr, load_end, bss_end, entry,
    )  # fmt: skip


def test_multiboot_aout_kludge_raw_binary() -> None:
    body = _kludge(0x200000, 0x200000, 0, 0x203000, 0x200020) + b"\xf4" * 0x40
    boot = load_multiboot(body, RAM, name="raw.bin")
    ram = _ram(boot)
    assert boot.entry == 0x200020 and ram[0x200020] == 0xF4
    assert ram[0x200000 + len(body) : 0x203000] == bytes(0x3000 - len(body))


@pytest.mark.parametrize(
    "fields, words",
    [
        ((0x200000, 0x1FF000, 0, 0, 0x200000), "header_addr"),  # header below load_addr
        ((0x200000, 0x200000, 0x100000, 0, 0x200000), "load_end_addr"),
        ((0x200000, 0x200000, 0x200020, 0x200010, 0x200000), "bss_end_addr"),
        ((0x200000, 0x200000, 0x300000, 0, 0x200000), "truncated"),
        ((0x3FFF000, 0x3FFF000, 0, 0x4001000, 0x3FFF000), "outside guest RAM"),
    ],
)
def test_multiboot_aout_kludge_bad_fields_are_refused(fields: tuple, words: str) -> None:
    with pytest.raises(BadImage) as e:
        load_multiboot(_kludge(*fields) + bytes(32), RAM, name="raw.bin")
    assert words in _one_line(e)


def test_multiboot_refuses_a_segment_over_the_info_page() -> None:
    body = _kludge(0x9000, 0x9000, 0, 0, 0x9000) + bytes(16)
    with pytest.raises(BadImage) as e:
        load_multiboot(body, RAM, name="raw.bin")
    assert "overlaps the multiboot information" in _one_line(e)


# --- symbols -----------------------------------------------------------------


def test_symbols_from_elf_lookup_and_format(images: dict[str, bytes]) -> None:
    syms = load_elf(images["amd64"]).symbols
    start = syms.address("_start")
    assert start == 0xFFFFFFFF80200000
    assert syms.lookup(start) == ("_start", 0)
    assert syms.format(start) == "_start"
    assert syms.format(start + 10) == "_start+0xa"
    helper = syms.address("helper")
    assert syms.format(helper + 1) == "helper+0x1"
    # helper has a size of 2: its end belongs to the unsized label after it.
    assert syms.format(helper + 2) == "label_after"
    assert syms.lookup(start - 1) is None and syms.format(start - 1) == "0xffffffff801fffff"
    assert {"_start", "helper", "counter", "bigbss", "label_after"} <= set(syms.names())
    assert syms.names() == sorted(syms.names())


def test_sized_symbol_covers_only_its_size() -> None:
    syms = SymbolTable([Symbol(0x1000, "f", 0x10, "func"), Symbol(0x2000, "lbl", 0, "notype")])
    assert syms.lookup(0x100F) == ("f", 0xF)
    assert syms.lookup(0x1010) is None
    assert syms.format(0x2000 + 0xFFFF) == "lbl+0xffff"
    assert syms.lookup(0x2000 + 0x10000) is None  # past ddb's db_maxoff


def test_function_wins_over_a_label_at_the_same_address() -> None:
    syms = SymbolTable(
        [Symbol(0x500, "zlabel", 0, "notype"), Symbol(0x500, "func", 8, "func", "local")]
    )
    assert syms.format(0x504) == "func+0x4"
    assert syms.address("zlabel") == 0x500


def test_resolve_expressions() -> None:
    syms = SymbolTable([Symbol(0xFFFFFFFF80200000, "btext", 0x40), Symbol(0x1000, "tss", 104)])
    assert syms.resolve("btext") == 0xFFFFFFFF80200000
    assert syms.resolve("btext+0x10") == 0xFFFFFFFF80200010
    assert syms.resolve("btext + 10") == 0xFFFFFFFF80200010  # ddb radix 16
    assert syms.resolve("tss-4") == 0xFFC
    assert syms.resolve("0xffffffff80200000") == 0xFFFFFFFF80200000
    assert syms.resolve("0t16") == 16
    assert syms.resolve("tss+0t8-2") == 0x1006
    assert syms.resolve("-1") == (1 << 64) - 1
    with pytest.raises(SymbolNotFound) as e:
        syms.resolve("nosuch+4")
    assert str(e.value) == "Symbol 'nosuch' not found"
    for bad in ("", "btext+", "btext tss", "0xzz", "+*3", "btext++1"):
        with pytest.raises(BadExpression):
            syms.resolve(bad)


def test_symbol_not_found_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        SymbolTable().address("x")


@given(
    st.lists(
        st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0x40), st.sampled_from(KINDS)),
        min_size=1,
        max_size=30,
    ),
    st.lists(st.integers(0, 0x11000), min_size=1, max_size=20),
)
@settings(max_examples=200, deadline=None)
def test_lookup_agrees_with_a_linear_scan(entries: list, probes: list[int]) -> None:
    syms = [Symbol(a, f"s{i}", size, kind) for i, (a, size, kind) in enumerate(entries)]
    table = SymbolTable(syms, max_offset=0x100)
    rank = {"func": 0, "notype": 2}
    for addr in probes:
        below = [s for s in syms if s.addr <= addr]
        want = None
        if below:
            top = max(s.addr for s in below)
            best = min((s for s in below if s.addr == top), key=lambda s: (rank[s.kind], s.name))
            limit = best.size or 0x100
            if addr - best.addr < limit:
                want = (best.name, addr - best.addr)
        assert table.lookup(addr) == want


def test_corrupted_images_raise_only_load_errors(images: dict[str, bytes]) -> None:
    """Bytes flipped in headers and tables: a LoadError with one line, or a clean load."""
    for which in ("amd64", "mb32"):
        raw = images[which]
        for i in range(250):
            h = hashlib.sha256(f"{which}-{i}".encode()).digest()
            b = bytearray(raw)
            for j in range(0, 8, 2):
                span = 256 if i % 3 == 0 else len(b)
                pos = int.from_bytes(h[j : j + 2], "little") % span
                if i % 3 == 1:
                    pos = len(b) - 1 - pos % min(len(b), 600)  # section headers, symtab
                b[pos] = h[16 + j]
            try:
                load_kernel(bytes(b), 1, RAM, name="k.elf")
            except LoadError as e:
                assert str(e).startswith("k.elf: ") and "\n" not in str(e)
