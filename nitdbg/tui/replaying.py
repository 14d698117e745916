"""The machine worker's replay: open a recorded session and step through its inputs, back
by restoring the nearest saved state (a mixin of MachineWorker; worker thread)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..machine import Machine


class ReplayMixin:
    """Needs from the worker: m, replay, selected, _out(), _new_builder(), _mark_stop()."""

    def _replay_open(self, path: str) -> None:
        from ..session.format import SessionError, read_session
        from ..session.replay import build_machine
        try:
            session = read_session(path)
            m = build_machine(session)
        except (SessionError, OSError) as e:
            self._out(f"{e}\n", "error")
            return
        self.replay = _Replay(session, m)
        self.m = m
        self._new_builder()
        self.selected = 0
        self._mark_stop()
        self._out(f"replaying {path}: {len(session.inputs)} inputs; ] forward, [ back\n",
                  "info")

    def _replay_step(self, delta: int) -> None:
        rp = self.replay
        if rp is None:
            self._out("no session open for replay (o)\n", "error")
            return
        target = max(0, min(len(rp.session.inputs), rp.pos + delta))
        if target < rp.pos:
            # back: restore the nearest saved state and re-execute up to the target
            at = rp.rewind(target)
            self._out(f"replay: restored the state saved at input {at}\n", "info")
        while rp.pos < target:
            self._out(rp.apply_next(), "info")
        self.m = rp.m
        self._new_builder()
        self._out(f"replay: at input {rp.pos} of {len(rp.session.inputs)}\n", "info")



class _Replay:
    """A session being stepped through: its machine and how many inputs it has had."""

    # a full copy of the machine is kept at every SAVE_EVERY-th input: stepping back
    # restores the nearest one at or before the target and re-executes from there
    SAVE_EVERY = 4

    def __init__(self, session, m: Machine) -> None:  # noqa: ANN001 - session.Session
        self.session = session
        self.m = m
        self.pos = 0
        self.saved: dict[int, Machine] = {0: m.clone()}

    def rewind(self, target: int) -> int:
        """Restore the nearest saved state at or before `target`; returns its position."""
        pos = max(p for p in self.saved if p <= target)
        self.m = self.saved[pos].clone()
        self.pos = pos
        return pos

    def apply_next(self) -> str:
        from ..session import checkpoint, ops
        inp = self.session.inputs[self.pos]
        cks = [c for c in self.session.checkpoints if c.get("input") == inp.get("n")]
        # a run the front end stopped (p, ^C) stops at the same scheduling step here
        step = cks[0].get("interrupted_at") if cks else None
        self.m.stop_at_step = step if type(step) is int else None
        try:
            result = ops.apply(self.m, inp["op"], inp["args"])
        finally:
            self.m.stop_at_step = None
            self.m.interrupted_at = None
        self.pos += 1
        if self.pos % self.SAVE_EVERY == 0 and self.pos not in self.saved:
            self.saved[self.pos] = self.m.clone()
        line = f"#{inp.get('n')} {ops.describe(inp['op'], inp['args'])}"
        if isinstance(result, str) and result:
            line += "\n" + result.rstrip("\n")
        if cks:
            diff = checkpoint.first_difference(checkpoint.take(self.m), cks[0])
            line += f"\n  checkpoint: {'DIVERGED: ' + diff if diff else 'same as recorded'}"
        return line + "\n"
