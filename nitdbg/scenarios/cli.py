"""`nitdbg scenario list` and `nitdbg scenario run NAME|--all [--policy P]` (a front end: it
measures wall time for its summary; nothing below it reads the clock)."""

from __future__ import annotations

import argparse
import gc
import sys
import time

from .base import POLICIES, ScenarioError
from .runner import list_scenarios, run_all, run_scenario


def main_scenario(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nitdbg scenario",
                                description="The seed's test plan as scenarios.")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the scenarios, one a line")
    r = sub.add_parser("run", help="run a scenario (or --all) and check its evidence")
    r.add_argument("name", nargs="?")
    r.add_argument("--all", action="store_true")
    r.add_argument("--policy", choices=POLICIES, default="iret-tracing")
    r.add_argument("--record", metavar="DIR",
                   help="record every machine as a .nitrec session in DIR (sessions/)")
    r.add_argument("-v", "--verbose", action="store_true", help="show the actions typed")
    a = p.parse_args(argv)
    if a.cmd == "list":
        for s in list_scenarios():
            print(f"{s.name:26} {s.title}")
            print(f"{'':26}   {s.setup}")
        return 0
    if bool(a.all) == bool(a.name):
        print("nitdbg scenario run: give a scenario NAME or --all", file=sys.stderr)
        return 2
    out = _printer()
    t0 = time.perf_counter()
    try:
        if a.all:
            results = run_all(a.policy, out, a.record, a.verbose)
        else:
            results = [run_scenario(a.name, a.policy, out, a.record, a.verbose)]
    except ScenarioError as e:
        print(f"nitdbg scenario: {e}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - t0
    passed = sum(r.passed for r in results)
    failed = sum(r.failed for r in results)
    retired = sum(r.retired for r in results)
    if a.policy == "bhyve-upstream" and failed:
        print("note: under bhyve-upstream the checks that need IRET tracing fail; each 'why' "
              "line says how the guest's run differs from hardware (nitdbg compare).")
    bad = [r.name for r in results if not r.ok]
    if bad:
        print(f"scenarios with failures: {', '.join(bad)}")
    print(f"{len(results)} scenario{'s' if len(results) != 1 else ''}, {retired} guest "
          f"instructions in {wall:.1f} s ({retired / max(wall, 1e-9) / 1e6:.2f} M instr/s)",
          file=sys.stderr)
    na = sum(r.not_judged for r in results)
    print(f"{passed} passed, {failed} failed" + (f", {na} not judged for {a.policy}" if na
                                                 else ""))
    return 1 if failed else 0


def _printer():  # noqa: ANN202
    def out(text: str) -> None:
        print(text, flush=True)
    return out


def bench_figures() -> dict[str, float]:
    """For `nitdbg bench`: the wall time of `scenario run --all`, and how fast the recorded
    sessions in sessions/ replay (instructions per second, no UI work)."""
    from pathlib import Path

    from ..session import replay
    t0 = time.perf_counter()
    results = run_all("iret-tracing", lambda _s: None)
    wall = time.perf_counter() - t0
    figs = {"scenario_run_all_s": round(wall, 2),
            "scenario_run_all_failed": float(sum(r.failed for r in results))}
    sessions = sorted((Path(__file__).resolve().parents[2] / "sessions").glob("*.nitrec"))
    if sessions:
        retired, wall = 0, 0.0
        for p in sessions:
            t0 = time.perf_counter()
            retired += replay(p, verify=True).retired
            wall += time.perf_counter() - t0
            # each replay's machine is garbage in reference cycles, which the collector
            # frees only when it next runs (44 replays piled up 13 machines, 60 MB): free it
            # before the next, outside the timed replay
            gc.collect()
        figs["replay_sessions"] = float(len(sessions))
        figs["replay_ips"] = retired / wall if wall else 0.0
    return figs
