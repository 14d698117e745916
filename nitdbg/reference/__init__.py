"""The hardware reference: what the guest would see on bare metal, and the comparison of a
policy's run with it.

- `recorder`: records a policy run's external inputs (into `m.observed`) at the points of
  the guest's instruction stream where they arrived (vCPU, retired-instruction index, what).
- `hardware`: the same VM with the hypervisor out of the NMI path; it replays a recording so
  the CPU itself blocks, holds and delivers NMIs and interrupts (SDM vol 3 6.7.1).
- `diff`: the guest-visible comparison of the two runs, each difference with a kind.
"""

from .diff import Difference, compare_machines
from .hardware import reference_run
from .recorder import Recording, record

__all__ = ["Difference", "Recording", "compare_machines", "record", "reference_run"]
