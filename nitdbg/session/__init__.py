"""Recorded, replayable sessions (`.nitrec`, JSON Lines): record the inputs made on a
Machine, replay them, verify every checkpoint, and name the first divergence."""

from .checkpoint import first_difference
from .checkpoint import take as take_checkpoint
from .cli import main_replay
from .format import FORMAT, SUFFIX, VERSION, Session, SessionError, read_session
from .record import RecordingMachine, SessionWriter, data_dir, default_session_path, start_recording
from .replay import ReplayResult, replay, verify


def record(path, machine=None, **machine_kwargs) -> RecordingMachine:  # noqa: ANN001
    """Start recording into `path` (see start_recording)."""
    return start_recording(path, machine=machine, **machine_kwargs)


__all__ = ["FORMAT", "SUFFIX", "VERSION", "RecordingMachine", "ReplayResult", "Session",
           "SessionError", "SessionWriter", "data_dir", "default_session_path",
           "first_difference", "main_replay", "read_session", "record", "replay",
           "start_recording", "take_checkpoint", "verify"]
