"""list_scenarios / run_scenario / run_all."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..machine import Machine, MachineError
from ..session.format import SessionError
from .base import POLICIES, Ctx, Scenario, ScenarioError, ScenarioResult
from .matrix import knob_matrix
from .policies import SCENARIOS as POLICY_SCENARIOS
from .seed import SCENARIOS

if TYPE_CHECKING:
    from ..reference.outcome import Outcome

ALL: list[Scenario] = [*SCENARIOS, Scenario(
    "knob-matrix", "Combining various test knobs", "amd64, 1 vCPU per combination: every "
    "allowed combination of the debug.nit knobs, and the forbidden gpf+recursive_nmi as a "
    "demonstration", knob_matrix), *POLICY_SCENARIOS]


def list_scenarios() -> list[Scenario]:
    return list(ALL)


def get_scenario(name: str) -> Scenario:
    for s in ALL:
        if s.name == name:
            return s
    raise ScenarioError(f"no scenario named '{name}' (try: nitdbg scenario list)")


def run_scenario(name: str, policy: str = "iret-tracing", out: Callable[[str], Any] = print,
                 record_dir: str | os.PathLike | None = None,
                 verbose: bool = False) -> ScenarioResult:
    """Run one scenario, printing each expected piece of evidence with PASS/FAIL through
    `out`; with `record_dir`, every machine it builds is recorded there as a session."""
    if policy not in POLICIES:
        raise ScenarioError(f"unknown policy '{policy}' (one of: {', '.join(POLICIES)})")
    sc = get_scenario(name)
    ctx = Ctx(sc, policy, out, Path(record_dir) if record_dir is not None else None, verbose)
    from ..reference.audit import attach
    from ..reference.outcome import outcome
    runs: list[tuple[str, Outcome]] = []

    def on_machine(m: Machine, _part: str) -> None:
        attach(m)       # record the inputs; the step audit is judged against hardware
    ctx.on_machine = on_machine
    # what the comparison with hardware needs of each finished machine, not the machine
    ctx.on_done = lambda m, part: runs.append((part, outcome(m, keep=True)))
    out(f"== {sc.name}: {sc.title}  [{sc.setup}; policy {policy}]")
    try:
        sc.fn(ctx)
    except (MachineError, SessionError) as e:
        ctx.result.error = str(e)
        out(f"  FAIL  the scenario could not run to its end: {e}")
    finally:
        ctx.finish()
    if ctx.result.failed or ctx.result.not_judged:
        # n/a checks (KTR lines this policy does not write) get the computed why too
        explain_failures(ctx.result, runs, out)
    return ctx.result


def explain_failures(result: ScenarioResult, runs: list[tuple[str, Outcome]],
                     out: Callable[[str], Any]) -> None:
    """The why of failed checks, computed: how the guest's run differs from the hardware
    reference of the same inputs (or that it does not, so the failures are about what the
    policy logs, not what the guest sees)."""
    from ..reference.hardware import differences_of
    diffs = differences_of(runs)
    if diffs:
        why = "; ".join(f"{'[' + p + '] ' if p else ''}{d.line()}" for p, d in diffs)
    else:
        why = ("the guest saw exactly what it sees on hardware (same instructions, events, "
               "frames and console): these checks are about lines this policy does not log")
    for c in result.checks:
        if not c.passed:
            c.why = why
    out(f"  why (compared with hardware): {why}")


def run_all(policy: str = "iret-tracing", out: Callable[[str], Any] = print,
            record_dir: str | os.PathLike | None = None,
            verbose: bool = False) -> list[ScenarioResult]:
    return [run_scenario(s.name, policy, out, record_dir, verbose) for s in ALL]
