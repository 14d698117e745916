"""Register numbering, capstone register mapping and architectural bit constants."""

from __future__ import annotations

import capstone.x86_const as X

RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI = range(8)
R8, R9, R10, R11, R12, R13, R14, R15 = range(8, 16)
GPR_NAMES = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"]

ES, CS, SS, DS, FS, GS = range(6)
SEG_NAMES = ["es", "cs", "ss", "ds", "fs", "gs"]

MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF, 8: 0xFFFF_FFFF_FFFF_FFFF}
SIGN = {1: 0x80, 2: 0x8000, 4: 0x8000_0000, 8: 0x8000_0000_0000_0000}

# RFLAGS (SDM vol 1 3.4.3, APM vol 2 3.1.6)
CF, PF, AF, ZF, SF, TF, IF, DF, OF = 1, 4, 0x10, 0x40, 0x80, 0x100, 0x200, 0x400, 0x800
IOPL = 0x3000
NT, RF, VM, AC, VIF, VIP, ID = 0x4000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000
ARITH = CF | PF | AF | ZF | SF | OF
RFLAGS_FIXED1 = 0x2
RFLAGS_BITS = [(0, "CF"), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"), (9, "IF"),
               (10, "DF"), (11, "OF"), (14, "NT"), (16, "RF"), (17, "VM"), (18, "AC"),
               (19, "VIF"), (20, "VIP"), (21, "ID")]
# Bits software may change with POPF/IRET at CPL 0 (VM/VIF/VIP handled separately).
RFLAGS_WRITABLE = ARITH | TF | IF | DF | IOPL | NT | RF | AC | ID

# Control registers
CR0_PE, CR0_MP, CR0_EM, CR0_TS, CR0_ET, CR0_NE = 1, 2, 4, 8, 0x10, 0x20
CR0_WP, CR0_AM, CR0_NW, CR0_CD, CR0_PG = 1 << 16, 1 << 18, 1 << 29, 1 << 30, 1 << 31
CR4_DE, CR4_PSE, CR4_PAE, CR4_PGE = 0x8, 0x10, 0x20, 0x80
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE, EFER_SVME = 1, 1 << 8, 1 << 10, 1 << 11, 1 << 12

# DR6/DR7 (SDM vol 3 17.2, APM vol 2 13.1.1)
DR6_B = (1, 2, 4, 8)
DR6_BD, DR6_BS, DR6_BT = 1 << 13, 1 << 14, 1 << 15
DR6_INIT = 0xFFFF0FF0
DR7_GD = 1 << 13
DR7_INIT = 0x400

# MSRs
MSR_APIC_BASE = 0x1B
MSR_EFER, MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_SFMASK = (
    0xC0000080, 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084)
MSR_FS_BASE, MSR_GS_BASE, MSR_KERNEL_GS_BASE = 0xC0000100, 0xC0000101, 0xC0000102
MSR_TSC = 0x10
MSR_TSC_AUX = 0xC0000103

# Exception vectors
DE, DB, NMI, BP, OFV, BR, UD, NM, DF_, TS, NP, SS_, GP, PF_, MF, AC_, MC = (
    0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18)
EXC_NAMES = {0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM",
             8: "#DF", 10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF",
             17: "#AC", 18: "#MC", 19: "#XF"}
# Exceptions that push an error code (SDM 6.13, table 6-1).
HAS_ERRCODE = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})


def _build_regmap() -> dict[int, tuple[int, int, bool]]:
    """capstone register id -> (gpr index, size in bytes, is a high-byte register)."""
    m: dict[int, tuple[int, int, bool]] = {}
    legacy = ["A", "C", "D", "B"]
    for i, l in enumerate(legacy):
        m[getattr(X, f"X86_REG_R{l}X")] = (i, 8, False)
        m[getattr(X, f"X86_REG_E{l}X")] = (i, 4, False)
        m[getattr(X, f"X86_REG_{l}X")] = (i, 2, False)
        m[getattr(X, f"X86_REG_{l}L")] = (i, 1, False)
        m[getattr(X, f"X86_REG_{l}H")] = (i, 1, True)
    for i, n in ((4, "SP"), (5, "BP"), (6, "SI"), (7, "DI")):
        m[getattr(X, f"X86_REG_R{n}")] = (i, 8, False)
        m[getattr(X, f"X86_REG_E{n}")] = (i, 4, False)
        m[getattr(X, f"X86_REG_{n}")] = (i, 2, False)
        m[getattr(X, f"X86_REG_{n}L")] = (i, 1, False)
    for i in range(8, 16):
        m[getattr(X, f"X86_REG_R{i}")] = (i, 8, False)
        m[getattr(X, f"X86_REG_R{i}D")] = (i, 4, False)
        m[getattr(X, f"X86_REG_R{i}W")] = (i, 2, False)
        m[getattr(X, f"X86_REG_R{i}B")] = (i, 1, False)
    return m


REGMAP = _build_regmap()
SEGMAP = {X.X86_REG_ES: ES, X.X86_REG_CS: CS, X.X86_REG_SS: SS, X.X86_REG_DS: DS,
          X.X86_REG_FS: FS, X.X86_REG_GS: GS}
CRMAP = {getattr(X, f"X86_REG_CR{i}"): i for i in range(16)}
DRMAP = {getattr(X, f"X86_REG_DR{i}"): i for i in range(16)}

# Interrupt shadows (SDM 6.8.3): STI, and MOV SS / POP SS which also holds off debug traps.
SHADOW_STI, SHADOW_MOVSS = 1, 2


CANON_LO, CANON_HI = 0x0000_7FFF_FFFF_FFFF, 0xFFFF_8000_0000_0000


def canonical(addr: int) -> bool:
    """48-bit canonical form: bits 63:47 all equal (SDM vol 1 3.3.7.1, APM vol 2 5.3.1)."""
    return addr <= CANON_LO or addr >= CANON_HI
