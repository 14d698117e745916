"""Linux KVM on SVM without vNMI (arch/x86/kvm/svm/svm.c), as REFERENCE-nmi-policies.md §2
reads it:

- `svm_inject_nmi`: EVENTINJ = NMI, `nmi_masked = true`, IRET intercept on.
- `iret_interception` (the exit comes before the IRET executes): IRET intercept off,
  `awaiting_iret_completion = true`, `nmi_iret_rip = RIP`; `nmi_masked` stays set.
- `svm_complete_interrupts` (after every exit): awaiting and RIP != nmi_iret_rip -> unmask.
- `svm_enable_nmi_window` (an NMI pending but not injectable): if masked and not yet
  awaiting the IRET's completion, wait for the IRET exit; otherwise single-step the guest:
  `nmi_singlestep_guest_rflags = svm_get_rflags()`, `nmi_singlestep = true`, RFLAGS |= TF|RF.
- `svm_get_rflags` hides that TF/RF; `disable_nmi_singlestep` clears TF/RF unless the saved
  guest value had them; `db_interception` swallows the #DB while `nmi_singlestep`;
  `svm_vcpu_run` does not single-step over event injection (a12713c25b36): it disables the
  step and exits right after the event is delivered.
KVM intercepts #DB always; here the #DB intercept is on only while single-stepping (the
other #DBs KVM would reinject unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...svm.intinfo import IntInfo
from ...x86.regs import RF, TF
from .base import EVENTINJ_VALID, NMI_BLOCKED, NMI_IDLE, NmiPolicy, NmiState

if TYPE_CHECKING:
    from ...svm.svm import Exit
    from ..vcpu import Vcpu

NMI_AWAITING, NMI_SINGLESTEP = "awaiting-iret", "singlestep"


@dataclass
class KvmState(NmiState):
    nmi_masked: bool = False
    awaiting_iret_completion: bool = False
    nmi_iret_rip: int = 0
    nmi_singlestep: bool = False
    nmi_singlestep_guest_rflags: int = 0
    db_intercepted_before: bool = False
    swallowed_db: int = 0            # #DBs the NMI single-step kept from the guest


class Kvm(NmiPolicy):
    """Linux arch/x86/kvm/svm/svm.c, software NMI tracking (vnmi=0)."""

    name = "kvm"
    source = "Linux arch/x86/kvm/svm/svm.c (svm_inject_nmi, iret_interception, " \
             "svm_complete_interrupts, svm_enable_nmi_window, db_interception)"
    state_type = KvmState

    def describe(self, v: Vcpu) -> dict:
        d = super().describe(v)
        st = self.state(v)
        d["state"] = (NMI_SINGLESTEP if st.nmi_singlestep else NMI_AWAITING
                      if st.awaiting_iret_completion else NMI_BLOCKED if st.nmi_masked
                      else NMI_IDLE)
        return d

    def _sync(self, v: Vcpu, what: str) -> None:
        st = self.state(v)
        st.state = (NMI_SINGLESTEP if st.nmi_singlestep else NMI_AWAITING
                    if st.awaiting_iret_completion else NMI_BLOCKED if st.nmi_masked
                    else NMI_IDLE)
        st.last_transition = what

    # ------------------------------------------------------------------ injection
    def nmi_blocked(self, v: Vcpu) -> bool:
        return self.state(v).nmi_masked           # svm_get_nmi_mask

    def inj_nmi(self, v: Vcpu) -> bool:
        # svm_nmi_blocked: masked, or an interrupt shadow; one event per VM entry.
        vmcb = v.vmcb
        if vmcb.eventinj & EVENTINJ_VALID:
            v.log("Cannot inject NMI due to eventinj %#lx", vmcb.eventinj)
        elif self.nmi_blocked(v):
            v.log("Cannot inject NMI due to NMI-blocking")
        elif vmcb.interrupt_shadow:
            v.log("Cannot inject NMI due to interrupt shadow")
        else:
            v.nmi_pending = False
            v.stat("VCPU_NMI_COUNT")
            v.eventinject(IntInfo.nmi())
            self.nmi_injected(v)
            return False
        self.enable_nmi_window(v)
        return False

    def nmi_injected(self, v: Vcpu) -> None:
        st = self.state(v)
        st.nmi_masked = True
        v.vmcb.set_intercept("IRET", True)
        v.log("Injecting vNMI: nmi_masked, IRET intercepted")
        self._sync(v, "NMI injected: nmi_masked, IRET intercepted")

    def enable_nmi_window(self, v: Vcpu) -> None:
        st = self.state(v)
        if st.nmi_masked and not st.awaiting_iret_completion:
            return                    # the IRET intercept will exit
        if st.nmi_singlestep:
            return
        vmcb = v.vmcb
        st.nmi_singlestep_guest_rflags = self.guest_rflags(v)
        st.nmi_singlestep = True
        st.db_intercepted_before = vmcb.exception_intercepted(1)
        vmcb.set_exception_intercept(1, True)
        vmcb.rflags = vmcb.rflags | TF | RF
        v.log("NMI window: single-stepping the guest with TF|RF (guest rflags %#lx)",
              st.nmi_singlestep_guest_rflags)
        self._sync(v, "NMI pending while blocked: NMI window by single-step")

    def disable_nmi_singlestep(self, v: Vcpu) -> None:
        st = self.state(v)
        st.nmi_singlestep = False
        vmcb = v.vmcb
        # Clear TF/RF unless the guest had them when the step began (not TF the guest's
        # own IRET has loaded since: that TF is lost).
        fl = vmcb.rflags
        if not st.nmi_singlestep_guest_rflags & TF:
            fl &= ~TF
        if not st.nmi_singlestep_guest_rflags & RF:
            fl &= ~RF
        vmcb.rflags = fl
        if not st.db_intercepted_before:
            vmcb.set_exception_intercept(1, False)
        v.log("disable_nmi_singlestep: rflags %#lx", fl)
        self._sync(v, "NMI single-step ended")

    # ------------------------------------------------------------------ exits
    def after_vmexit(self, v: Vcpu, e: Exit) -> None:
        st = self.state(v)
        if st.awaiting_iret_completion and v.vmcb.rip != st.nmi_iret_rip:
            st.nmi_masked = False
            st.awaiting_iret_completion = False
            st.last_unblock = "rip moved"
            v.log("NMI unmasked: rip %#lx moved off the IRET at %#lx", v.vmcb.rip,
                  st.nmi_iret_rip)
            self._sync(v, "first exit with RIP off the IRET: NMIs unmasked")

    def before_vmrun(self, v: Vcpu) -> bool:
        st = self.state(v)
        if st.nmi_singlestep and v.vmcb.eventinj & EVENTINJ_VALID:
            # "We don't want our modified rflags to be pushed on the stack"
            v.log("Not single-stepping over event injection")
            self.disable_nmi_singlestep(v)
            return True
        return False

    def iret_exit(self, v: Vcpu) -> None:
        st = self.state(v)
        v.stat("VMEXIT_NMI_WINDOW")
        st.awaiting_iret_completion = True
        v.vmcb.set_intercept("IRET", False)
        st.nmi_iret_rip = st.iret_exit_rip = v.vmcb.rip
        v.log("IRET exit: awaiting_iret_completion, nmi_iret_rip %#lx", st.nmi_iret_rip)
        self._sync(v, "IRET exit: awaiting the IRET's completion")
        v.vm.knobs_at_iret_exit(v)

    def exception_exit(self, v: Vcpu, vector: int, info1: int, info2: int) -> bool:
        st = self.state(v)
        if vector != 1 or not st.nmi_singlestep:
            return False
        # db_interception: the #DB of KVM's own step is not given to the guest, whoever else
        # wanted it (DR6 is not examined).
        st.swallowed_db += 1
        v.log("#DB of the NMI single-step not given to the guest (dr6 %#lx)", v.vmcb.dr6)
        self.disable_nmi_singlestep(v)
        return True

    def iret_in_flight(self, v: Vcpu, rip: int) -> bool:
        st = self.state(v)
        return st.awaiting_iret_completion and rip == st.nmi_iret_rip

    def guest_rflags(self, v: Vcpu) -> int:
        st = self.state(v)
        fl = v.vmcb.rflags
        if st.nmi_singlestep:
            fl &= ~((TF | RF) & ~st.nmi_singlestep_guest_rflags)
        return fl
