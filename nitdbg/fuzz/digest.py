"""One hash of everything a rejected command must leave as it was: registers and the rest of
the architectural state, VMCBs, memory, devices (I/O bus and local APICs), KTR, stats, the
console, the host shell's files, the debugger's own state, and which vCPUs are in kdb."""

from __future__ import annotations

import hashlib
import json

from ..ddb import state as ddb_state
from ..machine import Machine
from ..session import checkpoint


def parts(m: Machine) -> dict[str, str]:
    """The state in named parts (a failing test names the part that changed)."""
    ck = checkpoint.take(m)
    out = {k: v for k, v in ck["digests"].items()}
    out["regs"] = _sha([ck["regs"], ck["vcpus"], ck["knobs"], ck["surface"], ck["icount"],
                        ck["now"]])
    out["vlapic"] = _sha([la.state() for la in m.vm.vlapics])
    out["machine"] = _sha([sorted(m.in_kdb.items()), sorted(m.stopped), m.shutdown,
                           m.exit_status, m.total_retired, getattr(m, "powered_off", None),
                           getattr(m, "boots", None)])
    out["host_files"] = _sha(sorted(m.shell.files.items()))
    out["ddb"] = ddb_state.digest(m._ddb) if m._ddb is not None else "-"
    return out


def digest(m: Machine) -> str:
    return _sha(parts(m))


def changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return [k for k in before if before[k] != after.get(k)]


def _sha(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=repr).encode()).hexdigest()
