"""The NMI policy interface: an ops table in the style of KVM's `struct kvm_x86_ops`.

On SVM without vNMI the processor does not tell the hypervisor when the guest's NMI handler
has finished, so the hypervisor tracks virtual-NMI blocking itself and decides when it ends.
Every such decision is one small method below, named after the decision; the vCPU run loop
calls them and never asks which policy it runs. Each policy owns its per-vCPU state (one
`NmiState` per vCPU, created on first use) and reports it as plain data (`describe`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from ...svm.intinfo import IntInfo

if TYPE_CHECKING:
    from ...svm.svm import Exit
    from ..vcpu import Vcpu

NMI_IDLE, NMI_BLOCKED, NMI_TRACING = "idle", "blocked", "tracing"
EVENTINJ_VALID = 1 << 31

# describe(): a state's field names by its type, and the value types asdict() would copy
# as they are (immutable), so a state made of them needs no deep copy.
_field_names: dict[type, tuple[str, ...]] = {}
_SCALARS = frozenset((str, int, bool, float, type(None)))


@dataclass
class NmiState:
    """Per-vCPU state every policy keeps; subclasses add their own fields."""

    state: str = NMI_IDLE            # the policy's state machine, by name
    last_unblock: str = ""           # how blocking last ended (precisely, upstream, ...)
    last_transition: str = ""        # the last transition, in words
    iret_exit_rip: int | None = None  # RIP of the last IRET exit (None: none yet)


class NmiPolicy:
    """The decisions; the default implementation is the bhyve shape shared by the bhyve
    variants (blocking == the IRET intercept)."""

    name = "base"
    source = ""                      # where the behaviour comes from (for the README/UI)
    teaching = False                 # a variant for teaching, not compared by default
    state_type: type[NmiState] = NmiState

    def __init__(self) -> None:
        self._states: dict[int, NmiState] = {}

    # ------------------------------------------------------------------ state
    def state(self, v: Vcpu) -> NmiState:
        st = self._states.get(v.id)
        if st is None:
            st = self._states[v.id] = self.state_type()
        return st

    def vcpu_init(self, v: Vcpu) -> None:
        """The policy is installed on this vCPU (VMCB setup a policy needs)."""

    def describe(self, v: Vcpu) -> dict[str, Any]:
        """Plain data for front ends, checkpoints and audits: the state's fields plus
        whether NMIs are blocked now."""
        st = self.state(v)
        names = _field_names.get(type(st))
        if names is None:
            names = _field_names[type(st)] = tuple(f.name for f in fields(st))
        d = {name: getattr(st, name) for name in names}
        if not all(type(x) in _SCALARS for x in d.values()):
            d = asdict(st)       # a field holding a container: asdict's deep copy
        d["policy"] = self.name
        d["blocked"] = self.nmi_blocked(v)
        return d

    def _transition(self, v: Vcpu, state: str, what: str) -> None:
        st = self.state(v)
        st.state = state
        st.last_transition = what

    # ------------------------------------------------------------------ NMI injection
    def nmi_blocked(self, v: Vcpu) -> bool:
        """get_nmi_mask: is a virtual NMI in progress (no further NMI may be injected)?"""
        return self.state(v).state != NMI_IDLE

    def intr_allowed(self, v: Vcpu) -> bool:
        """May an external interrupt be injected now (besides IF and the shadow)?"""
        return True

    def inj_nmi(self, v: Vcpu) -> bool:
        """svm_inj_interrupts, the NMI part: inject the pending NMI if allowed. Returns True
        when the interrupt window must be opened to retry."""
        vmcb = v.vmcb
        if self.nmi_blocked(v):
            v.log("Cannot inject NMI due to NMI-blocking")
            self.enable_nmi_window(v)
        elif vmcb.interrupt_shadow:
            v.log("Cannot inject NMI due to interrupt shadow")
            return True
        elif vmcb.eventinj & EVENTINJ_VALID:
            v.log("Cannot inject NMI due to eventinj %#lx", vmcb.eventinj)
            # "Use self-IPI to trigger a VM-exit as soon as possible after the event
            # injection is completed" (ipi_cpu(curcpu, IPI_AST))
            v.exit_after_injection()
        else:
            v.nmi_pending = False
            v.stat("VCPU_NMI_COUNT")
            v.eventinject(IntInfo.nmi())
            self.nmi_injected(v)
            v.log("Injecting vNMI")
        return False

    def nmi_injected(self, v: Vcpu) -> None:
        """An NMI was just put in EVENTINJ (inject_nmi)."""
        self.enable_nmi_blocking(v)

    def enable_nmi_blocking(self, v: Vcpu) -> None:
        """Block further NMIs until the guest's IRET (bhyve: the IRET intercept)."""
        assert not self.nmi_blocked(v), "vNMI already blocked"
        v.log("vNMI blocking enabled")
        v.vmcb.set_intercept("IRET", True)
        self._transition(v, NMI_BLOCKED, "NMI injected, IRET intercepted")

    def enable_nmi_window(self, v: Vcpu) -> None:
        """An NMI is pending while blocked: arrange to learn when it can be injected. With
        the IRET intercept on, its exit is that moment."""

    # ------------------------------------------------------------------ exits
    def after_vmexit(self, v: Vcpu, e: Exit) -> None:
        """Every #VMEXIT, before its handler (KVM's svm_complete_interrupts)."""

    def before_vmrun(self, v: Vcpu) -> bool:
        """After injection, before VMRUN; True to exit again right after event delivery."""
        return False

    def iret_exit(self, v: Vcpu) -> None:
        raise NotImplementedError

    def exception_exit(self, v: Vcpu, vector: int, info1: int, info2: int) -> bool:
        """An intercepted exception (vector 1: the #DB exit). True if the policy handled it;
        False to reflect it to the guest ("Reflecting exception ...")."""
        return False

    def iret_in_flight(self, v: Vcpu, rip: int) -> bool:
        """Is the guest's IRET at `rip` still to complete after an IRET exit (where the
        seed's bounce_to_userspace knob acts on nested page faults)?"""
        return False

    def guest_rflags(self, v: Vcpu) -> int:
        """RFLAGS as the guest and the tools should see it (KVM hides its own TF/RF)."""
        return v.vmcb.rflags
