"""The seed's test plan as scenarios: each section's setup, its actions in the plan's own
words, and every piece of evidence it names, checked against what the machine produced."""

from .base import POLICIES, Scenario, ScenarioError, ScenarioResult
from .cli import bench_figures, main_scenario
from .evidence import Check, Trace
from .runner import get_scenario, list_scenarios, run_all, run_scenario

__all__ = ["POLICIES", "Check", "Scenario", "ScenarioError", "ScenarioResult", "Trace",
           "bench_figures", "get_scenario", "list_scenarios", "main_scenario", "run_all",
           "run_scenario"]
