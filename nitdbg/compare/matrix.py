"""`nitdbg compare`: every scenario under every NMI policy, each judged against the hardware
reference of the same run.

A cell runs the scenario under the policy with every machine's inputs recorded, runs the
reference of each machine, and keeps the guest-visible differences. The seed's own checks
(most of them KTR lines and stats) are kept apart: they are judged only for a policy whose
run wrote the seed's lines (it unblocked NMIs "precisely" or "speculatively"); for the
others they say nothing about what the guest saw.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..machine import Machine, MachineError
from ..reference import record
from ..reference.hardware import differences_of
from ..reference.outcome import outcome
from ..scenarios.base import Ctx, Scenario, ScenarioError
from ..scenarios.matrix import combinations, demonstrate_ist_overwrite, part_name, run_combination
from ..scenarios.runner import list_scenarios
from ..session.format import SessionError
from ..vmm.nmi_policy import POLICIES

SEED_STATS = ("VNMI_UNBLOCKED_PRECISELY", "VNMI_UNBLOCKED_SPECULATIVELY")


def _combo(knobs: dict[str, int]) -> Callable[[Ctx], None]:
    def fn(ctx: Ctx) -> None:
        run_combination(ctx, knobs)
    return fn


def compare_scenarios() -> list[Scenario]:
    """The scenarios of `scenario list`, with the knob matrix split into one scenario per
    combination (each is a guest of its own)."""
    out = []
    for s in list_scenarios():
        if s.name != "knob-matrix":
            out.append(s)
            continue
        for knobs in combinations():
            name = f"knobs:{part_name(knobs)}"
            out.append(Scenario(name, s.title, f"amd64, 1 vCPU, {knobs}", _combo(knobs)))
        out.append(Scenario("knobs:gpf+rnmi-forbidden", s.title, "iret_trigger_gpf with "
                            "recursive_nmi (the forbidden combination)",
                            demonstrate_ist_overwrite))
    return out


def scenario_names() -> list[str]:
    return [s.name for s in compare_scenarios()]


@dataclass
class Cell:
    scenario: str
    policy: str
    differences: list[dict] = field(default_factory=list)
    checks_passed: int = 0
    checks_failed: int = 0
    checks_judged: bool = False      # the policy writes the seed's KTR lines
    error: str | None = None

    @property
    def same_as_hardware(self) -> bool:
        return not self.differences and self.error is None

    def words(self) -> str:
        if self.error:
            return f"error: {self.error}"
        if not self.differences:
            return "same as hardware"
        d = self.differences[0]
        more = f" +{len(self.differences) - 1}" if len(self.differences) > 1 else ""
        return f"{d['kind']} {d['at'].split(' ', 1)[-1]}{more}"

    def checks_words(self) -> str:
        if not self.checks_judged:
            return "n/a"
        return f"{self.checks_passed}/{self.checks_passed + self.checks_failed} pass"

    def to_json(self) -> dict:
        return {"scenario": self.scenario, "policy": self.policy,
                "same_as_hardware": self.same_as_hardware,
                "differences": [{k: d[k] for k in ("kind", "vcpu", "at", "detail")}
                                for d in self.differences]}


def _scenario(scenario: str | Scenario, policy: str) -> Scenario:
    if isinstance(scenario, Scenario):
        sc: Scenario | None = scenario
    else:
        sc = next((s for s in compare_scenarios() if s.name == scenario), None)
    if sc is None:
        raise ScenarioError(f"no scenario named '{scenario}' (try: nitdbg scenario list)")
    if policy not in POLICIES:
        raise ScenarioError(f"unknown policy '{policy}' (one of: {', '.join(POLICIES)})")
    return sc


def run_recorded(scenario: str | Scenario, policy: str) -> tuple[Ctx, list[tuple[str, Machine]],
                                                      str | None]:
    """Run a scenario under a policy with every machine's inputs recorded: the context, the
    (part, machine) pairs, and the error that cut the scenario short, if any."""
    sc = _scenario(scenario, policy)
    ctx = Ctx(sc, policy, lambda _s: None)
    recorded: list[tuple[str, Machine]] = []

    def on_machine(m: Machine, part: str) -> None:
        record(m)
        recorded.append((part, m))
    ctx.on_machine = on_machine
    error = None
    try:
        sc.fn(ctx)
    except (MachineError, SessionError) as e:
        error = str(e)
    finally:
        ctx.finish()
    return ctx, recorded, error


def run_cell(scenario: str | Scenario, policy: str) -> Cell:
    """One scenario under one policy, compared with hardware."""
    ctx, recorded, error = run_recorded(scenario, policy)
    cell = Cell(ctx.scenario.name, policy, error=error)
    cell.checks_passed = ctx.result.passed
    cell.checks_failed = ctx.result.failed
    cell.checks_judged = any(m.vm.stats.get(i, k) for _p, m in recorded
                             for i in range(len(m.vm.vcpus)) for k in SEED_STATS)
    try:
        diffs = differences_of([(part, outcome(m)) for part, m in recorded])
    except MachineError as e:
        cell.error = f"the hardware reference could not be built: {e}"
        return cell
    for part, d in diffs:
        j = d.to_json()
        if part:
            j["detail"] = f"[{part}] {j['detail']}"
        cell.differences.append(j)
    return cell


def _cell_args(args: tuple[str, str]) -> Cell:
    return run_cell(*args)


def run_matrix(scenarios: list[str], policies: list[str], workers: int = 2) -> list[Cell]:
    """Every (scenario, policy) cell, in parallel processes when workers > 1."""
    jobs = [(s, p) for s in scenarios for p in policies]
    if workers <= 1 or len(jobs) <= 1:
        return [run_cell(s, p) for s, p in jobs]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers) as pool:
        return pool.map(_cell_args, jobs, chunksize=1)


def to_json(cells: list[Cell], scenarios: list[str], policies: list[str]) -> dict[str, Any]:
    return {"policies": list(policies), "scenarios": list(scenarios),
            "rows": [c.to_json() for c in cells]}


def table(cells: list[Cell], scenarios: list[str], policies: list[str],
          width: int = 70) -> str:
    """The scenario x policy table: one row per scenario, one column per policy, and the
    seed's checks in a column of their own."""
    by = {(c.scenario, c.policy): c for c in cells}
    w0 = max(len("scenario"), *(len(s) for s in scenarios))
    cw = max(18, (width - w0) // max(1, len(policies)))
    lines = ["  ".join([f"{'scenario':{w0}}", *(f"{p[:cw]:{cw}}" for p in policies),
                        "seed checks"])]
    lines.append("  ".join(["-" * w0, *("-" * cw for _ in policies), "-" * 11]))
    for s in scenarios:
        row = [by[(s, p)] for p in policies]
        cells_txt = [_short(c.words(), cw) for c in row]
        judged = [f"{c.policy}: {c.checks_words()}" for c in row if c.checks_judged]
        lines.append("  ".join([f"{s:{w0}}", *(f"{t:{cw}}" for t in cells_txt),
                                "; ".join(judged) or "n/a"]))
    lines.append("")
    for c in cells:
        if c.differences:
            lines.append(f"{c.scenario} under {c.policy}:")
            for d in c.differences:
                lines.append(f"  {d['kind']} on vCPU {d['vcpu']} at {d['at']}: {d['detail']}")
    return "\n".join(lines).rstrip() + "\n"


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"
