"""The command palette: every action of the main screen as "domain: action"."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

# (name, action on the main screen, help)
COMMANDS: list[tuple[str, str, str]] = [
    ("ddb: step", "step", "single-step the guest in ddb (s)"),
    ("ddb: continue", "continue", "resume the guest (c)"),
    ("run: pause", "pause", "interrupt a running guest (p)"),
    ("nmi: inject into the selected vCPU", "nmi",
     "bhyvectl --assert-lapic-lvt=1 --cpu=N (n)"),
    ("nmi: broadcast to every vCPU", "broadcast", "bhyvectl --cpu=-1 (N)"),
    ("vcpu: next", "next_vcpu", "select the next vCPU (v)"),
    ("host: step one instruction", "host_step", "host-level single step of the vCPU (h)"),
    ("host: step to the next VM exit", "exit_step", "run the vCPU up to its next exit (x)"),
    ("host: force-reset the VM", "force_reset",
     "bhyvectl --force-reset: the way out of a deadlock (R)"),
    ("input: filter the KTR log", "ktr_filter", "type a filter for the KTR pane (/)"),
    ("host: exit history", "exit_history",
     "recent VM exits of the vCPU, with the VMCB and registers of each (X)"),
    ("audit: show evidence", "evidence", "the step audit's report (a)"),
    ("scenario: run", "scenario", "run a scenario of the test plan (e)"),
    ("session: start/stop recording", "record", "record to session.nitrec (r)"),
    ("session: open for replay", "open_replay", "replay a .nitrec (o)"),
    ("replay: step forward", "replay_step(1)", "(])"),
    ("replay: step back", "replay_step(-1)", "restore the nearest checkpoint ([)"),
    ("view: switch layout", "layout", "small / compact / wide (l)"),
    ("input: host shell", "surface('host')", "type at host$ (F2)"),
    ("input: guest console", "surface('guest')", "type at guest# (F3)"),
    ("input: ddb", "surface('ddb')", "type at db> (F4)"),
    ("compare: policies against hardware", "compare",
     "scenario x policy, each against the hardware reference (C)"),
    ("help: keys and rules", "help", "(?)"),
]


def all_commands() -> list[tuple[str, str, str]]:
    """COMMANDS and one "policy: restart under P" per NMI policy (the registry is imported
    when the palette opens, not before the first paint)."""
    from ..vmm.nmi_policy import POLICIES
    return COMMANDS + [(f"policy: restart under {p}", f"policy('{p}')",
                        "a new machine with this NMI policy, booted again") for p in POLICIES]


class NitdbgCommands(Provider):
    def _run(self, action: str) -> None:
        self.app.call_later(self.app.main_screen.run_action, action)

    async def discover(self) -> Hits:
        for name, action, help_text in all_commands():
            yield DiscoveryHit(name, partial(self._run, action), help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, action, help_text in all_commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), partial(self._run, action),
                          help=help_text)
