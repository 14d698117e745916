"""bhyve as FreeBSD ships it (sys/amd64/vmm/amd/svm.c), and a teaching variant.

- `nmi_blocked()` is the IRET intercept bit; `enable_nmi_blocking()` sets it when a vNMI is
  injected ("vNMI blocking enabled").
- `svm_vmexit`, case VMCB_EXIT_IRET: "Restart execution at "iret" but with the intercept
  cleared": `clear_nmi_blocking()` logs "vNMI blocking cleared", clears the intercept and
  calls `svm_modify_intr_shadow(vcpu, 1)` "to prevent an NMI from being injected on the
  immediate VMRUN". Its XXX comment admits the hole: if the "iret" exits again (e.g. a #NPF
  on the stack) before it has executed, a pending NMI can be injected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import NMI_IDLE, NmiPolicy

if TYPE_CHECKING:
    from ..vcpu import Vcpu


class BhyveUpstream(NmiPolicy):
    """FreeBSD sys/amd64/vmm/amd/svm.c: clear_nmi_blocking() at the IRET intercept."""

    name = "bhyve-upstream"
    source = "FreeBSD sys/amd64/vmm/amd/svm.c (clear_nmi_blocking, svm_inj_interrupts)"
    set_shadow = True

    def iret_exit(self, v: Vcpu) -> None:
        st = self.state(v)
        # Restart at the "iret" with the intercept cleared (inst_length 0).
        v.log("vNMI blocking cleared")
        v.vmcb.set_intercept("IRET", False)
        self._transition(v, NMI_IDLE, "IRET exit: blocking cleared before the IRET runs")
        st.last_unblock = "upstream"
        st.iret_exit_rip = v.vmcb.rip
        if self.set_shadow:
            # The interrupt shadow keeps an NMI from being injected on the very next VMRUN.
            v.set_intr_shadow(1)
        # The seed's knobs act at this exit too, so the same scenario can be compared.
        v.vm.knobs_at_iret_exit(v)

    def iret_in_flight(self, v: Vcpu, rip: int) -> bool:
        return rip == self.state(v).iret_exit_rip


class BhyveUpstreamNoShadow(BhyveUpstream):
    """Teaching variant of FreeBSD's svm.c: clear_nmi_blocking() without its
    svm_modify_intr_shadow(vcpu, 1), to show what that interrupt shadow buys: without it a
    pending NMI is injected on the VMRUN right after the IRET exit, before the IRET runs,
    and nests on the NMI's IST stack over the frame the IRET is about to pop."""

    name = "bhyve-upstream-noshadow"
    source = "FreeBSD svm.c clear_nmi_blocking() minus svm_modify_intr_shadow(vcpu, 1)"
    set_shadow = False
    # Not one of the policies compared by default: with an NMI pending at the IRET exit the
    # guest livelocks (its IRET returns to itself with IF=0), and a scenario that then
    # sleeps a virtual second executes 10^8 IRETs.
    teaching = True
