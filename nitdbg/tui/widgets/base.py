"""What every pane has: `show(snapshot, baseline)` (the baseline is the snapshot of the
previous stop, for "changed since the last stop" marks)."""

from __future__ import annotations

from ..model import Snapshot


class Pane:
    """Mixin: the screen calls show() on every Pane it has, whatever the layout."""

    def show(self, snap: Snapshot, base: Snapshot | None) -> None:
        raise NotImplementedError
