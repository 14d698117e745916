"""A debugger single-stepping through the NMI handler itself, across the IRETs that end NMI
blocking: with a breakpoint on the NMI handler's own iretq (nmi_iret), `s` goes through the
#BP handler's IRET (the first IRET after the NMI: it is the one that unblocks NMIs, SDM vol 3
6.7.1) and then through nmi_iret with the guest's own TF set. Under iret-tracing the guest's
single step must survive the hypervisor's tracing; under a KVM-like policy that restores the
pre-IRET TF it is lost, and the step audit says so."""

from __future__ import annotations

from test_ddb_machine import KvmNmiSinglestep

from nitdbg.machine import Machine


def stepping_through_nmi_iret(policy=None) -> tuple[Machine, list[str]]:
    m = Machine(vcpus=1)
    if policy is not None:
        m.vm.policy = policy
    m.boot_to_prompt()
    m.type_line("sysctl machdep.kdb_on_nmi=1")
    m.assert_lapic_lvt(0)
    outs = [m.enter_debugger(m.settle())]
    for cmd in ("b nmi_iret", "c", "s", "s"):
        outs.append(m.debugger(cmd))
    return m, outs


def test_stepping_the_nmi_handlers_iret_under_iret_tracing_skips_nothing():
    m, outs = stepping_through_nmi_iret()
    assert outs[2].endswith("Breakpoint at\tnmi_iret:\tiretq\n")
    assert outs[3].endswith("Stopped at\tcpu_idle_acpi+0x2:\tret\n")   # back where the NMI hit
    assert m.ddb.audit.ok and len(m.ddb.audit.checks) == 2
    assert m.vcpus[0].last_unblock == "precisely"


def test_a_policy_that_restores_the_pre_iret_tf_loses_the_step():
    m, outs = stepping_through_nmi_iret(KvmNmiSinglestep())
    assert outs[2].endswith("Breakpoint at\tnmi_iret:\tiretq\n")
    assert outs[3] == "" and m.surface == "guest"        # the step never came back: ran away
    m.assert_lapic_lvt(0)                                # the next stop lets the audit judge
    m.enter_debugger(m.settle())
    assert not m.ddb.audit.ok
    assert "the single-step trap never came" in m.ddb.audit.report()
