"""The `.nitrec` file: JSON Lines, one record per line, written whole and fsync'ed.

    {"t": "header", "format": "nitrec", "version": 1, "nitdbg": ..., "firmware": {...},
     "config": {...}, "policy": ..., "knobs": {...}}
    {"t": "in", "n": 0, "op": "host", "args": {...}, "icount": N, "now": NS}
    {"t": "ck", "n": 0, "input": 0, "icount": N, "now": NS, "out": H, "regs": [...], ...}
    ...
    {"t": "end", "inputs": N, "checkpoints": K, "icount": N, "now": NS}

An input is a call on the machine (the machine is deterministic given the same sequence of
calls, so calls, not wall-clock timing, make replay exact); it is stamped with the machine's
retired-instruction count and virtual time when it arrives. A checkpoint follows every input.
A kill during recording leaves a readable prefix: a reader ignores a torn last line and says
so; anything else that is not a record is refused.
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass, field
from pathlib import Path

from . import schema

FORMAT = "nitrec"
VERSION = 1
SUFFIX = ".nitrec"
SESSION_MAX = 256 << 20    # bytes: far above any recording (a checkpoint is ~2.5 KB)


class SessionError(Exception):
    """A one-line error about a session file or a recording."""


@dataclass
class Session:
    path: Path
    header: dict
    records: list[dict] = field(default_factory=list)   # inputs and checkpoints, in order
    end: dict | None = None
    torn: str | None = None          # a note when the last line was cut short

    @property
    def inputs(self) -> list[dict]:
        return [r for r in self.records if r["t"] == "in"]

    @property
    def checkpoints(self) -> list[dict]:
        return [r for r in self.records if r["t"] == "ck"]


def dumps(record: dict) -> bytes:
    """One record as one line (compact, key order kept, no NaN)."""
    return (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()


def read_session(path: str | Path) -> Session:
    """Read and validate a session file; raises SessionError (one line) if it is refused.
    Every record is checked against the schema (session/schema.py) here, before anything is
    replayed; the error names the record (= line) number and the field."""
    p = Path(path)
    data = _read_bounded(p)
    if not data:
        raise SessionError(f"{p}: empty file, not a nitrec session")
    lines = data.split(b"\n")
    complete = lines[:-1]            # every line that ended with a newline
    tail = lines[-1]                 # b"" when the file ends with a newline
    if not complete:
        head = b'{"t":"header"'
        if tail.startswith(head) or head.startswith(tail):
            raise SessionError(f"{p}: truncated header (the recording was cut short)")
        raise SessionError(f"{p}: not a nitrec session")
    header = _parse(complete[0])
    if not isinstance(header, dict) or header.get("t") != "header" \
            or header.get("format") != FORMAT:
        if complete[0].lstrip().startswith(b'{"t":"header"') and header is None:
            raise SessionError(f"{p}: truncated header")
        raise SessionError(f"{p}: not a nitrec session")
    version = header.get("version")
    if version != VERSION:
        raise SessionError(f"{p}: nitrec version {version!r} is not supported "
                           f"(this nitdbg reads version {VERSION})")
    for key in ("config", "firmware"):
        if not isinstance(header.get(key), dict):
            raise SessionError(f"{p}: truncated header (no {key})")
    problem = schema.check_header(header)
    if problem is not None:
        raise SessionError(f"{p}: record 1 (header): {problem.line()}")
    nvcpus = header["config"]["vcpus"]
    s = Session(p, header)
    for i, raw in enumerate(complete[1:], start=2):
        rec = _parse(raw)
        if rec is None and i == len(complete) and not tail:
            # the last complete line is garbage: a torn write that happened to end in \n
            s.torn = f"ignoring a torn last record at line {i} ({len(raw)} bytes)"
            break
        if rec is TOO_DEEP:
            raise SessionError(f"{p}: record {i}: nested deeper than a record can be")
        if not isinstance(rec, dict) or type(rec.get("t")) is not str \
                or rec["t"] not in schema.RECORD_SCHEMAS:
            raise SessionError(f"{p}: line {i} is not a nitrec record")
        problem = schema.check_record(rec, nvcpus)
        if problem is not None:
            raise SessionError(f"{p}: record {i} ({rec['t']}): {problem.line()}")
        if s.end is not None:
            raise SessionError(f"{p}: line {i} follows the end record")
        if rec["t"] == "end":
            s.end = rec
        else:
            s.records.append(rec)
    if tail.strip():
        s.torn = f"ignoring a torn last record at line {len(lines)} ({len(tail)} bytes)"
    return s


TOO_DEEP = object()        # _parse: the line nests deeper than the JSON parser recurses


def _parse(raw: bytes) -> object | None:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    except RecursionError:
        return TOO_DEEP


def _read_bounded(p: Path) -> bytes:
    """The file's bytes, refusing what is not a regular file or is larger than SESSION_MAX
    before reading it (a device like /dev/zero never ends)."""
    try:
        st = p.stat()
    except OSError as e:
        raise SessionError(f"{p}: {e.strerror or e}") from None
    except ValueError:          # a NUL in the name (the TUI's open dialog; the fuzzer)
        raise SessionError(f"{str(p)!r}: not a valid file name") from None
    if not stat.S_ISREG(st.st_mode):
        raise SessionError(f"{p}: not a regular file")
    if st.st_size > SESSION_MAX:
        raise SessionError(f"{p}: {st.st_size} bytes is larger than a session may be "
                           f"({SESSION_MAX >> 20} MiB)")
    try:
        with p.open("rb") as f:
            data = f.read(SESSION_MAX + 1)
    except OSError as e:
        raise SessionError(f"{p}: {e.strerror or e}") from None
    if len(data) > SESSION_MAX:
        raise SessionError(f"{p}: larger than a session may be ({SESSION_MAX >> 20} MiB)")
    return data
