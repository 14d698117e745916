"""How the hypervisor ends virtual-NMI blocking: the pluggable policies (see nitdbg/vmm/nmi/).

Kept as the import path for the registry: `POLICIES`, `MAIN_POLICIES` and
`make_policy(name)`."""

from .nmi import (
    IRET_EXCEPTIONS,
    MAIN_POLICIES,
    NMI_BLOCKED,
    NMI_IDLE,
    NMI_TRACING,
    POLICIES,
    BhyveUpstream,
    BhyveUpstreamNoShadow,
    IretTracing,
    Kvm,
    KvmState,
    NmiPolicy,
    NmiState,
    TracingState,
    Vnmi,
    VnmiState,
    make_policy,
)

__all__ = ["IRET_EXCEPTIONS", "MAIN_POLICIES", "NMI_BLOCKED", "NMI_IDLE", "NMI_TRACING",
           "POLICIES", "BhyveUpstream", "BhyveUpstreamNoShadow", "IretTracing", "Kvm",
           "KvmState", "NmiPolicy", "NmiState", "TracingState", "Vnmi", "VnmiState",
           "make_policy"]
