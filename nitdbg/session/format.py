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
from dataclasses import dataclass, field
from pathlib import Path

FORMAT = "nitrec"
VERSION = 1
SUFFIX = ".nitrec"


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
    """Read and validate a session file; raises SessionError (one line) if it is refused."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise SessionError(f"{p}: {e.strerror or e}") from None
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
    s = Session(p, header)
    for i, raw in enumerate(complete[1:], start=2):
        rec = _parse(raw)
        if rec is None and i == len(complete) and not tail:
            # the last complete line is garbage: a torn write that happened to end in \n
            s.torn = f"ignoring a torn last record at line {i} ({len(raw)} bytes)"
            break
        if not isinstance(rec, dict) or rec.get("t") not in ("in", "ck", "end"):
            raise SessionError(f"{p}: line {i} is not a nitrec record")
        if s.end is not None:
            raise SessionError(f"{p}: line {i} follows the end record")
        if rec["t"] == "end":
            s.end = rec
        else:
            s.records.append(rec)
    if tail.strip():
        s.torn = f"ignoring a torn last record at line {len(lines)} ({len(tail)} bytes)"
    return s


def _parse(raw: bytes) -> object | None:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
