"""The scenario runner: a context that builds (and optionally records) machines, performs the
plan's actions through the Machine facade, and collects checks computed from what the
machine produced."""

from __future__ import annotations

import gc
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..machine import Machine, MachineError, StopEvent
from ..session.format import SUFFIX
from ..session.record import RecordingMachine
from ..vmm.nmi_policy import POLICIES as NMI_POLICIES
from .evidence import UPSTREAM_CLEARED, Check, Trace, TraceLine

# every registered NMI policy (nitdbg/vmm/nmi/), the default first
POLICIES = tuple(NMI_POLICIES)
# Checks of KTR lines only some policies write are judged only for them (`only=`):
SEED_LINES = ("iret-tracing",)          # the seed's lines: iret tracing, unblocked precisely
BHYVE_LINES = ("iret-tracing", "bhyve-upstream", "bhyve-upstream-noshadow")  # svm.c's lines
KTRFILE = "/tmp/ktrdump.out"
# ddb `c` runs the guest until its next stop; an idle guest never stops, so bound it
CONTINUE_INSNS = 200_000

UPSTREAM_WHY = ("upstream bhyve ends NMI blocking at the IRET intercept itself ('vNMI "
                "blocking cleared'), before the IRET has executed, and never traces the IRET, "
                "so there is no 'vNMIs unblocked precisely'")


class ScenarioError(Exception):
    """Unknown scenario or policy (one line)."""


@dataclass
class Scenario:
    name: str
    title: str                       # the seed section it comes from
    setup: str                       # one line: firmware, vCPUs, knobs, tunables
    fn: Callable[[Ctx], None]


@dataclass
class ScenarioResult:
    name: str
    policy: str
    checks: list[Check] = field(default_factory=list)
    error: str | None = None         # the scenario could not run to its end
    sessions: list[Path] = field(default_factory=list)
    retired: int = 0                 # guest instructions, all machines of the scenario

    @property
    def passed(self) -> int:
        return sum(1 for c in self.checks if c.judged and c.passed)

    @property
    def failed(self) -> int:
        return sum(1 for c in self.checks if c.judged and not c.passed) + (1 if self.error
                                                                            else 0)

    @property
    def not_judged(self) -> int:
        return sum(1 for c in self.checks if not c.judged)

    @property
    def ok(self) -> bool:
        return self.failed == 0


class Ctx:
    """What a scenario function works with."""

    def __init__(self, scenario: Scenario, policy: str, out: Callable[[str], Any],
                 record_dir: Path | None = None, verbose: bool = False):
        self.scenario = scenario
        self.policy = policy
        self.out = out
        self.record_dir = record_dir
        self.verbose = verbose
        self.result = ScenarioResult(scenario.name, policy)
        # the machine of the part running now (a scenario's machines run one after another)
        self.current: Machine | RecordingMachine | None = None
        self._current_raw: Machine | None = None
        self.part = ""
        # called with each new machine and its part name before it runs (nitdbg compare
        # records the machine's inputs for the hardware reference here)
        self.on_machine: Callable[[Machine, str], None] | None = None
        # called with each machine and its part name when the part is over (the next
        # machine is built, or the scenario ends): what is kept of it must be taken here
        self.on_done: Callable[[Machine, str], None] | None = None

    # ------------------------------------------------------------------ machines
    def machine(self, part: str = "", **kw: Any) -> Machine:
        """A new machine under the scenario's policy; recorded into
        <record_dir>/<scenario>[.<part>].nitrec when recording is on. It ends the previous
        part (`release`)."""
        if self.release():
            # A machine is a web of reference cycles (vCPUs and their VM, devices, hooks),
            # which only the cyclic collector frees, and it runs by object counts, not by
            # size: the knob matrix's finished machines (4 MB each) piled up ten deep before
            # it came. Collect them before the next one is built. (A scenario's last machine
            # goes with the collector's own runs, as it did.)
            gc.collect()
        self.part = part
        m = Machine(policy=self.policy, **kw)
        self._current_raw = m
        if self.on_machine is not None:
            self.on_machine(m, part)
        if self.record_dir is not None:
            stem = self.scenario.name + (f".{part}" if part else "")
            m = RecordingMachine(m, self.record_dir / f"{stem}{SUFFIX}",
                                 tunables=kw.get("tunables") or {})
            self.result.sessions.append(m.path)
        self.current = m
        if part:
            self.say(f"  -- {part}")
        return m  # type: ignore[return-value]

    def release(self) -> bool:
        """End the current part: count its instructions, close its session, hand it to
        `on_done` and let the machine go. A scenario of many machines (the knob matrix
        builds 25) so holds one at a time, not all of them until it ends. False if no
        part was running."""
        m, raw = self.current, self._current_raw
        if m is None or raw is None:
            return False
        self.current = self._current_raw = None
        self.result.retired += m.total_retired
        if isinstance(m, RecordingMachine):
            m.close()
        if self.on_done is not None:
            self.on_done(raw, self.part)
        return True

    def finish(self) -> None:
        self.release()

    # ------------------------------------------------------------------ actions
    def say(self, text: str) -> None:
        self.out(text)

    def _echo(self, prompt: str, line: str, output: str) -> None:
        if self.verbose:
            self.out(f"    {prompt}{line}")
            for ln in output.rstrip("\n").splitlines():
                self.out(f"      {ln}")

    def host(self, m: Machine, line: str) -> str:
        out = m.host(line)
        self._echo("host$ ", line, out)
        return out

    def guest(self, m: Machine, line: str) -> str:
        out = m.type_line(line)
        self._echo("guest# ", line, out)
        return out

    def ddb(self, m: Machine, line: str, max_insns: int = 50_000_000) -> str:
        out = m.debugger(line, max_insns=max_insns)
        self._echo("db> ", line, out)
        return out

    def enter(self, m: Machine, ev: StopEvent) -> str:
        out = m.enter_debugger(ev)
        self._echo("", "(ddb)", out)
        return out

    def boot(self, part: str = "", vcpus: int = 1, kernel: Any = None, pause_exits: bool = False,
             kdb_on_nmi: int | None = 0, knobs: dict[str, int] | None = None,
             tunables: dict[str, str] | None = None) -> Machine:
        """The plan's step 1-3: boot, (pause exits off), machdep.kdb_on_nmi, debug.nit.*."""
        kw: dict[str, Any] = {"vcpus": vcpus}
        if kernel is not None:
            kw["kernel"] = kernel
        if tunables:
            kw["tunables"] = tunables
        m = self.machine(part, **kw)
        m.boot_to_prompt()
        if not pause_exits:
            for c in range(vcpus):
                self.host(m, f"bhyvectl --vm=vm2 --cpu={c} --capname=pause_exit --setcap=0")
        if kdb_on_nmi is not None:
            self.guest(m, f"sysctl machdep.kdb_on_nmi={kdb_on_nmi}")
        for k, v in (knobs or {}).items():
            out = self.host(m, f"sysctl debug.nit.{k}={v}")
            if "->" not in out:
                raise MachineError(f"sysctl debug.nit.{k}={v} failed: {out.strip()}")
        return m

    def capture(self, m: Machine, sleep: str | None = "1", settle: bool = False) -> Trace:
        """The plan's capture: clear the KTR, assert LINT1 on vCPU 0, sleep, ktrdump."""
        self.host(m, "sudo sysctl debug.ktr.clear=1")
        self.host(m, "sudo bhyvectl --vm=vm2 --cpu=0 --assert-lapic-lvt=1")
        if settle:
            self.last_stop = m.settle()
        if sleep is not None:
            self.host(m, f"sleep {sleep}")
        self.host(m, f"sudo ktrdump -cto {KTRFILE}")
        return Trace(m.shell.files.get(KTRFILE, ""))

    last_stop: StopEvent | None = None

    def stat(self, m: Machine, desc: str, cpu: int = 0) -> int:
        """`bhyvectl --vm=vm2 --get-stats | grep "DESC"`: the counter."""
        line = f'sudo bhyvectl --vm=vm2 --cpu={cpu} --get-stats | grep "{desc}"'
        out = self.host(m, line)
        mo = re.search(r"\t(-?\d+)\s*$", out)
        if mo is None:
            raise MachineError(f"no stat '{desc}' in the output of: {line}")
        return int(mo.group(1))

    # ------------------------------------------------------------------ checks
    def check(self, text: str, passed: bool, evidence: list[str] | None = None,
              detail: str = "", upstream: str | None = None, trace: Trace | None = None,
              demo: bool = False, only: tuple[str, ...] | None = None) -> bool:
        """Record and print one piece of evidence. `upstream`: why upstream bhyve fails it
        (printed when it does, with upstream's own KTR line as counter-evidence). `only`:
        the policies that write the lines the check looks for; under any other policy it is
        shown but not judged ("n/a")."""
        label = f"[{self.part}] " if self.part else ""
        ev = [ln for x in (evidence or []) for ln in str(x).rstrip().splitlines() if ln.strip()]
        judged = only is None or self.policy in only
        c = Check(label + text, bool(passed), ev, detail, demo=demo, judged=judged,
                  only=tuple(only) if only else ())
        if not judged:
            self.result.checks.append(c)
            self.out(f"  n/a   {c.text}  (judged only for {', '.join(only or ())})")
            return c.passed
        # The why line itself comes from the comparison with hardware at the end of the
        # scenario (runner.explain_failures); here only upstream's own counter-evidence.
        if not c.passed and self.policy == "bhyve-upstream" and upstream is not None \
                and trace is not None:
            cleared = trace.find(UPSTREAM_CLEARED)
            if cleared is not None:
                c.evidence.append(cleared.raw + "    <- upstream's unblocking")
        self.result.checks.append(c)
        self.out(f"  {'PASS' if c.passed else 'FAIL'}  {c.text}")
        for ln in c.evidence:
            self.out(f"          {ln}")
        if not c.passed and c.detail:
            self.out(f"        found: {c.detail}")
        if c.why:
            self.out(f"        why: {c.why}")
        return c.passed


def ordered(*xs: TraceLine | None) -> bool:
    """All present and in strictly increasing time order."""
    if any(x is None for x in xs):
        return False
    return all(a.pos < b.pos for a, b in zip(xs, xs[1:], strict=False))  # type: ignore[union-attr]
