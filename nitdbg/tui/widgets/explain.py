"""The explain panel: what happened since the previous stop, link by link, each with the
rule that produced it and the manual section (computed by nitdbg.tui.explain from the
machine's events, the policy's transitions and the audit). Long texts wrap; the pane
scrolls when the chain is longer than it."""

from __future__ import annotations

from ..model import Explanation, Snapshot
from .base import Pane
from .lineview import Line, LineView


def explanation_lines(xs: tuple[Explanation, ...]) -> list[Line]:
    if not xs:
        return [(("nothing notable yet: inject an NMI (n)", "#697098"),)]
    out: list[Line] = []
    for x in xs:
        out.append(((x.title, "bold #ffcb6b"), (": " + x.rule + " — ", ""),
                    (x.source, "italic #82aaff")))
        out.append((("  [" + x.evidence + "]", "#697098"),))
    return out


class ExplainPane(LineView, Pane):
    # the scrollbar is always there: a chain that needs one and the next that does not
    # would otherwise lay the whole screen out again on a step
    DEFAULT_CSS = "ExplainPane { overflow-y: scroll; }"
    wrap = True
    follow_end = False          # a chain reads from its first link

    def key(self, snap: Snapshot, base: Snapshot | None) -> object:
        return snap.selected, snap.explain

    def show(self, snap: Snapshot, base: Snapshot | None) -> None:
        self.set_title(f"explain vCPU {snap.selected}")
        self.set_lines(explanation_lines(snap.explain))
        self.scroll_home(animate=False)
