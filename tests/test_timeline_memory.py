"""Going back in time replaces the machine's state with a restored mark; the state replaced
is garbage in reference cycles (only the cyclic collector frees it), so its retirement rings,
the bulk of it (2 MiB a vCPU), are freed at once instead: reverse steps do not pile them up."""

from __future__ import annotations

import gc
import weakref

from nitdbg.machine import Machine
from nitdbg.session.checkpoint import take
from nitdbg.timeline import Timeline


def test_a_step_back_frees_the_replaced_states_retirement_rings_at_once():
    m = Machine()
    m.boot_to_prompt()
    Timeline(m)
    states = []
    for _ in range(3):
        states.append(take(m))
        assert m.run_stops((0,), {0: {"step": True}}, 100_000).reason == "gdb"
    rings = [weakref.ref(v.cpu.retire.rips) for v in m.vm.vcpus]
    gc.disable()        # nothing but reference counting may free them
    try:
        m.step_back(0)
        assert [r() for r in rings] == [None] * len(rings)
    finally:
        gc.enable()
    assert take(m) == states[-1]
    m.step_back(0)      # and the restored state goes back again as before
    assert take(m) == states[-2]
