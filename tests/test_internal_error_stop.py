"""A bug in nitdbg met while running the guest stops the run with one line naming the
instruction bytes, the RIP and the Python error; the guest is not given an invented #UD."""

from __future__ import annotations

import capstone.x86_const as X
import pytest

from nitdbg.machine import Machine, describe_stop
from nitdbg.x86 import decode

pytestmark = pytest.mark.internal_error_expected


@pytest.fixture
def broken_sti(monkeypatch):
    """STI (cpu_idle_acpi's `sti; hlt`) with a bug in its semantics."""
    def broken(d):
        def fn(c):
            raise KeyError("simulated bug")
        return fn
    monkeypatch.setitem(decode.TRANSLATORS, X.X86_INS_STI, broken)


def test_machine_run_stops_with_an_internal_stop_event(broken_sti):
    m = Machine(vcpus=1)
    ev = m.run(max_insns=5_000_000)
    assert ev.reason == "internal" and ev.vcpu == 0
    line = describe_stop(m, ev)
    rip = m.vcpus[0].cpu.rip
    assert line == (f"vm vm2: vCPU 0 stopped: nitdbg internal error at rip {rip:#x}, bytes fb "
                    f"(sti): KeyError: 'simulated bug'\n")
    assert m.symbols.format(rip).startswith("cpu_idle_acpi")
    icount = m.total_retired
    assert m.run(max_insns=1000).reason == "internal" and m.total_retired == icount


def test_the_console_prints_the_internal_error(broken_sti):
    from nitdbg.console import Console
    out: list[str] = []
    c = Console(Machine(vcpus=1), out.append)
    c.feed("sleep 1")
    text = "".join(out)
    assert "nitdbg internal error at rip" in text and "KeyError" in text


def test_nitdbg_run_prints_the_internal_error_and_exits_70(broken_sti, capsys):
    from nitdbg.cli import main
    assert main(["run", "--max-instructions", "2000000"]) == 70
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nitdbg internal error at rip" in err
