"""Scenarios: each section of the seed runs, prints its evidence with PASS/FAIL computed from
machine output, and the verdict changes when the machine behaves differently."""

from __future__ import annotations

import pytest

from nitdbg.scenarios import ScenarioError, Trace, list_scenarios, main_scenario, run_scenario

REQUIRED = {"single-step-after-nmi", "broadcast-nmi-deadlock", "pending-interrupt",
            "pending-nmi", "nested-page-fault", "nested-page-fault-bounce", "iret-gpf-kernel",
            "iret-gpf-user", "trace-guest-exceptions", "guest-breakpoint",
            "nmi-interrupt-gate", "tsnmi-task-gate", "knob-matrix"}


def test_every_section_of_the_seed_is_a_scenario():
    assert {s.name for s in list_scenarios()} >= REQUIRED


@pytest.mark.parametrize("name", ["single-step-after-nmi", "broadcast-nmi-deadlock",
                                  "iret-gpf-user", "tsnmi-task-gate"])
def test_scenario_passes_under_iret_tracing(name):
    lines: list[str] = []
    res = run_scenario(name, out=lines.append)
    assert res.ok, "\n".join(lines)
    assert res.passed >= 3 and res.retired > 0
    assert sum(ln.lstrip().startswith("PASS") for ln in lines) == res.passed


def test_checks_of_the_seeds_ktr_lines_are_judged_only_for_the_policy_that_writes_them():
    lines: list[str] = []
    res = run_scenario("pending-interrupt", policy="bhyve-upstream", out=lines.append)
    na = [c for c in res.checks if not c.judged]
    assert any("vNMIs unblocked precisely" in c.text for c in na)
    assert all(c.only == ("iret-tracing",) and not c.passed for c in na)
    assert res.not_judged == len(na) and res.failed == 0
    assert any(ln.lstrip().startswith("n/a") and "judged only for iret-tracing" in ln
               for ln in lines)
    judged = run_scenario("pending-interrupt", out=lambda _s: None)
    assert judged.not_judged == 0 and judged.ok


def test_a_policy_that_changes_what_the_guest_sees_fails_the_behavioural_check():
    # kvm's NMI-window single-step clears the TF the NMI handler's IRET popped
    res = run_scenario("sstep-recursive-nmi", policy="kvm", out=lambda _s: None)
    assert not res.ok and all(c.judged for c in res.checks)


def test_cli_summary_line_and_exit_status(capsys):
    assert main_scenario(["run", "pending-nmi"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "3 passed, 0 failed"
    assert main_scenario(["run", "pending-nmi", "--policy", "bhyve-upstream"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == "1 passed, 0 failed, 2 not judged for bhyve-upstream"
    assert main_scenario(["run", "sstep-recursive-nmi", "--policy", "kvm"]) == 1
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.endswith("failed") and not last.endswith(" 0 failed")


def test_unknown_scenario_is_one_line(capsys):
    assert main_scenario(["run", "no-such"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no scenario named 'no-such'" in err
    with pytest.raises(ScenarioError):
        run_scenario("pending-nmi", policy="no-such-policy")


def test_trace_reads_ktrdump_newest_first_into_time_order():
    text = ("index  cpu timestamp        trace\n------ --- ---------------- -----\n"
            "     2   0              30 vm vm2[0]: Injecting hwintr at vector 240 errcode 0\n"
            "     1   0              20 vm vm2[0]: vNMIs unblocked precisely\n"
            "     0   0              10 vm vm2[0]: Injecting vNMI\n")
    tr = Trace(text)
    assert [ln.message for ln in tr.lines] == [
        "Injecting vNMI", "vNMIs unblocked precisely",
        "Injecting hwintr at vector 240 errcode 0"]
    u = tr.find(r"unblocked precisely")
    assert tr.find(r"^Injecting hwintr", before=u) is None
    assert tr.find(r"^Injecting hwintr", after=u).raw.endswith("errcode 0")
