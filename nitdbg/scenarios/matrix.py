"""Combining the test knobs: every combination the plan allows, each on a fresh 1-vCPU guest
with its own checks and the invariants; and the one it forbids (iret_trigger_gpf with
recursive_nmi) as a documented demonstration of the IST stack overwrite it describes.

The plan: the four knobs invalidate_nested_mappings, bounce_to_userspace, delay_usecs and
recursive_nmi combine in any way (bounce only acts with invalidate); iret_trigger_gpf combines
with all but recursive_nmi, "because FreeBSD uses the 64-bit TSS interrupt stack table to
switch stacks for the NMI handler ... The second NMI will use the same stack switching
mechanism as the first NMI and overwrite the stack frames for the first NMI and the #GP."
"""

from __future__ import annotations

import itertools
import math
import re

from .base import Ctx
from .checks import delay_checks, gpf_checks, invariants, npf_checks, recursive_checks
from .evidence import Trace, lines

DELAY = 800000
SHORT = {"invalidate_nested_mappings": "inv", "bounce_to_userspace": "bounce",
         "delay_usecs": "delay", "recursive_nmi": "rnmi", "iret_trigger_gpf": "gpf"}
FOUR = ("invalidate_nested_mappings", "bounce_to_userspace", "delay_usecs", "recursive_nmi")


def combinations() -> list[dict[str, int]]:
    """The allowed combinations: any subset of the four, and gpf with any subset of the
    four but recursive_nmi."""
    out = []
    for r in range(len(FOUR) + 1):
        for names in itertools.combinations(FOUR, r):
            out.append({n: DELAY if n == "delay_usecs" else 1 for n in names})
    rest = [n for n in FOUR if n != "recursive_nmi"]
    for r in range(len(rest) + 1):
        for names in itertools.combinations(rest, r):
            d = {n: DELAY if n == "delay_usecs" else 1 for n in names}
            d["iret_trigger_gpf"] = 1
            out.append(d)
    return out


def part_name(knobs: dict[str, int]) -> str:
    return "+".join(SHORT[k] for k in knobs) or "none"


def run_combination(ctx: Ctx, knobs: dict[str, int]) -> None:
    m = ctx.boot(part=part_name(knobs), knobs=knobs)
    rnmi = bool(knobs.get("recursive_nmi"))
    gpf = bool(knobs.get("iret_trigger_gpf"))
    inv = bool(knobs.get("invalidate_nested_mappings"))
    nmis = 2 if rnmi else 1
    # the plan's `sleep 1`, longer when the delays of both NMIs add up to more than that
    secs = max(1, math.ceil((nmis * knobs.get("delay_usecs", 0)) / 1e6 + 0.2))
    before = ctx.stat(m, "vNMI unblocked precisely")
    seq = m.vcpus[0].cpu.icount
    start = len(m.console_output())
    tr = ctx.capture(m, sleep=str(secs))
    after = ctx.stat(m, "vNMI unblocked precisely")
    if "delay_usecs" in knobs:
        delay_checks(ctx, tr, DELAY, guest_dies=gpf)
    if rnmi:
        recursive_checks(ctx, tr, before, after)
    if inv:
        npf_checks(ctx, m, tr, bounce=bool(knobs.get("bounce_to_userspace")))
    elif knobs.get("bounce_to_userspace"):
        b = tr.find(r"^Bouncing to userspace$")
        ctx.check("bounce_to_userspace takes no effect without invalidate_nested_mappings",
                  b is None, lines(b) or ["no 'Bouncing to userspace' line"])
    if gpf:
        gpf_checks(ctx, tr)
        text = m.console_output()[start:].decode(errors="replace")
        ctx.check("the idle guest takes the #GP in kernel mode and enters its debugger",
                  "Fatal trap 9: general protection fault while in kernel mode" in text
                  and m.surface == "ddb", [f"surface {m.surface}"] +
                  [ln for ln in text.splitlines() if "Fatal trap" in ln])
    invariants(ctx, m, tr, nmis, seq)


def demonstrate_ist_overwrite(ctx: Ctx) -> None:
    """iret_trigger_gpf + recursive_nmi: not a crash, a demonstration. The #GP from the first
    NMI's IRET unblocks NMIs; the pending recursive NMI arrives while the #GP handler runs on
    the NMI's IST stack; the IST switch puts its frame exactly where the first NMI's was."""
    knobs = {"iret_trigger_gpf": 1, "recursive_nmi": 1}
    m = ctx.boot(part="gpf+rnmi-forbidden", knobs=knobs)
    start = len(m.console_output())
    tr = ctx.capture(m, sleep="1")
    rx = r"NMI iret frame rip (0x[0-9a-f]+) at (0x[0-9a-f]+) updated to non-canonical"
    frames = tr.all(rx)
    demo = "(forbidden combination, demonstration) "
    same = len(frames) == 2 and frames[0].group(2) == frames[1].group(2)
    ctx.check(demo + "the second NMI's IRET frame sits at the same stack address as the "
              "first's: the IST switch reused the NMI stack", same,
              lines(*frames) + ([f"both frames at {m.symbols.format(int(frames[0].group(2), 16))}"]
                                if same else []), demo=True)
    gp = tr.find(r"^Reflecting exception 13/0 into the guest$")
    second = tr.find(r"^Injecting vNMI$", after=gp) if gp else None
    where = m.symbols.format(int(frames[1].group(1), 16)) if len(frames) == 2 else "?"
    ctx.check(demo + "the #GP unblocked NMIs and the pending NMI arrived while the #GP "
              f"handler ran on that stack (it interrupted {where})",
              second is not None and len(frames) == 2
              and not where.startswith("cpu_idle_acpi"), lines(gp, second), demo=True)
    text = m.console_output()[start:].decode(errors="replace")
    report = [ln for ln in text.splitlines() if re.search(r"Fatal trap|stack pointer|frame "
                                                           r"pointer", ln)]
    ctx.check(demo + "the machine survives: the guest reports the fatal #GP over the "
              "overwritten frames and stops in its debugger (no host error)",
              bool(report) and m.surface == "ddb", report + [f"surface {m.surface}"],
              demo=True)


def knob_matrix(ctx: Ctx) -> None:
    for knobs in combinations():
        run_combination(ctx, knobs)
    demonstrate_ist_overwrite(ctx)


__all__ = ["combinations", "knob_matrix", "part_name", "Trace"]
