"""Boot state for a guest kernel: what the loader puts in RAM and in each vCPU.

`load_amd64` is nitdbg's direct long-mode boot (as bhyveload does for FreeBSD): the
loader builds page tables, a GDT and a boot stack per vCPU and starts every vCPU at
the ELF entry in 64-bit mode. `load_kernel` picks between it and multiboot v1.
The machine layer copies `BootImage.memory` into guest RAM and loads each
`VcpuBootState` into its vCPU; nothing here touches a CPU.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field

from nitdbg.guest.elf import (
    BadImage,
    LoadError,
    Source,
    elf_class,
    elf_machine,
    parse_elf,
    read_source,
)
from nitdbg.guest.symbols import SymbolTable
from nitdbg.x86.regs import EFER_LMA, EFER_LME, EFER_NXE, EFER_SCE

DEFAULT_RAM_SIZE = 64 << 20
MAX_VCPUS = 16  # boot stacks below 0x80000 leave room for 28; bhyve's old VM_MAXCPU was 16
KERNBASE = 0xFFFF_FFFF_8000_0000
EM_X86_64 = 62

# Loader-built structures in low guest-physical memory (all identity mapped).
PML4_ADDR = 0x1000
PDPT_LOW_ADDR = 0x2000  # PML4[0]: identity map of 0-4 GiB
PD_LOW_ADDR = 0x3000  # four page directories, 0x3000-0x6fff, 2 MiB pages
PDPT_KERN_ADDR = 0x7000  # PML4[511]: KERNBASE..KERNBASE+1 GiB -> phys 0 (reuses PD 0)
GDT_ADDR = 0x8000
BOOT_STACK_TOP = 0x80000
BOOT_STACK_SIZE = 16 << 10
LOADER_AREA = (PML4_ADDR, BOOT_STACK_TOP)  # a kernel segment must not overlap it

PTE_P, PTE_W, PTE_PS = 0x1, 0x2, 0x80

# Loader GDT selectors and their VMCB-format attributes (type 3:0, S 4, DPL 6:5, P 7,
# AVL 8, L 9, D/B 10, G 11).
SEL_CODE64, SEL_DATA = 0x08, 0x10
ATTR_CODE64 = 0xA9B  # G, L, P, S, type 0xB (execute/read, accessed)
ATTR_CODE32 = 0xC9B  # G, D, P, S, type 0xB
ATTR_DATA = 0xC93  # G, D/B, P, S, type 0x3 (read/write, accessed)
ATTR_LDT = 0x082  # P, system type 2: after reset, as KVM's init_vmcb sets it
ATTR_TSS_BUSY16 = 0x083  # P, system type 3

CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_AM, CR0_PG = 1, 2, 0x10, 0x20, 1 << 16, 1 << 18, 1 << 31
CR4_PAE = 0x20
# The contract's 0x80050033 also has AM (bit 18), as a running FreeBSD/amd64 kernel does.
CR0_LONG = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG  # 0x80050033
EFER_LONG = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE  # 0xD01


class BadBootConfig(LoadError):
    """A vCPU count, RAM size or boot path the loader cannot honour."""


@dataclass
class SegmentState:
    selector: int
    base: int
    limit: int
    attrib: int


@dataclass
class VcpuBootState:
    rip: int
    rsp: int
    rflags: int = 0x2
    gprs: dict[str, int] = field(default_factory=dict)  # only the non-zero ones
    cr0: int = 0
    cr3: int = 0
    cr4: int = 0
    efer: int = 0
    segs: dict[str, SegmentState] = field(default_factory=dict)
    gdtr: tuple[int, int] = (0, 0)  # (base, limit)
    idtr: tuple[int, int] = (0, 0)
    # An AP of a PC-style boot: it starts in INIT state, waiting for a STARTUP IPI from the
    # BSP (the fields above are then unused; the vmm's INIT state applies).
    wait_for_sipi: bool = False


@dataclass
class BootImage:
    memory: list[tuple[int, bytes]]  # (guest-physical address, bytes)
    vcpus: list[VcpuBootState]  # index = vcpu id
    entry: int
    symbols: SymbolTable
    mode: str  # "long" or "protected"
    ram_size: int


def gdt_entry(base: int, limit: int, attrib: int) -> int:
    """An 8-byte code/data descriptor from a VMCB-style 12-bit attribute."""
    if attrib & 0x800:  # G: the descriptor holds the limit in 4 KiB units
        limit >>= 12
    return (
        (limit & 0xFFFF)
        | (base & 0xFFFFFF) << 16
        | (attrib & 0xFF) << 40
        | ((limit >> 16) & 0xF) << 48
        | ((attrib >> 8) & 0xF) << 52
        | ((base >> 24) & 0xFF) << 56
    )


def flat(selector: int, attrib: int) -> SegmentState:
    return SegmentState(selector, 0, 0xFFFF_FFFF, attrib)


def system_segs() -> dict[str, SegmentState]:
    """TR and LDTR as after reset (selector 0); the kernel loads its own."""
    return {
        "tr": SegmentState(0, 0, 0xFFFF, ATTR_TSS_BUSY16),
        "ldtr": SegmentState(0, 0, 0xFFFF, ATTR_LDT),
    }


def check_ram_size(ram_size: int) -> None:
    # Below 3 GiB keeps RAM clear of the xAPIC page and the PCI hole, as bhyve's lowmem.
    if not isinstance(ram_size, int) or ram_size < (2 << 20) or ram_size > (3 << 30):
        raise BadBootConfig(f"guest RAM size {ram_size!r} not in 2 MiB .. 3 GiB")
    if ram_size % 4096:
        raise BadBootConfig(f"guest RAM size {ram_size:#x} is not a multiple of 4 KiB")


@functools.cache
def build_page_tables() -> bytes:
    """PML4, PDPTs and PDs for 0x1000-0x7fff: identity 0-4 GiB and KERNBASE+1 GiB -> 0.

    2 MiB pages (PDE.PS), all present, writable, supervisor (AMD APM vol 2, 5.3). The same
    bytes for every machine: built once per process.
    """
    tables = bytearray(0x8000 - PML4_ADDR)

    def put(addr: int, index: int, value: int) -> None:
        struct.pack_into("<Q", tables, addr - PML4_ADDR + index * 8, value)

    put(PML4_ADDR, 0, PDPT_LOW_ADDR | PTE_P | PTE_W)
    put(PML4_ADDR, 511, PDPT_KERN_ADDR | PTE_P | PTE_W)
    for gib in range(4):
        pd = PD_LOW_ADDR + gib * 0x1000
        put(PDPT_LOW_ADDR, gib, pd | PTE_P | PTE_W)
        for i in range(512):
            put(pd, i, (gib << 30) + (i << 21) | PTE_P | PTE_W | PTE_PS)
    # KERNBASE = PML4 511, PDPT 510: the same 1 GiB as the first identity PD.
    put(PDPT_KERN_ADDR, (KERNBASE >> 30) & 511, PD_LOW_ADDR | PTE_P | PTE_W)
    return bytes(tables)


def build_loader_gdt() -> bytes:
    entries = [0, gdt_entry(0, 0xFFFF_FFFF, ATTR_CODE64), gdt_entry(0, 0xFFFF_FFFF, ATTR_DATA)]
    return struct.pack("<3Q", *entries)


def _mapped_by_loader(va: int) -> bool:
    return va < (4 << 30) or KERNBASE <= va < KERNBASE + (1 << 30)


def load_amd64(
    src: Source, ncpus: int = 1, ram_size: int = DEFAULT_RAM_SIZE, *, name: str | None = None
) -> BootImage:
    """Direct long-mode boot of an ELF64 x86-64 kernel (see the boot contract)."""
    check_ram_size(ram_size)
    if not isinstance(ncpus, int) or not 1 <= ncpus <= MAX_VCPUS:
        raise BadBootConfig(f"vCPU count {ncpus!r} not in 1..{MAX_VCPUS}")
    raw, name = read_source(src, name)
    img = parse_elf(raw, name, ram_size=ram_size, machines=("EM_X86_64",))
    if img.elfclass != 64:
        raise BadImage(f"{name}: an ELF32 x86-64 (x32) kernel cannot be booted, need ELF64")
    for seg in img.segments:
        if seg.paddr < LOADER_AREA[1] and seg.paddr + seg.memsz > LOADER_AREA[0]:
            raise BadImage(
                f"{name}: segment at {seg.paddr:#x} overlaps the loader's page tables and boot"
                f" stacks ({LOADER_AREA[0]:#x}-{LOADER_AREA[1]:#x})"
            )
    if not _mapped_by_loader(img.entry):
        raise BadImage(f"{name}: entry {img.entry:#x} is not mapped by the loader's page tables")

    memory = [(PML4_ADDR, build_page_tables()), (GDT_ADDR, build_loader_gdt())]
    memory += [(s.paddr, s.image()) for s in img.segments]
    data = flat(SEL_DATA, ATTR_DATA)
    vcpus = []
    for vcpu in range(ncpus):
        gprs = {k: v for k, v in (("rdi", vcpu), ("rsi", ncpus)) if v}
        segs = {"cs": flat(SEL_CODE64, ATTR_CODE64)}
        segs.update({r: SegmentState(**vars(data)) for r in ("ds", "es", "fs", "gs", "ss")})
        segs.update(system_segs())
        vcpus.append(
            VcpuBootState(
                rip=img.entry,
                rsp=BOOT_STACK_TOP - vcpu * BOOT_STACK_SIZE,
                rflags=0x2,
                gprs=gprs,
                cr0=CR0_LONG,
                cr3=PML4_ADDR,
                cr4=CR4_PAE,
                efer=EFER_LONG,
                segs=segs,
                gdtr=(GDT_ADDR, 3 * 8 - 1),
                idtr=(0, 0),
            )
        )
    return BootImage(memory, vcpus, img.entry, img.symbols, "long", ram_size)


# vCPUs when the user does not say: nitdbg's amd64 boot starts every vCPU (2, as the seed's
# "more than one vcpu"); a multiboot kernel gets 1, as QEMU's -smp defaults to 1.
DEFAULT_VCPUS = {"amd64": 2, "multiboot": 1}
BOOT_PATHS = ("auto", "amd64", "multiboot")


def load_kernel(
    path: Source,
    ncpus: int | None = 1,
    ram_size: int = DEFAULT_RAM_SIZE,
    *,
    boot: str = "auto",
    cmdline: str = "",
    name: str | None = None,
) -> BootImage:
    """Boot whatever kernel `path` is.

    boot="auto": an ELF64 x86-64 kernel -> `load_amd64` (nitdbg's own direct boot,
    even when the kernel also carries a multiboot header so that QEMU can boot it);
    otherwise a valid multiboot v1 header in the first 8 KiB -> `load_multiboot`
    (the BSP runs, the APs wait for INIT-SIPI-SIPI as on a PC). boot="amd64" or
    "multiboot" forces a path. ncpus=None: the path's default (DEFAULT_VCPUS).
    """
    from nitdbg.guest.multiboot import find_header, load_multiboot

    raw, name = read_source(path, name)
    if boot not in BOOT_PATHS:
        raise BadBootConfig(f"unknown boot path {boot!r}: want auto, amd64 or multiboot")
    if boot == "auto":
        if elf_class(raw) == 64 and elf_machine(raw) == EM_X86_64:
            boot = "amd64"
        elif find_header(raw) is not None:
            boot = "multiboot"
        elif elf_class(raw) == 32:
            raise BadImage(f"{name}: ELF32 kernel without a multiboot header: cannot boot it")
        else:
            boot = "amd64"  # load_amd64 says what is wrong with the file
    if ncpus is None:
        ncpus = DEFAULT_VCPUS[boot]
    if boot == "multiboot":
        return load_multiboot(raw, ram_size, cmdline, name=name, ncpus=ncpus)
    return load_amd64(raw, ncpus, ram_size, name=name)
