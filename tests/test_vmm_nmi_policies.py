"""The NMI policies' transitions, at the vmm level: each test names the rule it checks (FreeBSD
svm.c, Linux svm.c, AMD APM vol 2 15.21.x NMI virtualization). Machines run the real amd64
firmware; KTR lines are read only where the rule is about what the policy logs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_vmm_iret_tracing import booted

from nitdbg.machine import Machine
from nitdbg.scenarios import run_scenario
from nitdbg.svm import exitcodes as ec
from nitdbg.svm.features import SVM_FEATURE_VNMI, svm_cpuid_8000000a
from nitdbg.svm.intinfo import TYPE_NMI, IntInfo
from nitdbg.vmm.nmi_policy import NMI_TRACING, POLICIES, IretTracing
from nitdbg.x86.regs import DR6_BS, RF, TF
from nitdbg.x86.retire import EV_INJECT, EV_IRET, EV_NMI, EV_VMEXIT

ROOT = Path(__file__).resolve().parent.parent


def nmi(m: Machine, insns: int = 30_000) -> int:
    """Assert LINT1 on vCPU 0 and run; returns the retirement index before the NMI."""
    seq = m.vcpus[0].cpu.icount
    m.host("sudo sysctl debug.ktr.clear=1")
    m.host("sudo bhyvectl --vm=vm2 --cpu=0 --assert-lapic-lvt=1")
    m.run(max_insns=insns)
    return seq


def events(m: Machine, since: int, kind: int | None = None):
    evs = sorted((e for e in m.vcpus[0].cpu.retire.events if e.seq >= since),
                 key=lambda e: e.seq)
    return [e for e in evs if kind is None or e.kind == kind]


def ktr(m: Machine) -> list[str]:
    return [e.message.split(": ", 1)[1] for e in m.vm.ktr.iter_entries()]


def record_exits(m: Machine) -> list[tuple[int, dict, int, int]]:
    """(exit code, policy state, VMCB interrupt shadow, guest RIP) at every #VMEXIT."""
    seen: list[tuple[int, dict, int, int]] = []
    m.vcpus[0].exit_listeners.append(lambda v, e: seen.append(
        (e.code, v.nmi_describe(), v.vmcb.interrupt_shadow, e.rip)))
    return seen


# ---------------------------------------------------------------------------- the interface
def test_registry_has_the_four_policies_and_the_teaching_variant():
    assert set(POLICIES) == {"iret-tracing", "bhyve-upstream", "kvm", "vnmi",
                             "bhyve-upstream-noshadow"}
    for name in POLICIES:
        m = Machine(vcpus=2, policy=name)
        assert m.vm.policy.name == name and m.vm.policy.source
        d = m.vcpus[1].nmi_describe()
        json.dumps(d)                                   # plain data
        assert d["policy"] == name and d["state"].startswith("idle") and not d["blocked"]
        assert {"last_unblock", "last_transition"} <= set(d)


def test_describe_is_asdict_of_the_state_plus_policy_and_blocked_for_every_policy():
    # describe() copies a state's fields itself (asdict is slow); the result is asdict's,
    # whatever the state holds, and a field holding a container is still a deep copy.
    from dataclasses import asdict, dataclass, field

    from nitdbg.vmm.nmi.base import NmiPolicy, NmiState
    for name in POLICIES:
        m = Machine(vcpus=1, policy=name)
        pol, v = m.vm.policy, m.vcpus[0]
        st = pol.state(v)
        st.last_transition, st.iret_exit_rip = "probe", 0xFFFF_FFFF_8020_0000
        for f in type(st).__dataclass_fields__:
            if type(getattr(st, f)) is bool:
                setattr(st, f, True)
        want = {**asdict(st), "policy": name, "blocked": pol.nmi_blocked(v)}
        assert NmiPolicy.describe(pol, v) == want, name     # (kvm, vnmi: then their own)

    @dataclass
    class Listy(NmiState):
        seen: list[int] = field(default_factory=list)

    class P(type(Machine(vcpus=1).vm.policy)):
        state_type = Listy

    m = Machine(vcpus=1)
    m.vm.policy = pol = P()
    st = pol.state(m.vcpus[0])
    st.seen.append(3)
    d = pol.describe(m.vcpus[0])
    assert d["seen"] == [3] and d["seen"] is not st.seen


def test_no_policy_name_is_tested_in_the_hypervisor_outside_the_policy_package():
    rx = re.compile(r"policy\.name\s*[!=]=|==\s*\"(bhyve-upstream|kvm|vnmi|iret-tracing)")
    for sub in ("vmm", "svm"):
        for p in (ROOT / "nitdbg" / sub).rglob("*.py"):
            if "nmi" in p.parts[-2:-1]:
                continue
            assert not rx.search(p.read_text()), p


def test_each_policy_owns_its_per_vcpu_state():
    m = Machine(vcpus=2, policy="kvm")
    pol = m.vm.policy
    a, b = pol.state(m.vcpus[0]), pol.state(m.vcpus[1])
    a.nmi_masked = True
    assert a is not b and not b.nmi_masked and m.vcpus[0].nmi_describe()["blocked"]
    assert not hasattr(m.vcpus[0], "saved_tf_rf")


# ---------------------------------------------------------------------------- bhyve
def test_upstream_clears_blocking_at_the_iret_exit_and_sets_the_interrupt_shadow():
    m = booted("bhyve-upstream")
    exits = record_exits(m)
    nmi(m)
    at_iret = [x for x in exits if x[0] == ec.VMEXIT_IRET]
    assert len(at_iret) == 1 and at_iret[0][1]["state"] == "blocked"
    lines = ktr(m)
    i = lines.index("vNMI blocking cleared")
    assert lines[i + 1] == "Setting intr_shadow to 1"
    assert m.vcpus[0].nmi_describe()["last_unblock"] == "upstream"


def test_upstream_interrupt_shadow_is_kept_across_an_npf_exit_on_the_iret():
    # APM vol 2 15.21.5 / table B-1 offset 68h: INTERRUPT_SHADOW is the guest's shadow at
    # #VMEXIT; the IRET did not complete, so the shadow VMRUN loaded still holds and the
    # pending NMI is not injected before the IRET retires.
    m = booted("bhyve-upstream", invalidate_nested_mappings=1, recursive_nmi=1)
    exits = record_exits(m)
    seq = nmi(m)
    iret = m.symbols.address("nmi_iret")
    npf_at_iret = [x for x in exits if x[0] == ec.VMEXIT_NPF and x[3] == iret]
    assert npf_at_iret and all(x[2] == 1 for x in npf_at_iret)
    assert len(events(m, seq, EV_NMI)) == 2
    assert not [e for e in events(m, seq, EV_INJECT) if e.vector == 2 and e.rip == iret]


def test_upstream_without_the_shadow_injects_the_pending_nmi_before_the_iret_runs():
    m = booted("bhyve-upstream-noshadow", recursive_nmi=1)
    seq = nmi(m, insns=20_000)
    iret = m.symbols.address("nmi_iret")
    injects = [e for e in events(m, seq, EV_INJECT) if e.vector == 2]
    assert len(injects) >= 2 and injects[1].rip == iret
    first_iret = events(m, seq, EV_IRET)[0]
    assert first_iret.seq > injects[1].seq or first_iret.rip == iret
    # the nested NMI's frame overwrote the first one: the IRET returns to itself
    assert {e.rip for e in events(m, seq, EV_IRET)[:5]} == {iret}


# ---------------------------------------------------------------------------- iret-tracing
class ClearsBsAtTheDbExit(IretTracing):
    """Test-only: as if the hardware had not set DR6.BS on the #DB after the traced IRET."""

    def exception_exit(self, v, vector, info1, info2):  # noqa: ANN001
        if vector == 1 and self.state(v).state == NMI_TRACING:
            v.vmcb.dr6 &= ~DR6_BS
        return super().exception_exit(v, vector, info1, info2)


def test_iret_tracing_kasserts_dr6_bs_on_its_db_exit_and_stops():
    m = booted("iret-tracing")
    m.vm.policy = ClearsBsAtTheDbExit()
    m.host("sudo bhyvectl --vm=vm2 --cpu=0 --assert-lapic-lvt=1")
    ev = m.settle()
    assert ev.reason == "kassert" and ev.vcpu == 0
    assert "KASSERT(DR6.BS == 1) failed" in ev.info["message"]
    assert any(x.startswith("panic: KASSERT(DR6.BS == 1) failed") for x in ktr(m))
    out = m.host('bhyvectl --vm=vm2 --get-stats | grep "KASSERT failures"')
    assert out.split("\t")[-1].strip() == "1"


def test_iret_tracing_db_exit_with_bs_does_not_kassert():
    m = booted("iret-tracing")
    nmi(m)
    assert m.vcpus[0].last_unblock == "precisely" and m.vcpus[0].kassert_pending is None


# ---------------------------------------------------------------------------- kvm
def test_kvm_masks_nmis_and_intercepts_iret_at_injection():
    m = booted("kvm")
    exits = record_exits(m)
    nmi(m)
    inout = next(x for x in exits if x[0] == ec.VMEXIT_IOIO and x[1]["nmi_masked"])
    assert not inout[1]["awaiting_iret_completion"]
    assert any(x[0] == ec.VMEXIT_IRET for x in exits)


def test_kvm_awaits_the_iret_and_unmasks_at_the_first_exit_with_rip_off_it():
    m = booted("kvm")
    exits = record_exits(m)
    nmi(m)
    iret = m.symbols.address("nmi_iret")
    i = next(k for k, x in enumerate(exits) if x[0] == ec.VMEXIT_IRET)
    assert exits[i][1]["nmi_masked"]                 # still masked at the IRET exit
    after = exits[i + 1][1]                          # the next exit: RIP moved on
    assert not after["nmi_masked"] and not after["awaiting_iret_completion"]
    assert after["nmi_iret_rip"] == iret and after["last_unblock"] == "rip moved"


def _stepping_kvm() -> tuple[Machine, object]:
    m = Machine(vcpus=1, policy="kvm")
    v = m.vcpus[0]
    st = m.vm.policy.state(v)
    st.nmi_masked = st.awaiting_iret_completion = True
    v.vmcb.rflags = 0x86
    return m, st


def test_kvm_nmi_window_single_steps_with_tf_rf_hidden_from_the_rflags_read():
    m, st = _stepping_kvm()
    v = m.vcpus[0]
    m.vm.policy.enable_nmi_window(v)
    assert st.nmi_singlestep and v.vmcb.rflags & (TF | RF) == TF | RF
    assert v.guest_rflags == 0x86 and v.vmcb.exception_intercepted(1)


def test_kvm_disable_nmi_singlestep_clears_tf_unless_the_guest_had_it():
    m, st = _stepping_kvm()
    v = m.vcpus[0]
    m.vm.policy.enable_nmi_window(v)
    v.vmcb.rflags = 0x346                  # the guest's IRET popped TF=1 (and IF)
    m.vm.policy.disable_nmi_singlestep(v)
    assert v.vmcb.rflags == 0x246 and not v.vmcb.exception_intercepted(1)
    m, st = _stepping_kvm()
    v = m.vcpus[0]
    v.vmcb.rflags = 0x186                  # the guest itself was stepping
    m.vm.policy.enable_nmi_window(v)
    m.vm.policy.disable_nmi_singlestep(v)
    assert v.vmcb.rflags & TF and not v.vmcb.rflags & RF


def test_kvm_does_not_single_step_over_event_injection():
    m, st = _stepping_kvm()
    v = m.vcpus[0]
    m.vm.policy.enable_nmi_window(v)
    v.vmcb.eventinj = IntInfo.interrupt(0x20).encode()
    assert m.vm.policy.before_vmrun(v) is True
    assert not st.nmi_singlestep and not v.vmcb.rflags & (TF | RF)


def test_kvm_swallows_the_db_of_its_nmi_single_step():
    m, st = _stepping_kvm()
    v = m.vcpus[0]
    m.vm.policy.enable_nmi_window(v)
    assert m.vm.policy.exception_exit(v, 1, 0, 0) is True
    assert st.swallowed_db == 1 and v.exception_pending is None


def test_kvm_loses_the_guests_single_step_db_when_an_nmi_with_a_second_pending_interrupts():
    # The first handler's IRET pops TF=1 into the stepped code; KVM single-steps that IRET to
    # open the NMI window, swallows the #DB and clears the TF (its saved RFLAGS had none).
    res = run_scenario("sstep-recursive-nmi", "kvm", out=lambda _s: None)
    last = res.checks[-1]
    assert "no single-step #DB is lost" in last.text and not last.passed
    assert all(c.passed for c in res.checks[:-2])
    ok = run_scenario("sstep-recursive-nmi", "iret-tracing", out=lambda _s: None)
    assert ok.ok


# ---------------------------------------------------------------------------- vnmi
def test_vnmi_is_reported_by_cpuid_8000000a_edx_bit_25_and_enabled_in_int_ctl():
    assert svm_cpuid_8000000a()[3] >> SVM_FEATURE_VNMI & 1
    m = Machine(vcpus=2, policy="vnmi")
    for v in m.vcpus:
        assert v.vmcb.v_intr_control >> 26 & 1
        v.vmcb.v_nmi_pending = 1
        v.vmcb.v_nmi_blocking = 1
        assert v.vmcb.v_intr_control >> 11 & 3 == 3     # V_NMI_PENDING 11, V_NMI_BLOCKING 12


def test_vnmi_blocks_until_the_iret_completes_without_an_iret_intercept():
    m = booted("vnmi", recursive_nmi=1)
    seq = nmi(m)
    nmis = events(m, seq, EV_NMI)
    irets = events(m, seq, EV_IRET)
    assert len(nmis) == 2
    # the second is taken by the CPU at the boundary right after the first IRET completes
    assert irets[0].seq < nmis[1].seq or irets[0].seq == nmis[1].seq
    assert irets[0].rip == nmis[1].rip == nmis[0].rip
    exits = [e for e in events(m, seq, EV_VMEXIT)]
    assert not [e for e in exits if e.info == ec.VMEXIT_IRET]
    assert not [e for e in events(m, seq, EV_INJECT) if e.vector == 2]
    assert not m.vcpus[0].vmcb.v_nmi_blocking and not m.vcpus[0].vmcb.v_nmi_pending


def test_vnmi_blocking_is_cleared_by_a_vmexit_during_delivery_and_set_by_eventinj():
    m = booted("vnmi")
    v = m.vcpus[0]
    seen: list[tuple[int, int, int]] = []

    def listener(vc, e):  # noqa: ANN001
        if e.code == ec.VMEXIT_NPF:
            seen.append((e.intinfo, vc.vmcb.v_nmi_blocking, vc.vmcb.v_nmi_pending))

    v.exit_listeners.append(listener)
    m.run(max_insns=200_000, until=lambda: v.halted)
    assert v.halted                              # idle in HLT: the NMI is taken at VMRUN
    m.vm.npt.unmap_all()                         # so its delivery takes a #NPF
    v.cpu.flush_tlb()
    seq = nmi(m)
    during = [s for s in seen if s[0] & (1 << 31) and IntInfo.decode(s[0]).type == TYPE_NMI]
    assert during and all(s[1] == 0 for s in during)
    # the hypervisor re-injects it through EVENTINJ, which sets V_NMI_MASK
    assert [e for e in events(m, seq, EV_INJECT) if e.vector == 2]
    assert any(s[1] == 1 for s in seen[seen.index(during[-1]) + 1:])
    assert len(events(m, seq, EV_NMI)) >= 1 and not v.vmcb.v_nmi_blocking


def test_vnmi_an_iret_that_faults_leaves_v_nmi_blocking_set():
    # "Hardware clears V_NMI_BLOCKING upon successful execution of IRET" (APM, via KVM's
    # 1c4522ab13b1): the #GP of a faulting IRET keeps virtual NMIs blocked.
    m = booted("vnmi", iret_trigger_gpf=1)
    m.host("sudo bhyvectl --vm=vm2 --cpu=0 --assert-lapic-lvt=1")
    ev = m.settle()
    assert ev.reason == "kdb"                     # the kernel-mode #GP enters the debugger
    assert m.vcpus[0].vmcb.v_nmi_blocking == 1


@pytest.mark.parametrize("policy", sorted(set(POLICIES) - {"bhyve-upstream-noshadow"}))
def test_a_pending_nmi_is_delivered_after_the_first_handlers_iret_completed(policy):
    m = booted(policy, recursive_nmi=1)
    seq = nmi(m)
    nmis = events(m, seq, EV_NMI)
    irets = events(m, seq, EV_IRET)
    assert len(nmis) == 2 and irets and irets[0].seq <= nmis[1].seq
    assert irets[0].rip == nmis[1].rip            # taken at the IRET's return address


def test_bhyvectl_set_dr_programs_the_debug_registers_and_rejects_bad_values():
    m = Machine(vcpus=2)
    assert m.host("bhyvectl --vm=vm2 --cpu=-1 --set-dr0=0x1000 --set-dr7=0x401") == ""
    assert all(v.cpu.dr[0] == 0x1000 and v.vmcb.dr7 == 0x401 for v in m.vcpus)
    assert m.vcpus[0].cpu.exec_bps
    out = m.host("bhyvectl --vm=vm2 --set-dr1=zz")
    assert out.count("\n") == 1 and "invalid value for --set-dr1" in out
    assert m.vcpus[0].cpu.dr[1] == 0


def test_the_teaching_variant_is_not_among_the_policies_compared_by_default():
    from nitdbg.vmm.nmi_policy import MAIN_POLICIES
    assert MAIN_POLICIES == ("iret-tracing", "bhyve-upstream", "kvm", "vnmi")
