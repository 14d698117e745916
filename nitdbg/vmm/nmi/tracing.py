"""The seed's IRET tracing (the "Implementation details" of its test plan), on top of
FreeBSD's sys/amd64/vmm/amd/svm.c.

At the IRET exit set RFLAGS.TF and RF and intercept #DB and the exceptions an IRET can
raise. The #DB after the IRET (DR6.BS) is the precise moment NMIs are unblocked; an
exception raised by the IRET also unblocks them (SDM vol 3 6.7.1) and is reflected to the
guest with the guest's own TF/RF restored; an IRET that cannot be traced (a task return,
NT=1) unblocks speculatively. KASSERT(GUEST_DR6.BS == 1) at the #DB exit: a #DB without BS
while tracing is reported the way a bhyve kernel with INVARIANTS would panic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...x86.regs import DR6_BS, EFER_LMA, NT, RF, TF
from .base import NMI_IDLE, NMI_TRACING, NmiPolicy, NmiState

if TYPE_CHECKING:
    from ..vcpu import Vcpu

# Exceptions an IRET can raise (SDM vol 2 IRET "Protected Mode Exceptions"/"64-Bit Mode").
IRET_EXCEPTIONS = (1, 10, 11, 12, 13, 14, 17)


@dataclass
class TracingState(NmiState):
    saved_tf_rf: int = 0             # the guest's own TF/RF at the IRET exit
    saved_dr6_bs: int = 0            # the guest's own DR6.BS at the IRET exit
    saved_exc_bitmap: int = 0        # exception intercepts before tracing
    kassert_failures: int = 0


class IretTracing(NmiPolicy):
    """The seed's change to FreeBSD sys/amd64/vmm/amd/svm.c (nmi_iret_testing.patch)."""

    name = "iret-tracing"
    source = ("the seed's IRET tracing on FreeBSD sys/amd64/vmm/amd/svm.c "
              "(test-plan 'Implementation details')")
    state_type = TracingState

    def iret_exit(self, v: Vcpu) -> None:
        st = self.state(v)
        vmcb = v.vmcb
        vmcb.set_intercept("IRET", False)
        st.iret_exit_rip = vmcb.rip
        if vmcb.rflags & NT and not vmcb.efer & EFER_LMA:
            # A task return (32-bit guest, NT=1) loads RFLAGS from the TSS of the task it
            # returns to, so TF cannot be planted: unblock speculatively.
            self._transition(v, NMI_IDLE, "IRET exit: task return, unblocked speculatively")
            st.last_unblock = "speculatively"
            v.stat("VNMI_UNBLOCKED_SPECULATIVELY")
            v.log("vNMIs unblocked speculatively")
            return
        v.log("vNMI iret tracing enabled")
        # Remember the guest's own TF and RF and its DR6.BS: the #DB we are about to cause is
        # ours, and DR6 is written by the hardware before the #DB intercept (APM 15.12.2).
        st.saved_tf_rf = vmcb.rflags & (TF | RF)
        st.saved_dr6_bs = vmcb.dr6 & DR6_BS
        # TF makes the IRET trap after it completes; RF keeps a guest instruction breakpoint
        # on the IRET (already reported before this exit) from firing again on re-execution.
        vmcb.rflags = vmcb.rflags | TF | RF
        st.saved_exc_bitmap = vmcb.exception_intercepts
        for vec in IRET_EXCEPTIONS:
            vmcb.set_exception_intercept(vec, True)
        self._transition(v, NMI_TRACING, "IRET exit: IRET traced with TF|RF")
        v.vm.knobs_at_iret_exit(v)

    def intr_allowed(self, v: Vcpu) -> bool:
        # While the IRET runs under TF nothing else may be injected: a handler entered now
        # would return with our TF in its frame.
        return self.state(v).state != NMI_TRACING

    def iret_in_flight(self, v: Vcpu, rip: int) -> bool:
        return self.state(v).state == NMI_TRACING

    def _end_tracing(self, v: Vcpu, what: str) -> None:
        st = self.state(v)
        v.vmcb.exception_intercepts = st.saved_exc_bitmap
        self._transition(v, NMI_IDLE, what)
        st.last_unblock = "precisely"
        v.stat("VNMI_UNBLOCKED_PRECISELY")
        v.log("vNMIs unblocked precisely")

    def exception_exit(self, v: Vcpu, vector: int, info1: int, info2: int) -> bool:
        st = self.state(v)
        if st.state != NMI_TRACING:
            return False
        vmcb = v.vmcb
        if vector == 1 and vmcb.dr6 & DR6_BS:
            # The IRET completed: RFLAGS now holds what the guest popped from its NMI frame,
            # so TF/RF are not restored. Not reinjected, unless the guest itself wanted this
            # #DB: it had TF=1 at the start of its IRET (a debugger stepping through the NMI
            # handler expects a single-step trap after the IRET), or the IRET hit one of the
            # guest's data breakpoints (DR6.B0-B3). Then the guest gets the #DB it would have
            # had on bare metal, with DR6.BS only if the single step was its own.
            guest_sstep = bool(st.saved_tf_rf & TF)
            guest_bits = vmcb.dr6 & 0xF
            if not guest_sstep:
                vmcb.dr6 = (vmcb.dr6 & ~DR6_BS) | st.saved_dr6_bs
            self._end_tracing(v, "#DB after the IRET: unblocked precisely")
            if guest_sstep or guest_bits:
                v.reflect_exception(1, None)
            return True
        if vector == 1:
            # KASSERT(GUEST_DR6.BS == 1): a #DB exit while tracing without BS (e.g. general
            # detect). A bhyve kernel with INVARIANTS panics here; the model reports it (KTR
            # line, stat, a "kassert" stop) and then goes on as a kernel without INVARIANTS
            # would: the IRET has not completed, so the #DB is the guest's (below).
            st.kassert_failures += 1
            v.kassert(f"KASSERT(DR6.BS == 1) failed: #DB exit while tracing the IRET with "
                      f"dr6 {vmcb.dr6:#x} at rip {vmcb.rip:#x}")
        # The IRET faulted: the fault happened before RFLAGS was loaded, so restore the
        # guest's own TF and RF, and reflect the exception. The IRET unblocked NMIs anyway
        # (SDM vol 3 6.7.1).
        vmcb.rflags = (vmcb.rflags & ~(TF | RF)) | st.saved_tf_rf
        self._end_tracing(v, f"exception {vector} raised by the IRET: unblocked precisely")
        return False   # the caller reflects the exception ("Reflecting exception ...")
