"""How the hypervisor ends virtual-NMI blocking: pluggable policies.

On SVM the processor does not tell the hypervisor when the guest's NMI handler has finished,
so after injecting a vNMI the hypervisor intercepts IRET ("NMI blocked" == IRET intercept on)
and must decide when blocking ends:

- `BhyveUpstream`: at the IRET exit clear the intercept and set the interrupt shadow (what
  FreeBSD ships). Its own comment admits the hole: an NMI may be injected before the IRET has
  executed, e.g. when the IRET exits again on a nested page fault.
- `IretTracing` (the seed's change, the default): at the IRET exit set RFLAGS.TF and RF and
  intercept #DB and the exceptions an IRET can raise. The #DB after the IRET (DR6.BS) is the
  precise moment NMIs are unblocked; an exception raised by the IRET also unblocks them
  (SDM vol 3 6.7.1) and is reflected to the guest with the guest's own TF/RF restored; an
  IRET that cannot be traced (a task return, NT=1) unblocks speculatively.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..x86.regs import DR6_BS, EFER_LMA, NT, RF, TF

if TYPE_CHECKING:
    from .vcpu import Vcpu

# Exceptions an IRET can raise (SDM vol 2 IRET "Protected Mode Exceptions"/"64-Bit Mode").
IRET_EXCEPTIONS = (1, 10, 11, 12, 13, 14, 17)

NMI_IDLE, NMI_BLOCKED, NMI_TRACING = "idle", "blocked", "tracing"


class NmiPolicy:
    name = "base"

    def nmi_blocked(self, v: Vcpu) -> bool:
        return v.nmi_state != NMI_IDLE

    def enable_nmi_blocking(self, v: Vcpu) -> None:
        """A vNMI was just injected: block further NMIs until the guest's IRET."""
        assert v.nmi_state == NMI_IDLE, "vNMI already blocked"
        v.log("vNMI blocking enabled")
        v.vmcb.set_intercept("IRET", True)
        v.nmi_state = NMI_BLOCKED

    def iret_exit(self, v: Vcpu) -> None:
        raise NotImplementedError

    def exception_exit(self, v: Vcpu, vector: int, info1: int, info2: int) -> bool:
        """An exception exit while this policy may be tracing; True if it was handled."""
        return False

    def injection_allowed(self, v: Vcpu) -> bool:
        return True


class BhyveUpstream(NmiPolicy):
    name = "bhyve-upstream"

    def iret_exit(self, v: Vcpu) -> None:
        # Restart at the "iret" with the intercept cleared (inst_length 0).
        v.log("vNMI blocking cleared")
        v.vmcb.set_intercept("IRET", False)
        v.nmi_state = NMI_IDLE
        v.last_unblock = "upstream"
        # The interrupt shadow keeps an NMI from being injected on the very next VMRUN.
        v.set_intr_shadow(1)
        # The seed's knobs act at this exit too, so the same scenario can be compared.
        v.vm.knobs_at_iret_exit(v)


class IretTracing(NmiPolicy):
    name = "iret-tracing"

    def iret_exit(self, v: Vcpu) -> None:
        vmcb = v.vmcb
        vmcb.set_intercept("IRET", False)
        if vmcb.rflags & NT and not vmcb.efer & EFER_LMA:
            # A task return (32-bit guest, NT=1) loads RFLAGS from the TSS of the task it
            # returns to, so TF cannot be planted: unblock speculatively.
            v.nmi_state = NMI_IDLE
            v.last_unblock = "speculatively"
            v.stat("VNMI_UNBLOCKED_SPECULATIVELY")
            v.log("vNMIs unblocked speculatively")
            return
        v.log("vNMI iret tracing enabled")
        # Remember the guest's own TF and RF and its DR6.BS: the #DB we are about to cause is
        # ours, and DR6 is written by the hardware before the #DB intercept (APM 15.12.2).
        v.saved_tf_rf = vmcb.rflags & (TF | RF)
        v.saved_dr6_bs = vmcb.dr6 & DR6_BS
        # TF makes the IRET trap after it completes; RF keeps a guest instruction breakpoint
        # on the IRET (already reported before this exit) from firing again on re-execution.
        vmcb.rflags = vmcb.rflags | TF | RF
        v.saved_exc_bitmap = vmcb.exception_intercepts
        for vec in IRET_EXCEPTIONS:
            vmcb.set_exception_intercept(vec, True)
        v.nmi_state = NMI_TRACING
        v.vm.knobs_at_iret_exit(v)

    def injection_allowed(self, v: Vcpu) -> bool:
        # While the IRET runs under TF nothing else may be injected: a handler entered now
        # would return with our TF in its frame.
        return v.nmi_state != NMI_TRACING

    def _end_tracing(self, v: Vcpu) -> None:
        v.vmcb.exception_intercepts = v.saved_exc_bitmap
        v.nmi_state = NMI_IDLE
        v.last_unblock = "precisely"
        v.stat("VNMI_UNBLOCKED_PRECISELY")
        v.log("vNMIs unblocked precisely")

    def exception_exit(self, v: Vcpu, vector: int, info1: int, info2: int) -> bool:
        if v.nmi_state != NMI_TRACING:
            return False
        vmcb = v.vmcb
        if vector == 1 and vmcb.dr6 & DR6_BS:
            # The IRET completed: RFLAGS now holds what the guest popped from its NMI frame,
            # so TF/RF are not restored. Not reinjected, unless the guest itself wanted this
            # #DB: it had TF=1 at the start of its IRET (a debugger stepping through the NMI
            # handler expects a single-step trap after the IRET), or the IRET hit one of the
            # guest's data breakpoints (DR6.B0-B3). Then the guest gets the #DB it would have
            # had on bare metal, with DR6.BS only if the single step was its own.
            guest_sstep = bool(v.saved_tf_rf & TF)
            guest_bits = vmcb.dr6 & 0xF
            if not guest_sstep:
                vmcb.dr6 = (vmcb.dr6 & ~DR6_BS) | v.saved_dr6_bs
            self._end_tracing(v)
            if guest_sstep or guest_bits:
                v.reflect_exception(1, None)
            return True
        if vector == 1:
            # A #DB without BS while tracing (e.g. general detect) is the guest's: reflect it
            # below like any exception, the IRET has not completed.
            pass
        # The IRET faulted: the fault happened before RFLAGS was loaded, so restore the
        # guest's own TF and RF, and reflect the exception. The IRET unblocked NMIs anyway
        # (SDM vol 3 6.7.1).
        vmcb.rflags = (vmcb.rflags & ~(TF | RF)) | v.saved_tf_rf
        self._end_tracing(v)
        return False   # the caller reflects the exception ("Reflecting exception ...")


POLICIES: dict[str, type[NmiPolicy]] = {p.name: p for p in (IretTracing, BhyveUpstream)}


def make_policy(name: str) -> NmiPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown NMI policy '{name}' (known: "
                         f"{', '.join(sorted(POLICIES))})") from None
