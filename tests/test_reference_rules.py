"""The hardware reference follows the x86 rules for NMIs (SDM vol 3 6.7.1, vol 2 HLT): it
is checked on its own retirement log, for runs recorded under the shipped policies."""

from __future__ import annotations

from nitdbg.compare.matrix import run_recorded
from nitdbg.reference import reference_run
from nitdbg.x86.retire import EV_EXCEPTION, EV_IRET, EV_NMI


def _ref(scenario: str, policy: str = "iret-tracing", edit=None):
    _ctx, recorded, error = run_recorded(scenario, policy)
    assert error is None and recorded
    part, m = recorded[0]
    tl = m.observed
    if edit is not None:
        edit(tl)
    return m, reference_run(tl)


def _events(m, kinds):
    return [e for e in m.vcpus[0].cpu.retire.events if e.kind in kinds]


def test_reference_blocks_nmis_until_the_iret_and_takes_the_held_one_at_its_return_point():
    # SDM 6.7.1: the recursive NMI raised during the port-0x61 read is held pending until
    # the handler's IRET completes; it is taken at the IRET's return point.
    _m, r = _ref("pending-nmi")
    evs = _events(r, (EV_NMI, EV_IRET))
    nmis = [e for e in evs if e.kind == EV_NMI]
    assert len(nmis) == 2
    first_iret = next(e for e in evs if e.kind == EV_IRET and e.seq > nmis[0].seq)
    assert nmis[1].seq == first_iret.seq + 1 and nmis[1].rip == first_iret.rip


def test_reference_holds_one_pending_nmi_and_merges_the_rest():
    # SDM 6.7.1: while NMIs are blocked one NMI is held pending; more merge into it.
    def triple(tl):
        i = [k for k, e in enumerate(tl.entries) if e[0] == "nmi"][1]
        tl.entries[i + 1:i + 1] = [tl.entries[i], tl.entries[i]]
    _m, r = _ref("pending-nmi", edit=triple)
    assert len(_events(r, (EV_NMI,))) == 2


def test_reference_iret_that_faults_still_unblocks_nmis():
    # SDM 6.7.1: the IRET of the first NMI faults (#GP, non-canonical RIP written by
    # iret_trigger_gpf); NMIs are unblocked anyway and the pending recursive NMI is taken
    # at the #GP handler's first instruction.
    _m, r = _ref("knobs:gpf+rnmi-forbidden")
    evs = _events(r, (EV_NMI, EV_EXCEPTION))
    gp = next(e for e in evs if e.kind == EV_EXCEPTION and e.vector == 13)
    after = [e for e in evs if e.seq >= gp.seq and e.kind == EV_NMI]
    assert after and after[0].seq == gp.seq
    assert r.symbols.format(after[0].rip) == "Xprot"


def test_reference_nmi_wakes_hlt_and_returns_after_it():
    # SDM vol 2 HLT: an NMI ends the halt; the handler's frame holds the instruction after HLT
    _m, r = _ref("knobs:none")
    nmi = _events(r, (EV_NMI,))[0]
    assert r.symbols.format(nmi.rip) == "cpu_idle_acpi+0x2"
    assert r.vm.mem.read(r.vm.gla2hpa(r.vcpus[0], nmi.rip - 1), 1) == 0xF4


def test_a_recorded_machine_clones_with_its_own_recording():
    # Machine.clone (checkpoints, reverse steps) copies the recording hooks with the machine
    from nitdbg.machine import Machine
    from nitdbg.reference import record
    m = Machine(vcpus=1)
    tl = record(m)
    m.run(max_insns=2000)
    c = m.clone()
    n = len(tl.entries)
    c.run(max_insns=2000)
    assert len(tl.entries) == n and len(c.observed.entries) > n
    assert c.vcpus[0].cpu.icount > m.vcpus[0].cpu.icount
