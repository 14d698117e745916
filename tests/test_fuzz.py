"""The repository's own fuzzers, bounded to seconds here (`python3 -m nitdbg.fuzz` runs long
campaigns): for every target, no escape, hang, state change by a refused command, internal
error or multi-line refusal."""

from __future__ import annotations

import pytest

from nitdbg.fuzz.campaign import Counts, run_round
from nitdbg.fuzz.targets import all_targets

EXAMPLES = {"ddb": 40, "session": 25, "elf": 30, "guest": 40, "console": 10}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_fuzz_target_finds_nothing(name, tmp_path):
    target = all_targets(tmp_path)[name]()
    counts = Counts()
    run_round(target, EXAMPLES[name], counts, timeout=60)
    assert counts.total > 0
    assert counts.bad() == 0, counts.report()


def test_the_fuzzer_sees_a_refused_command_that_changes_state(monkeypatch, tmp_path):
    """The judge itself can fail: a refusal that changes the machine is reported."""
    from nitdbg.ddb import commands
    real = commands.cmd_break

    def leaky(db, a):       # sets the breakpoint, then refuses the line
        real(db, a)
        raise commands.DdbError("Syntax error")

    monkeypatch.setitem(commands.COMMANDS, "b", commands.Command("b", leaky))
    monkeypatch.setattr(commands.state, "restore", lambda db, st: None)
    target = all_targets(tmp_path)["ddb"]()
    out = target.run(["b cpu_idle_acpi"])
    assert out.kind == "changed" and "ddb" in out.detail
