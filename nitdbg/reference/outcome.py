"""What a run leaves for the comparison with hardware: the guest-observable results only.

A scenario's machines run one after another, and the comparison with the hardware reference
comes at the end (and only when a check failed). Keeping each finished machine for it kept
all of them alive at once (the knob matrix builds 25): guest RAM, the nested page table,
translated blocks, KTR buffers. An `Outcome` keeps what `diff.compare_outcomes` reads and
what rebuilds the reference (the recorded inputs), and lets the machine go:

- per vCPU, the retirement log (the retired RIPs still in the ring, the events, the virtual
  time marks), the retired-instruction count, and whether an NMI is still held;
- the console output and the symbol table (the parsed firmware's, shared between machines).

A ring that has not wrapped keeps only its used slots: slot `seq & mask` of the ring is slot
`seq` then, so the copy is read exactly as the ring was.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..x86.retire import RetireLog

if TYPE_CHECKING:
    from ..guest.symbols import SymbolTable
    from ..machine import Machine
    from .recorder import Recording


@dataclass(frozen=True)
class VcpuOutcome:
    log: RetireLog          # the ring and events as the run left them (read only)
    end: int                # instructions retired
    nmi_held: bool          # an NMI accepted by the hypervisor, not yet delivered


@dataclass(frozen=True)
class Outcome:
    vcpus: tuple[VcpuOutcome, ...]
    console: bytes
    symbols: SymbolTable
    inputs: Recording | None     # the run's recorded inputs (reference/recorder.py), if any


def _kept_log(log: RetireLog, end: int) -> RetireLog:
    """A read-only copy of `log` that holds no more of the ring than the run filled (the
    events deque and time marks are shared: the machine it came from runs no more)."""
    kept = copy.copy(log)
    if end < log.capacity:
        kept.rips = log.rips[:end]
    return kept


def outcome(m: Machine, keep: bool = False) -> Outcome:
    """The guest-observable results of `m`'s run. `keep`: the machine is finished and is let
    go, so trim what is kept; otherwise the live machine's own log is read (a comparison
    made now, while both machines exist)."""
    out = []
    for v in m.vm.vcpus:
        cpu = v.cpu
        # an NMI the hypervisor has accepted but not yet delivered when the run ends: its own
        # pending flag, or one queued in the VMCB for the processor to deliver (AMD vNMI's
        # V_NMI_PENDING, APM vol 2 15.21.10); the reference core's held NMI is never here
        held = bool(getattr(v, "nmi_pending", False) or getattr(v.vmcb, "v_nmi_pending", 0))
        log = _kept_log(cpu.retire, cpu.icount) if keep else cpu.retire
        out.append(VcpuOutcome(log, cpu.icount, held))
    return Outcome(tuple(out), m.console_output(), m.symbols, getattr(m, "observed", None))
