"""`nitdbg compare [--scenario S ...] [--policy P ...] [--json] [--jobs N]` (a front end)."""

from __future__ import annotations

import argparse
import json
import sys

from ..scenarios.base import ScenarioError
from ..vmm.nmi_policy import MAIN_POLICIES, POLICIES
from .matrix import run_matrix, scenario_names, table, to_json


def main_compare(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nitdbg compare", description="Every scenario under "
                                "every NMI policy, compared with what the guest sees on "
                                "hardware (the same inputs, NMIs blocked by the CPU itself).")
    p.add_argument("--scenario", action="append", metavar="S",
                   help="a scenario (repeatable; default: all)")
    p.add_argument("--policy", action="append", metavar="P",
                   help="an NMI policy (repeatable; default: the four main ones, "
                   "not the teaching variant bhyve-upstream-noshadow)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    a = p.parse_args(argv)
    names = scenario_names()
    scenarios = a.scenario or names
    policies = a.policy or list(MAIN_POLICIES)
    # validate everything before running anything
    for s in scenarios:
        if s not in names:
            print(f"nitdbg compare: no scenario named '{s}' (try: nitdbg scenario list)",
                  file=sys.stderr)
            return 2
    for pol in policies:
        if pol not in POLICIES:
            print(f"nitdbg compare: unknown policy '{pol}' (one of: "
                  f"{', '.join(POLICIES)})", file=sys.stderr)
            return 2
    if a.jobs < 1:
        print("nitdbg compare: --jobs must be at least 1", file=sys.stderr)
        return 2
    try:
        cells = run_matrix(scenarios, policies, a.jobs)
    except ScenarioError as e:
        print(f"nitdbg compare: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(to_json(cells, scenarios, policies), indent=1))
    else:
        sys.stdout.write(table(cells, scenarios, policies))
    return 0
