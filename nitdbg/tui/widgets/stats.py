"""bhyvectl --get-stats of the selected vCPU: the counters that are not zero, changed ones
highlighted since the previous stop."""

from __future__ import annotations

from ..model import Snapshot
from .base import Pane, base_vcpu
from .lineview import LinePane


def _counters(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines()[1:]:
        desc, _, val = line.rpartition("\t")
        out[desc.strip()] = val
    return out


class StatsPane(LinePane, Pane):
    def key(self, snap: Snapshot, base: Snapshot | None) -> object:
        old = base_vcpu(base, snap.selected)
        return snap.selected, snap.vcpu.stats, old.stats if old else None

    def show(self, snap: Snapshot, base: Snapshot | None) -> None:
        v = snap.vcpu
        cur = _counters(v.stats)
        old_v = base_vcpu(base, v.id)
        old = _counters(old_v.stats) if old_v is not None else {}
        self.set_title(f"stats vCPU {v.id}")
        lines = []
        for desc, val in cur.items():
            if val == "0":
                continue
            changed = desc in old and old[desc] != val
            lines.append(((f"{val:>8} ", "bold #ffcb6b" if changed else "#c3e88d"),
                          (desc, "")))
        self.set_lines(lines)
