"""NMI policies: how the hypervisor tracks virtual-NMI blocking (one ops table, several
implementations). The registry is `POLICIES`; `make_policy(name)` builds one."""

from __future__ import annotations

from .base import NMI_BLOCKED, NMI_IDLE, NMI_TRACING, NmiPolicy, NmiState
from .bhyve import BhyveUpstream, BhyveUpstreamNoShadow
from .kvm import Kvm, KvmState
from .tracing import IRET_EXCEPTIONS, IretTracing, TracingState
from .vnmi import Vnmi, VnmiState

POLICIES: dict[str, type[NmiPolicy]] = {
    p.name: p for p in (IretTracing, BhyveUpstream, Kvm, Vnmi, BhyveUpstreamNoShadow)}
# the policies a comparison runs by default (teaching variants only on request)
MAIN_POLICIES: tuple[str, ...] = tuple(n for n, p in POLICIES.items() if not p.teaching)


def make_policy(name: str) -> NmiPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown NMI policy '{name}' (known: "
                         f"{', '.join(sorted(POLICIES))})") from None


__all__ = ["IRET_EXCEPTIONS", "MAIN_POLICIES", "NMI_BLOCKED", "NMI_IDLE", "NMI_TRACING", "POLICIES",
           "BhyveUpstream", "BhyveUpstreamNoShadow", "IretTracing", "Kvm", "KvmState",
           "NmiPolicy", "NmiState", "TracingState", "Vnmi", "VnmiState", "make_policy"]
