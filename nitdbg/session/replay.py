"""Replay: rebuild the machine from the header and make the recorded calls again, comparing
each checkpoint. No UI work: the machine runs as fast as it can."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..machine import Machine, MachineError
from . import checkpoint, ops
from .format import Session, SessionError, read_session
from .record import RecordingMachine, files_written, firmware_path

if TYPE_CHECKING:
    from ..hostcmds import HostFiles


@dataclass
class ReplayResult:
    path: Path
    inputs: int = 0                  # inputs replayed
    checkpoints: int = 0             # checkpoints compared
    retired: int = 0                 # machine.total_retired at the end
    divergence: str | None = None    # the first difference, as one line
    notes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)   # host files written, as the inputs named them
    machine: Machine | None = None

    @property
    def ok(self) -> bool:
        return self.divergence is None


def build_machine(s: Session) -> Machine:
    cfg = s.header["config"]
    fw = firmware_path(cfg.get("kernel", ""))
    try:
        sha = hashlib.sha256(fw.read_bytes()).hexdigest()
    except OSError as e:
        raise SessionError(f"{s.path}: firmware {fw}: {e.strerror or e}") from None
    except ValueError:          # a NUL in the header's kernel name (the fuzzer)
        raise SessionError(f"{s.path}: firmware {str(fw)!r} is not a valid file name") \
            from None
    if sha != s.header["firmware"].get("sha256"):
        rec = str(s.header["firmware"].get("sha256"))
        raise SessionError(f"{s.path}: firmware {cfg['kernel']} has changed since the "
                           f"recording (sha256 {sha[:12]} != {rec[:12]})")
    try:
        return Machine(kernel=fw, vcpus=cfg["vcpus"], ram_size=cfg["ram_size"],
                       policy=cfg["policy"], name=cfg["name"], tunables=cfg["tunables"],
                       quantum=cfg["quantum"], retire_order=cfg.get("retire_order", 18),
                       boot=cfg.get("boot", "auto"))
    except (KeyError, TypeError) as e:
        raise SessionError(f"{s.path}: bad configuration in the header ({e})") from None
    except MachineError as e:
        raise SessionError(f"{s.path}: {e}") from None


def replay(path: str | os.PathLike, verify: bool = True,
           show: Callable[[str], None] | None = None,
           record_to: str | os.PathLike | None = None,
           files: HostFiles | None = None) -> ReplayResult:
    """Re-execute a session. With `verify`, stop at the first checkpoint that differs and
    describe it; `show` receives each input and its output (a transcript); `record_to`
    re-records the replay (used to bring old sessions to the current format). The files
    the session's host commands write go to `files` (default: a memory table, no disk);
    with `verify` each is checked against the recorded digest."""
    s = read_session(path)
    res = ReplayResult(s.path)
    if s.header.get("nitdbg") != __version__:
        res.notes.append(f"recorded by nitdbg {s.header.get('nitdbg')}, "
                         f"replaying with {__version__}")
    if s.torn:
        res.notes.append(s.torn)
    if s.end is None:
        res.notes.append("no end record: the recording was cut short")
    m = build_machine(s)
    res.machine = m
    if files is not None:
        m.shell.fs = files
    wrote: list[list] | None = []
    target: Machine | RecordingMachine = m
    if record_to is not None:
        target = RecordingMachine(m, record_to, tunables=s.header["config"].get("tunables"))
    pending: dict | None = None
    result = None
    error: str | None = None
    for i, rec in enumerate(s.records):
        if rec["t"] == "in":
            if verify and rec.get("icount") != m.total_retired:
                res.divergence = (f"input {rec.get('n')} ({ops.describe(rec['op'], rec['args'])})"
                                  f": arrives at icount {m.total_retired} != {rec.get('icount')}"
                                  " (replaying vs recorded)")
                break
            pending, error = rec, None
            m.stop_at_step = interrupted_at(s.records, i)
            try:
                result = ops.apply(target, rec["op"], rec["args"])
            except MachineError as e:
                result, error = None, str(e)
            except KeyError as e:
                raise SessionError(f"{s.path}: record {i + 2} lacks {e}") from None
            finally:
                m.stop_at_step = None
                m.interrupted_at = None
            # (a re-recording takes the list for its own checkpoints)
            wrote = files_written(m) if not isinstance(target, RecordingMachine) else None
            res.files.extend(w[0] for w in wrote or [])
            res.inputs += 1
            if show is not None:
                text = ops.describe(rec["op"], rec["args"]) + "\n"
                out = result if isinstance(result, str) and result else error or ""
                if out:
                    text += out if out.endswith("\n") else out + "\n"
                show(text)             # one call per input: a stepping front end pauses once
        elif rec["t"] == "ck" and verify:
            res.checkpoints += 1
            mine = checkpoint.take(m)
            diff = checkpoint.first_difference(mine, rec)
            if diff is None and rec.get("error") != error:
                diff = f"error {error!r} != {rec.get('error')!r}"
            if diff is None and wrote is not None and "files" in rec:
                diff = files_difference(wrote, rec["files"])
            if diff is None and rec.get("out") != ops.result_digest(result):
                what = ops.describe(pending["op"], pending["args"]) if pending else "?"
                diff = f"output of input {rec.get('input')} ({what}) differs"
            if diff is not None:
                res.divergence = (f"checkpoint {rec.get('n')} at icount {rec.get('icount')}: "
                                  f"{diff} (replaying vs recorded)")
                break
    if verify and res.divergence is None and s.end is not None \
            and s.end.get("icount") != m.total_retired:
        res.divergence = (f"end at icount {s.end.get('icount')}: icount {m.total_retired}"
                          f" != {s.end.get('icount')} (replaying vs recorded)")
    if isinstance(target, RecordingMachine):
        target.close()
    res.retired = m.total_retired
    return res


def interrupted_at(records: list[dict], i: int) -> int | None:
    """The scheduling step at which input i was stopped by ^C, from its checkpoint."""
    if i + 1 < len(records) and records[i + 1].get("t") == "ck":
        step = records[i + 1].get("interrupted_at")
        if isinstance(step, int) and not isinstance(step, bool):
            return step
    return None


def files_difference(mine: list[list], recorded: object) -> str | None:
    """The first host file written differently ([path, sha256, size] records)."""
    if not isinstance(recorded, list):
        return "the checkpoint's 'files' is not a list"
    for i in range(max(len(mine), len(recorded))):
        a = mine[i] if i < len(mine) else None
        b = recorded[i] if i < len(recorded) else None
        if a == b or (isinstance(b, list) and a == list(b)):
            continue
        if a is None:
            return f"file {b[0] if isinstance(b, list) and b else b!r} was not written"
        if b is None or not isinstance(b, list) or len(b) != 3:
            return f"file {a[0]} was written, the recording has no such file"
        if a[0] != b[0]:
            return f"file {a[0]} written where the recording wrote {b[0]}"
        return f"file {a[0]}: sha256 {a[1][:12]} != {str(b[1])[:12]} ({a[2]} vs {b[2]} bytes)"
    return None


def verify(path: str | os.PathLike) -> ReplayResult:
    return replay(path, verify=True)
