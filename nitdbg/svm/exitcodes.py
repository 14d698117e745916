"""#VMEXIT codes and EXITINFO encodings (AMD APM vol 2 appendix C and 15.10.2, 15.25.6).

Two spellings of an exit: the APM's (`VMEXIT_IRET`) for display, and bhyve's KTR spelling
(`iret`, `nptfault`, `extintr`, hex for the rest) as svm.c's exit_reason_to_str() prints it
in "%s %s vmexit at %#lx/%d".
"""

from __future__ import annotations

from dataclasses import dataclass

# --- exit codes (APM vol 2 table C-1) --------------------------------------------------------

VMEXIT_CR0_READ = 0x00      # 0x00-0x0F: read of CR0..CR15
VMEXIT_CR0_WRITE = 0x10     # 0x10-0x1F: write of CR0..CR15
VMEXIT_DR0_READ = 0x20      # 0x20-0x2F
VMEXIT_DR0_WRITE = 0x30     # 0x30-0x3F
VMEXIT_EXCP_BASE = 0x40     # 0x40-0x5F: exception vector 0..31
VMEXIT_INTR = 0x60
VMEXIT_NMI = 0x61
VMEXIT_SMI = 0x62
VMEXIT_INIT = 0x63
VMEXIT_VINTR = 0x64
VMEXIT_CR0_SEL_WRITE = 0x65
VMEXIT_IDTR_READ = 0x66
VMEXIT_GDTR_READ = 0x67
VMEXIT_LDTR_READ = 0x68
VMEXIT_TR_READ = 0x69
VMEXIT_IDTR_WRITE = 0x6A
VMEXIT_GDTR_WRITE = 0x6B
VMEXIT_LDTR_WRITE = 0x6C
VMEXIT_TR_WRITE = 0x6D
VMEXIT_RDTSC = 0x6E
VMEXIT_RDPMC = 0x6F
VMEXIT_PUSHF = 0x70
VMEXIT_POPF = 0x71
VMEXIT_CPUID = 0x72
VMEXIT_RSM = 0x73
VMEXIT_IRET = 0x74
VMEXIT_SWINT = 0x75
VMEXIT_INVD = 0x76
VMEXIT_PAUSE = 0x77
VMEXIT_HLT = 0x78
VMEXIT_INVLPG = 0x79
VMEXIT_INVLPGA = 0x7A
VMEXIT_IOIO = 0x7B
VMEXIT_MSR = 0x7C
VMEXIT_TASK_SWITCH = 0x7D
VMEXIT_FERR_FREEZE = 0x7E
VMEXIT_SHUTDOWN = 0x7F
VMEXIT_VMRUN = 0x80
VMEXIT_VMMCALL = 0x81
VMEXIT_VMLOAD = 0x82
VMEXIT_VMSAVE = 0x83
VMEXIT_STGI = 0x84
VMEXIT_CLGI = 0x85
VMEXIT_SKINIT = 0x86
VMEXIT_RDTSCP = 0x87
VMEXIT_ICEBP = 0x88
VMEXIT_WBINVD = 0x89
VMEXIT_MONITOR = 0x8A
VMEXIT_MWAIT = 0x8B
VMEXIT_MWAIT_CONDITIONAL = 0x8C
VMEXIT_XSETBV = 0x8D
VMEXIT_RDPRU = 0x8E
VMEXIT_EFER_WRITE_TRAP = 0x8F
VMEXIT_CR0_WRITE_TRAP = 0x90  # 0x90-0x9F
VMEXIT_INVLPGB = 0xA0
VMEXIT_INVLPGB_ILLEGAL = 0xA1
VMEXIT_INVPCID = 0xA2
VMEXIT_MCOMMIT = 0xA3
VMEXIT_TLBSYNC = 0xA4
VMEXIT_NPF = 0x400
VMEXIT_AVIC_INCOMPLETE_IPI = 0x401
VMEXIT_AVIC_NOACCEL = 0x402
VMEXIT_VMGEXIT = 0x403
VMEXIT_INVALID = -1
VMEXIT_BUSY = -2

VECTOR_MC = 18


def vmexit_excp(vector: int) -> int:
    """Exit code of an intercepted exception (0x40 + vector)."""
    if not 0 <= vector < 32:
        raise ValueError(f"exception vector {vector} not in 0..31")
    return VMEXIT_EXCP_BASE + vector


def is_exception_exit(code: int) -> bool:
    return VMEXIT_EXCP_BASE <= code < VMEXIT_EXCP_BASE + 32


def exitcode_to_u64(code: int) -> int:
    """The EXITCODE field is 64 bits; INVALID (-1) is stored as all ones."""
    return code & 0xFFFF_FFFF_FFFF_FFFF


def exitcode_from_u64(raw: int) -> int:
    """Read back EXITCODE as the APM's signed value (so INVALID is -1)."""
    return raw - (1 << 64) if raw >> 63 else raw


_SINGLE_NAMES = {
    VMEXIT_INTR: "INTR", VMEXIT_NMI: "NMI", VMEXIT_SMI: "SMI", VMEXIT_INIT: "INIT",
    VMEXIT_VINTR: "VINTR", VMEXIT_CR0_SEL_WRITE: "CR0_SEL_WRITE",
    VMEXIT_IDTR_READ: "IDTR_READ", VMEXIT_GDTR_READ: "GDTR_READ",
    VMEXIT_LDTR_READ: "LDTR_READ", VMEXIT_TR_READ: "TR_READ",
    VMEXIT_IDTR_WRITE: "IDTR_WRITE", VMEXIT_GDTR_WRITE: "GDTR_WRITE",
    VMEXIT_LDTR_WRITE: "LDTR_WRITE", VMEXIT_TR_WRITE: "TR_WRITE",
    VMEXIT_RDTSC: "RDTSC", VMEXIT_RDPMC: "RDPMC", VMEXIT_PUSHF: "PUSHF", VMEXIT_POPF: "POPF",
    VMEXIT_CPUID: "CPUID", VMEXIT_RSM: "RSM", VMEXIT_IRET: "IRET", VMEXIT_SWINT: "SWINT",
    VMEXIT_INVD: "INVD", VMEXIT_PAUSE: "PAUSE", VMEXIT_HLT: "HLT", VMEXIT_INVLPG: "INVLPG",
    VMEXIT_INVLPGA: "INVLPGA", VMEXIT_IOIO: "IOIO", VMEXIT_MSR: "MSR",
    VMEXIT_TASK_SWITCH: "TASK_SWITCH", VMEXIT_FERR_FREEZE: "FERR_FREEZE",
    VMEXIT_SHUTDOWN: "SHUTDOWN", VMEXIT_VMRUN: "VMRUN", VMEXIT_VMMCALL: "VMMCALL",
    VMEXIT_VMLOAD: "VMLOAD", VMEXIT_VMSAVE: "VMSAVE", VMEXIT_STGI: "STGI",
    VMEXIT_CLGI: "CLGI", VMEXIT_SKINIT: "SKINIT", VMEXIT_RDTSCP: "RDTSCP",
    VMEXIT_ICEBP: "ICEBP", VMEXIT_WBINVD: "WBINVD", VMEXIT_MONITOR: "MONITOR",
    VMEXIT_MWAIT: "MWAIT", VMEXIT_MWAIT_CONDITIONAL: "MWAIT_CONDITIONAL",
    VMEXIT_XSETBV: "XSETBV", VMEXIT_RDPRU: "RDPRU", VMEXIT_EFER_WRITE_TRAP: "EFER_WRITE_TRAP",
    VMEXIT_INVLPGB: "INVLPGB", VMEXIT_INVLPGB_ILLEGAL: "INVLPGB_ILLEGAL",
    VMEXIT_INVPCID: "INVPCID", VMEXIT_MCOMMIT: "MCOMMIT", VMEXIT_TLBSYNC: "TLBSYNC",
    VMEXIT_NPF: "NPF", VMEXIT_AVIC_INCOMPLETE_IPI: "AVIC_INCOMPLETE_IPI",
    VMEXIT_AVIC_NOACCEL: "AVIC_NOACCEL", VMEXIT_VMGEXIT: "VMGEXIT",
    VMEXIT_INVALID: "INVALID", VMEXIT_BUSY: "BUSY",
}


def apm_name(code: int) -> str:
    """APM spelling of an exit code, e.g. VMEXIT_IRET, VMEXIT_EXCP13, VMEXIT_CR3_WRITE."""
    if 0x00 <= code < 0x40:
        kind = "CR" if code < 0x20 else "DR"
        rw = "READ" if code & 0x10 == 0 else "WRITE"
        return f"VMEXIT_{kind}{code & 0xF}_{rw}"
    if is_exception_exit(code):
        return f"VMEXIT_EXCP{code - VMEXIT_EXCP_BASE}"
    if VMEXIT_CR0_WRITE_TRAP <= code < VMEXIT_CR0_WRITE_TRAP + 16:
        return f"VMEXIT_CR{code - VMEXIT_CR0_WRITE_TRAP}_WRITE_TRAP"
    name = _SINGLE_NAMES.get(code)
    return f"VMEXIT_{name}" if name else f"VMEXIT_{code:#x}"


# bhyve svm.c exit_reason_to_str(): these codes have names, every other one prints as %#lx.
_KTR_NAMES = {
    VMEXIT_INVALID: "invalvmcb", VMEXIT_SHUTDOWN: "shutdown", VMEXIT_NPF: "nptfault",
    VMEXIT_PAUSE: "pause", VMEXIT_HLT: "hlt", VMEXIT_CPUID: "cpuid", VMEXIT_IOIO: "inout",
    VMEXIT_EXCP_BASE + VECTOR_MC: "mchk", VMEXIT_INTR: "extintr", VMEXIT_NMI: "nmi",
    VMEXIT_VINTR: "vintr", VMEXIT_MSR: "msr", VMEXIT_IRET: "iret", VMEXIT_MONITOR: "monitor",
    VMEXIT_MWAIT: "mwait", VMEXIT_VMRUN: "vmrun", VMEXIT_VMMCALL: "vmmcall",
    VMEXIT_VMLOAD: "vmload", VMEXIT_VMSAVE: "vmsave", VMEXIT_STGI: "stgi", VMEXIT_CLGI: "clgi",
    VMEXIT_SKINIT: "skinit", VMEXIT_ICEBP: "icebp", VMEXIT_INVD: "invd",
    VMEXIT_INVLPGA: "invlpga",
}


def ktr_name(code: int) -> str:
    """bhyve's KTR spelling: 'iret', 'nptfault', ...; unnamed codes as C's %#lx ('0x41')."""
    name = _KTR_NAMES.get(code)
    if name is not None:
        return name
    raw = exitcode_to_u64(code)
    return f"{raw:#x}" if raw else "0"


# --- IOIO intercept EXITINFO1 (APM vol 2 15.10.2, figure 15-2) ------------------------------

IOIO_TYPE_IN = 1 << 0
IOIO_STR = 1 << 2
IOIO_REP = 1 << 3
IOIO_SZ8 = 1 << 4
IOIO_SZ16 = 1 << 5
IOIO_SZ32 = 1 << 6
IOIO_A16 = 1 << 7
IOIO_A32 = 1 << 8
IOIO_A64 = 1 << 9
IOIO_SEG_SHIFT = 10
IOIO_PORT_SHIFT = 16

_SZ_BITS = {1: IOIO_SZ8, 2: IOIO_SZ16, 4: IOIO_SZ32}
_A_BITS = {16: IOIO_A16, 32: IOIO_A32, 64: IOIO_A64}


class ExitInfoError(ValueError):
    """An EXITINFO value that does not decode."""


@dataclass(frozen=True, slots=True)
class IoioInfo:
    port: int
    size: int            # 1, 2 or 4 bytes
    is_in: bool
    string: bool = False
    rep: bool = False
    addr_size: int = 0   # 16, 32, 64 (string instructions) or 0 when not reported
    seg: int = 0         # effective segment of a string instruction (ES=0 .. GS=5)

    def encode(self) -> int:
        if not 0 <= self.port <= 0xFFFF:
            raise ExitInfoError(f"ioio: port {self.port:#x} out of range")
        if self.size not in _SZ_BITS:
            raise ExitInfoError(f"ioio: size {self.size} is not 1, 2 or 4")
        if self.addr_size and self.addr_size not in _A_BITS:
            raise ExitInfoError(f"ioio: address size {self.addr_size} is not 16, 32 or 64")
        if not 0 <= self.seg < 8:
            raise ExitInfoError(f"ioio: segment {self.seg} out of range")
        v = self.port << IOIO_PORT_SHIFT | _SZ_BITS[self.size] | self.seg << IOIO_SEG_SHIFT
        if self.addr_size:
            v |= _A_BITS[self.addr_size]
        if self.is_in:
            v |= IOIO_TYPE_IN
        if self.string:
            v |= IOIO_STR
        if self.rep:
            v |= IOIO_REP
        return v

    @classmethod
    def decode(cls, info1: int) -> IoioInfo:
        sizes = [s for s, b in _SZ_BITS.items() if info1 & b]
        if len(sizes) != 1:
            raise ExitInfoError(f"ioio: exitinfo1 {info1:#x} has no single SZ bit")
        addrs = [a for a, b in _A_BITS.items() if info1 & b]
        if len(addrs) > 1:
            raise ExitInfoError(f"ioio: exitinfo1 {info1:#x} has several address-size bits")
        return cls(port=info1 >> IOIO_PORT_SHIFT & 0xFFFF, size=sizes[0],
                   is_in=bool(info1 & IOIO_TYPE_IN), string=bool(info1 & IOIO_STR),
                   rep=bool(info1 & IOIO_REP), addr_size=addrs[0] if addrs else 0,
                   seg=info1 >> IOIO_SEG_SHIFT & 7)

    def describe(self) -> str:
        op = ("ins" if self.is_in else "outs") if self.string else ("in" if self.is_in else "out")
        rep = "rep " if self.rep else ""
        return f"{rep}{op} port {self.port:#x} size {self.size}"


_ioio_decoded: dict[int, IoioInfo] = {}
_ioio_encoded: dict[tuple[int, int, bool], int] = {}


def ioio_decode(info1: int) -> IoioInfo:
    """IoioInfo.decode, remembered: a guest does its port I/O on a few ports, one exit per
    access (IoioInfo is frozen, so one object serves every exit with the same EXITINFO1)."""
    io = _ioio_decoded.get(info1)
    if io is None:
        io = IoioInfo.decode(info1)
        if len(_ioio_decoded) < 4096:
            _ioio_decoded[info1] = io
    return io


def ioio_encode(port: int, size: int, is_in: bool) -> int:
    """EXITINFO1 of a plain IN or OUT (IoioInfo(port, size, is_in).encode()), remembered."""
    key = (port, size, is_in)
    v = _ioio_encoded.get(key)
    if v is None:
        v = IoioInfo(port=port, size=size, is_in=is_in).encode()
        if len(_ioio_encoded) < 4096:
            _ioio_encoded[key] = v
    return v


# --- nested page fault EXITINFO1 (APM vol 2 15.25.6) -----------------------------------------

NPF_P = 1 << 0       # 1: protection violation, 0: entry not present
NPF_RW = 1 << 1      # the access was a write
NPF_US = 1 << 2      # user access (always set: nested walks are user accesses)
NPF_RSV = 1 << 3     # a reserved bit was set in a nested entry
NPF_ID = 1 << 4      # instruction fetch
NPF_GPA = 1 << 32    # fault while translating the guest's final physical address
NPF_GPT = 1 << 33    # fault while translating a guest page-table access

_NPF_BIT_NAMES = ((NPF_P, "P"), (NPF_RW, "RW"), (NPF_US, "US"), (NPF_RSV, "RSV"),
                  (NPF_ID, "ID"), (NPF_GPA, "GPA"), (NPF_GPT, "GPT"))


@dataclass(frozen=True, slots=True)
class NpfInfo:
    present: bool
    write: bool
    user: bool
    rsvd: bool
    fetch: bool
    final_gpa: bool
    page_walk: bool

    @classmethod
    def decode(cls, info1: int) -> NpfInfo:
        return cls(present=bool(info1 & NPF_P), write=bool(info1 & NPF_RW),
                   user=bool(info1 & NPF_US), rsvd=bool(info1 & NPF_RSV),
                   fetch=bool(info1 & NPF_ID), final_gpa=bool(info1 & NPF_GPA),
                   page_walk=bool(info1 & NPF_GPT))

    def encode(self) -> int:
        v = 0
        for flag, bit in ((self.present, NPF_P), (self.write, NPF_RW), (self.user, NPF_US),
                          (self.rsvd, NPF_RSV), (self.fetch, NPF_ID),
                          (self.final_gpa, NPF_GPA), (self.page_walk, NPF_GPT)):
            if flag:
                v |= bit
        return v


def npf_describe(info1: int) -> str:
    """'P|RW|US|GPA' style list of the set bits ('-' when none)."""
    names = [n for bit, n in _NPF_BIT_NAMES if info1 & bit]
    return "|".join(names) if names else "-"


# --- other EXITINFO encodings ------------------------------------------------------------------

MSR_EXITINFO1_RDMSR = 0   # APM vol 2 15.11: EXITINFO1 = 0 for RDMSR, 1 for WRMSR
MSR_EXITINFO1_WRMSR = 1

# Task switch (APM vol 2 15.14.2): EXITINFO1[15:0] = target TSS selector; EXITINFO2 flags:
TASK_SWITCH_IRET = 1 << 36        # caused by IRET
TASK_SWITCH_JMP = 1 << 38         # caused by a far JMP
TASK_SWITCH_HAS_ERRCODE = 1 << 44
TASK_SWITCH_RF = 1 << 48          # EFLAGS.RF that would be saved in the outgoing TSS
