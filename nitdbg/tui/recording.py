"""The machine worker's recording: start and stop a session without ever rebooting behind
the user's back (a mixin of MachineWorker; runs on the worker thread)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..machine import Machine
    from ..session import RecordingMachine


class RecordingMixin:
    """Needs from the worker: m, kwargs, boot, recorder, replay, last_session,
    _confirm_record, _out(), _new_builder(), _mark_stop()."""

    def _record(self, path: str) -> None:
        """Start/stop recording. Starting never reboots behind the user's back: a machine
        that has not run yet is recorded as it is; one whose inputs were recorded before (the
        session just stopped) is rebuilt under the new recorder by re-executing those inputs
        and checked to be the very same state; otherwise `r` says what it would do (reboot
        the VM with the same configuration and record from its boot) and a second `r` does
        it."""
        m = self.m
        assert m is not None
        if self.recorder is not None:
            self.recorder.close()
            self.last_session = str(self.recorder.path)
            self._out(f"recording stopped: {self.recorder.path} (r records again from this "
                      "state)\n", "info")
            self.m = self.recorder.machine
            self.recorder = None
            return
        if self.replay is not None:
            self._out("a replay is open: its machine is not recorded (o opens another)\n",
                      "error")
            return
        if m.total_retired == 0:
            rec = self._begin_recording(path, machine=m)
            self._out(f"recording to {rec.path} (r stops)\n", "info")
            return
        if self.last_session and self._rerecord(path):
            return
        if not self._confirm_record:
            self._confirm_record = True
            self._out("this state was not reached under a recording, and a session replays "
                      "from a boot: press r again to reboot the VM (same configuration) and "
                      "record from its boot; any other key keeps going unrecorded\n", "error")
            return
        self._confirm_record = False
        rec = self._begin_recording(path)
        if self.boot:
            rec.boot_to_prompt()
        self._new_builder()
        self._mark_stop()
        self._out(f"recording to {rec.path} (the VM was rebooted for it, as asked; r "
                  "stops)\n", "info")

    def _rerecord(self, path: str) -> bool:
        """Record from the current state: a fresh machine under the recorder re-executes the
        inputs of the session stopped before; True if it reached the same state."""
        from ..session import ops
        from ..session.checkpoint import first_difference, take
        from ..session.format import SessionError, read_session
        from ..session.replay import interrupted_at
        old = self.m
        assert old is not None
        try:
            session = read_session(self.last_session)
        except (SessionError, OSError) as e:
            self._out(f"{e}\n", "error")
            return False
        rec = self._begin_recording(path, keep=True)
        inner = rec.machine
        for i, r in enumerate(session.records):
            if r["t"] != "in":
                continue
            # a run stopped by p stops at the same scheduling step (the recorder notes
            # it in the new session's checkpoint as it did in the old one's)
            inner.stop_at_step = interrupted_at(session.records, i)
            try:
                ops.apply(rec, r["op"], r["args"])
            finally:
                inner.stop_at_step = None
        diff = first_difference(take(rec.machine), take(old))
        if diff is not None:
            rec.close()
            self._out(f"inputs were made since {self.last_session} stopped ({diff}): the "
                      "state cannot be rebuilt from it\n", "error")
            return False
        self.recorder, self.m = rec, rec
        self._new_builder()
        self._out(f"recording to {rec.path} from this very state: the {len(session.inputs)} "
                  f"inputs of {self.last_session} re-executed under it, the state checked "
                  "the same (r stops)\n", "info")
        return True

    def _begin_recording(self, path: str, machine: Machine | None = None,
                         keep: bool = False) -> RecordingMachine:
        """A recorder over `machine` (a new one if None; it must not have run). `keep`: do
        not make it the worker's machine yet. The session package is imported here, on the
        worker thread, not before the first paint."""
        from ..machine import Machine
        from ..session import RecordingMachine, default_session_path
        target = path or str(default_session_path())
        rec = RecordingMachine(machine or Machine(**self.kwargs), target,
                               tunables=self.kwargs.get("tunables"))
        if not keep:
            self.recorder = rec
            self.m = rec
            self.replay = None
        return rec
