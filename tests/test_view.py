"""The machine's read-only view for front ends (nitdbg/view.py): plain frozen data, read
from the machine as it is at the call and never changing after."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from nitdbg.machine import Machine


def test_before_any_exit_the_view_says_no_exit():
    st = Machine().view(0)
    assert st.last_exit is None and not st.in_guest
    assert st.regs["rip"] == st.vmcb.rip          # the loader's state in the save area


def test_after_an_exit_the_view_names_it_and_the_save_area_matches():
    m = Machine()
    m.boot_to_prompt()
    st = m.view(0)
    assert st.last_exit is not None
    assert st.last_exit.code == st.vmcb.exitcode and st.last_exit.vcpu == 0
    assert st.last_exit.time is not None and st.last_exit.time <= st.now
    with pytest.raises(dataclasses.FrozenInstanceError):
        st.icount = 0                              # type: ignore[misc]
    before = st.icount
    m.run(max_insns=10_000)
    assert st.icount == before                     # a picture, not a window
    assert m.view(0).icount >= before


def test_the_nmi_view_follows_the_policy_state():
    m = Machine()
    m.boot_to_prompt()
    assert not m.view(0).nmi.blocked
    m.host("bhyvectl --vm=vm2 --cpu=0 --inject-nmi")
    m.step_vcpu(0, "insn")                       # the delivery of the injected NMI
    nmi = m.view(0).nmi
    assert nmi.blocked and nmi.policy == "iret-tracing"


def test_recent_events_and_ktr_are_per_vcpu_and_from_the_given_point():
    m = Machine()
    m.boot_to_prompt()
    evs = m.recent_events(0)
    assert evs and all(a.seq <= b.seq for a, b in zip(evs, evs[1:], strict=False))
    cut = evs[len(evs) // 2].seq
    assert all(e.seq >= cut for e in m.recent_events(0, cut))
    t = m.now() - 50_000
    lines = m.ktr_since(1, t)
    assert all(k.cpu == 1 and k.timestamp >= t for k in lines)


def test_the_tui_reads_vcpus_only_through_the_view():
    """The front end's modules name no vCPU internals (.cpu, .vmcb, .svm of a vCPU)."""
    import re
    tui = Path(__file__).resolve().parents[1] / "nitdbg" / "tui"
    bad = re.compile(r"vcpus\[[^\]]*\]\.(cpu|vmcb|svm)\b|\bv\.(cpu|vmcb|svm)\b")
    hits = [f"{p.name}:{i}" for p in tui.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if bad.search(line)]
    assert hits == []
