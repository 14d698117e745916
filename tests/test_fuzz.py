"""The repository's own fuzzers, bounded to seconds here (`python3 -m nitdbg.fuzz` runs long
campaigns): for every target, no escape, hang, state change by a refused command, internal
error or multi-line refusal."""

from __future__ import annotations

import pytest

from nitdbg.fuzz.campaign import Counts, run_round
from nitdbg.fuzz.targets import all_targets

EXAMPLES = {"host": 40, "ddb": 40, "session": 25, "elf": 30, "guest": 40, "console": 10,
            "gdb": 30, "argv": 30, "multiboot": 40, "pcdev": 15, "timeline": 12, "tui": 15,
            "gdbsock": 10}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_fuzz_target_finds_nothing(name, tmp_path):
    target = all_targets(tmp_path)[name]()
    counts = Counts()
    run_round(target, EXAMPLES[name], counts, timeout=60, derandomize=True)
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


def test_the_campaign_command_prints_the_counts_and_exits_0(capsys):
    from nitdbg.fuzz.__main__ import main
    assert main(["--minutes", "0.02", "--targets", "ddb", "--round", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("nitdbg fuzz: ") and "cases in" in out
    assert ("escapes 0, hangs 0, state changes by rejected commands 0, internal errors 0, "
            "multi-line refusals 0") in out


@pytest.mark.parametrize("argv", [["--targets", "nope"], ["--minutes", "-1"], ["--round", "0"]])
def test_the_campaign_command_refuses_bad_options_in_one_line(argv, capsys):
    from nitdbg.fuzz.__main__ import main
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nitdbg fuzz: ")


def test_a_case_that_spins_past_the_cpu_bound_is_a_hang_and_one_that_waits_is_not():
    """The bound is CPU time: a niced campaign on a loaded machine waits for the CPU, and
    waiting is not hanging."""
    import time

    from hypothesis import strategies as st

    from nitdbg.fuzz.campaign import run_case
    from nitdbg.fuzz.targets import Outcome, Target

    def spin(_):
        while True:
            pass

    def wait(_):
        time.sleep(0.6)
        return Outcome()

    assert run_case(Target("spin", st.none(), spin), None, 0.3).kind == "hang"
    assert run_case(Target("wait", st.none(), wait), None, 0.3).kind == "ok"
