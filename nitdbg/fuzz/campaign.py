"""A fuzzing campaign: rounds of hypothesis-generated cases over each target until the time is
up, every outcome counted. A front-end tool: it reads the wall clock (for the campaign's
length and the per-case hang bound), which nothing below the front ends does."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase, given, settings

from .targets import Outcome, Target

BAD_KINDS = ("escape", "hang", "changed", "internal", "multiline")
LABELS = {"escape": "escapes", "hang": "hangs", "changed": "state changes by rejected commands",
          "internal": "internal errors", "multiline": "multi-line refusals"}


class Hang(BaseException):  # noqa: N818 - BaseException: no `except Exception` may swallow it
    """A case ran longer than the bound."""


@dataclass
class Counts:
    cases: Counter = field(default_factory=Counter)        # target -> cases
    kinds: Counter = field(default_factory=Counter)        # outcome kind -> cases
    by_target: Counter = field(default_factory=Counter)    # (target, kind) -> cases
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.cases.values())

    def bad(self) -> int:
        return sum(self.kinds[k] for k in BAD_KINDS)

    def add(self, target: str, case: object, out: Outcome) -> None:
        self.cases[target] += 1
        self.kinds[out.kind] += 1
        self.by_target[target, out.kind] += 1
        if out.kind in BAD_KINDS:
            ex = self.examples.setdefault(out.kind, [])
            head = f"[{target}] {out.detail}"
            if len(ex) < 5 and not any(e.startswith(head) for e in ex):   # distinct ones
                ex.append(f"{head} <- {case!r}"[:400])

    def report(self, seconds: float | None = None) -> str:
        per = ", ".join(f"{t} {n}" for t, n in sorted(self.cases.items()))
        head = f"nitdbg fuzz: {self.total} cases"
        if seconds is not None:
            head += f" in {seconds:.0f} s"
        lines = [f"{head} ({per})",
                 "  " + ", ".join(f"{LABELS[k]} {self.kinds[k]}" for k in BAD_KINDS),
                 f"  refused inputs (checked: one line, nothing changed) {self.kinds['rejected']}"
                 f", accepted {self.kinds['ok']}"]
        for t in sorted(self.cases):
            bad = ", ".join(f"{LABELS[k]} {self.by_target[t, k]}" for k in BAD_KINDS
                            if self.by_target[t, k])
            lines.append(f"  {t}: {self.cases[t]} cases, {self.by_target[t, 'rejected']} "
                         f"refused, {self.by_target[t, 'ok']} accepted"
                         + (f"; {bad}" if bad else "; nothing bad"))
        for k in BAD_KINDS:
            for ex in self.examples.get(k, []):
                lines.append(f"  {k}: {ex}")
        return "\n".join(lines) + "\n"


def _alarm(signum: int, frame: object) -> None:
    raise Hang


def run_case(t: Target, case: object, timeout: float) -> Outcome:
    """One case with a bound on the CPU time it uses (SIGPROF; main thread only): on a
    loaded machine a niced campaign waits for the CPU, and waiting is not hanging. A wait
    that uses no CPU (a socket) has its own bound in its target."""
    old = signal.signal(signal.SIGPROF, _alarm)
    signal.setitimer(signal.ITIMER_PROF, timeout)
    try:
        return t.run(case)
    except Hang:
        return Outcome("hang", f"more than {timeout:.0f} s of CPU")
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, old)


def run_round(t: Target, examples: int, counts: Counts, timeout: float = 60.0,
              stop: Callable[[], bool] = lambda: False, derandomize: bool = False) -> None:
    """`examples` hypothesis-generated cases of target `t`, each counted. `derandomize`: the
    same cases every time (the test suite's bounded rounds; campaigns explore anew)."""

    @settings(max_examples=examples, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), derandomize=derandomize)
    @given(t.strategy)
    def body(case: object) -> None:
        if stop():
            return
        counts.add(t.name, case, run_case(t, case, timeout))

    body()


def campaign(targets: dict[str, Callable[[], Target]], seconds: float, round_size: int = 50,
             timeout: float = 60.0, progress: Callable[[str], None] | None = None) -> Counts:
    counts = Counts()
    built = {name: make() for name, make in targets.items()}
    t0 = time.monotonic()

    def over() -> bool:
        return time.monotonic() - t0 >= seconds

    while not over():
        for t in built.values():
            if over():
                break
            run_round(t, round_size, counts, timeout, over)
        if progress is not None:
            progress(counts.report(time.monotonic() - t0))
    return counts
