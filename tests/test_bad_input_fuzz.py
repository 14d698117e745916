"""Whatever a user types at the host shell or at db>, the answer is text, never a Python
exception; a debugger command that fails leaves the guest's registers as they were."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nitdbg.machine import Machine

WORDS = ["bhyvectl", "sysctl", "ktrdump", "sleep", "cat", "grep", "sudo", "|", "--vm=vm2",
         "--cpu=", "-1", "0", "1", "99", "--assert-lapic-lvt=", "--get-stats", "--get-rip",
         "debug.nit.delay_usecs=", "debug.ktr.clear=1", "-cto", "/tmp/x", "'", '"', "-", "=",
         "x/i", "x/gx", "s", "s,", "b", "d", "show", "registers", "breaks", "$rip", "$rsp",
         "cpu_idle_acpi", "+0x10", "nmi_iret", "set", "write/b", "(", ")", "*", "/", ",",
         "hwatch", "until", "next", "bt", "0xffffffffffffffff", "-0t1", "garbage"]


@pytest.fixture(scope="module")
def machine() -> Machine:
    m = Machine(vcpus=1)
    m.boot_to_prompt()
    m.type_line("sysctl machdep.kdb_on_nmi=1")
    m.assert_lapic_lvt(0)
    m.enter_debugger(m.settle())
    return m


line = st.lists(st.sampled_from(WORDS) | st.text(max_size=6), max_size=6).map(" ".join)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line)
def test_host_shell_answers_any_line_with_text(machine, text):
    if text.split()[:1] in (["sleep"], ["sudo"]) and "sleep" in text:
        return                  # sleeping is allowed to run the guest; not what this tests
    out = machine.host(text)
    assert isinstance(out, str)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line)
def test_debugger_answers_any_line_with_text(machine, text):
    if machine.surface != "ddb":
        machine.assert_lapic_lvt(0)
        machine.enter_debugger(machine.settle())
    words = text.split()
    resumes = words and words[0] in ("s", "c", "n", "u", "st", "co", "ne", "un", "step",
                                     "continue", "next", "until", "w", "write", "set", "se")
    before = machine.ddb.frame() if machine.surface == "ddb" else None
    out = machine.debugger(text)
    assert isinstance(out, str)
    if not resumes and before is not None and machine.surface == "ddb" \
            and not out.startswith(("[ thread", "db:")):
        assert machine.ddb.frame() == before
