"""The debugger's own state as plain data: what a rejected command must leave as it was.

`save()` takes it before a command runs and `restore()` puts it back when the command is
refused, so a half-parsed or failing line changes neither the debugger (dot, the next `x`
address and format, the line a blank line repeats, breakpoints, the run mode) nor what the
front ends see of it. `digest()` is the same state as a hash, for tests and the fuzzer.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .breakpoints import Breakpoint
    from .main import Ddb, RunState

# The attributes of Ddb that a command may change (everything else is fixed at creation or
# lives in guest memory and registers, which the machine digest covers).
FIELDS = ("active", "vcpu", "tf_addr", "trap_type", "cpu_id", "stop_reason", "tf_set",
          "last_line", "next_addr", "dot", "examine_format", "thread")


@dataclass
class DdbState:
    values: dict[str, object]
    breaks: list[Breakpoint]
    inserted: bool
    run_state: RunState | None
    audit_checks: int
    audit_open: dict


def save(db: Ddb) -> DdbState:
    return DdbState({k: getattr(db, k) for k in FIELDS}, copy.deepcopy(db.breaks.list),
                    db.breaks.inserted, copy.deepcopy(db.run_state), len(db.audit.checks),
                    copy.deepcopy(db.audit._open))


def restore(db: Ddb, st: DdbState) -> None:
    for k, v in st.values.items():
        setattr(db, k, v)
    db.breaks.list = st.breaks
    db.breaks.inserted = st.inserted
    db.run_state = st.run_state
    del db.audit.checks[st.audit_checks:]
    db.audit._open = st.audit_open


def digest(db: Ddb) -> str:
    st = save(db)
    body = [st.values, [vars(b) for b in st.breaks], st.inserted,
            vars(st.run_state) if st.run_state else None, st.audit_checks,
            {k: vars(v) for k, v in st.audit_open.items()}]
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=repr).encode()).hexdigest()
