"""The whole test plan: `nitdbg scenario run --all` passes under iret-tracing (every check of
every section, the knob matrix with its invariants and the forbidden-combination demo)."""

from __future__ import annotations

from nitdbg.scenarios import run_all


def test_every_scenario_of_the_seed_passes_under_iret_tracing():
    lines: list[str] = []
    results = run_all(out=lines.append)
    failed = [c.text for r in results for c in r.checks if not c.passed]
    assert not failed and not [r.error for r in results if r.error], "\n".join(lines)
    matrix = next(r for r in results if r.name == "knob-matrix")
    parts = {c.text.split("]")[0] for c in matrix.checks}
    assert len(parts) == 16 + 8 + 1          # 4 knobs freely, gpf with 3, the forbidden demo
    assert sum(c.demo for c in matrix.checks) == 3
