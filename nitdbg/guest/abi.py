"""The firmware ABI: what the host side knows about the guest kernels in firmware/.

One module, pure data and byte helpers, importing only the hypercall numbers from the
hypervisor that defines them (nitdbg/vmm/hypercall.py):
the hypercall port and numbers, FreeBSD's struct trapframe (amd64 and i386)
as (name, offset, size) tables with pack/unpack helpers, the T_* trap types
and their names, the PSL_* RFLAGS bits, the names of the guest symbols that
tools rely on, and the guest's own sysctl variables.

The C side of the same facts is firmware/amd64/param.h and kern.h; the test
tests/test_firmware_amd64.py checks the built image against this module.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from ..vmm.hypercall import HC_KDB_ENTER, HC_PANIC, HYPERCALL_PORT
from ..vmm.hypercall import HYPERCALL_NAMES as HYPERCALL_NAMES  # re-exported


class AbiError(ValueError):
    """Bad input to one of the helpers (wrong buffer size, unknown field, value too wide)."""


# ---- hypercalls (guest -> host) -------------------------------------------------------------

#: The hypervisor defines them (nitdbg/vmm/hypercall.py); the firmware's names for them.
NIT_HC_PORT = HYPERCALL_PORT
NIT_HC_KDB_ENTER = HC_KDB_ENTER
NIT_HC_PANIC = HC_PANIC

# Other fixed I/O ports the firmware uses.
COM1_PORT = 0x3F8
NMI_SC_PORT = 0x61  # read by the NMI handler (FreeBSD isa_nmi)


# ---- struct trapframe -----------------------------------------------------------------------


class TrapframeField(NamedTuple):
    name: str
    offset: int
    size: int  # bytes, little-endian unsigned


def _fields(spec: tuple[tuple[str, int, int], ...]) -> tuple[TrapframeField, ...]:
    return tuple(TrapframeField(*f) for f in spec)


#: FreeBSD amd64 `struct trapframe` (sys/amd64/include/frame.h), 192 bytes.
AMD64_TRAPFRAME: tuple[TrapframeField, ...] = _fields(
    (
        ("tf_rdi", 0, 8),
        ("tf_rsi", 8, 8),
        ("tf_rdx", 16, 8),
        ("tf_rcx", 24, 8),
        ("tf_r8", 32, 8),
        ("tf_r9", 40, 8),
        ("tf_rax", 48, 8),
        ("tf_rbx", 56, 8),
        ("tf_rbp", 64, 8),
        ("tf_r10", 72, 8),
        ("tf_r11", 80, 8),
        ("tf_r12", 88, 8),
        ("tf_r13", 96, 8),
        ("tf_r14", 104, 8),
        ("tf_r15", 112, 8),
        ("tf_trapno", 120, 4),
        ("tf_fs", 124, 2),
        ("tf_gs", 126, 2),
        ("tf_addr", 128, 8),
        ("tf_flags", 136, 4),
        ("tf_es", 140, 2),
        ("tf_ds", 142, 2),
        ("tf_err", 144, 8),
        ("tf_rip", 152, 8),
        ("tf_cs", 160, 8),
        ("tf_rflags", 168, 8),
        ("tf_rsp", 176, 8),
        ("tf_ss", 184, 8),
    )
)
AMD64_TRAPFRAME_SIZE = 192

#: FreeBSD i386 `struct trapframe` (sys/i386/include/frame.h), 72 bytes including the
#: tf_esp/tf_ss pair that the CPU pushes only when the trap crossed rings.
I386_TRAPFRAME: tuple[TrapframeField, ...] = _fields(
    tuple(
        (name, 4 * i, 4)
        for i, name in enumerate(
            (
                "tf_fs",
                "tf_es",
                "tf_ds",
                "tf_edi",
                "tf_esi",
                "tf_ebp",
                "tf_isp",
                "tf_ebx",
                "tf_edx",
                "tf_ecx",
                "tf_eax",
                "tf_trapno",
                "tf_err",
                "tf_eip",
                "tf_cs",
                "tf_eflags",
                "tf_esp",
                "tf_ss",
            )
        )
    )
)
I386_TRAPFRAME_SIZE = 72
I386_KERNEL_TRAPFRAME_SIZE = 64  # without tf_esp/tf_ss (a trap taken in kernel mode)

#: tf_flags bit: the frame holds valid segment registers.
TF_HASSEGS = 0x1

_LAYOUTS: dict[str, tuple[tuple[TrapframeField, ...], int]] = {
    "amd64": (AMD64_TRAPFRAME, AMD64_TRAPFRAME_SIZE),
    "i386": (I386_TRAPFRAME, I386_TRAPFRAME_SIZE),
}


def trapframe_layout(arch: str = "amd64") -> tuple[tuple[TrapframeField, ...], int]:
    """(fields, full size) of the trapframe of `arch` ("amd64" or "i386")."""
    try:
        return _LAYOUTS[arch]
    except KeyError:
        raise AbiError(f"no trapframe layout for architecture {arch!r}") from None


def trapframe_field(name: str, arch: str = "amd64") -> TrapframeField:
    """The field called `name` (e.g. "tf_rip")."""
    for f in trapframe_layout(arch)[0]:
        if f.name == name:
            return f
    raise AbiError(f"no trapframe field {name!r} in the {arch} layout")


def unpack_trapframe(data: bytes, arch: str = "amd64") -> dict[str, int]:
    """Decode a trapframe read from guest memory into {field name: value}.

    An i386 frame may be given without its trailing tf_esp/tf_ss (a kernel-mode trap);
    those fields are then absent from the result.
    """
    fields, size = trapframe_layout(arch)
    if len(data) != size and not (arch == "i386" and len(data) == I386_KERNEL_TRAPFRAME_SIZE):
        raise AbiError(f"{arch} trapframe is {size} bytes, got {len(data)}")
    return {
        f.name: int.from_bytes(data[f.offset : f.offset + f.size], "little")
        for f in fields
        if f.offset + f.size <= len(data)
    }


def pack_trapframe(
    values: Mapping[str, int], base: bytes | None = None, arch: str = "amd64"
) -> bytes:
    """Encode `values` into a trapframe; fields not given keep their bytes from `base`
    (zero when `base` is None)."""
    fields, size = trapframe_layout(arch)
    buf = bytearray(base if base is not None else bytes(size))
    if len(buf) != size and not (arch == "i386" and len(buf) == I386_KERNEL_TRAPFRAME_SIZE):
        raise AbiError(f"{arch} trapframe is {size} bytes, got a base of {len(buf)}")
    by_name = {f.name: f for f in fields}
    for name, value in values.items():
        f = by_name.get(name)
        if f is None:
            raise AbiError(f"no trapframe field {name!r} in the {arch} layout")
        if f.offset + f.size > len(buf):
            raise AbiError(f"{name} is not part of a {len(buf)}-byte {arch} trapframe")
        if not 0 <= value < 1 << (8 * f.size):
            raise AbiError(f"{name} = {value:#x} does not fit in {f.size} bytes")
        buf[f.offset : f.offset + f.size] = value.to_bytes(f.size, "little")
    return bytes(buf)


def trapframe_is_user(frame: Mapping[str, int]) -> bool:
    """Was the trap taken from user mode (CPL 3 in the saved CS)?"""
    return frame["tf_cs"] & SEL_RPL_MASK == 3


# ---- trap types -----------------------------------------------------------------------------


class TrapType(IntEnum):
    """FreeBSD T_* numbers (sys/x86/include/trap.h); the guests store these in tf_trapno."""

    T_PRIVINFLT = 1
    T_BPTFLT = 3
    T_ARITHTRAP = 6
    T_PROTFLT = 9
    T_TRCTRAP = 10
    T_PAGEFLT = 12
    T_ALIGNFLT = 14
    T_DIVIDE = 18
    T_NMI = 19
    T_OFLOW = 20
    T_BOUND = 21
    T_DNA = 22
    T_DOUBLEFLT = 23
    T_FPOPFLT = 24
    T_TSSFLT = 25
    T_SEGNPFLT = 26
    T_STKFLT = 27
    T_MCHK = 28
    T_XMMFLT = 29
    T_RESERVED = 30


#: FreeBSD's trap_msg[] texts ("Fatal trap 9: general protection fault while in ...").
TRAP_NAMES: dict[int, str] = {
    TrapType.T_PRIVINFLT: "privileged instruction fault",
    2: "reserved addressing fault",
    TrapType.T_BPTFLT: "breakpoint instruction fault",
    TrapType.T_ARITHTRAP: "arithmetic trap",
    7: "system forced exception",
    TrapType.T_PROTFLT: "general protection fault",
    TrapType.T_TRCTRAP: "trace trap",
    TrapType.T_PAGEFLT: "page fault",
    TrapType.T_ALIGNFLT: "alignment fault",
    TrapType.T_DIVIDE: "integer divide fault",
    TrapType.T_NMI: "non-maskable interrupt trap",
    TrapType.T_OFLOW: "overflow trap",
    TrapType.T_BOUND: "FPU bounds check fault",
    TrapType.T_DNA: "FPU device not available",
    TrapType.T_DOUBLEFLT: "double fault",
    TrapType.T_FPOPFLT: "FPU operand fetch fault",
    TrapType.T_TSSFLT: "invalid TSS fault",
    TrapType.T_SEGNPFLT: "segment not present fault",
    TrapType.T_STKFLT: "stack fault",
    TrapType.T_MCHK: "machine check trap",
    TrapType.T_XMMFLT: "SIMD floating-point exception",
    TrapType.T_RESERVED: "reserved (unknown) fault",
}


def trap_name(trapno: int) -> str:
    """trap_msg[] text for a T_* number, or the interrupt name for a vector >= 0x80."""
    if trapno in TRAP_NAMES:
        return TRAP_NAMES[trapno]
    if trapno in INTERRUPT_NAMES:
        return INTERRUPT_NAMES[trapno]
    return "unknown/reserved trap"


#: The T_* the amd64 firmware stores for each exception vector (FreeBSD's IDTVEC table).
VECTOR_TO_TRAPTYPE: dict[int, TrapType] = {
    0: TrapType.T_DIVIDE,
    1: TrapType.T_TRCTRAP,
    2: TrapType.T_NMI,
    3: TrapType.T_BPTFLT,
    4: TrapType.T_OFLOW,
    5: TrapType.T_BOUND,
    6: TrapType.T_PRIVINFLT,
    7: TrapType.T_DNA,
    8: TrapType.T_DOUBLEFLT,
    9: TrapType.T_FPOPFLT,
    10: TrapType.T_TSSFLT,
    11: TrapType.T_SEGNPFLT,
    12: TrapType.T_STKFLT,
    13: TrapType.T_PROTFLT,
    14: TrapType.T_PAGEFLT,
    16: TrapType.T_ARITHTRAP,
    17: TrapType.T_ALIGNFLT,
    18: TrapType.T_MCHK,
    19: TrapType.T_XMMFLT,
}
VECTOR_TO_TRAPTYPE.update({v: TrapType.T_RESERVED for v in (15, *range(20, 32))})

# Interrupt vectors; their trapframes carry the vector itself in tf_trapno.
IDT_COM1 = 0x34  # COM1 receive, ISA IRQ 4 through the I/O APIC (FreeBSD APIC_IO_INTS + 4)
IDT_SYSCALL = 0x80  # int $0x80 (DPL 3)
IDT_TIMER = 0xF0  # LAPIC timer (FreeBSD APIC_TIMER_INT)
IDT_ERROR = 0xF1  # LAPIC error
IDT_SPURIOUS = 0xFF  # LAPIC spurious (no EOI)
INTERRUPT_NAMES: dict[int, str] = {
    IDT_SYSCALL: "system call",
    IDT_TIMER: "timer interrupt",
    IDT_ERROR: "APIC error interrupt",
    IDT_SPURIOUS: "spurious interrupt",
}

#: IST slot per vector in the amd64 TSS (as FreeBSD amd64): #DF 1, NMI 2, #MC 3, #DB 4.
IST_BY_VECTOR: dict[int, int] = {8: 1, 2: 2, 18: 3, 1: 4}


# ---- RFLAGS (FreeBSD PSL_*) -----------------------------------------------------------------

PSL_C = 0x00000001
PSL_PF = 0x00000004
PSL_AF = 0x00000010
PSL_Z = 0x00000040
PSL_N = 0x00000080
PSL_T = 0x00000100  # trace: single-step #DB after the next instruction
PSL_I = 0x00000200
PSL_D = 0x00000400
PSL_V = 0x00000800
PSL_IOPL = 0x00003000
PSL_NT = 0x00004000
PSL_RF = 0x00010000
PSL_VM = 0x00020000
PSL_AC = 0x00040000
PSL_VIF = 0x00080000
PSL_VIP = 0x00100000
PSL_ID = 0x00200000
PSL_USER = PSL_I | 0x2  # a fresh user process


# ---- segment selectors (FreeBSD amd64 GDT; the TSS is at GPROC0_SEL in each CPU's GDT) ------

GCODE_SEL = 0x20
GDATA_SEL = 0x28
GUCODE32_SEL = 0x33
GUDATA_SEL = 0x3B
GUCODE_SEL = 0x43
GPROC0_SEL = 0x48
SEL_RPL_MASK = 3


# ---- guest symbols ---------------------------------------------------------------------------

KERNBASE = 0xFFFF_FFFF_8000_0000
KERNEL_LOAD_VA = KERNBASE + 0x200000

SYM_ENTRY = "_start"  # 64-bit entry (RDI = cpu id, RSI = ncpus)
SYM_ENTRY32 = "_start32"  # multiboot (QEMU) entry only
SYM_CPU_IDLE = "cpu_idle_acpi"  # exactly `sti; hlt; ret`
SYM_NMI_HANDLER = "Xnmi"  # IDT vector 2, on IST2
SYM_NMI_IRET = "nmi_iret"  # the NMI handler's iretq
SYM_DORETI = "doreti"  # common trap exit
SYM_DORETI_IRET = "doreti_iret"  # the common trap exit's iretq
SYM_DORETI_IRET_FAULT = "doreti_iret_fault"  # where a faulting iretq to user mode resumes
SYM_ALLTRAPS = "alltraps"  # common trap entry after the per-vector stub
SYM_TRAP = "trap"  # C dispatcher, trap(struct trapframe *)
SYM_KDB_TRAP = "kdb_trap"
SYM_KDB_HYPERCALL = "kdb_enter_hypercall"  # holds the outl of NIT_HC_KDB_ENTER
SYM_KDB_ON_NMI = "kdb_on_nmi"  # int, sysctl machdep.kdb_on_nmi
SYM_KDB_ACTIVE = "kdb_active"
SYM_TICKS = "ticks"  # int, sysctl kern.ticks
SYM_HZ = "hz"  # const int, sysctl kern.hz
SYM_IDLETICK = "idletick"  # int, sysctl kern.eventtimer.idletick
SYM_CLOCK_INTR = "clock_intr"  # the LAPIC timer's handler: hardclock, tickless idle
SYM_CPU_IDLE_C = "cpu_idle"  # one pass of the idle loop: arm the idle deadline, halt
SYM_MP_NCPUS = "mp_ncpus"  # int, sysctl hw.ncpu
SYM_OSTYPE = "ostype"  # char[], sysctl kern.ostype
SYM_USER_IMAGE = "user_image_start"  # the shell's text, which runs at USER_BASE
SYM_USER_START = "user_start"  # the shell's entry point

#: Per-vector entry stubs (FreeBSD IDTVEC names).
IDT_STUBS: dict[int, str] = {
    0: "Xdiv",
    1: "Xdbg",
    2: "Xnmi",
    3: "Xbpt",
    4: "Xofl",
    5: "Xbnd",
    6: "Xill",
    7: "Xdna",
    8: "Xdblfault",
    9: "Xfpusegm",
    10: "Xtss",
    11: "Xmissing",
    12: "Xstk",
    13: "Xprot",
    14: "Xpage",
    15: "Xrsvd15",
    16: "Xfpu",
    17: "Xalign",
    18: "Xmchk",
    19: "Xxmm",
    21: "Xcp",
    29: "Xvc",
    30: "Xsx",
    IDT_COM1: "Xcom1int",
    IDT_SYSCALL: "Xint0x80_syscall",
    IDT_TIMER: "Xtimerint",
    IDT_ERROR: "Xerrorint",
    IDT_SPURIOUS: "Xspuriousint",
}
IDT_STUBS.update({v: f"Xrsvd{v}" for v in (20, 22, 23, 24, 25, 26, 27, 28, 31)})

#: Functions that spin (with `pause`) waiting for another CPU; a watchdog names these.
SPIN_FUNCTIONS: tuple[str, ...] = (
    "stop_cpus_hard",  # the debugger CPU waiting for the others to stop (or to get its turn)
    "cpustop_handler",  # a stopped CPU, inside its NMI handler, waiting to be restarted
    "restart_cpus",  # the debugger CPU waiting for the others to leave cpustop_handler
    "smp_wait_started",  # the BSP waiting for the APs at boot
)

#: Symbols every amd64 firmware image must define (checked by the firmware test).
REQUIRED_SYMBOLS: tuple[str, ...] = (
    SYM_ENTRY,
    SYM_CPU_IDLE,
    SYM_NMI_HANDLER,
    SYM_NMI_IRET,
    SYM_DORETI,
    SYM_DORETI_IRET,
    SYM_DORETI_IRET_FAULT,
    SYM_ALLTRAPS,
    SYM_TRAP,
    SYM_KDB_TRAP,
    SYM_KDB_HYPERCALL,
    SYM_KDB_ON_NMI,
    SYM_KDB_ACTIVE,
    SYM_TICKS,
    SYM_HZ,
    SYM_IDLETICK,
    SYM_CLOCK_INTR,
    SYM_CPU_IDLE_C,
    SYM_MP_NCPUS,
    SYM_OSTYPE,
    SYM_USER_IMAGE,
    SYM_USER_START,
    *SPIN_FUNCTIONS,
    *IDT_STUBS.values(),
)

#: The one user process: its text is the kernel's .user section (starting at symbol
#: user_image_start) mapped at USER_BASE; a user RIP maps back to a kernel-image
#: address as rip - USER_BASE + address(user_image_start).
USER_BASE = 0x400000
USER_STACK_TOP = 0x600000


def user_rip_to_image(rip: int, user_image_start: int) -> int:
    """Address in the kernel image (for symbol lookup) of user-mode `rip`."""
    if not USER_BASE <= rip < USER_STACK_TOP:
        raise AbiError(f"{rip:#x} is not a user text address")
    return rip - USER_BASE + user_image_start


# ---- guest sysctl variables -----------------------------------------------------------------


@dataclass(frozen=True)
class GuestSysctl:
    name: str  # e.g. "machdep.kdb_on_nmi"
    symbol: str  # the guest variable holding it
    kind: str  # "int" (4 bytes, signed) or "string" (NUL-terminated)
    writable: bool


GUEST_SYSCTLS: dict[str, GuestSysctl] = {
    s.name: s
    for s in (
        GuestSysctl("machdep.kdb_on_nmi", SYM_KDB_ON_NMI, "int", True),
        GuestSysctl("kern.ticks", SYM_TICKS, "int", False),
        GuestSysctl("kern.hz", SYM_HZ, "int", False),
        GuestSysctl("kern.eventtimer.idletick", SYM_IDLETICK, "int", True),
        GuestSysctl("hw.ncpu", SYM_MP_NCPUS, "int", False),
        GuestSysctl("kern.ostype", SYM_OSTYPE, "string", False),
    )
}

HZ = 100  # guest clock interrupts per second of virtual time


def decode_int(data: bytes) -> int:
    """A guest `int` (4 bytes, little-endian, signed) as read from guest memory."""
    if len(data) != 4:
        raise AbiError(f"a guest int is 4 bytes, got {len(data)}")
    return struct.unpack("<i", data)[0]


def encode_int(value: int) -> bytes:
    """A guest `int` to write into guest memory."""
    if not -(1 << 31) <= value < 1 << 31:
        raise AbiError(f"{value} does not fit in a guest int")
    return struct.pack("<i", value)


# ---- console texts the firmware prints -------------------------------------------------------

BANNER_PREFIX = "nitdbg amd64 firmware: "  # then "<N> CPUs"
SHELL_PROMPT = "# "
NMI_KDB_MESSAGE = "NMI ... going to debugger"
FATAL_TRAP_FORMAT = "Fatal trap {type}: {name} while in {mode} mode"
SIGEXIT_FORMAT = "pid {pid} (sh), jid 0, uid 0: exited on signal {sig}"
SIGBUS = 10
SIGINT = 2

# Syscalls of the shell (int $0x80; number in RAX; args RDI, RSI, RDX, R10, R8, R9;
# result or -errno in RAX).
SYS_EXIT = 1
SYS_READ = 3
SYS_WRITE = 4
SYS_GETPID = 20
SYS_SIGACTION = 416
SYS___SYSCTLBYNAME = 570
