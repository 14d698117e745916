"""bhyvectl --force-reset / --force-poweroff and Machine.force_reset() / force_poweroff():
the VM reboots (or stops) while the host's side — KTR, knobs, clock, recording — goes on."""

from __future__ import annotations

import pytest

from nitdbg.machine import Machine, MachineError
from nitdbg.session import replay, start_recording
from nitdbg.session.checkpoint import take


@pytest.fixture
def m() -> Machine:
    m = Machine(vcpus=2)
    m.boot_to_prompt()
    return m


def test_force_reset_reboots_the_same_kernel_vcpus_policy_and_tunables():
    m = Machine(vcpus=3, policy="bhyve-upstream",
                tunables={"hw.vmm.trace_guest_exceptions": "1"})
    m.boot_to_prompt()
    m.type_line("sysctl machdep.kdb_on_nmi=1")
    m.force_reset()
    assert m.boots == 2 and m.vm.console_out == bytearray()
    assert len(m.vcpus) == 3 and m.vm.policy.name == "bhyve-upstream"
    assert m.vm.knobs.trace_guest_exceptions == 1
    m.boot_to_prompt()
    assert "machdep.kdb_on_nmi: 0" in m.type_line("sysctl machdep.kdb_on_nmi")


def test_force_reset_keeps_the_host_ktr_ring_knobs_and_clock(m):
    m.host("sysctl debug.nit.delay_usecs=800000")
    m.host("bhyvectl --vm=vm2 --assert-lapic-lvt=1 --cpu=0")
    m.settle()
    before_ktr, before_now, before_icount = len(m.vm.ktr), m.now(), m.total_retired
    assert before_ktr > 0
    assert m.host("bhyvectl --vm=vm2 --force-reset") == ""
    assert len(m.vm.ktr) == before_ktr
    assert m.vm.knobs.delay_usecs == 800000
    assert min(v.now() for v in m.vcpus) >= before_now      # the host clock does not go back
    assert m.total_retired == before_icount
    m.boot_to_prompt()                                      # ... and the guest boots again


def test_force_reset_gets_a_deadlocked_vm_going_again(m):
    m.type_line("sysctl machdep.kdb_on_nmi=1")
    m.host("bhyvectl --vm=vm2 --assert-lapic-lvt=1 --cpu=-1")
    assert m.settle().reason == "deadlock"
    m.host("bhyvectl --vm=vm2 --force-reset")
    m.boot_to_prompt()
    assert "kern.ostype: FreeBSD" in m.type_line("sysctl kern.ostype")


def test_force_poweroff_stops_the_vm_and_later_commands_say_it_is_off(m):
    m.host("bhyvectl --vm=vm2 --force-poweroff")
    assert m.powered_off and m.run(max_insns=1000).reason == "poweroff"
    with pytest.raises(MachineError, match="vm vm2 is powered off"):
        m.console_input(b"sysctl kern.ostype\r")
    assert m.host("bhyvectl --vm=vm2 --inject-nmi").startswith(
        "bhyvectl: vm vm2 is powered off")
    assert m.host("bhyvectl --vm=vm2 --get-rip").startswith("rip[0]")   # state stays readable
    assert "debug.nit.delay_usecs: 0" in m.host("sysctl debug.nit.delay_usecs")
    m.host("bhyvectl --vm=vm2 --force-reset")
    assert not m.powered_off
    m.boot_to_prompt()


def test_force_reset_and_poweroff_together_are_refused(m):
    before = take(m)
    out = m.host("bhyvectl --vm=vm2 --force-reset --force-poweroff")
    assert out == "bhyvectl: --force-reset and --force-poweroff exclude each other\n"
    assert take(m) == before and m.boots == 1


def test_a_recording_goes_on_across_a_reset_and_replays(tmp_path):
    path = tmp_path / "reset.nitrec"
    rec = start_recording(path, vcpus=2, sync=False)
    rec.boot_to_prompt()
    rec.host("bhyvectl --vm=vm2 --force-reset")
    rec.boot_to_prompt()
    rec.type_line("sysctl kern.ostype")
    rec.host("bhyvectl --vm=vm2 --force-poweroff")
    rec.force_reset()                       # the front ends' direct calls are inputs too
    rec.force_poweroff()
    rec.close()
    res = replay(path, verify=True)
    assert res.ok, res.divergence
    assert res.inputs == 7 and res.machine.powered_off and res.machine.boots == 3


def test_every_recordable_input_has_a_schema():
    from nitdbg.session import ops, schema
    assert set(schema.ARGS) == set(ops.OPS)
