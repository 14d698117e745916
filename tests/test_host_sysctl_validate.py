"""The host's sysctl validates a whole line before it sets anything: a bad value, a read-only
oid or an unknown name anywhere refuses the line in one message and changes nothing (checked
by digest). sysctl(8) itself applies its arguments in order; nitdbg's host command must not
act on half a line. (The guest's sysctl is guest code and keeps FreeBSD's behaviour.)"""

from __future__ import annotations

import pytest

from nitdbg.fuzz import digest
from nitdbg.machine import Machine


@pytest.fixture(scope="module")
def machine() -> Machine:
    m = Machine(vcpus=1)
    m.boot_to_prompt()
    return m


REFUSED = [
    ("sysctl debug.nit.delay_usecs=5 debug.nit.recursive_nmi=bad",
     "sysctl: invalid integer 'bad'\n"),
    ("sysctl debug.nit.recursive_nmi=1 hw.vmm.vioapic.bhyve_delmodes=2",
     "sysctl: hw.vmm.vioapic.bhyve_delmodes=2: Invalid argument\n"),
    ("sysctl debug.nit.delay_usecs=5 hw.vmm.trace_guest_exceptions=1",
     "sysctl: oid 'hw.vmm.trace_guest_exceptions' is a read only tunable\n"
     "sysctl: Tunable values are set in /boot/loader.conf\n"),
    ("sysctl debug.nit.delay_usecs=5 debug.nit.no_such_knob=1",
     "sysctl: unknown oid 'debug.nit.no_such_knob'\n"),
    ("sysctl debug.nit.delay_usecs=5 kern.ticks",
     "kern.ticks is a guest sysctl: type it at guest# (@guest sysctl kern.ticks)\n"),
    ("sysctl debug.nit.delay_usecs=5 debug.nit.recursive_nmi=1,2",
     "sysctl: debug.nit.recursive_nmi=1,2: Invalid argument\n"),
]


@pytest.mark.parametrize(("line", "said"), REFUSED, ids=[r[0][7:40] for r in REFUSED])
def test_a_host_sysctl_line_with_one_bad_write_sets_none_of_them(machine, line, said):
    before = digest.parts(machine)
    assert machine.host(line) == said
    assert digest.changed(before, digest.parts(machine)) == []
    assert machine.vm.knobs.delay_usecs == 0 and machine.vm.knobs.recursive_nmi == 0


def test_a_good_multi_name_line_sets_them_all_in_order():
    m = Machine(vcpus=1)
    out = m.host("sysctl debug.nit.delay_usecs=5 debug.nit.recursive_nmi=1")
    assert out == ("debug.nit.delay_usecs: 0 -> 5\n"
                   "debug.nit.recursive_nmi: 0 -> 1\n")
    assert (m.vm.knobs.delay_usecs, m.vm.knobs.recursive_nmi) == (5, 1)


def test_ignore_flag_still_skips_unknown_names_as_sysctl_8_does():
    m = Machine(vcpus=1)
    assert m.host("sysctl -i debug.nit.no_such_knob=1 debug.nit.delay_usecs=7") == \
        "debug.nit.delay_usecs: 0 -> 7\n"
