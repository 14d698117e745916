"""Recording: a wrapper around Machine with the same input methods. Each input is written
(stamped with the retired-instruction count and virtual time) before it is made, and a
checkpoint after it; state is read through the wrapper unchanged.

Every record is one os.write() of a whole line followed by fsync, so a kill leaves a file
whose complete lines are all valid records.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from .. import __version__
from ..machine import FIRMWARE_DIR, Machine, MachineError
from . import checkpoint, ops
from .format import FORMAT, SUFFIX, VERSION, SessionError, dumps

REPO_DIR = FIRMWARE_DIR.parent


def firmware_ref(path: Path) -> str:
    """The kernel as the header names it: relative to the repository when it is one of
    ours (so sessions replay from any checkout), else absolute."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(REPO_DIR))
    except ValueError:
        return str(p)


def firmware_path(ref: str) -> Path:
    p = Path(ref)
    return p if p.is_absolute() else REPO_DIR / p


def machine_config(m: Machine, tunables: dict[str, str] | None = None) -> dict[str, Any]:
    """The constructor arguments that rebuild `m` (before it has run)."""
    vm = m.vm
    if tunables is None:
        tunables = {}
        if vm.knobs.trace_guest_exceptions:
            tunables["hw.vmm.trace_guest_exceptions"] = str(vm.knobs.trace_guest_exceptions)
    cfg = {"kernel": firmware_ref(m.kernel_path), "vcpus": len(vm.vcpus),
           "ram_size": vm.ram_size, "policy": vm.policy.name, "name": vm.name,
           "tunables": dict(tunables), "quantum": m.quantum,
           "retire_order": vm.vcpus[0].cpu.retire.capacity.bit_length() - 1}
    boot = m.boot_path()
    if boot != "auto":      # a forced boot path (an older header has none: auto)
        cfg["boot"] = boot
    return cfg


def files_written(m: Machine) -> list[list]:
    """[path as typed, sha256, size] of each host file the last input wrote."""
    return [w.as_record() for w in m.shell.take_written()]


def add_files_written(ck: dict, m: Machine, op: str) -> None:
    """The files a host line wrote go into its checkpoint (an empty list when none), so
    replay can verify them; a checkpoint without the key predates file records."""
    files = files_written(m)
    if files or op == "host":
        ck["files"] = files


class SessionWriter:
    """Append-only JSON Lines writer: whole lines, flushed and fsync'ed one by one."""

    def __init__(self, path: str | os.PathLike, sync: bool = True):
        self.path = Path(path)
        self.sync = sync
        if "\0" in str(self.path):     # the OS refuses it with ValueError (the tui fuzzer)
            raise SessionError(f"{str(self.path)!r}: not a valid file name")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                                          | os.O_APPEND, 0o644)
        except OSError as e:
            raise SessionError(f"{self.path}: {e.strerror or e}") from None

    def write(self, record: dict) -> None:
        if self.fd is None:
            raise SessionError(f"{self.path}: the recording is closed")
        line = dumps(record)
        n = os.write(self.fd, line)
        if n != len(line):             # a short write leaves a torn line a reader ignores
            raise SessionError(f"{self.path}: short write ({n} of {len(line)} bytes)")
        if self.sync:
            os.fsync(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class RecordingMachine:
    """Machine with every input recorded into a `.nitrec` session. Reads (vm, symbols,
    shell, ddb, surface, ...) pass through to the machine."""

    def __init__(self, machine: Machine, path: str | os.PathLike,
                 tunables: dict[str, str] | None = None, sync: bool = True):
        if machine.total_retired:
            raise SessionError(f"the machine has already run {machine.total_retired} "
                               "instructions; start recording before the first input")
        self.machine = machine
        self.config = machine_config(machine, tunables)
        fw = firmware_path(self.config["kernel"])
        try:
            sha = hashlib.sha256(fw.read_bytes()).hexdigest()
        except OSError as e:
            raise SessionError(f"{fw}: {e.strerror or e}") from None
        self.writer = SessionWriter(path, sync)
        self.path = self.writer.path
        self.inputs = 0
        self.closed = False
        knobs = checkpoint.take(machine)["knobs"]
        self.writer.write({"t": "header", "format": FORMAT, "version": VERSION,
                           "nitdbg": __version__,
                           "firmware": {"path": self.config["kernel"], "sha256": sha},
                           "config": self.config, "policy": self.config["policy"],
                           "knobs": knobs})

    def __getattr__(self, name: str) -> Any:
        return getattr(self.machine, name)

    def record(self, op: str, *args: Any, **kwargs: Any) -> Any:
        """Make one input on the machine and record it with the checkpoint after it."""
        if self.closed:
            raise SessionError(f"{self.path}: the recording is closed")
        m = self.machine
        bound = ops.bind(Machine, op, args, kwargs)
        n = self.inputs
        self.writer.write({"t": "in", "n": n, "op": op, "args": bound,
                           "icount": m.total_retired, "now": m.now()})
        self.inputs += 1
        error = None
        result = None
        try:
            result = getattr(m, op)(*args, **kwargs)
        except MachineError as e:
            error = str(e)
        ck = {"t": "ck", "n": n, "input": n, "out": ops.result_digest(result)}
        if error is not None:
            ck["error"] = error
        ck.update(checkpoint.take(m))
        add_files_written(ck, m, op)
        if m.interrupted_at is not None:       # ^C: replay stops at the same step
            ck["interrupted_at"] = m.interrupted_at
            m.interrupted_at = None
        self.writer.write(ck)
        if error is not None:
            raise MachineError(error)
        return result

    # the Machine's input methods, recorded
    def host(self, *a: Any, **k: Any) -> str:
        return self.record("host", *a, **k)

    def type_line(self, *a: Any, **k: Any) -> str:
        return self.record("type_line", *a, **k)

    def console_input(self, *a: Any, **k: Any) -> None:
        return self.record("console_input", *a, **k)

    def debugger(self, *a: Any, **k: Any) -> str:
        return self.record("debugger", *a, **k)

    def enter_debugger(self, *a: Any, **k: Any) -> str:
        return self.record("enter_debugger", *a, **k)

    def assert_lapic_lvt(self, *a: Any, **k: Any) -> None:
        return self.record("assert_lapic_lvt", *a, **k)

    def inject_nmi(self, *a: Any, **k: Any) -> None:
        return self.record("inject_nmi", *a, **k)

    def run(self, *a: Any, **k: Any):  # noqa: ANN201 - StopEvent
        return self.record("run", *a, **k)

    def settle(self, *a: Any, **k: Any):  # noqa: ANN201 - StopEvent
        return self.record("settle", *a, **k)

    def boot_to_prompt(self, *a: Any, **k: Any) -> None:
        return self.record("boot_to_prompt", *a, **k)

    def run_until_output(self, *a: Any, **k: Any) -> bool:
        return self.record("run_until_output", *a, **k)

    def step_vcpu(self, *a: Any, **k: Any):  # noqa: ANN201 - StopEvent
        return self.record("step_vcpu", *a, **k)

    def leave_kdb(self, *a: Any, **k: Any) -> None:
        return self.record("leave_kdb", *a, **k)

    def force_reset(self) -> None:
        return self.record("force_reset")

    def force_poweroff(self) -> None:
        return self.record("force_poweroff")

    def close(self) -> None:
        """Write the end record (last) and close the file."""
        if self.closed:
            return
        m = self.machine
        self.writer.write({"t": "end", "inputs": self.inputs, "checkpoints": self.inputs,
                           "icount": m.total_retired, "now": m.now()})
        self.writer.close()
        self.closed = True

    def __enter__(self) -> RecordingMachine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def data_dir() -> Path:
    """The user's data directory for nitdbg (platformdirs, else XDG / ~/.local/share)."""
    try:
        import platformdirs
        return Path(platformdirs.user_data_dir("nitdbg", appauthor=False))
    except ImportError:
        base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
        return Path(base) / "nitdbg"


def default_session_path(directory: str | os.PathLike | None = None) -> Path:
    """The next free sessions/session-NNNN.nitrec (numbered, not dated: nothing here reads
    the wall clock)."""
    d = Path(directory) if directory is not None else data_dir() / "sessions"
    d.mkdir(parents=True, exist_ok=True)
    taken = {p.stem for p in d.glob(f"session-*{SUFFIX}")}
    n = 1
    while f"session-{n:04d}" in taken:
        n += 1
    return d / f"session-{n:04d}{SUFFIX}"


def start_recording(path: str | os.PathLike | None = None, machine: Machine | None = None,
                    sync: bool = True, **machine_kwargs: Any) -> RecordingMachine:
    """What the console and TUI call: a RecordingMachine over `machine` (or a new
    Machine(**machine_kwargs)), writing to `path` or the next file in the user's data
    directory. Raises MachineError / SessionError with one line."""
    if machine is None:
        machine = Machine(**machine_kwargs)
    tunables = machine_kwargs.get("tunables")
    p = Path(path) if path is not None else default_session_path()
    return RecordingMachine(machine, p, tunables=tunables, sync=sync)
