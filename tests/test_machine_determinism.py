"""Determinism: the same inputs give the same machine state, and a clone of a machine (a
checkpoint) continues exactly as the original does."""

from __future__ import annotations

from nitdbg.machine import Machine


def state(m: Machine) -> tuple:
    return (m.total_retired, m.now(), m.vm.mem.digest(), m.vm.ktr.digest(),
            tuple(v.vmcb.digest() for v in m.vcpus), tuple(tuple(v.cpu.regs) for v in m.vcpus),
            m.console_output())


def drive(m: Machine) -> str:
    m.type_line("sysctl machdep.kdb_on_nmi=1")
    m.assert_lapic_lvt(0)
    out = m.enter_debugger(m.settle())
    for _ in range(5):
        out += m.debugger("s")
    return out


def test_two_machines_given_the_same_inputs_end_in_the_same_state():
    a, b = Machine(), Machine()
    a.boot_to_prompt()
    b.boot_to_prompt()
    assert drive(a) == drive(b)
    assert state(a) == state(b)


def test_a_clone_continues_exactly_like_the_original():
    m = Machine()
    m.boot_to_prompt()
    c = m.clone()
    assert state(c) == state(m)
    assert drive(m) == drive(c)
    assert state(c) == state(m)


def test_a_clone_shares_nothing_with_the_original():
    m = Machine()
    m.boot_to_prompt()
    c = m.clone()
    c.host("sysctl debug.nit.delay_usecs=5")
    c.host("sysctl debug.ktr.clear=1")
    c.type_line("sysctl kern.ostype")
    assert m.vm.knobs.delay_usecs == 0 and c.vm.knobs.delay_usecs == 5
    assert len(m.vm.ktr) > 0
    assert b"kern.ostype" not in m.console_output()
    assert c.vm.vlapics[0]._peers() is c.vm.vlapics
