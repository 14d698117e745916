"""bhyvectl --get-stats of the selected vCPU: the counters that are not zero, changed ones
highlighted since the previous stop."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ..model import Snapshot
from .base import Pane


def _counters(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines()[1:]:
        desc, _, val = line.rpartition("\t")
        out[desc.strip()] = val
    return out


class StatsPane(Static, Pane):
    def show(self, snap: Snapshot, base: Snapshot | None) -> None:
        v = snap.vcpu
        cur = _counters(v.stats)
        old = _counters(base.vcpus[v.id].stats) if base is not None else {}
        self.border_title = f"stats vCPU {v.id}"
        t = Text(no_wrap=True, overflow="ellipsis")
        for desc, val in cur.items():
            if val == "0":
                continue
            if t.plain:
                t.append("\n")
            changed = desc in old and old[desc] != val
            t.append(f"{val:>8} ", style="bold #ffcb6b" if changed else "#c3e88d")
            t.append(desc)
        self.update(t)
