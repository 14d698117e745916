"""The virtual local APIC: register maps, LVT pins, priorities, timer and IPIs.

Rules cite the Intel SDM vol 3A ch. 11 (ch. 10 in older editions).
"""

from __future__ import annotations

import json

import pytest

from nitdbg.vmm.vlapic import (
    APICBASE_BSP,
    APICBASE_EN,
    APICBASE_EXTD,
    DEFAULT_APIC_BASE,
    MSR_APIC_BASE,
    ApicGP,
    Vlapic,
    VlapicError,
    dcr_divisor,
)

X2_ID, X2_VER, X2_TPR, X2_PPR = 0x802, 0x803, 0x808, 0x80A
X2_EOI, X2_LDR, X2_SVR = 0x80B, 0x80D, 0x80F
X2_ISR0, X2_TMR0, X2_IRR0, X2_ESR = 0x810, 0x818, 0x820, 0x828
X2_ICR, X2_LVT_TIMER, X2_LVT_THERMAL, X2_LVT_PERF = 0x830, 0x832, 0x833, 0x834
X2_LVT_LINT0, X2_LVT_LINT1, X2_LVT_ERROR = 0x835, 0x836, 0x837
X2_TIMER_ICR, X2_TIMER_CCR, X2_TIMER_DCR, X2_SELF_IPI = 0x838, 0x839, 0x83E, 0x83F

LVT_NMI_UNMASKED = 0x400
MASKED = 0x10000
PERIODIC = 0x20000


class Clock:
    def __init__(self) -> None:
        self.ns = 0

    def __call__(self) -> int:
        return self.ns


class Vm:
    """A few vCPUs whose vLAPICs deliver IPIs to each other as the vmm would."""

    def __init__(self, ncpu: int = 1, mode: str = "x2apic") -> None:
        self.clock = Clock()
        self.nmis: list[int] = []
        self.ipis: list[tuple[int, list[int], str, int]] = []
        self.lapics = [
            Vlapic(i, self.clock, on_nmi=lambda i=i: self.nmis.append(i), on_ipi=self._ipi,
                   peers=lambda: self.lapics)
            for i in range(ncpu)
        ]
        for lapic in self.lapics:
            if mode == "x2apic":
                lapic.wrmsr(MSR_APIC_BASE, lapic.rdmsr(MSR_APIC_BASE) | APICBASE_EXTD)
                lapic.wrmsr(X2_SVR, 0x1FF)
            else:
                lapic.mmio_write(0xF0, 4, 0x1FF)

    def _ipi(self, src: int, dests: list[int], mode: str, vector: int) -> None:
        self.ipis.append((src, dests, mode, vector))
        for d in dests:
            if mode == "fixed":
                self.lapics[d].set_intr(vector)
            elif mode == "nmi":
                self.nmis.append(d)


@pytest.fixture
def vm() -> Vm:
    return Vm(1)


@pytest.fixture
def lapic(vm: Vm) -> Vlapic:
    return vm.lapics[0]


# -- IA32_APIC_BASE and mode transitions ------------------------------------------


def test_apic_base_reset_value_has_en_and_bsp_on_vcpu0_only():
    clock = Clock()
    assert Vlapic(0, clock).rdmsr(MSR_APIC_BASE) == DEFAULT_APIC_BASE | APICBASE_EN | APICBASE_BSP
    assert Vlapic(1, clock).rdmsr(MSR_APIC_BASE) == DEFAULT_APIC_BASE | APICBASE_EN


def test_sdm_11_12_5_en0_extd1_is_an_invalid_state_and_raises_gp():
    lapic = Vlapic(0, Clock())
    with pytest.raises(ApicGP, match="invalid state"):
        lapic.wrmsr(MSR_APIC_BASE, DEFAULT_APIC_BASE | APICBASE_EXTD)
    assert lapic.mode == "xapic"


def test_sdm_11_12_5_x2apic_to_xapic_directly_raises_gp(lapic: Vlapic):
    with pytest.raises(ApicGP, match="x2APIC to xAPIC"):
        lapic.wrmsr(MSR_APIC_BASE, DEFAULT_APIC_BASE | APICBASE_EN | APICBASE_BSP)
    assert lapic.mode == "x2apic"


def test_sdm_11_12_5_disabled_to_x2apic_directly_raises_gp():
    lapic = Vlapic(1, Clock())
    lapic.wrmsr(MSR_APIC_BASE, DEFAULT_APIC_BASE)
    assert lapic.mode == "disabled"
    with pytest.raises(ApicGP, match="disabled to x2APIC"):
        lapic.wrmsr(MSR_APIC_BASE, DEFAULT_APIC_BASE | APICBASE_EN | APICBASE_EXTD)
    lapic.wrmsr(MSR_APIC_BASE, DEFAULT_APIC_BASE | APICBASE_EN)
    lapic.wrmsr(MSR_APIC_BASE, DEFAULT_APIC_BASE | APICBASE_EN | APICBASE_EXTD)
    assert lapic.mode == "x2apic"


def test_sdm_11_12_5_passing_through_disabled_resets_the_registers(lapic: Vlapic):
    lapic.wrmsr(X2_TPR, 0x30)
    lapic.set_intr(0x40)
    lapic.wrmsr(MSR_APIC_BASE, DEFAULT_APIC_BASE | APICBASE_BSP)
    lapic.wrmsr(MSR_APIC_BASE, DEFAULT_APIC_BASE | APICBASE_BSP | APICBASE_EN)
    assert lapic.mmio_read(0x80, 4) == 0  # TPR
    assert lapic.mmio_read(0xF0, 4) == 0xFF  # SVR reset value
    assert lapic.mmio_read(0xE0, 4) == 0xFFFFFFFF  # DFR reset value
    assert lapic.irr == 0
    assert lapic.mmio_read(0x360, 4) == MASKED


def test_apic_base_reserved_bits_and_relocation_raise_gp(lapic: Vlapic):
    base = lapic.rdmsr(MSR_APIC_BASE)
    with pytest.raises(ApicGP, match="reserved"):
        lapic.wrmsr(MSR_APIC_BASE, base | 1)
    with pytest.raises(ApicGP, match="relocating"):
        lapic.wrmsr(MSR_APIC_BASE, (base & 0xFFF) | 0xFED00000)
    assert lapic.rdmsr(MSR_APIC_BASE) == base


def test_x2apic_can_be_refused_when_the_cpu_does_not_offer_it():
    lapic = Vlapic(0, Clock(), x2apic_supported=False)
    with pytest.raises(ApicGP, match="not supported"):
        lapic.wrmsr(MSR_APIC_BASE, lapic.rdmsr(MSR_APIC_BASE) | APICBASE_EXTD)


# -- x2APIC MSR map (SDM table 11-6) --------------------------------------------------


def test_x2apic_id_is_the_vcpu_id_and_ldr_is_derived():
    vm = Vm(3)
    assert vm.lapics[2].rdmsr(X2_ID) == 2
    # SDM 11.12.10.2: LDR = (ID[19:4] << 16) | 1 << ID[3:0]
    assert vm.lapics[2].rdmsr(X2_LDR) == 1 << 2


def test_x2apic_version_register_reports_max_lvt_5(lapic: Vlapic):
    assert lapic.rdmsr(X2_VER) == 0x50010
    assert (lapic.rdmsr(X2_VER) >> 16) & 0xFF == 5


@pytest.mark.parametrize("msr", [X2_EOI, X2_SELF_IPI])
def test_sdm_table_11_6_rdmsr_of_a_write_only_register_raises_gp(lapic: Vlapic, msr: int):
    with pytest.raises(ApicGP, match="write-only"):
        lapic.rdmsr(msr)


@pytest.mark.parametrize("msr", [X2_ID, X2_VER, X2_PPR, X2_LDR, X2_ISR0, X2_ISR0 + 7, X2_TMR0,
                                 X2_IRR0 + 3, X2_TIMER_CCR])
def test_sdm_table_11_6_wrmsr_to_a_read_only_register_raises_gp(lapic: Vlapic, msr: int):
    with pytest.raises(ApicGP, match="read-only"):
        lapic.wrmsr(msr, 0)


@pytest.mark.parametrize("msr", [0x800, 0x809, 0x80C, 0x80E, 0x82F, 0x831, 0x83A, 0x8FF])
def test_sdm_11_12_1_2_msrs_not_in_the_table_raise_gp(lapic: Vlapic, msr: int):
    # 0x80E (DFR) and 0x831 (ICR high) exist only in xAPIC mode; 0x82F is CMCI,
    # absent with max LVT 5.
    with pytest.raises(ApicGP, match="no such"):
        lapic.rdmsr(msr)
    with pytest.raises(ApicGP, match="no such"):
        lapic.wrmsr(msr, 0)


@pytest.mark.parametrize("msr,value", [
    (X2_TPR, 0x100),            # TPR bits 31:8 reserved
    (X2_EOI, 1),                # a non-zero EOI write is #GP(0)
    (X2_ESR, 1),                # a non-zero ESR write is #GP(0)
    (X2_SVR, 0x1000),           # EOI-broadcast suppression not offered
    (X2_LVT_TIMER, 0x40000),    # TSC-deadline mode not offered
    (X2_LVT_ERROR, 0x400),      # no delivery mode field in the error LVT
    (X2_TIMER_DCR, 0x4),        # DCR bit 2 reserved
    (X2_TPR, 1 << 32),          # bits 63:32 reserved in every MSR but the ICR
    (X2_ICR, 1 << 16),          # ICR bits 17:16 reserved
    (X2_SELF_IPI, 0x100),       # SELF IPI bits 31:8 reserved
])
def test_sdm_11_12_1_3_reserved_bits_in_an_x2apic_write_raise_gp(lapic, msr, value):
    before = lapic.state()
    with pytest.raises(ApicGP, match="reserved"):
        lapic.wrmsr(msr, value)
    assert lapic.state() == before


def test_sdm_11_12_2_x2apic_msrs_raise_gp_outside_x2apic_mode():
    lapic = Vlapic(0, Clock())
    with pytest.raises(ApicGP, match="not in x2APIC mode"):
        lapic.rdmsr(X2_ID)
    with pytest.raises(ApicGP, match="not in x2APIC mode"):
        lapic.wrmsr(X2_TPR, 0)


def test_x2apic_tpr_svr_lvt_and_timer_registers_read_back(lapic: Vlapic):
    lapic.wrmsr(X2_TPR, 0x20)
    lapic.wrmsr(X2_LVT_LINT1, LVT_NMI_UNMASKED)
    lapic.wrmsr(X2_LVT_TIMER, PERIODIC | 0xEF)
    lapic.wrmsr(X2_TIMER_DCR, 0x3)
    lapic.wrmsr(X2_TIMER_ICR, 1000)
    assert lapic.rdmsr(X2_TPR) == 0x20
    assert lapic.rdmsr(X2_PPR) == 0x20
    assert lapic.rdmsr(X2_SVR) == 0x1FF
    assert lapic.rdmsr(X2_LVT_LINT1) == LVT_NMI_UNMASKED
    assert lapic.rdmsr(X2_LVT_TIMER) == PERIODIC | 0xEF
    assert lapic.rdmsr(X2_TIMER_DCR) == 0x3
    assert lapic.rdmsr(X2_TIMER_ICR) == 1000
    assert lapic.rdmsr(X2_TIMER_CCR) == 1000


def test_lvt_read_only_delivery_status_bit_is_ignored_not_faulted(lapic: Vlapic):
    lapic.wrmsr(X2_LVT_LINT1, LVT_NMI_UNMASKED | 0x1000)
    assert lapic.rdmsr(X2_LVT_LINT1) == LVT_NMI_UNMASKED


def test_lvt_reset_value_is_masked(lapic: Vlapic):
    for msr in (X2_LVT_TIMER, X2_LVT_THERMAL, X2_LVT_PERF, X2_LVT_LINT0, X2_LVT_LINT1,
                X2_LVT_ERROR):
        assert lapic.rdmsr(msr) == MASKED


def test_x2apic_icr_is_one_64_bit_msr(lapic: Vlapic):
    lapic.wrmsr(X2_ICR, (7 << 32) | 0x4400)  # NMI, physical, to APIC ID 7 (nobody)
    assert lapic.rdmsr(X2_ICR) == (7 << 32) | 0x4400


def test_irr_and_isr_read_as_eight_32_bit_registers(lapic: Vlapic):
    for v in (0x21, 0x45, 0xFE):
        lapic.set_intr(v)
    assert lapic.rdmsr(X2_IRR0 + 1) == 1 << 1
    assert lapic.rdmsr(X2_IRR0 + 2) == 1 << 5
    assert lapic.rdmsr(X2_IRR0 + 7) == 1 << 30
    assert lapic.intr_accepted(0xFE) == 0xFE
    assert lapic.rdmsr(X2_ISR0 + 7) == 1 << 30
    assert lapic.rdmsr(X2_IRR0 + 7) == 0
    assert lapic.rdmsr(X2_TMR0 + 7) == 0


# -- xAPIC MMIO map (SDM table 11-1) ----------------------------------------------------


def test_xapic_id_is_in_bits_31_24_and_read_only():
    vm = Vm(2, mode="xapic")
    lapic = vm.lapics[1]
    assert lapic.mmio_read(0x20, 4) == 1 << 24
    lapic.mmio_write(0x20, 4, 5 << 24)
    assert lapic.mmio_read(0x20, 4) == 1 << 24


def test_xapic_register_offsets_read_back():
    lapic = Vm(1, mode="xapic").lapics[0]
    assert lapic.mmio_read(0x30, 4) == 0x50010
    lapic.mmio_write(0x80, 4, 0x30)
    assert lapic.mmio_read(0x80, 4) == 0x30
    assert lapic.mmio_read(0xA0, 4) == 0x30  # PPR
    lapic.mmio_write(0xD0, 4, 0x01000000)
    assert lapic.mmio_read(0xD0, 4) == 0x01000000
    lapic.mmio_write(0xE0, 4, 0x0)
    assert lapic.mmio_read(0xE0, 4) == 0x0FFFFFFF  # cluster model, bits 27:0 read as ones
    lapic.mmio_write(0x360, 4, LVT_NMI_UNMASKED)
    assert lapic.mmio_read(0x360, 4) == LVT_NMI_UNMASKED
    lapic.mmio_write(0x3E0, 4, 0xB)
    assert lapic.mmio_read(0x3E0, 4) == 0xB
    lapic.mmio_write(0x380, 4, 77)
    assert lapic.mmio_read(0x380, 4) == 77
    assert lapic.mmio_read(0x390, 4) == 77


def test_xapic_icr_low_and_high_at_0x300_and_0x310():
    vm = Vm(2, mode="xapic")
    lapic = vm.lapics[0]
    lapic.mmio_write(0x310, 4, 1 << 24)
    lapic.mmio_write(0x300, 4, 0x0040)  # fixed vector 0x40 to APIC ID 1
    assert vm.ipis == [(0, [1], "fixed", 0x40)]
    assert lapic.mmio_read(0x310, 4) == 1 << 24
    assert lapic.mmio_read(0x300, 4) & 0x1000 == 0  # delivery status: idle
    assert vm.lapics[1].irr == 1 << 0x40


def test_xapic_bytes_4_to_15_of_a_register_slot_read_zero_and_partial_reads_work():
    lapic = Vm(1, mode="xapic").lapics[0]
    assert lapic.mmio_read(0x34, 4) == 0
    assert lapic.mmio_read(0x30, 8) == 0x50010
    assert lapic.mmio_read(0x32, 1) == 0x05


def test_xapic_write_not_aligned_to_a_register_is_dropped():
    lapic = Vm(1, mode="xapic").lapics[0]
    lapic.mmio_write(0x84, 4, 0x50)
    lapic.mmio_write(0x80, 1, 0x50)
    assert lapic.mmio_read(0x80, 4) == 0


def test_xapic_access_to_an_unimplemented_offset_sets_esr_illegal_register():
    lapic = Vm(1, mode="xapic").lapics[0]
    lapic.mmio_write(0x2F0, 4, 0)  # CMCI: absent with max LVT 5
    lapic.mmio_write(0x280, 4, 0)  # latch ESR
    assert lapic.mmio_read(0x280, 4) == 0x80


def test_mmio_is_inert_in_x2apic_mode(lapic: Vlapic):
    assert not lapic.mmio_enabled
    lapic.mmio_write(0x80, 4, 0x40)
    assert lapic.mmio_read(0x80, 4) == 0
    assert lapic.rdmsr(X2_TPR) == 0


def test_mmio_bad_offset_is_a_host_error():
    lapic = Vlapic(0, Clock())
    with pytest.raises(VlapicError):
        lapic.mmio_read(0xFFE, 4)


# -- SVR software enable ------------------------------------------------------------------


def test_sdm_11_4_7_2_software_disable_masks_every_lvt_and_they_stay_masked(lapic: Vlapic):
    lapic.wrmsr(X2_LVT_LINT1, LVT_NMI_UNMASKED)
    lapic.wrmsr(X2_SVR, 0xFF)
    assert lapic.rdmsr(X2_LVT_LINT1) == LVT_NMI_UNMASKED | MASKED
    lapic.wrmsr(X2_LVT_LINT1, LVT_NMI_UNMASKED)
    assert lapic.rdmsr(X2_LVT_LINT1) & MASKED
    assert lapic.set_intr(0x40) is False  # a software-disabled APIC takes no interrupts
    assert lapic.pending_intr() is None


# -- LVT pins (bhyvectl --assert-lapic-lvt) -------------------------------------------------


def test_lint1_programmed_for_nmi_calls_on_nmi(vm: Vm, lapic: Vlapic):
    lapic.wrmsr(X2_LVT_LINT1, LVT_NMI_UNMASKED)
    assert lapic.trigger_lvt(1) is True
    assert vm.nmis == [0]
    assert lapic.irr == 0


def test_masked_lint1_delivers_nothing(vm: Vm, lapic: Vlapic):
    lapic.wrmsr(X2_LVT_LINT1, LVT_NMI_UNMASKED | MASKED)
    assert lapic.trigger_lvt(1) is False
    assert vm.nmis == [] and lapic.irr == 0


def test_lint1_at_reset_is_masked_so_the_guest_must_program_it(vm: Vm, lapic: Vlapic):
    assert lapic.trigger_lvt(1) is False
    assert vm.nmis == []


def test_lint1_with_fixed_delivery_sets_its_vector_in_irr(vm: Vm, lapic: Vlapic):
    lapic.wrmsr(X2_LVT_LINT1, 0x50)
    assert lapic.trigger_lvt(1) is True
    assert lapic.irr == 1 << 0x50
    assert vm.nmis == []


def test_lint0_extint_is_ignored(vm: Vm, lapic: Vlapic):
    lapic.wrmsr(X2_LVT_LINT0, 0x700)
    assert lapic.trigger_lvt(0) is False
    assert vm.nmis == [] and lapic.irr == 0


def test_lint1_acts_as_the_nmi_pin_while_the_apic_is_globally_disabled(vm: Vm, lapic: Vlapic):
    lapic.wrmsr(MSR_APIC_BASE, DEFAULT_APIC_BASE | APICBASE_BSP)  # EN=0
    assert lapic.trigger_lvt(1) is True
    assert vm.nmis == [0]
    assert lapic.trigger_lvt(0) is False


def test_unknown_lvt_pin_is_a_host_error(lapic: Vlapic):
    with pytest.raises(VlapicError, match="pin 9"):
        lapic.trigger_lvt(9)


def test_fixed_lvt_with_vector_below_16_sets_send_illegal_vector(lapic: Vlapic):
    lapic.wrmsr(X2_LVT_LINT0, 0x05)
    assert lapic.trigger_lvt(0) is False
    lapic.wrmsr(X2_ESR, 0)
    assert lapic.rdmsr(X2_ESR) == 0x20


def test_error_lvt_fires_its_vector_on_an_apic_error(lapic: Vlapic):
    lapic.wrmsr(X2_LVT_ERROR, 0xFE)
    lapic.set_intr(3)  # illegal vector received
    assert lapic.irr == 1 << 0xFE


# -- priorities: TPR, PPR, ISR, EOI -----------------------------------------------------------


def test_pending_intr_is_the_highest_irr_vector(lapic: Vlapic):
    assert lapic.pending_intr() is None
    lapic.set_intr(0x31)
    lapic.set_intr(0x62)
    lapic.set_intr(0x45)
    assert lapic.pending_intr() == 0x62


def test_sdm_11_8_3_tpr_blocks_vectors_whose_class_is_not_above_it(lapic: Vlapic):
    lapic.set_intr(0x45)
    lapic.wrmsr(X2_TPR, 0x40)
    assert lapic.pending_intr() is None  # class 4 is not above class 4
    lapic.wrmsr(X2_TPR, 0x3F)
    assert lapic.pending_intr() == 0x45


def test_sdm_11_8_3_1_ppr_is_the_isr_class_when_above_tpr(lapic: Vlapic):
    lapic.wrmsr(X2_TPR, 0x21)
    lapic.set_intr(0x55)
    lapic.intr_accepted(0x55)
    assert lapic.rdmsr(X2_PPR) == 0x50
    lapic.wrmsr(X2_TPR, 0x61)
    assert lapic.rdmsr(X2_PPR) == 0x61


def test_sdm_11_8_3_1_ppr_keeps_the_whole_tpr_when_its_class_equals_the_isr_class(
    lapic: Vlapic,
):
    lapic.set_intr(0x55)
    lapic.intr_accepted(0x55)
    lapic.wrmsr(X2_TPR, 0x5A)
    assert lapic.rdmsr(X2_PPR) == 0x5A
    lapic.wrmsr(X2_TPR, 0x4A)
    assert lapic.rdmsr(X2_PPR) == 0x50


def test_in_service_interrupt_blocks_same_class_but_not_higher_class(lapic: Vlapic):
    lapic.set_intr(0x50)
    assert lapic.intr_accepted(0x50) == 0x50
    lapic.set_intr(0x5F)
    assert lapic.pending_intr() is None
    lapic.set_intr(0x60)
    assert lapic.pending_intr() == 0x60


def test_eoi_clears_the_highest_in_service_vector_first(lapic: Vlapic):
    lapic.set_intr(0x30)
    lapic.intr_accepted(0x30)
    lapic.set_intr(0x80)
    lapic.intr_accepted(0x80)
    assert lapic.rdmsr(X2_PPR) == 0x80
    lapic.wrmsr(X2_EOI, 0)
    assert lapic.isr == 1 << 0x30
    assert lapic.rdmsr(X2_PPR) == 0x30
    lapic.wrmsr(X2_EOI, 0)
    assert lapic.isr == 0
    assert lapic.rdmsr(X2_PPR) == 0
    lapic.wrmsr(X2_EOI, 0)
    assert lapic.counters["eoi_gratuitous"] == 1


def test_sdm_11_9_accepting_an_interrupt_no_longer_deliverable_yields_the_spurious_vector(
    lapic: Vlapic,
):
    lapic.wrmsr(X2_SVR, 0x1EF)
    lapic.set_intr(0x41)
    lapic.wrmsr(X2_TPR, 0x80)  # raised between "pending" and INTA
    assert lapic.intr_accepted(0x41) == 0xEF
    assert lapic.isr == 0 and lapic.irr == 1 << 0x41


def test_sdm_11_5_3_vector_below_16_is_refused_and_flagged_in_esr(lapic: Vlapic):
    assert lapic.set_intr(7) is False
    assert lapic.irr == 0
    assert lapic.rdmsr(X2_ESR) == 0  # ESR updates only when written
    lapic.wrmsr(X2_ESR, 0)
    assert lapic.rdmsr(X2_ESR) == 0x40  # received illegal vector


def test_set_intr_coalesces_into_a_vector_already_pending(lapic: Vlapic):
    assert lapic.set_intr(0x40) is True
    assert lapic.set_intr(0x40) is False
    assert lapic.irr == 1 << 0x40


def test_bad_vector_is_a_host_error(lapic: Vlapic):
    with pytest.raises(VlapicError):
        lapic.set_intr(256)


def test_cr8_is_tpr_bits_7_4(lapic: Vlapic):
    lapic.set_cr8(0x9)
    assert lapic.rdmsr(X2_TPR) == 0x90 and lapic.cr8 == 0x9
    with pytest.raises(ApicGP):
        lapic.set_cr8(0x10)


# -- timer ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dcr,div", [(0x0, 2), (0x1, 4), (0x2, 8), (0x3, 16), (0x8, 32),
                                     (0x9, 64), (0xA, 128), (0xB, 1)])
def test_sdm_11_5_4_divide_configuration_encoding(dcr: int, div: int):
    assert dcr_divisor(dcr) == div


def test_one_shot_timer_deadline_is_count_times_divisor_times_10ns(vm: Vm, lapic: Vlapic):
    vm.clock.ns = 1000
    lapic.wrmsr(X2_LVT_TIMER, 0xEF)
    lapic.wrmsr(X2_TIMER_DCR, 0xB)  # divide by 1
    lapic.wrmsr(X2_TIMER_ICR, 500)
    assert lapic.next_deadline() == 1000 + 500 * 10
    vm.clock.ns = 1000 + 10 * 123
    assert lapic.rdmsr(X2_TIMER_CCR) == 500 - 123
    assert lapic.fire(vm.clock.ns) is False  # too early: nothing happens
    vm.clock.ns = 6000
    assert lapic.fire(vm.clock.ns) is True
    assert lapic.irr == 1 << 0xEF
    assert lapic.next_deadline() is None
    assert lapic.rdmsr(X2_TIMER_CCR) == 0


def test_divide_configuration_scales_the_period(vm: Vm, lapic: Vlapic):
    lapic.wrmsr(X2_LVT_TIMER, 0xEF)
    lapic.wrmsr(X2_TIMER_DCR, 0x3)  # divide by 16
    lapic.wrmsr(X2_TIMER_ICR, 100)
    assert lapic.next_deadline() == 100 * 16 * 10
    vm.clock.ns = 165
    assert lapic.rdmsr(X2_TIMER_CCR) == 99  # one 160 ns tick has passed, the next has not


def test_periodic_timer_rearms_at_exact_period_boundaries(vm: Vm, lapic: Vlapic):
    lapic.wrmsr(X2_LVT_TIMER, PERIODIC | 0xEF)
    lapic.wrmsr(X2_TIMER_DCR, 0xB)
    lapic.wrmsr(X2_TIMER_ICR, 100)  # 1000 ns
    assert lapic.next_deadline() == 1000
    vm.clock.ns = 1003
    assert lapic.fire(1003) is True
    assert lapic.next_deadline() == 2000  # not 2003: the period does not drift
    assert lapic.intr_accepted(0xEF) == 0xEF
    lapic.wrmsr(X2_EOI, 0)
    assert lapic.fire(2000) is True
    assert lapic.next_deadline() == 3000


def test_periodic_timer_expiry_while_vector_pending_coalesces(vm: Vm, lapic: Vlapic):
    lapic.wrmsr(X2_LVT_TIMER, PERIODIC | 0xEF)
    lapic.wrmsr(X2_TIMER_DCR, 0xB)
    lapic.wrmsr(X2_TIMER_ICR, 100)
    assert lapic.fire(1000) is True
    assert lapic.fire(2000) is False  # 0xEF still in IRR: no second interrupt queued
    assert lapic.irr == 1 << 0xEF
    assert lapic.counters["timer_coalesced"] == 1
    assert lapic.counters["timer_fired"] == 1


def test_periodic_timer_far_behind_restarts_its_time_base(vm: Vm, lapic: Vlapic):
    lapic.wrmsr(X2_LVT_TIMER, PERIODIC | 0xEF)
    lapic.wrmsr(X2_TIMER_DCR, 0xB)
    lapic.wrmsr(X2_TIMER_ICR, 100)
    lapic.fire(5500)
    assert lapic.next_deadline() == 6500


def test_masked_timer_still_counts_but_sets_nothing(vm: Vm, lapic: Vlapic):
    lapic.wrmsr(X2_LVT_TIMER, MASKED | PERIODIC | 0xEF)
    lapic.wrmsr(X2_TIMER_DCR, 0xB)
    lapic.wrmsr(X2_TIMER_ICR, 100)
    assert lapic.fire(1000) is False
    assert lapic.irr == 0
    assert lapic.next_deadline() == 2000


def test_writing_initial_count_zero_stops_the_timer(vm: Vm, lapic: Vlapic):
    lapic.wrmsr(X2_LVT_TIMER, 0xEF)
    lapic.wrmsr(X2_TIMER_ICR, 100)
    lapic.wrmsr(X2_TIMER_ICR, 0)
    assert lapic.next_deadline() is None
    assert lapic.fire(10**9) is False


def test_new_divide_value_applies_from_the_next_reload(vm: Vm, lapic: Vlapic):
    lapic.wrmsr(X2_LVT_TIMER, PERIODIC | 0xEF)
    lapic.wrmsr(X2_TIMER_DCR, 0xB)
    lapic.wrmsr(X2_TIMER_ICR, 100)
    lapic.wrmsr(X2_TIMER_DCR, 0x0)  # divide by 2 from now on
    assert lapic.next_deadline() == 1000
    lapic.fire(1000)
    assert lapic.next_deadline() == 1000 + 2000


def test_software_disable_stops_the_timer(vm: Vm, lapic: Vlapic):
    lapic.wrmsr(X2_LVT_TIMER, 0xEF)
    lapic.wrmsr(X2_TIMER_ICR, 100)
    lapic.wrmsr(X2_SVR, 0xFF)
    assert lapic.next_deadline() is None


# -- IPIs via the ICR ---------------------------------------------------------------------------


@pytest.mark.parametrize("shorthand,dests", [(1, [1]), (2, [0, 1, 2, 3]), (3, [0, 2, 3])])
def test_icr_shorthand_decoding(shorthand: int, dests: list[int]):
    vm = Vm(4)
    vm.lapics[1].wrmsr(X2_ICR, (shorthand << 18) | 0x40)
    assert vm.ipis == [(1, dests, "fixed", 0x40)]


def test_nmi_ipi_to_all_excluding_self(vm: Vm):
    vm = Vm(3)
    vm.lapics[0].wrmsr(X2_ICR, (3 << 18) | 0x400)
    assert vm.ipis == [(0, [1, 2], "nmi", 0)]
    assert vm.nmis == [1, 2]


def test_physical_destination_selects_one_apic_id():
    vm = Vm(3)
    vm.lapics[0].wrmsr(X2_ICR, (2 << 32) | 0x400)
    assert vm.ipis == [(0, [2], "nmi", 0)]
    vm.lapics[0].wrmsr(X2_ICR, (9 << 32) | 0x400)  # no such APIC: nothing sent
    assert len(vm.ipis) == 1


def test_physical_broadcast_destination_reaches_everyone():
    vm = Vm(2)
    vm.lapics[1].wrmsr(X2_ICR, (0xFFFFFFFF << 32) | 0x41)
    assert vm.ipis == [(1, [0, 1], "fixed", 0x41)]


def test_xapic_logical_flat_destination_matches_ldr_bits():
    vm = Vm(3, mode="xapic")
    for i, lapic in enumerate(vm.lapics):
        lapic.mmio_write(0xE0, 4, 0xFFFFFFFF)  # flat model
        lapic.mmio_write(0xD0, 4, (1 << i) << 24)
    vm.lapics[0].mmio_write(0x310, 4, 0b110 << 24)
    vm.lapics[0].mmio_write(0x300, 4, 0x800 | 0x42)  # logical, fixed 0x42
    assert vm.ipis == [(0, [1, 2], "fixed", 0x42)]


def test_xapic_logical_cluster_destination_matches_cluster_and_bits():
    vm = Vm(3, mode="xapic")
    ldrs = [0x11, 0x12, 0x21]  # cluster 1 bits 1,2; cluster 2 bit 1
    for lapic, ldr in zip(vm.lapics, ldrs, strict=True):
        lapic.mmio_write(0xE0, 4, 0x0FFFFFFF)  # cluster model
        lapic.mmio_write(0xD0, 4, ldr << 24)
    vm.lapics[2].mmio_write(0x310, 4, 0x13 << 24)
    vm.lapics[2].mmio_write(0x300, 4, 0x800 | 0x400)
    assert vm.ipis == [(2, [0, 1], "nmi", 0)]


def test_x2apic_logical_destination_is_cluster_and_bitmap():
    vm = Vm(3)
    vm.lapics[0].wrmsr(X2_ICR, (0b101 << 32) | 0x800 | 0x43)  # cluster 0, IDs 0 and 2
    assert vm.ipis == [(0, [0, 2], "fixed", 0x43)]
    assert vm.lapics[2].irr == 1 << 0x43


def test_fixed_ipi_with_vector_below_16_is_not_sent_and_sets_send_illegal_vector():
    vm = Vm(2)
    vm.lapics[0].wrmsr(X2_ICR, (1 << 32) | 0x0F)
    assert vm.ipis == []
    vm.lapics[0].wrmsr(X2_ESR, 0)
    assert vm.lapics[0].rdmsr(X2_ESR) == 0x20


def test_init_and_startup_ipis_are_reported_not_acted_on():
    vm = Vm(2)
    vm.lapics[0].wrmsr(X2_ICR, (1 << 32) | 0x4500)  # INIT assert
    vm.lapics[0].wrmsr(X2_ICR, (1 << 32) | 0x8500)  # INIT level de-assert: dropped
    vm.lapics[0].wrmsr(X2_ICR, (1 << 32) | 0x4608)  # STARTUP, page 8
    assert vm.ipis == [(0, [1], "init", 0), (0, [1], "startup", 8)]


def test_lowest_priority_goes_to_one_target_as_fixed():
    vm = Vm(3)
    vm.lapics[0].wrmsr(X2_ICR, (3 << 18) | 0x100 | 0x44)
    assert vm.ipis == [(0, [1], "fixed", 0x44)]


def test_x2apic_self_ipi_register_sets_the_vector_here(vm: Vm, lapic: Vlapic):
    lapic.wrmsr(X2_SELF_IPI, 0x99)
    assert lapic.irr == 1 << 0x99
    assert vm.ipis == []


# -- checkpoints and display -------------------------------------------------------------------


def test_state_round_trips_through_json_and_restores_the_timer():
    vm = Vm(1)
    lapic = vm.lapics[0]
    lapic.wrmsr(X2_LVT_TIMER, PERIODIC | 0xEF)
    lapic.wrmsr(X2_LVT_LINT1, LVT_NMI_UNMASKED)
    lapic.wrmsr(X2_TIMER_ICR, 100)
    lapic.set_intr(0x40)
    lapic.intr_accepted(0x40)
    snap = json.loads(json.dumps(lapic.state()))
    lapic.wrmsr(X2_EOI, 0)
    lapic.wrmsr(X2_TIMER_ICR, 0)
    lapic.wrmsr(X2_LVT_LINT1, MASKED)
    lapic.load_state(snap)
    assert lapic.state() == snap
    assert lapic.isr == 1 << 0x40
    assert lapic.next_deadline() == 2000
    assert lapic.rdmsr(X2_LVT_LINT1) == LVT_NMI_UNMASKED


def test_load_state_with_a_bad_field_changes_nothing(lapic: Vlapic):
    good = lapic.state()
    bad = dict(good, tpr="high")
    lapic.wrmsr(X2_TPR, 0x30)
    before = lapic.state()
    with pytest.raises(VlapicError, match="tpr"):
        lapic.load_state(bad)
    assert lapic.state() == before
    with pytest.raises(VlapicError, match="vcpu"):
        lapic.load_state(dict(good, vcpu_id=3))


def test_describe_names_mode_priorities_pending_vectors_lint1_and_timer(vm: Vm, lapic: Vlapic):
    lapic.wrmsr(X2_LVT_LINT1, LVT_NMI_UNMASKED)
    lapic.wrmsr(X2_LVT_TIMER, PERIODIC | 0xEF)
    lapic.wrmsr(X2_TIMER_DCR, 0xB)
    lapic.wrmsr(X2_TIMER_ICR, 100)
    lapic.wrmsr(X2_TPR, 0x10)
    lapic.set_intr(0xEF)
    text = lapic.describe()
    assert "x2APIC, software-enabled" in text
    assert "TPR 0x10" in text and "PPR 0x10" in text
    assert "IRR 0xef" in text
    assert "LINT1 NMI, unmasked" in text
    assert "timer periodic vector 0xef, unmasked, initial 100, current 100, divide 1" in text
    assert "next expiry at 1000 ns" in text
