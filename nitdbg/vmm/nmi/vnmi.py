"""AMD hardware virtual NMI (AMD APM vol 2 15.21.x "NMI Virtualization"; Linux
arch/x86/kvm/svm/svm.c with vnmi=1).

The hypervisor sets V_NMI_ENABLE (int_ctl bit 26) when CPUID 8000_000A EDX[25] reports the
feature, and queues an NMI by setting V_NMI_PENDING (bit 11) unless one is already pending
(svm_set_vnmi_pending). The processor delivers it when the guest can take an NMI, clearing
V_NMI_PENDING and setting V_NMI_BLOCKING (bit 12, AMD's V_NMI_MASK), and clears
V_NMI_BLOCKING when the guest's IRET completes or a #VMEXIT interrupts the delivery (the
SVM model in nitdbg/svm/svm.py does all that). No IRET intercept: blocking is the
hardware's. An NMI re-injected through EVENTINJ sets the mask in hardware.

The seed's test knobs that act at an IRET exit (iret_trigger_gpf, invalidate_nested_mappings)
need one: while one of them is set, the IRET is intercepted as a test hook only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...svm.features import SVM_FEATURE_VNMI, svm_cpuid_8000000a
from .base import NMI_BLOCKED, NMI_IDLE, NmiPolicy, NmiState

if TYPE_CHECKING:
    from ...svm.svm import Exit
    from ..vcpu import Vcpu


@dataclass
class VnmiState(NmiState):
    was_blocked: bool = False
    merged: int = 0                  # NMIs that arrived with one pending and one in service


class Vnmi(NmiPolicy):
    """AMD APM vol 2 15.21.x NMI virtualization, used as Linux KVM's svm.c does (vnmi=1)."""

    name = "vnmi"
    source = "AMD APM vol 2 15.21.x NMI virtualization; Linux arch/x86/kvm/svm/svm.c " \
             "(svm_set_vnmi_pending, svm_get_nmi_mask)"
    state_type = VnmiState

    def vcpu_init(self, v: Vcpu) -> None:
        edx = svm_cpuid_8000000a()[3]
        if not edx >> SVM_FEATURE_VNMI & 1:
            raise ValueError("the vnmi policy needs CPUID 8000_000A EDX[25] (VNMI)")
        v.vmcb.v_nmi_enable = 1

    def _state_name(self, v: Vcpu) -> str:
        vmcb = v.vmcb
        s = NMI_BLOCKED if vmcb.v_nmi_blocking else NMI_IDLE
        return s + ("+pending" if vmcb.v_nmi_pending else "")

    def describe(self, v: Vcpu) -> dict:
        d = super().describe(v)
        d["state"] = self._state_name(v)
        d["v_nmi_pending"] = bool(v.vmcb.v_nmi_pending)
        d["v_nmi_blocking"] = bool(v.vmcb.v_nmi_blocking)
        return d

    def nmi_blocked(self, v: Vcpu) -> bool:
        return bool(v.vmcb.v_nmi_blocking)         # svm_get_nmi_mask

    def inj_nmi(self, v: Vcpu) -> bool:
        vmcb = v.vmcb
        st = self.state(v)
        if vmcb.v_nmi_pending:
            if vmcb.v_nmi_blocking:
                # one NMI in service, one pending: a third merges (SDM 6.7.1; KVM's
                # process_nmi limit)
                v.nmi_pending = False
                st.merged += 1
                v.log("NMI merged: one in service, one pending in V_NMI_PENDING")
            return False
        v.nmi_pending = False
        v.stat("VCPU_NMI_COUNT")
        vmcb.v_nmi_pending = 1
        v.log("Setting V_NMI_PENDING")
        if v.vm.knobs.iret_trigger_gpf or v.vm.knobs.invalidate_nested_mappings:
            vmcb.set_intercept("IRET", True)
        self._transition(v, self._state_name(v), "V_NMI_PENDING set")
        return False

    def after_vmexit(self, v: Vcpu, e: Exit) -> None:
        st = self.state(v)
        blocked = bool(v.vmcb.v_nmi_blocking)
        if st.was_blocked and not blocked:
            st.last_unblock = "hardware"
            self._transition(v, self._state_name(v), "V_NMI_BLOCKING cleared by hardware")
        elif blocked and not st.was_blocked:
            self._transition(v, self._state_name(v), "vNMI taken: V_NMI_BLOCKING set")
        st.was_blocked = blocked
        st.state = self._state_name(v)

    def iret_exit(self, v: Vcpu) -> None:
        # only while a test knob needs it (see the module docstring)
        v.vmcb.set_intercept("IRET", False)
        if v.vmcb.v_nmi_blocking:
            self.state(v).iret_exit_rip = v.vmcb.rip
            v.log("IRET exit (test knobs only)")
            v.vm.knobs_at_iret_exit(v)

    def iret_in_flight(self, v: Vcpu, rip: int) -> bool:
        return bool(v.vmcb.v_nmi_blocking) and rip == self.state(v).iret_exit_rip
