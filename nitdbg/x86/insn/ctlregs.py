"""Operand checks of MOV to CR0/CR3/CR4/CR8 and of WRMSR to the MSRs the CPU holds.

Each raises #GP(0) where the manuals say so; the order relative to an SVM intercept is the
caller's (APM vol 2 15.7: "instruction intercepts are checked after simple exceptions
(such as #GP when CPL is incorrect, or #UD) ... but before exceptions based on specific
operand values"). The CR4 and EFER bits that may be set are the features this vCPU's CPUID
reports (SDM vol 3 2.5: setting a CR4 bit of an absent feature raises #GP; APM vol 2 3.1.3,
3.1.7: reserved bits are MBZ).
"""

from __future__ import annotations

from ..faults import Fault
from ..regs import (
    CR0_AM,
    CR0_CD,
    CR0_EM,
    CR0_ET,
    CR0_MP,
    CR0_NE,
    CR0_NW,
    CR0_PE,
    CR0_PG,
    CR0_TS,
    CR0_WP,
    CR4_PAE,
    EFER_LMA,
    EFER_LME,
    EFER_NXE,
    EFER_SCE,
    EFER_SVME,
)

# CR0 bits a processor implements; the others in 31:0 are reserved and read as 0 (writes
# are ignored), bits 63:32 must be zero (SDM vol 3 2.5, APM vol 2 3.1.1).
CR0_IMPLEMENTED = (CR0_PE | CR0_MP | CR0_EM | CR0_TS | CR0_ET | CR0_NE | CR0_WP | CR0_AM
                   | CR0_NW | CR0_CD | CR0_PG)

# CR4 bit -> the CPUID.1:EDX feature bit that makes it settable (None: always settable).
CR4_FEATURES = {
    0: 1,       # VME   <- VME
    1: 1,       # PVI   <- VME
    2: 4,       # TSD   <- TSC
    3: 2,       # DE    <- DE
    4: 3,       # PSE   <- PSE
    5: 6,       # PAE   <- PAE
    6: 7,       # MCE   <- MCE
    7: 13,      # PGE   <- PGE
    8: None,    # PCE
    9: 24,      # OSFXSR     <- FXSR
    10: 25,     # OSXMMEXCPT <- SSE
}


def cr4_allowed(cpuid_1_edx: int) -> int:
    mask = 0
    for bit, feature in CR4_FEATURES.items():
        if feature is None or cpuid_1_edx >> feature & 1:
            mask |= 1 << bit
    return mask


def efer_allowed(ext_ecx: int, ext_edx: int) -> int:
    """EFER bits this CPU has: SCE (SYSCALL, 8000_0001 EDX 11), LME/LMA (LM, EDX 29), NXE
    (NX, EDX 20), SVME (SVM, ECX 2). LMSLE, FFXSR, TCE are not offered."""
    mask = 0
    if ext_edx >> 11 & 1:
        mask |= EFER_SCE
    if ext_edx >> 29 & 1:
        mask |= EFER_LME | EFER_LMA
    if ext_edx >> 20 & 1:
        mask |= EFER_NXE
    if ext_ecx >> 2 & 1:
        mask |= EFER_SVME
    return mask


def check_cr0(c, new: int, old: int) -> int:
    """The value CR0 takes, or #GP(0) (SDM vol 2 "MOV—Move to/from Control Registers",
    vol 3 2.5; APM vol 2 3.1.1, 14.7)."""
    if new >> 32:
        raise Fault(13, 0)                      # bits 63:32 reserved, MBZ
    if new & CR0_PG and not new & CR0_PE:
        raise Fault(13, 0)                      # paging without protection
    if new & CR0_NW and not new & CR0_CD:
        raise Fault(13, 0)                      # not-write-through without cache disable
    if old & CR0_PG and not new & CR0_PG and c.mode == 64:
        raise Fault(13, 0)                      # paging off from 64-bit mode (APM 14.7.1)
    if new & CR0_PG and not old & CR0_PG and c.efer & EFER_LME and not c.cr4 & CR4_PAE:
        raise Fault(13, 0)                      # long mode needs PAE (SDM 9.8.5)
    return (new & CR0_IMPLEMENTED) | CR0_ET     # ET is hardwired to 1 since the 486


def check_cr3(c, new: int, maxphyaddr: int) -> int:
    """In long mode the bits above the physical-address width are reserved (SDM vol 3
    4.5, table 4-12; APM vol 2 3.1.2, 5.3.2): #GP(0). Outside it CR3 is 32 bits wide."""
    if c.efer & EFER_LMA:
        if new >> maxphyaddr:
            raise Fault(13, 0)
        return new
    return new & 0xFFFF_FFFF


def check_cr4(c, new: int, allowed: int) -> int:
    if new & ~allowed:
        raise Fault(13, 0)                      # a reserved or absent-feature bit
    if c.efer & EFER_LMA and not new & CR4_PAE:
        raise Fault(13, 0)                      # PAE cannot be cleared in long mode
    return new


def check_cr8(new: int) -> int:
    """CR8 is TPR[7:4]; bits 63:4 are reserved (SDM vol 3 11.8.6.1, APM vol 2 3.1.5)."""
    if new >> 4:
        raise Fault(13, 0)
    return new


def check_efer(new: int, old: int, allowed: int, paging: bool) -> int:
    """WRMSR EFER (APM vol 2 3.1.7): reserved bits MBZ; LME cannot change while paging is
    on (SDM vol 3 9.8.5); LMA is written by the processor only, the written bit is
    ignored."""
    if new & ~allowed:
        raise Fault(13, 0)
    new = (new & ~EFER_LMA) | (old & EFER_LMA)
    if (new ^ old) & EFER_LME and paging:
        raise Fault(13, 0)
    return new
