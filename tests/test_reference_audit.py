"""The step audit judged against hardware (issue 16's sequence): 1 vCPU,
machdep.kdb_on_nmi=1, an NMI, `b nmi_iret`, `c`, a second NMI while stopped there, `s`,
`show audit`. On hardware the #BP handler's own IRET back into the NMI handler unblocks NMIs
(SDM vol 3 6.7.1: any IRET does), so the pending NMI nests on the NMI's IST stack before
nmi_iret executes and the step is lost: that loss is the guest's, not the policy's."""

from __future__ import annotations

import pytest

from nitdbg.machine import Machine
from nitdbg.reference import compare_machines, reference_run
from nitdbg.reference.audit import attach
from nitdbg.vmm.nmi_policy import MAIN_POLICIES


def _sequence(policy: str) -> tuple[Machine, str]:
    m = Machine(vcpus=1, policy=policy)
    attach(m)
    m.boot_to_prompt()
    m.type_line("sysctl machdep.kdb_on_nmi=1")
    m.host("bhyvectl --vm=vm2 --assert-lapic-lvt=1 --cpu=0")
    ev = m.settle()
    assert ev.reason == "kdb"
    m.enter_debugger(ev)
    m.debugger("b nmi_iret")
    assert "Breakpoint at\tnmi_iret" in m.debugger("c")
    m.host("bhyvectl --vm=vm2 --assert-lapic-lvt=1 --cpu=0")
    m.debugger("s")
    return m, m.debugger("show audit")


# The four main policies; bhyve-upstream-noshadow is left out: with the second NMI pending at
# the IRET exit it injects on the IRET itself, and the guest livelocks (its IRET returns to
# itself with IF=0), so the sequence never reaches its stop.
@pytest.mark.parametrize("policy", sorted(MAIN_POLICIES))
def test_a_step_lost_on_hardware_too_is_the_guests_and_names_the_rule(policy):
    m, report = _sequence(policy)
    ref = reference_run(m.observed)
    hw = ref.ddb.audit
    # the reference itself loses the step: the nested NMI stops the guest at nmi_iret again
    assert hw.checks and not hw.checks[0].ok and hw.checks[0].stopped_twice
    policy_lost = not m.ddb.audit.ok
    diffs = compare_machines(m, ref, m.observed.entries)
    if policy_lost:
        # a policy that loses the step where hardware does: the audit says whose it is
        assert "the guest's behaviour, not the policy's" in report
        assert "unblocked NMIs" in report and "nested on the IST stack" in report
        assert "doreti_iret" in report and "nmi_iret" in report
    else:
        # a policy that keeps the step hardware loses has changed what the guest sees
        assert diffs and diffs[0].kind in ("nmi_late", "nmi_count")


def test_iret_tracing_loses_the_step_as_hardware_does_and_is_the_same_as_hardware():
    m, report = _sequence("iret-tracing")
    assert "VIOLATION" in report and "the guest's behaviour" in report
    assert compare_machines(m, reference_run(m.observed), m.observed.entries) == []


def test_under_kvm_the_lost_step_is_the_guests_and_the_audit_names_kvms_own_difference():
    # KVM's NMI-window step clears the TF the guest's frame should hold: the audit says the
    # loss is the guest's and names that difference, computed by the comparison
    m, report = _sequence("kvm")
    diffs = compare_machines(m, reference_run(m.observed), m.observed.entries)
    assert "the guest's behaviour" in report and diffs
    assert f"the policy's own difference from hardware: {diffs[0].kind}" in report
