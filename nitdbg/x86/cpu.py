"""The architectural vCPU, assembled from one module per job:

- `state`: registers, mode, per-mode caches, the clock;
- `mmu`: paging, memory access through the TLBs, instruction fetch and the decode cache;
- `events`: exception delivery and escalation, injection, the NMI/INTR pins;
- `step`: the step loop and instruction-boundary event priority (SDM table 6-2, APM 8.5).

The names other layers import from here stay importable from here.
"""

from __future__ import annotations

from .decode import F_LOADS_RF, F_NO_SSTEP
from .regs import DR6_BS, SHADOW_MOVSS, SHADOW_STI, canonical
from .retire import EV_EXCEPTION
from .step import StepLoop

M64 = 0xFFFF_FFFF_FFFF_FFFF


class Cpu(StepLoop):
    """One vCPU: `Cpu(mem, hooks, vcpu_id)`, then `run(budget)`."""


__all__ = ["Cpu", "canonical", "EV_EXCEPTION", "F_LOADS_RF", "F_NO_SSTEP", "M64",
           "SHADOW_MOVSS", "SHADOW_STI", "DR6_BS"]
