"""Host-level steps are exact: `h` is one guest instruction or one event delivery (a stop of
its own), `x` stops at the next #VMEXIT once the hypervisor has handled it, before the next
VMRUN. Recorded steps replay bit for bit."""

from __future__ import annotations

from nitdbg.machine import Machine
from nitdbg.svm import exitcodes as ec

NMI_VECTOR = 2


def _booted() -> Machine:
    m = Machine()
    m.boot_to_prompt()
    return m


def _rip(m: Machine, vcpu: int = 0) -> int:
    return m.view(vcpu).regs["rip"]


def test_an_nmi_delivery_is_a_step_of_its_own_before_the_handlers_first_instruction():
    m = _booted()
    m.host("bhyvectl --vm=vm2 --cpu=0 --assert-lapic-lvt=1")
    before = m.view(0).icount
    ev = m.step_vcpu(0, "insn")
    assert ev.reason == "step" and ev.info["delivered"] == "NMI"
    assert ev.info["vector"] == NMI_VECTOR and ev.info["retired"] == 0
    assert m.view(0).icount == before
    assert m.symbols.format(_rip(m)) == "Xnmi"          # at the handler, nothing of it ran
    ev = m.step_vcpu(0, "insn")
    assert ev.info["retired"] == 1 and "delivered" not in ev.info


def test_each_host_step_retires_at_most_one_and_none_only_for_a_delivery_or_emulation():
    m = _booted()
    m.host("bhyvectl --vm=vm2 --cpu=0 --assert-lapic-lvt=1")
    emulated = {ec.VMEXIT_HLT, ec.VMEXIT_PAUSE, ec.VMEXIT_IOIO, ec.VMEXIT_MSR, ec.VMEXIT_CPUID}
    for _ in range(120):
        before = m.view(0).icount
        ev = m.step_vcpu(0, "insn")
        if ev.reason == "idle":
            break
        n = m.view(0).icount - before
        assert n == ev.info["retired"] and n <= 1
        if n == 0:
            assert "delivered" in ev.info or ev.info.get("exitcode") in emulated, ev


def test_exit_step_stops_at_the_exit_after_its_handling_before_the_next_vmrun():
    m = _booted()
    m.host("bhyvectl --vm=vm2 --cpu=0 --assert-lapic-lvt=1")
    codes = []
    for _ in range(6):
        ev = m.step_vcpu(0, "exit")
        st = m.view(0)
        assert ev.reason == "step" and not st.in_guest
        assert st.last_exit is not None and st.last_exit.code == ev.info["exitcode"]
        assert st.vmcb.exitcode == ev.info["exitcode"]
        assert m.recent_events(0)[-1].kind == "vmexit"     # no VMRUN after it yet
        codes.append(ev.info["exitcode"])
    # the NMI handler's IRET is intercepted, then the #DB after it (iret tracing)
    i = codes.index(ec.VMEXIT_IRET)
    assert codes[i + 1] == ec.vmexit_excp(1)


def test_host_steps_recorded_in_a_session_replay_bit_for_bit(tmp_path):
    from nitdbg.session import RecordingMachine, replay
    path = tmp_path / "steps.nitrec"
    rec = RecordingMachine(Machine(), path)
    rec.boot_to_prompt()
    rec.host("bhyvectl --vm=vm2 --cpu=0 --assert-lapic-lvt=1")
    for unit in ("insn", "insn", "exit", "insn", "exit", "exit"):
        rec.step_vcpu(0, unit)
    rec.close()
    res = replay(path, verify=True)
    assert res.ok, res.divergence
