"""A virtual local APIC per vCPU, in xAPIC (MMIO) and x2APIC (MSR) modes.

Modelled on the Intel SDM vol 3A ch. 11 ("Advanced Programmable Interrupt
Controller"; ch. 10 in older editions), AMD APM vol 2 ch. 16 and bhyve's
``sys/amd64/vmm/io/vlapic.c``.  Where bhyve departs from the manuals the
comment says so.

What the rest of the vmm uses:

* register access: ``rdmsr``/``wrmsr`` (IA32_APIC_BASE 0x1B and the x2APIC MSRs
  0x800-0x8FF; a guest error raises :class:`ApicGP`, which the CPU layer turns
  into #GP(0)), ``mmio_read``/``mmio_write`` for the 4 KiB xAPIC page;
* interrupts: ``set_intr`` (into IRR), ``pending_intr`` (highest IRR vector
  whose priority class beats PPR), ``intr_accepted`` (IRR -> ISR), EOI;
* ``trigger_lvt(pin)`` (``bhyvectl --assert-lapic-lvt=PIN``), with ``on_nmi()``
  called when an NMI results;
* the timer on the virtual clock: ``next_deadline()`` and ``fire(now)``;
* IPIs: an ICR write calls ``on_ipi(src_vcpu, dest_vcpus, mode, vector)`` with
  mode "fixed", "nmi", "init" or "startup"; the vmm delivers them;
* ``state()``/``load_state()`` and ``describe()``.

Choices (all documented where they act):

* The timer counts a 100 MHz virtual bus clock (10 ns per tick) divided by the
  divide configuration, as the project's contract fixes; bhyve uses
  VLAPIC_BUS_FREQ = 128 MiHz instead.  TSC-deadline mode is not offered.
* Version register 0x00050010: version 0x10 (an integrated APIC; bhyve's
  VLAPIC_VERSION is 16 too) and max LVT entry 5 -- timer, thermal, perf,
  LINT0, LINT1, error; no CMCI LVT, as on AMD.
* The xAPIC ID register is read-only (bhyve ignores writes to it).
* Relocating the APIC base is refused with #GP (bhyve refuses any change of
  the base too).
* INIT and STARTUP IPIs are decoded and reported through ``on_ipi``; the vmm
  puts the target in wait-for-SIPI and starts it (nitdbg/vmm/initsipi.py).
* Level-triggered fixed interrupts (from the I/O APIC) set their TMR bit; the EOI
  of such a vector calls ``on_eoi(vector)``, the broadcast EOI that clears the
  I/O APIC's remote IRR (SDM 11.8.5).
* ExtINT (SDM 11.5.1, 11.6.2): the vector comes from the 8259 (``extint``, an
  object with ``intr``, ``pending_vector()`` and ``intack()``), not from IRR, and
  is not subject to TPR/PPR. It is pending while LINT0 is programmed ExtINT and
  unmasked (or the APIC is globally disabled, when LINT0 is the INTR pin) and the
  8259's INT is high, or after an ExtINT message (I/O APIC, LVT trigger) until
  the CPU acknowledges the 8259. Like bhyve it goes before IRR vectors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

# -- IA32_APIC_BASE (SDM 11.4.4) ----------------------------------------------

MSR_APIC_BASE = 0x1B
APICBASE_BSP = 1 << 8
APICBASE_EXTD = 1 << 10
APICBASE_EN = 1 << 11
DEFAULT_APIC_BASE = 0xFEE00000
APICBASE_ADDR_MASK = ((1 << 52) - 1) & ~0xFFF
# Bits 7:0, 9 and those above MAXPHYADDR (52 on AMD) are reserved.
APICBASE_RESERVED = 0xFF | (1 << 9) | (((1 << 64) - 1) & ~((1 << 52) - 1))

X2APIC_MSR_FIRST = 0x800
X2APIC_MSR_LAST = 0x8FF

APIC_PAGE_SIZE = 0x1000

# -- register offsets in the xAPIC page; x2APIC MSR = 0x800 + (offset >> 4) ---

OFF_ID = 0x020
OFF_VER = 0x030
OFF_TPR = 0x080
OFF_APR = 0x090
OFF_PPR = 0x0A0
OFF_EOI = 0x0B0
OFF_RRD = 0x0C0
OFF_LDR = 0x0D0
OFF_DFR = 0x0E0
OFF_SVR = 0x0F0
OFF_ISR0 = 0x100
OFF_TMR0 = 0x180
OFF_IRR0 = 0x200
OFF_ESR = 0x280
OFF_ICR_LO = 0x300
OFF_ICR_HI = 0x310
OFF_LVT_TIMER = 0x320
OFF_LVT_THERMAL = 0x330
OFF_LVT_PERF = 0x340
OFF_LVT_LINT0 = 0x350
OFF_LVT_LINT1 = 0x360
OFF_LVT_ERROR = 0x370
OFF_TIMER_ICR = 0x380
OFF_TIMER_CCR = 0x390
OFF_TIMER_DCR = 0x3E0
OFF_SELF_IPI = 0x3F0

APIC_VERSION = 0x00050010

# -- field encodings ------------------------------------------------------------

LVT_VECTOR = 0xFF
LVT_DM_MASK = 0x700
LVT_DS = 1 << 12  # delivery status, read-only
LVT_POLARITY = 1 << 13
LVT_REMOTE_IRR = 1 << 14  # read-only
LVT_TRIGGER_LEVEL = 1 << 15
LVT_MASKED = 1 << 16
LVT_TIMER_PERIODIC = 1 << 17
LVT_RESET = LVT_MASKED

DM_FIXED = 0
DM_LOWEST = 1
DM_SMI = 2
DM_NMI = 4
DM_INIT = 5
DM_STARTUP = 6
DM_EXTINT = 7
DM_NAMES = {0: "fixed", 1: "lowest", 2: "SMI", 3: "reserved", 4: "NMI", 5: "INIT",
            6: "startup", 7: "ExtINT"}

# Writable bits per LVT (SDM figure 11-8); the rest are reserved.
LVT_WRITABLE = {
    OFF_LVT_TIMER: LVT_VECTOR | LVT_MASKED | LVT_TIMER_PERIODIC,
    OFF_LVT_THERMAL: LVT_VECTOR | LVT_DM_MASK | LVT_MASKED,
    OFF_LVT_PERF: LVT_VECTOR | LVT_DM_MASK | LVT_MASKED,
    OFF_LVT_LINT0: LVT_VECTOR | LVT_DM_MASK | LVT_POLARITY | LVT_TRIGGER_LEVEL | LVT_MASKED,
    OFF_LVT_LINT1: LVT_VECTOR | LVT_DM_MASK | LVT_POLARITY | LVT_TRIGGER_LEVEL | LVT_MASKED,
    OFF_LVT_ERROR: LVT_VECTOR | LVT_MASKED,
}
LVT_READONLY = LVT_DS | LVT_REMOTE_IRR
LVT_OFFSETS = tuple(LVT_WRITABLE)
LVT_NAMES = {
    OFF_LVT_TIMER: "timer", OFF_LVT_THERMAL: "thermal", OFF_LVT_PERF: "perf",
    OFF_LVT_LINT0: "LINT0", OFF_LVT_LINT1: "LINT1", OFF_LVT_ERROR: "error",
}

# trigger_lvt() pin numbers, bhyve's APIC_LVT_* indices (what bhyvectl passes).
LVT_PIN_LINT0 = 0
LVT_PIN_LINT1 = 1
LVT_PIN_TIMER = 2
LVT_PIN_ERROR = 3
LVT_PIN_PERF = 4
LVT_PIN_THERMAL = 5
LVT_PIN_OFFSETS = {
    LVT_PIN_LINT0: OFF_LVT_LINT0, LVT_PIN_LINT1: OFF_LVT_LINT1, LVT_PIN_TIMER: OFF_LVT_TIMER,
    LVT_PIN_ERROR: OFF_LVT_ERROR, LVT_PIN_PERF: OFF_LVT_PERF, LVT_PIN_THERMAL: OFF_LVT_THERMAL,
}

SVR_VECTOR = 0xFF
SVR_ENABLE = 1 << 8
SVR_FOCUS = 1 << 9  # AMD: focus CPU core checking; stored, no effect here
SVR_WRITABLE = SVR_VECTOR | SVR_ENABLE | SVR_FOCUS
SVR_RESET = 0xFF

DFR_RESET = 0xFFFFFFFF
DFR_MODEL_FLAT = 0xF
DFR_MODEL_CLUSTER = 0x0

ESR_SEND_ILLEGAL_VECTOR = 1 << 5
ESR_RECEIVE_ILLEGAL_VECTOR = 1 << 6
ESR_ILLEGAL_REGISTER = 1 << 7

ICR_DM_SHIFT = 8
ICR_DESTMODE_LOGICAL = 1 << 11
ICR_DELIVERY_STATUS = 1 << 12
ICR_LEVEL_ASSERT = 1 << 14
ICR_TRIGGER_LEVEL = 1 << 15
ICR_SHORTHAND_SHIFT = 18
ICR_LO_WRITABLE = 0x000CCFFF  # vector, mode, dest mode, level, trigger, shorthand
ICR_HI_WRITABLE_XAPIC = 0xFF000000
# x2APIC ICR bits 31:20, 17:16 and 13 are reserved (SDM figure 11-28); bit 12
# (delivery status) is accepted and ignored, as KVM does.
ICR_RESERVED_X2APIC = 0xFFF32000

SHORTHAND_NONE = 0
SHORTHAND_SELF = 1
SHORTHAND_ALL_INCL_SELF = 2
SHORTHAND_ALL_EXCL_SELF = 3
SHORTHAND_NAMES = ("none", "self", "all-including-self", "all-excluding-self")

DCR_WRITABLE = 0xB

BUS_TICK_NS = 10  # 100 MHz virtual bus clock

COUNTER_NAMES = (
    "timer_fired", "timer_coalesced", "timer_masked", "lvt_nmi", "lvt_fixed",
    "lvt_ignored", "ipis_sent", "eoi_gratuitous", "intr_ignored_disabled", "spurious",
)


class ApicGP(Exception):
    """A guest access that raises #GP(0) (illegal MSR, reserved bits, bad mode change)."""


class VlapicError(ValueError):
    """A host-side misuse of the vLAPIC API (bad vector, pin, offset or state)."""


def dcr_divisor(dcr: int) -> int:
    """Timer divide value from DCR bits 3,1,0 (SDM figure 11-10).

    000 -> 2, 001 -> 4, ... 110 -> 128, 111 -> 1.
    """
    code = ((dcr >> 1) & 0b100) | (dcr & 0b11)
    return 1 if code == 0b111 else 2 << code


def decode_lvt(value: int, timer: bool = False) -> str:
    """One-line decode of an LVT entry, e.g. "NMI, unmasked"."""
    masked = "masked" if value & LVT_MASKED else "unmasked"
    if timer:
        mode = "periodic" if value & LVT_TIMER_PERIODIC else "one-shot"
        return f"{mode} vector {value & LVT_VECTOR:#04x}, {masked}"
    dm = (value & LVT_DM_MASK) >> 8
    if dm == DM_FIXED:
        return f"fixed vector {value & LVT_VECTOR:#04x}, {masked}"
    return f"{DM_NAMES[dm]}, {masked}"


def _bits(mask: int) -> list[int]:
    out = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out


class Vlapic:
    """The local APIC of one vCPU.

    ``now()`` returns the virtual time in ns.  ``peers()`` returns every vCPU's
    Vlapic (it is used to resolve IPI destinations; without it this vCPU is the
    only one).  ``on_nmi()`` is called when an LVT with NMI delivery fires (or
    LINT1 while the APIC is globally disabled); ``on_ipi`` is called for every
    ICR write that has at least one destination.
    """

    def __init__(
        self,
        vcpu_id: int,
        now: Callable[[], int],
        *,
        on_nmi: Callable[[], None] | None = None,
        on_ipi: Callable[[int, list[int], str, int], None] | None = None,
        peers: Callable[[], Sequence[Vlapic]] | None = None,
        x2apic_supported: bool = True,
        on_eoi: Callable[[int], None] | None = None,
        extint: Any = None,
    ) -> None:
        if vcpu_id < 0 or vcpu_id > 0xFE:
            raise VlapicError(f"vcpu id {vcpu_id} out of range 0..254")
        self.vcpu_id = vcpu_id
        self._now = now
        self.on_nmi = on_nmi
        self.on_ipi = on_ipi
        self._peers = peers
        self.x2apic_supported = x2apic_supported
        self.on_eoi = on_eoi
        self.extint = extint
        self.extint_latched = False
        self.apic_base = DEFAULT_APIC_BASE | APICBASE_EN | (APICBASE_BSP if vcpu_id == 0 else 0)
        self.counters = dict.fromkeys(COUNTER_NAMES, 0)
        self.reset()

    # -- reset and mode -------------------------------------------------------

    def reset(self) -> None:
        """Register reset (SDM 11.12.5.1): everything zero except the LVT mask
        bits, SVR = 0xFF and DFR = all ones.  IA32_APIC_BASE is not touched."""
        self.tpr = 0
        self.ppr = 0
        self.ldr = 0
        self.dfr = DFR_RESET
        self.svr = SVR_RESET
        self.irr = 0
        self.isr = 0
        self.tmr = 0  # level-triggered vectors accepted into IRR (SDM 11.8.4)
        self.extint_latched = False
        self.esr = 0
        self.esr_pending = 0
        self.icr_lo = 0
        self.icr_hi = 0
        self.lvt = dict.fromkeys(LVT_OFFSETS, LVT_RESET)
        self.timer_icr = 0
        self.timer_dcr = 0
        self._timer_deadline: int | None = None
        self._timer_period_ns = 0
        self._timer_tick_ns = BUS_TICK_NS * dcr_divisor(0)
        self._error_firing = False
        if self.mode == "x2apic":
            self.ldr = self._x2apic_ldr()

    @property
    def mode(self) -> str:
        """"disabled", "xapic" or "x2apic" (IA32_APIC_BASE EN and EXTD)."""
        if not self.apic_base & APICBASE_EN:
            return "disabled"
        return "x2apic" if self.apic_base & APICBASE_EXTD else "xapic"

    @property
    def x2apic(self) -> bool:
        return self.mode == "x2apic"

    @property
    def sw_enabled(self) -> bool:
        return bool(self.svr & SVR_ENABLE)

    @property
    def enabled(self) -> bool:
        """Globally enabled (IA32_APIC_BASE.EN) and software enabled (SVR bit 8)."""
        return bool(self.apic_base & APICBASE_EN) and self.sw_enabled

    @property
    def apic_id(self) -> int:
        """The APIC ID as the current mode shows it in the ID register."""
        return self.vcpu_id if self.x2apic else self.vcpu_id << 24

    @property
    def mmio_base(self) -> int:
        return self.apic_base & APICBASE_ADDR_MASK

    @property
    def mmio_enabled(self) -> bool:
        """True while the xAPIC page answers MMIO (xAPIC mode only, SDM 11.12.2)."""
        return self.mode == "xapic"

    def _x2apic_ldr(self) -> int:
        # SDM 11.12.10.2: logical x2APIC ID = cluster (ID[19:4]) << 16 | 1 << ID[3:0].
        return ((self.vcpu_id >> 4) << 16) | (1 << (self.vcpu_id & 0xF))

    # -- MSR interface ----------------------------------------------------------

    @staticmethod
    def handles_msr(msr: int) -> bool:
        return msr == MSR_APIC_BASE or X2APIC_MSR_FIRST <= msr <= X2APIC_MSR_LAST

    def rdmsr(self, msr: int) -> int:
        if msr == MSR_APIC_BASE:
            return self.apic_base
        if not X2APIC_MSR_FIRST <= msr <= X2APIC_MSR_LAST:
            raise VlapicError(f"MSR {msr:#x} is not a local APIC MSR")
        if not self.x2apic:
            # SDM 11.12.2: x2APIC MSRs outside x2APIC mode raise #GP.
            raise ApicGP(f"rdmsr {msr:#x}: local APIC is not in x2APIC mode")
        off = (msr - X2APIC_MSR_FIRST) << 4
        access = _X2APIC_ACCESS.get(off)
        if access is None:
            raise ApicGP(f"rdmsr {msr:#x}: no such x2APIC register")
        if "r" not in access:
            raise ApicGP(f"rdmsr {msr:#x}: x2APIC register is write-only")
        if off == OFF_ICR_LO:
            return (self.icr_hi << 32) | self.icr_lo
        return self._read_reg(off)

    def wrmsr(self, msr: int, value: int) -> None:
        if not 0 <= value < 1 << 64:
            raise VlapicError(f"wrmsr value {value:#x} is not 64-bit")
        if msr == MSR_APIC_BASE:
            self._write_apic_base(value)
            return
        if not X2APIC_MSR_FIRST <= msr <= X2APIC_MSR_LAST:
            raise VlapicError(f"MSR {msr:#x} is not a local APIC MSR")
        if not self.x2apic:
            raise ApicGP(f"wrmsr {msr:#x}: local APIC is not in x2APIC mode")
        off = (msr - X2APIC_MSR_FIRST) << 4
        access = _X2APIC_ACCESS.get(off)
        if access is None:
            raise ApicGP(f"wrmsr {msr:#x}: no such x2APIC register")
        if "w" not in access:
            raise ApicGP(f"wrmsr {msr:#x}: x2APIC register is read-only")
        # SDM 11.12.1.3: a non-zero write to reserved bits raises #GP; bits 63:32
        # are reserved in every x2APIC MSR but the ICR.
        allowed = _x2apic_allowed_bits(off)
        if value & ~allowed:
            raise ApicGP(f"wrmsr {msr:#x}: reserved bits set in {value:#x}")
        if off == OFF_ICR_LO:
            self.icr_hi = value >> 32
            self.icr_lo = value & ICR_LO_WRITABLE
            self._send_ipi()
            return
        if off == OFF_SELF_IPI:
            # SDM 11.12.11: a self IPI is a fixed, edge, physical IPI to this APIC.
            self._deliver_fixed_self(value & 0xFF)
            return
        self._write_reg(off, value)

    def _write_apic_base(self, value: int) -> None:
        if value & APICBASE_RESERVED:
            raise ApicGP(f"wrmsr IA32_APIC_BASE: reserved bits set in {value:#x}")
        if value & APICBASE_ADDR_MASK != DEFAULT_APIC_BASE:
            raise ApicGP(f"wrmsr IA32_APIC_BASE: relocating the APIC to "
                         f"{value & APICBASE_ADDR_MASK:#x} is not supported")
        en = bool(value & APICBASE_EN)
        extd = bool(value & APICBASE_EXTD)
        old = self.mode
        if extd and not self.x2apic_supported:
            raise ApicGP("wrmsr IA32_APIC_BASE: x2APIC mode is not supported")
        # SDM 11.12.5 / figure 11-27: EN=0,EXTD=1 is invalid; x2APIC -> xAPIC and
        # disabled -> x2APIC are illegal transitions.
        if extd and not en:
            raise ApicGP("wrmsr IA32_APIC_BASE: EXTD=1 with EN=0 is an invalid state")
        new = "x2apic" if extd else ("xapic" if en else "disabled")
        if old == "x2apic" and new == "xapic":
            raise ApicGP("wrmsr IA32_APIC_BASE: x2APIC to xAPIC needs a pass through disabled")
        if old == "disabled" and new == "x2apic":
            raise ApicGP("wrmsr IA32_APIC_BASE: disabled to x2APIC needs a pass through xAPIC")
        self.apic_base = (self.apic_base & APICBASE_BSP) | DEFAULT_APIC_BASE
        self.apic_base |= (APICBASE_EN if en else 0) | (APICBASE_EXTD if extd else 0)
        if new == old:
            return
        if new == "disabled":
            # Register state does not survive a pass through disabled (SDM 11.12.5.1).
            self.reset()
        elif new == "x2apic":
            # xAPIC -> x2APIC keeps the registers; the logical ID is set by
            # hardware and the DFR no longer exists (SDM 11.12.5.1).
            self.ldr = self._x2apic_ldr()
            self.dfr = 0
        else:
            self.dfr = DFR_RESET  # disabled -> xAPIC: the reset state

    # -- xAPIC MMIO interface ---------------------------------------------------

    def mmio_read(self, offset: int, size: int) -> int:
        """Read ``size`` bytes at ``offset`` in the APIC page.

        Registers are 32 bits at 16-byte aligned offsets (SDM 11.4.1); bytes 4..15
        of each slot read as zero.  In x2APIC or disabled mode the page reads 0
        (bhyve ignores MMIO accesses in x2APIC mode).
        """
        _check_mmio(offset, size)
        if not self.mmio_enabled:
            return 0
        value = 0
        slot_cache: dict[int, int] = {}
        for i in range(size):
            byte_off = offset + i
            slot, pos = byte_off & ~0xF, byte_off & 0xF
            if pos >= 4 or slot >= APIC_PAGE_SIZE:
                continue
            if slot not in slot_cache:
                slot_cache[slot] = self._mmio_read_reg(slot)
            value |= ((slot_cache[slot] >> (8 * pos)) & 0xFF) << (8 * i)
        return value

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        """Write to the APIC page.  Only an aligned 32-bit (or wider) store to a
        register's offset takes effect; anything else is dropped (the SDM leaves
        it undefined)."""
        _check_mmio(offset, size)
        if not 0 <= value < 1 << (8 * size):
            raise VlapicError(f"value {value:#x} does not fit a {size}-byte store")
        if not self.mmio_enabled or offset & 0xF or size < 4:
            return
        value &= 0xFFFFFFFF
        access = _XAPIC_ACCESS.get(offset)
        if access is None:
            self._set_error(ESR_ILLEGAL_REGISTER)
            return
        if "w" not in access:
            return  # read-only registers ignore writes in xAPIC mode
        if offset == OFF_ICR_LO:
            self.icr_lo = value & ICR_LO_WRITABLE
            self._send_ipi()
        elif offset == OFF_ICR_HI:
            self.icr_hi = value & ICR_HI_WRITABLE_XAPIC
        elif offset == OFF_ID:
            pass  # read-only here, as in bhyve's vlapic_id_write_handler
        elif offset == OFF_LDR:
            self.ldr = value & 0xFF000000
        elif offset == OFF_DFR:
            self.dfr = (value & 0xF0000000) | 0x0FFFFFFF  # bits 27:0 read as ones
        else:
            self._write_reg(offset, value)

    def _mmio_read_reg(self, off: int) -> int:
        access = _XAPIC_ACCESS.get(off)
        if access is None:
            self._set_error(ESR_ILLEGAL_REGISTER)
            return 0
        if "r" not in access:
            return 0
        return self._read_reg(off)

    # -- registers common to both modes -----------------------------------------

    def _read_reg(self, off: int) -> int:
        if off == OFF_ID:
            return self.apic_id
        if off == OFF_VER:
            return APIC_VERSION
        if off == OFF_TPR:
            return self.tpr
        if off == OFF_PPR:
            return self.ppr
        if off == OFF_LDR:
            return self.ldr
        if off == OFF_DFR:
            return self.dfr
        if off == OFF_SVR:
            return self.svr
        if OFF_ISR0 <= off < OFF_ISR0 + 0x80:
            return (self.isr >> (32 * ((off - OFF_ISR0) >> 4))) & 0xFFFFFFFF
        if OFF_TMR0 <= off < OFF_TMR0 + 0x80:
            return (self.tmr >> (32 * ((off - OFF_TMR0) >> 4))) & 0xFFFFFFFF
        if OFF_IRR0 <= off < OFF_IRR0 + 0x80:
            return (self.irr >> (32 * ((off - OFF_IRR0) >> 4))) & 0xFFFFFFFF
        if off == OFF_ESR:
            return self.esr
        if off == OFF_ICR_LO:
            return self.icr_lo  # delivery status (bit 12) always reads idle
        if off == OFF_ICR_HI:
            return self.icr_hi
        if off in self.lvt:
            return self.lvt[off]
        if off == OFF_TIMER_ICR:
            return self.timer_icr
        if off == OFF_TIMER_CCR:
            return self.timer_ccr()
        if off == OFF_TIMER_DCR:
            return self.timer_dcr
        return 0  # APR, RRD: not modelled, read 0 as in bhyve

    def _write_reg(self, off: int, value: int) -> None:
        if off == OFF_TPR:
            self.set_tpr(value & 0xFF)
        elif off == OFF_EOI:
            self.eoi()
        elif off == OFF_SVR:
            self._write_svr(value & SVR_WRITABLE)
        elif off == OFF_ESR:
            # SDM 11.5.3: a write latches the errors seen since the last write.
            self.esr = self.esr_pending
            self.esr_pending = 0
        elif off in self.lvt:
            self._write_lvt(off, value)
        elif off == OFF_TIMER_ICR:
            self.timer_icr = value & 0xFFFFFFFF
            self._arm_timer(self._now() if self.timer_icr else None)
        elif off == OFF_TIMER_DCR:
            # As in bhyve, a new divider takes effect when the count next reloads.
            self.timer_dcr = value & DCR_WRITABLE

    def _write_lvt(self, off: int, value: int) -> None:
        value &= LVT_WRITABLE[off]
        if not self.sw_enabled:
            # SDM 11.4.7.2: while software-disabled the mask bits stay set.
            value |= LVT_MASKED
        self.lvt[off] = value

    def _write_svr(self, value: int) -> None:
        was = self.sw_enabled
        self.svr = value
        if was and not self.sw_enabled:
            # Software disable masks every LVT (SDM 11.4.7.2); bhyve also stops the timer.
            for off in self.lvt:
                self.lvt[off] |= LVT_MASKED
            self._timer_deadline = None
        elif not was and self.sw_enabled and self.lvt[OFF_LVT_TIMER] & LVT_TIMER_PERIODIC:
            # bhyve restarts a periodic timer when the APIC is software-enabled.
            self._arm_timer(self._now() if self.timer_icr else None)

    # -- priorities, IRR/ISR ------------------------------------------------------

    def set_tpr(self, tpr: int) -> None:
        if not 0 <= tpr <= 0xFF:
            raise VlapicError(f"TPR {tpr:#x} out of range")
        self.tpr = tpr
        self._update_ppr()

    @property
    def cr8(self) -> int:
        """CR8 is TPR[7:4] (SDM 11.8.6)."""
        return self.tpr >> 4

    def set_cr8(self, value: int) -> None:
        if not 0 <= value <= 0xF:
            raise ApicGP(f"mov cr8: reserved bits set in {value:#x}")
        self.set_tpr(value << 4)

    def _update_ppr(self) -> None:
        # SDM 11.8.3.1: PPR = TPR if TPR[7:4] >= ISRV[7:4], else ISRV[7:4] << 4.
        isrv = self.isr.bit_length() - 1 if self.isr else 0
        self.ppr = self.tpr if (self.tpr >> 4) >= (isrv >> 4) else isrv & 0xF0

    def set_intr(self, vector: int, level: bool = False) -> bool:
        """Post a fixed interrupt: set ``vector`` in IRR.

        Returns True if the bit went from clear to set, False if it was already
        pending (the interrupts coalesce) or the interrupt was refused: the APIC
        is disabled (bhyve drops it) or the vector is below 16 (SDM 11.5.3:
        "received illegal vector" in ESR).
        """
        _check_vector(vector)
        if not self.enabled:
            self.counters["intr_ignored_disabled"] += 1
            return False
        if vector < 16:
            self._set_error(ESR_RECEIVE_ILLEGAL_VECTOR)
            return False
        bit = 1 << vector
        # TMR records the trigger mode of the accepted interrupt (SDM 11.8.4).
        self.tmr = self.tmr | bit if level else self.tmr & ~bit
        if self.irr & bit:
            return False
        self.irr |= bit
        return True

    # -- ExtINT -----------------------------------------------------------------------

    def lint0_extint(self) -> bool:
        """Is LINT0 passing the 8259's INT to the CPU? (virtual-wire mode)"""
        if self.mode == "disabled":
            return True           # no APIC: LINT0 is the processor's INTR pin (SDM 11.4.3)
        lvt = self.lvt[OFF_LVT_LINT0]
        return not lvt & LVT_MASKED and (lvt & LVT_DM_MASK) >> 8 == DM_EXTINT

    def set_extint(self) -> None:
        """An ExtINT message (I/O APIC ExtINT pin, LVT with ExtINT delivery)."""
        self.extint_latched = True

    def _extint_vector(self) -> int | None:
        src = self.extint
        if src is None or not (self.extint_latched or (src.intr and self.lint0_extint())):
            return None
        vector = src.pending_vector()
        if vector is None:
            self.extint_latched = False   # the 8259 dropped INT before the CPU took it
        return vector

    def pending_intr(self) -> int | None:
        """The vector the APIC would present to the CPU now, or None.

        SDM 11.8.3: the highest vector in IRR is dispatched only if its priority
        class (bits 7:4) is above the PPR's.
        """
        ext = self._extint_vector()
        if ext is not None:
            return ext
        irr = self.irr
        if not irr or not self.enabled:       # (an empty IRR first: the common answer)
            return None
        vector = irr.bit_length() - 1
        return vector if (vector >> 4) > (self.ppr >> 4) else None

    def intr_accepted(self, vector: int) -> int:
        """The CPU takes the interrupt (INTA): move ``vector`` from IRR to ISR.

        Returns the vector the CPU must dispatch.  If ``vector`` is no longer the
        one :meth:`pending_intr` offers (TPR was raised in between, the APIC was
        disabled...) the APIC answers with the spurious vector from SVR and
        nothing changes in ISR (SDM 11.9).
        """
        _check_vector(vector)
        if self._extint_vector() is not None:
            # INTA goes to the 8259, which gives the vector; IRR and ISR are not involved.
            self.extint_latched = False
            return self.extint.intack()
        if self.pending_intr() != vector:
            self.counters["spurious"] += 1
            return self.svr & SVR_VECTOR
        self.irr &= ~(1 << vector)
        self.isr |= 1 << vector
        self._update_ppr()
        return vector

    def eoi(self) -> int | None:
        """End of interrupt: clear the highest-priority ISR bit; returns its vector."""
        if not self.isr:
            self.counters["eoi_gratuitous"] += 1
            return None
        vector = self.isr.bit_length() - 1
        self.isr &= ~(1 << vector)
        self._update_ppr()
        if self.tmr >> vector & 1 and self.on_eoi is not None:
            self.on_eoi(vector)   # level-triggered: EOI broadcast to the I/O APICs
        return vector

    def _set_error(self, bits: int) -> None:
        self.esr_pending |= bits
        if self._error_firing:
            return
        self._error_firing = True
        try:
            # The error LVT always delivers as fixed (bhyve vlapic_set_error).
            self._fire_lvt(self.lvt[OFF_LVT_ERROR], force_fixed=True)
        finally:
            self._error_firing = False

    # -- LVT pins -------------------------------------------------------------------

    def trigger_lvt(self, pin: int) -> bool:
        """Assert a local interrupt (``bhyvectl --assert-lapic-lvt=PIN``).

        ``pin`` uses bhyve's numbering: 0 LINT0, 1 LINT1, 2 timer, 3 error,
        4 perf, 5 thermal.  The LVT entry decides: masked -> nothing; fixed ->
        its vector into IRR; NMI -> ``on_nmi()``; ExtINT latches an ExtINT (when
        an 8259 is attached); SMI/INIT/reserved are ignored.  Timer and
        error entries always deliver as fixed.  While the APIC is globally
        disabled the processor behaves as one without an APIC (SDM 11.4.3), whose
        LINT1 pin is plain NMI and LINT0 plain INTR -- bhyve's vlapic_trigger_lvt
        does the same: LINT1 raises an NMI, LINT0 is ignored (no PIC).  Returns
        True if an interrupt or NMI resulted.
        """
        if pin not in LVT_PIN_OFFSETS:
            raise VlapicError(f"LVT pin {pin} unknown (0 LINT0, 1 LINT1, 2 timer, 3 error, "
                              f"4 perf, 5 thermal)")
        if self.mode == "disabled":
            if pin == LVT_PIN_LINT1:
                self._raise_nmi()
                return True
            self.counters["lvt_ignored"] += 1
            return False
        off = LVT_PIN_OFFSETS[pin]
        return self._fire_lvt(self.lvt[off], force_fixed=off in (OFF_LVT_TIMER, OFF_LVT_ERROR))

    def _fire_lvt(self, lvt: int, force_fixed: bool = False) -> bool:
        if lvt & LVT_MASKED:
            return False
        dm = DM_FIXED if force_fixed else (lvt & LVT_DM_MASK) >> 8
        if dm == DM_FIXED:
            vector = lvt & LVT_VECTOR
            if vector < 16:
                self._set_error(ESR_SEND_ILLEGAL_VECTOR)
                return False
            self.counters["lvt_fixed"] += 1
            return self.set_intr(vector)
        if dm == DM_NMI:
            self._raise_nmi()
            return True
        if dm == DM_EXTINT and self.extint is not None:
            self.set_extint()
            return True
        self.counters["lvt_ignored"] += 1
        return False

    def _raise_nmi(self) -> None:
        self.counters["lvt_nmi"] += 1
        if self.on_nmi is not None:
            self.on_nmi()

    # -- timer --------------------------------------------------------------------

    @property
    def timer_divisor(self) -> int:
        return dcr_divisor(self.timer_dcr)

    @property
    def timer_periodic(self) -> bool:
        return bool(self.lvt[OFF_LVT_TIMER] & LVT_TIMER_PERIODIC)

    def _arm_timer(self, start: int | None) -> None:
        """Load the count at virtual time ``start`` (None stops the timer)."""
        if start is None or self.timer_icr == 0:
            self._timer_deadline = None
            return
        self._timer_tick_ns = BUS_TICK_NS * self.timer_divisor
        self._timer_period_ns = self.timer_icr * self._timer_tick_ns
        self._timer_deadline = start + self._timer_period_ns

    def next_deadline(self) -> int | None:
        """Virtual ns at which the count next reaches zero, or None if stopped.

        The timer counts even when its LVT is masked (the mask bit inhibits the
        interrupt, not the count, SDM 11.5.1), so a masked timer still has a
        deadline; ``fire`` then sets nothing.
        """
        return self._timer_deadline

    def timer_ccr(self) -> int:
        """Current count: initial count minus the bus ticks elapsed in this period."""
        if self._timer_deadline is None:
            return 0
        remaining = self._timer_deadline - self._now()
        if remaining <= 0:
            return 0
        ticks = -(-remaining // self._timer_tick_ns)  # a partial tick has not counted yet
        return min(ticks, self.timer_icr)

    def fire(self, now: int) -> bool:
        """Expire the timer if ``now`` has reached the deadline.

        Sets the timer vector in IRR unless the LVT is masked; if the vector is
        already pending the expiry coalesces into it (IRR is one bit per vector).
        Periodic mode reloads from the deadline, keeping the period exact; if
        the caller is more than a period late the time base restarts at ``now``
        (bhyve's vlapic_callout_handler does the same).  Returns True if the
        vector was newly set in IRR.
        """
        deadline = self._timer_deadline
        if deadline is None or now < deadline:
            return False
        lvt = self.lvt[OFF_LVT_TIMER]
        delivered = False
        if lvt & LVT_MASKED:
            self.counters["timer_masked"] += 1
        elif self.irr & (1 << (lvt & LVT_VECTOR)):
            self.counters["timer_coalesced"] += 1
        else:
            delivered = self._fire_lvt(lvt, force_fixed=True)
            if delivered:
                self.counters["timer_fired"] += 1
        if lvt & LVT_TIMER_PERIODIC:
            late = now - deadline
            self._arm_timer(deadline if late < self._timer_period_ns else now)
        else:
            self._timer_deadline = None
        return delivered

    # -- IPIs ---------------------------------------------------------------------------

    def _peer_list(self) -> list[Vlapic]:
        peers = list(self._peers()) if self._peers is not None else [self]
        return sorted(peers, key=lambda p: p.vcpu_id)

    def _deliver_fixed_self(self, vector: int) -> None:
        if vector < 16:
            self._set_error(ESR_SEND_ILLEGAL_VECTOR)
            return
        self.counters["ipis_sent"] += 1
        self.set_intr(vector)

    def _send_ipi(self) -> None:
        """Decode the ICR just written and hand the IPI to ``on_ipi`` (SDM 11.6.1)."""
        icr = self.icr_lo
        vector = icr & 0xFF
        dm = (icr >> ICR_DM_SHIFT) & 7
        shorthand = (icr >> ICR_SHORTHAND_SHIFT) & 3
        if dm in (DM_FIXED, DM_LOWEST) and vector < 16:
            self._set_error(ESR_SEND_ILLEGAL_VECTOR)
            return
        if dm == DM_INIT and not icr & ICR_LEVEL_ASSERT and icr & ICR_TRIGGER_LEVEL:
            return  # INIT level de-assert: only resyncs arbitration IDs
        if dm not in (DM_FIXED, DM_LOWEST, DM_NMI, DM_INIT, DM_STARTUP):
            return  # SMI and reserved modes: nothing to deliver here
        if shorthand == SHORTHAND_SELF and dm in (DM_INIT, DM_STARTUP):
            # SDM table 11-3 allows "self" with fixed delivery only; bhyve also
            # sends an NMI to self, and so does this model; INIT/STARTUP to self
            # are dropped.
            return
        dest = self.icr_hi if self.x2apic else self.icr_hi >> 24
        dests = self._destinations(shorthand, dest, bool(icr & ICR_DESTMODE_LOGICAL))
        if dm == DM_LOWEST and dests:
            # Lowest priority arbitration is not modelled: the lowest-numbered
            # target gets it as a fixed interrupt (bhyve picks the first match too).
            dests = dests[:1]
        if not dests:
            return
        mode = {DM_FIXED: "fixed", DM_LOWEST: "fixed", DM_NMI: "nmi", DM_INIT: "init",
                DM_STARTUP: "startup"}[dm]
        self.counters["ipis_sent"] += 1
        if self.on_ipi is not None:
            self.on_ipi(self.vcpu_id, dests, mode, vector)

    def _destinations(self, shorthand: int, dest: int, logical: bool) -> list[int]:
        peers = self._peer_list()
        ids = [p.vcpu_id for p in peers]
        if shorthand == SHORTHAND_SELF:
            return [self.vcpu_id]
        if shorthand == SHORTHAND_ALL_INCL_SELF:
            return ids
        if shorthand == SHORTHAND_ALL_EXCL_SELF:
            return [i for i in ids if i != self.vcpu_id]
        if dest == (0xFFFFFFFF if self.x2apic else 0xFF):
            return ids  # broadcast, in physical and logical mode
        if not logical:
            return [i for i in ids if i == dest]
        return [p.vcpu_id for p in peers if p._logical_match(dest)]

    def matches(self, dest: int, logical: bool) -> bool:
        """Does an interrupt message's destination select this APIC? (SDM 11.6.2)"""
        if not logical:
            return dest == (0xFF if not self.x2apic else 0xFFFFFFFF) or dest == (
                self.vcpu_id if self.x2apic else self.vcpu_id & 0xFF)
        return self._logical_match(dest)

    def _logical_match(self, mda: int) -> bool:
        """Does a logical destination address select this APIC? (SDM 11.6.2.2)."""
        if self.x2apic:
            # x2APIC logical mode is always cluster: MDA[31:16] cluster, [15:0] bitmap.
            return (mda >> 16) == (self.ldr >> 16) and bool(mda & self.ldr & 0xFFFF)
        model = self.dfr >> 28
        if model == DFR_MODEL_FLAT:
            return bool((self.ldr >> 24) & mda & 0xFF)
        if model == DFR_MODEL_CLUSTER:
            return ((mda >> 4) & 0xF) == (self.ldr >> 28) and bool((self.ldr >> 24) & mda & 0xF)
        return False

    # -- checkpoints and display --------------------------------------------------

    _STATE_INTS = (
        "apic_base", "tpr", "ppr", "ldr", "dfr", "svr", "irr", "isr", "tmr", "esr",
        "esr_pending", "icr_lo", "icr_hi", "timer_icr", "timer_dcr", "timer_period_ns",
        "timer_tick_ns",
    )

    def state(self) -> dict[str, Any]:
        """Every register and the timer's schedule, as JSON-safe plain values."""
        st: dict[str, Any] = {
            "vcpu_id": self.vcpu_id,
            "apic_base": self.apic_base, "tpr": self.tpr, "ppr": self.ppr, "ldr": self.ldr,
            "dfr": self.dfr, "svr": self.svr, "irr": self.irr, "isr": self.isr,
            "tmr": self.tmr, "esr": self.esr, "esr_pending": self.esr_pending,
            "icr_lo": self.icr_lo, "icr_hi": self.icr_hi,
            "lvt": {f"{off:#x}": val for off, val in self.lvt.items()},
            "timer_icr": self.timer_icr, "timer_dcr": self.timer_dcr,
            "timer_deadline": self._timer_deadline,
            "timer_period_ns": self._timer_period_ns, "timer_tick_ns": self._timer_tick_ns,
            "counters": dict(self.counters),
            "extint_latched": self.extint_latched,
        }
        return st

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state` dict; a malformed dict raises VlapicError and changes nothing."""
        if not isinstance(state, dict):
            raise VlapicError("vlapic state must be a dict")
        if state.get("vcpu_id") != self.vcpu_id:
            raise VlapicError(f"vlapic state is for vcpu {state.get('vcpu_id')}, "
                              f"not {self.vcpu_id}")
        for key in self._STATE_INTS:
            _require_int(state, key)
        deadline = state.get("timer_deadline", "missing")
        if deadline is not None and not _is_int(deadline):
            raise VlapicError("vlapic state 'timer_deadline' must be an int or None")
        lvt_in = state.get("lvt")
        expected = {f"{off:#x}" for off in LVT_OFFSETS}
        if not isinstance(lvt_in, dict) or set(lvt_in) != expected or not all(
            _is_int(v) for v in lvt_in.values()
        ):
            raise VlapicError("vlapic state 'lvt' must map each LVT offset to an int")
        counters = state.get("counters")
        if not isinstance(counters, dict) or set(counters) != set(COUNTER_NAMES) or not all(
            _is_int(v) for v in counters.values()
        ):
            raise VlapicError("vlapic state 'counters' must hold every vlapic counter")
        if state["timer_tick_ns"] <= 0:
            raise VlapicError("vlapic state 'timer_tick_ns' must be positive")
        # Validated: now apply.
        for key in ("apic_base", "tpr", "ppr", "ldr", "dfr", "svr", "irr", "isr", "tmr",
                    "esr", "esr_pending", "icr_lo", "icr_hi", "timer_icr", "timer_dcr"):
            setattr(self, key, state[key])
        self.lvt = {off: lvt_in[f"{off:#x}"] for off in LVT_OFFSETS}
        self._timer_deadline = deadline
        self._timer_period_ns = state["timer_period_ns"]
        self._timer_tick_ns = state["timer_tick_ns"]
        self.counters = dict(counters)
        self.extint_latched = bool(state.get("extint_latched", False))
        self._error_firing = False

    def describe(self) -> str:
        """A few lines for the debugger and the TUI."""
        sw = "software-enabled" if self.sw_enabled else "software-disabled"
        mode = {"disabled": "globally disabled", "xapic": "xAPIC", "x2apic": "x2APIC"}[self.mode]
        lines = [
            f"lapic{self.vcpu_id}: {mode}, {sw} (APIC_BASE {self.apic_base:#x}, "
            f"SVR {self.svr:#x}, ID {self.apic_id:#x})",
            f"  TPR {self.tpr:#04x}  PPR {self.ppr:#04x}  ESR {self.esr:#x}",
            f"  IRR {_vector_list(self.irr)}",
            f"  ISR {_vector_list(self.isr)}",
            f"  LINT0 {decode_lvt(self.lvt[OFF_LVT_LINT0])} ({self.lvt[OFF_LVT_LINT0]:#x})",
            f"  LINT1 {decode_lvt(self.lvt[OFF_LVT_LINT1])} ({self.lvt[OFF_LVT_LINT1]:#x})",
        ]
        timer = (
            f"  timer {decode_lvt(self.lvt[OFF_LVT_TIMER], timer=True)}, "
            f"initial {self.timer_icr}, current {self.timer_ccr()}, divide {self.timer_divisor}"
        )
        deadline = self._timer_deadline
        timer += ", stopped" if deadline is None else f", next expiry at {deadline} ns"
        lines.append(timer)
        return "\n".join(lines)


# -- register access tables --------------------------------------------------------

def _table(pairs: list[tuple[int, str]]) -> dict[int, str]:
    return dict(pairs)


_COMMON: list[tuple[int, str]] = (
    [(OFF_VER, "r"), (OFF_TPR, "rw"), (OFF_PPR, "r"), (OFF_EOI, "w"), (OFF_SVR, "rw"),
     (OFF_ESR, "rw"), (OFF_ICR_LO, "rw"), (OFF_TIMER_ICR, "rw"), (OFF_TIMER_CCR, "r"),
     (OFF_TIMER_DCR, "rw")]
    + [(OFF_ISR0 + 0x10 * i, "r") for i in range(8)]
    + [(OFF_TMR0 + 0x10 * i, "r") for i in range(8)]
    + [(OFF_IRR0 + 0x10 * i, "r") for i in range(8)]
    + [(off, "rw") for off in LVT_OFFSETS]
)
# SDM table 11-6: in x2APIC mode ID and LDR are read-only, DFR, APR, RRD and
# ICR high do not exist (0x80E, 0x809, 0x80C, 0x831 raise #GP), SELF IPI is new.
_X2APIC_ACCESS = _table(_COMMON + [(OFF_ID, "r"), (OFF_LDR, "r"), (OFF_SELF_IPI, "w")])
_XAPIC_ACCESS = _table(
    _COMMON
    + [(OFF_ID, "rw"), (OFF_LDR, "rw"), (OFF_DFR, "rw"), (OFF_APR, "r"), (OFF_RRD, "r"),
       (OFF_ICR_HI, "rw")]
)


def _x2apic_allowed_bits(off: int) -> int:
    if off == OFF_ICR_LO:
        return ((1 << 64) - 1) & ~ICR_RESERVED_X2APIC
    if off in (OFF_EOI, OFF_ESR):
        return 0  # SDM table 11-6: a non-zero write raises #GP(0)
    if off == OFF_TPR:
        return 0xFF
    if off == OFF_SVR:
        return SVR_WRITABLE
    if off in LVT_WRITABLE:
        return LVT_WRITABLE[off] | LVT_READONLY
    if off == OFF_TIMER_ICR:
        return 0xFFFFFFFF
    if off == OFF_TIMER_DCR:
        return DCR_WRITABLE
    if off == OFF_SELF_IPI:
        return 0xFF
    return 0xFFFFFFFF


def _check_vector(vector: int) -> None:
    if not _is_int(vector) or not 0 <= vector <= 255:
        raise VlapicError(f"interrupt vector {vector!r} out of range 0..255")


def _check_mmio(offset: int, size: int) -> None:
    if size not in (1, 2, 4, 8):
        raise VlapicError(f"bad APIC MMIO access size {size}")
    if offset < 0 or offset + size > APIC_PAGE_SIZE:
        raise VlapicError(f"APIC MMIO offset {offset:#x} outside the 4 KiB page")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_int(state: dict[str, Any], key: str) -> None:
    if key not in state or not _is_int(state[key]) or state[key] < 0:
        raise VlapicError(f"vlapic state {key!r} must be a non-negative int")


def _vector_list(mask: int) -> str:
    return " ".join(f"{v:#04x}" for v in _bits(mask)) if mask else "-"
