"""Multiboot v1 boot, compatible with QEMU's `-kernel` (hw/i386/multiboot.c).

The header is searched in the first 8 KiB on a 4-byte boundary; magic 0x1BADB002
with flags + checksum summing to zero. Without flag bit 16 the kernel must be an
ELF32 i386 executable, loaded at p_paddr; with bit 16 (the "a.out kludge") the
header's load_addr / load_end_addr / bss_end_addr / entry_addr say where the file
goes, whatever its format (ELF64 too, as QEMU accepts).

The vCPU starts as the Multiboot Specification 0.6.96 section 3.2 says: 32-bit
protected mode, paging off, CS a flat 32-bit code segment, the other segment
registers flat data, EFLAGS.IF=0 (EFLAGS = 0x2), EAX = 0x2BADB002, EBX = the
physical address of the multiboot information structure. The spec leaves ESP and
GDTR undefined; we give a loader GDT whose selectors match the segment registers
and ESP just below the information page.

Only vCPU 0 (the BSP) is started, as on a PC and under QEMU: the other vCPUs are in
wait-for-SIPI and start when the kernel sends them INIT, STARTUP, STARTUP through its
local APIC (nitdbg/vmm/initsipi.py).
"""

from __future__ import annotations

import contextlib
import struct
from dataclasses import dataclass

from nitdbg.guest.boot import (
    ATTR_CODE32,
    ATTR_DATA,
    CR0_ET,
    CR0_PE,
    DEFAULT_RAM_SIZE,
    MAX_VCPUS,
    SEL_CODE64,
    SEL_DATA,
    BadBootConfig,
    BootImage,
    VcpuBootState,
    check_ram_size,
    flat,
    gdt_entry,
    system_segs,
)
from nitdbg.guest.elf import BadImage, Source, elf_class, parse_elf, read_source
from nitdbg.guest.symbols import SymbolTable

MULTIBOOT_HEADER_MAGIC = 0x1BADB002
MULTIBOOT_BOOTLOADER_MAGIC = 0x2BADB002
MULTIBOOT_SEARCH = 8192
MULTIBOOT_HEADER_ALIGN = 4

# Header flags (spec 3.1.2): bits 0-15 are requirements a loader must honour or refuse.
MBH_PAGE_ALIGN, MBH_MEMORY_INFO, MBH_VIDEO_MODE, MBH_AOUT_KLUDGE = 1, 2, 4, 1 << 16
MBH_SUPPORTED_REQUIRED = MBH_PAGE_ALIGN | MBH_MEMORY_INFO | MBH_VIDEO_MODE  # video: ignored

# Info flags (spec 3.3), the set QEMU passes.
MBI_MEMORY, MBI_BOOT_DEVICE, MBI_CMDLINE, MBI_MODS = 1 << 0, 1 << 1, 1 << 2, 1 << 3
MBI_MEM_MAP, MBI_LOADER_NAME = 1 << 6, 1 << 9

# Where the loader puts its data: one page at 0x9000, laid out as QEMU's multiboot option
# ROM does: the memory map at 0x9000 and the info struct (EBX) at 0x9500, so a kernel that
# keeps or prints EBX sees what it sees under `qemu -kernel` (and `diff --qemu` agrees).
INFO_PAGE = 0x9000
MMAP_ADDR = 0x9000
MBI_ADDR = 0x9500
MBI_SIZE = 88  # through vbe_interface_len
LOADER_NAME_ADDR = 0x9560
GDT32_ADDR = 0x9580  # null, 0x08 flat code32, 0x10 flat data
CMDLINE_ADDR = 0x9600
INFO_PAGE_END = 0xA000
MAX_CMDLINE = INFO_PAGE_END - CMDLINE_ADDR - 1
BOOT_ESP = INFO_PAGE
LOADER_NAME = b"nitdbg\0"

SEL_CODE32 = SEL_CODE64  # 0x08 in the loader GDT, a 32-bit code segment here

E820_RAM, E820_RESERVED = 1, 2
MMAP_ENTRY_SIZE = 24  # u32 size (=20, not counting itself), u64 base, u64 length, u32 type


@dataclass(frozen=True)
class MultibootHeader:
    offset: int  # file offset of the magic
    flags: int
    header_addr: int = 0
    load_addr: int = 0
    load_end_addr: int = 0
    bss_end_addr: int = 0
    entry_addr: int = 0

    @property
    def aout_kludge(self) -> bool:
        return bool(self.flags & MBH_AOUT_KLUDGE)


def find_header(raw: bytes) -> MultibootHeader | None:
    """The first valid multiboot header in the first 8 KiB, or None.

    A magic whose checksum does not match is skipped, as QEMU does, and the search
    goes on.
    """
    end = min(len(raw), MULTIBOOT_SEARCH) - 12
    for off in range(0, end + 1, MULTIBOOT_HEADER_ALIGN):
        magic, flags, checksum = struct.unpack_from("<3I", raw, off)
        if magic != MULTIBOOT_HEADER_MAGIC or (magic + flags + checksum) & 0xFFFFFFFF:
            continue
        fields = (0, 0, 0, 0, 0)
        if flags & MBH_AOUT_KLUDGE and off + 32 <= len(raw):
            fields = struct.unpack_from("<5I", raw, off + 12)
        return MultibootHeader(off, flags, *fields)
    return None


def _has_bad_checksum_magic(raw: bytes) -> int | None:
    for off in range(0, min(len(raw), MULTIBOOT_SEARCH) - 3, MULTIBOOT_HEADER_ALIGN):
        if struct.unpack_from("<I", raw, off)[0] == MULTIBOOT_HEADER_MAGIC:
            return off
    return None


def build_mmap(ram_size: int) -> bytes:
    """A BIOS-like (e820) map: 640 KiB low RAM, the BIOS area, RAM above 1 MiB."""
    regions = [
        (0, 0x9FC00, E820_RAM),
        (0x9FC00, 0x400, E820_RESERVED),  # EBDA
        (0xF0000, 0x10000, E820_RESERVED),  # BIOS ROM
        (0x100000, ram_size - 0x100000, E820_RAM),
    ]
    return b"".join(struct.pack("<IQQI", 20, b, n, t) for b, n, t in regions)


def build_info(ram_size: int, cmdline: str) -> tuple[bytes, int]:
    """The info page (memory map, struct, loader name, GDT, command line) at INFO_PAGE."""
    page = bytearray(INFO_PAGE_END - INFO_PAGE)
    mmap = build_mmap(ram_size)
    cmd = cmdline.encode("ascii") + b"\0"
    flags = MBI_MEMORY | MBI_BOOT_DEVICE | MBI_CMDLINE | MBI_MODS | MBI_MEM_MAP | MBI_LOADER_NAME
    mbi = MBI_ADDR - INFO_PAGE
    struct.pack_into(
        "<IIIIIII",
        page,
        mbi,
        flags,
        640,  # mem_lower, KiB
        (ram_size >> 10) - 1024,  # mem_upper: KiB above 1 MiB, as QEMU computes it
        0x8000FFFF,  # boot_device: BIOS drive 0x80, no partition (QEMU's value)
        CMDLINE_ADDR,
        0,  # mods_count
        0,  # mods_addr
    )
    struct.pack_into("<II", page, mbi + 44, len(mmap), MMAP_ADDR)
    struct.pack_into("<I", page, mbi + 64, LOADER_NAME_ADDR)
    gdt = struct.pack(
        "<3Q", 0, gdt_entry(0, 0xFFFF_FFFF, ATTR_CODE32), gdt_entry(0, 0xFFFF_FFFF, ATTR_DATA)
    )
    for addr, blob in (
        (LOADER_NAME_ADDR, LOADER_NAME),
        (GDT32_ADDR, gdt),
        (MMAP_ADDR, mmap),
        (CMDLINE_ADDR, cmd),
    ):
        page[addr - INFO_PAGE : addr - INFO_PAGE + len(blob)] = blob
    return bytes(page), flags


def _load_aout_kludge(
    raw: bytes, name: str, hdr: MultibootHeader, ram_size: int
) -> tuple[list[tuple[int, bytes]], int]:
    """Place the file per the header's address fields (QEMU's checks, same order)."""
    if hdr.offset + 32 > len(raw):
        raise BadImage(f"{name}: truncated multiboot header (a.out kludge fields missing)")
    if hdr.header_addr < hdr.load_addr:
        raise BadImage(f"{name}: multiboot header_addr {hdr.header_addr:#x} below load_addr")
    if hdr.header_addr - hdr.load_addr > hdr.offset:
        raise BadImage(f"{name}: multiboot header_addr {hdr.header_addr:#x} is invalid")
    text_offset = hdr.offset - (hdr.header_addr - hdr.load_addr)
    if hdr.load_end_addr:
        if hdr.load_end_addr < hdr.load_addr:
            raise BadImage(f"{name}: multiboot load_end_addr {hdr.load_end_addr:#x} is invalid")
        load_size = hdr.load_end_addr - hdr.load_addr
    else:
        load_size = len(raw) - text_offset
    if text_offset + load_size > len(raw):
        raise BadImage(
            f"{name}: truncated image (multiboot load_end_addr needs {load_size:#x} bytes"
            f" from file offset {text_offset:#x})"
        )
    if hdr.bss_end_addr:
        if hdr.bss_end_addr < hdr.load_addr + load_size:
            raise BadImage(f"{name}: multiboot bss_end_addr {hdr.bss_end_addr:#x} is invalid")
        mem_size = hdr.bss_end_addr - hdr.load_addr
    else:
        mem_size = load_size
    if hdr.load_addr + mem_size > ram_size:
        raise BadImage(
            f"{name}: segment at {hdr.load_addr:#x} outside guest RAM ({ram_size >> 20} MiB)"
        )
    data = raw[text_offset : text_offset + load_size] + bytes(mem_size - load_size)
    return [(hdr.load_addr, data)], hdr.entry_addr


def load_multiboot(
    src: Source,
    ram_size: int = DEFAULT_RAM_SIZE,
    cmdline: str = "",
    *,
    name: str | None = None,
    ncpus: int = 1,
) -> BootImage:
    """Boot a multiboot v1 kernel: the BSP in 32-bit protected mode, paging off; the
    other `ncpus - 1` vCPUs wait for SIPI."""
    check_ram_size(ram_size)
    if not isinstance(ncpus, int) or isinstance(ncpus, bool) or not 1 <= ncpus <= MAX_VCPUS:
        raise BadBootConfig(f"vCPU count {ncpus!r} not in 1..{MAX_VCPUS}")
    raw, name = read_source(src, name)
    hdr = find_header(raw)
    if hdr is None:
        bad = _has_bad_checksum_magic(raw)
        why = f" (magic at {bad:#x} has a bad checksum)" if bad is not None else ""
        raise BadImage(f"{name}: no multiboot header in the first 8 KiB{why}")
    unknown = hdr.flags & 0xFFFF & ~MBH_SUPPORTED_REQUIRED
    if unknown:
        raise BadImage(f"{name}: multiboot header requires unsupported features {unknown:#x}")
    if len(cmdline) > MAX_CMDLINE or not cmdline.isascii() or "\0" in cmdline:
        raise BadImage(f"{name}: kernel command line must be ASCII, at most {MAX_CMDLINE} bytes")

    symbols = SymbolTable()
    if hdr.aout_kludge:
        memory, entry = _load_aout_kludge(raw, name, hdr, ram_size)
        if elf_class(raw) is not None:
            # The kludge does not need the ELF to be sound; only its symbols would be lost.
            with contextlib.suppress(BadImage):
                symbols = parse_elf(raw, name, ram_size=1 << 64, machines=_ANY_X86).symbols
    else:
        cls = elf_class(raw)
        if cls is None:
            raise BadImage(f"{name}: multiboot kernel is not ELF and has no a.out kludge (bit 16)")
        if cls == 64:
            # QEMU: "Cannot load x86-64 image, give a 32bit one."
            raise BadImage(f"{name}: ELF64 multiboot kernel needs the a.out kludge (bit 16)")
        img = parse_elf(raw, name, ram_size=ram_size, machines=("EM_386",))
        memory = [(s.paddr, s.image()) for s in img.segments]
        entry = _entry_to_physical(img.entry, img.segments)
        symbols = img.symbols

    page, _ = build_info(ram_size, cmdline)
    for addr, blob in memory:
        if addr < INFO_PAGE_END and addr + len(blob) > INFO_PAGE:
            raise BadImage(
                f"{name}: segment at {addr:#x} overlaps the multiboot information at "
                f"{INFO_PAGE:#x}"
            )
    if not any(addr <= entry < addr + len(blob) for addr, blob in memory):
        raise BadImage(f"{name}: entry {entry:#x} is not inside the loaded image")
    memory = [(INFO_PAGE, page), *memory]

    data = flat(SEL_DATA, ATTR_DATA)
    segs = {"cs": flat(SEL_CODE32, ATTR_CODE32)}
    segs.update({r: flat(data.selector, data.attrib) for r in ("ds", "es", "fs", "gs", "ss")})
    segs.update(system_segs())
    vcpu = VcpuBootState(
        rip=entry,
        rsp=BOOT_ESP,
        rflags=0x2,
        gprs={"rax": MULTIBOOT_BOOTLOADER_MAGIC, "rbx": MBI_ADDR},
        cr0=CR0_PE | CR0_ET,  # ET reads as 1 on every CPU since the 486
        segs=segs,
        gdtr=(GDT32_ADDR, 3 * 8 - 1),
        idtr=(0, 0),
    )
    aps = [VcpuBootState(rip=0, rsp=0, wait_for_sipi=True) for _ in range(ncpus - 1)]
    return BootImage(memory, [vcpu, *aps], entry, symbols, "protected", ram_size)


_ANY_X86 = ("EM_386", "EM_X86_64")


def _entry_to_physical(entry: int, segments) -> int:
    """Paging is off at entry: an ELF entry given as a virtual address inside a segment
    linked with p_vaddr != p_paddr runs at the matching physical address."""
    for s in segments:
        if s.vaddr <= entry < s.vaddr + s.memsz:
            return entry - s.vaddr + s.paddr
    return entry
