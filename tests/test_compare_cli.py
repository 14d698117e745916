"""`nitdbg compare`: the JSON object it prints, and bad input as one line."""

from __future__ import annotations

import json

from nitdbg.cli import main
from nitdbg.compare.matrix import scenario_names
from nitdbg.vmm.nmi_policy import MAIN_POLICIES


def test_compare_json_has_exactly_the_documented_shape(capsys):
    assert main(["compare", "--scenario", "pending-nmi", "--json", "--jobs", "1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"policies", "scenarios", "rows"}
    assert doc["policies"] == list(MAIN_POLICIES) and doc["scenarios"] == ["pending-nmi"]
    assert len(doc["rows"]) == len(MAIN_POLICIES)
    for row in doc["rows"]:
        assert set(row) == {"scenario", "policy", "same_as_hardware", "differences"}
        assert row["same_as_hardware"] == (row["differences"] == [])
        for d in row["differences"]:
            assert set(d) == {"kind", "vcpu", "at", "detail"}


def test_compare_lists_at_least_sixteen_scenarios():
    assert len(scenario_names()) >= 16


def test_compare_bad_scenario_or_policy_is_one_line(capsys):
    assert main(["compare", "--scenario", "no-such"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no-such" in err
    assert main(["compare", "--policy", "no-such"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown policy" in err


def test_scenario_why_lines_come_from_the_comparison_with_hardware():
    from nitdbg.scenarios import run_scenario
    lines: list[str] = []
    res = run_scenario("pending-interrupt", policy="bhyve-upstream", out=lines.append)
    bad = [c for c in res.checks if not c.passed]
    assert bad and all(c.why == bad[0].why for c in bad)
    # upstream gives this guest what hardware gives it: the failures are about its KTR lines
    assert "exactly what it sees on hardware" in bad[0].why
    assert any(ln.startswith("  why (compared with hardware):") for ln in lines)
