"""Reverse execution from marks and re-execution (nitdbg/timeline.py): going back lands on
exactly the state the machine had, inputs included, and the marks stay few."""

from __future__ import annotations

import math

import pytest

from nitdbg import timeline as tlmod
from nitdbg.machine import Machine
from nitdbg.session.checkpoint import take
from nitdbg.timeline import Timeline


@pytest.fixture(scope="module")
def booted() -> Machine:
    m = Machine()
    m.boot_to_prompt()
    return m


def _fresh(booted: Machine, **kw) -> Machine:
    m = booted.clone()
    Timeline(m, **kw)
    return m


def _step(m: Machine, vcpu: int, run: tuple[int, ...] = (0,)):
    return m.run_stops(run, {vcpu: {"step": True}}, 100_000)


def test_step_back_lands_on_the_exact_earlier_state_with_both_vcpus_running(booted):
    m = _fresh(booted)
    m.console_input(b"while [ 1 ]; do : done\r")
    m.run(max_insns=30_000)
    states = []
    for _ in range(6):
        states.append(take(m))
        ev = _step(m, 0, run=(0, 1))
        assert ev.reason == "gdb" and ev.info["hit"] == ("step",)
    for want in reversed(states[1:]):
        m.step_back(0)
        assert take(m) == want


def test_an_nmi_from_the_host_is_part_of_the_history(booted):
    """The NMI asserted at host$ is an input: re-execution repeats it, so stepping back
    over the NMI handler's first instruction gives the state after delivery again."""
    m = _fresh(booted)
    _step(m, 0)
    m.host("bhyvectl --vm=vm2 --assert-lapic-lvt=1 --cpu=0")
    xnmi = m.symbols.address("Xnmi")
    states = []
    for _ in range(4):
        states.append((take(m), m.live_regs(0)["rip"]))
        _step(m, 0)
    assert any(rip == xnmi for _, rip in states), [hex(r) for _, r in states]
    for want, _ in reversed(states[1:]):
        m.step_back(0)
        assert take(m) == want


def test_step_back_keeps_another_vcpus_step_made_after_an_earlier_step_back(booted):
    """A step back ends in the op where the vCPU went on from the position, not in an
    earlier op that only stood there (a step of it cut where it began by an earlier step
    back): vCPU 0's step made between stays (found by the timeline fuzzer)."""
    m = _fresh(booted, spacing=10**9)
    m.hold("gdb")
    for _ in range(2):                       # a step of vCPU 1 and back: it stands at t
        _step(m, 1, run=(1,))
        m.step_back(1)
    _step(m, 0, run=(0,))                    # vCPU 0 goes on one instruction
    want = take(m)
    _step(m, 1, run=(1,))
    ev = m.step_back(1)
    assert ev.reason == "gdb"
    assert take(m) == want


def test_back_to_stop_returns_to_the_previous_breakpoint_hit(booted):
    m = _fresh(booted)
    idle = m.symbols.address("cpu_idle_acpi")
    bps = {i: {"bps": frozenset({idle})} for i in range(2)}
    hits = []
    for _ in range(3):
        ev = m.run_stops((0, 1), bps, 5_000_000)
        assert ev.reason == "gdb" and ev.info["hit"] == ("swbreak", idle)
        hits.append(take(m))
    ev = m.back_to_stop((idle,))
    assert ev.info["hit"] == ("swbreak", idle)
    assert take(m) == hits[1]
    ev = m.back_to_stop((idle,))
    assert take(m) == hits[0]


def test_after_going_back_the_machine_runs_forward_again(booted):
    m = _fresh(booted)
    _step(m, 0)
    _step(m, 0)
    m.step_back(0)
    n = m.vcpus[0].cpu.icount
    assert _step(m, 0).reason == "gdb"
    assert m.vcpus[0].cpu.icount == n + 1


def test_step_back_at_the_start_of_the_history_says_so(booted):
    m = _fresh(booted)
    assert m.step_back(1).reason == "begin"


def test_marks_thin_out_as_they_age(booted):
    m = _fresh(booted, spacing=5_000)
    m.console_input(b"while [ 1 ]; do : done\r")
    for _ in range(60):
        m.run(max_insns=5_000)
    tl = m.timeline
    ages = (m.total_retired - tl.marks[0].total) // tl.spacing
    bound = 1 + tlmod.RECENT + tlmod.PER_BAND * (math.ceil(math.log2(ages)) + 1)
    assert len(tl.marks) <= bound < 60
    # still exact: back from the present
    before = take(m)
    _step(m, 0)
    m.step_back(0)
    assert take(m) == before


def test_a_mark_keeps_the_retirement_rings_compressed_and_restores_them_byte_for_byte(booted):
    m = _fresh(booted)
    m.console_input(b"while [ 1 ]; do : done\r")
    m.run(max_insns=20_000)
    tl = m.timeline
    tl._mark()
    mk = tl.marks[-1]
    rings = [v.cpu.retire.rips.tobytes() for v in m.vm.vcpus]
    assert all(len(v.cpu.retire.rips) == 0 for v in mk.machine.vm.vcpus)
    assert 0 < sum(len(r) for r in mk.rings) < sum(len(r) for r in rings) // 10
    m.run(max_insns=50_000)
    assert [v.cpu.retire.rips.tobytes() for v in m.vm.vcpus] != rings
    tl._restore(mk)
    assert [v.cpu.retire.rips.tobytes() for v in m.vm.vcpus] == rings
    assert all(len(v.cpu.retire.rips) == 0 for v in mk.machine.vm.vcpus)   # the mark stays
    m.run(max_insns=1_000)      # and the restored machine runs on with its full ring
