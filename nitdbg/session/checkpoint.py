"""Checkpoints: the machine's state after an input, small enough to store after every input
and detailed enough to name the first field that differs on replay.

Per vCPU the registers are stored as values (so a divergence reads `rflags 0x246 != 0x346`);
the big parts (VMCBs, devices, KTR, memory, stats, console) as SHA-256 digests.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from ..x86.regs import GPR_NAMES

if TYPE_CHECKING:
    from ..machine import Machine

# Registers stored by value, in the order a divergence is looked for.
REG_ORDER = ("rip", "rflags", *GPR_NAMES, "cr0", "cr2", "cr3", "cr4", "efer", "dr6", "dr7",
             "cpl", "cs", "ss")
VCPU_ORDER = ("icount", "now", "nmi_state", "nmi_pending", "last_unblock", "halted")
DIGEST_ORDER = ("arch", "vmcb", "devices", "ktr", "stats", "console", "memory")


def vcpu_regs(m: Machine, i: int) -> dict[str, int]:
    """The live architectural registers of vCPU i (the CPU model's own state: while a vCPU
    stays in guest mode across simulation slices it is newer than the VMCB save area)."""
    cpu = m.vm.vcpus[i].cpu
    d = {"rip": cpu.rip, "rflags": cpu.rflags}
    d.update({n: cpu.regs[k] for k, n in enumerate(GPR_NAMES)})
    d.update(cr0=cpu.cr0, cr2=cpu.cr2, cr3=cpu.cr3, cr4=cpu.cr4, efer=cpu.efer,
             dr6=cpu.dr[6], dr7=cpu.dr[7], cpl=cpu.cpl, cs=cpu.seg[1].sel,
             ss=cpu.seg[2].sel)
    return d


# json.dumps(obj, sort_keys=True, default=repr) without a new encoder per call
_JSON = json.JSONEncoder(sort_keys=True, default=repr)


def _sha(obj: object) -> str:
    if isinstance(obj, bytes | bytearray):
        return hashlib.sha256(obj).hexdigest()
    return hashlib.sha256(_JSON.encode(obj).encode()).hexdigest()


def take(m: Machine) -> dict:
    """The checkpoint body (without the record's n/input/out keys)."""
    vm = m.vm
    regs = [vcpu_regs(m, i) for i in range(len(vm.vcpus))]
    vcpus = [{"icount": v.cpu.icount, "now": v.now(), "nmi_state": v.nmi_state,
              "nmi_pending": bool(v.nmi_pending), "last_unblock": v.last_unblock,
              "halted": bool(v.halted)} for v in vm.vcpus]
    knobs = vm.knobs.as_dict()
    arch = _sha([[_full_arch(v.cpu)] for v in vm.vcpus])
    digests = {
        "arch": arch,
        "vmcb": _sha([v.vmcb.digest() for v in vm.vcpus]),
        "devices": _sha(vm.iobus.snapshot()),
        "ktr": vm.ktr.digest(),
        "stats": _sha(vm.stats.snapshot()),
        "console": _sha(bytes(vm.console_out)),
        "memory": vm.mem.digest(),
    }
    return {"icount": m.total_retired, "now": m.now(), "regs": regs, "vcpus": vcpus,
            "knobs": knobs, "surface": m.surface, "digests": digests}


def _full_arch(cpu) -> list:  # noqa: ANN001 - nitdbg.x86.cpu.Cpu
    """Everything architectural that the stored registers leave out (segments, descriptor
    tables, the NMI/shadow state), for the `arch` digest."""
    segs = [(s.sel, s.base, s.limit, s.attrib) for s in cpu.seg]
    return [cpu.regs, cpu.rip, cpu.rflags, segs,
            (cpu.gdtr.base, cpu.gdtr.limit), (cpu.idtr.base, cpu.idtr.limit),
            (cpu.tr.sel, cpu.tr.base), cpu.cr0, cpu.cr2, cpu.cr3, cpu.cr4, cpu.efer,
            list(cpu.dr), cpu.cpl, cpu.shadow, bool(cpu.nmi_blocked), bool(cpu.halted),
            cpu.icount]


def _fmt(name: str, v: object) -> str:
    if isinstance(v, bool) or not isinstance(v, int):
        return str(v)
    if name in ("icount", "now", "cpl") or name.startswith("debug."):
        return str(v)
    return hex(v)


def _same(a: object, b: object) -> bool:
    """Equal as JSON values: `true` is not `1` (Python's True == 1 would say it is)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict | list):
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    return a == b


# values equal as JSON exactly when they are of one type and == (a float is not: -0.0, NaN)
_SCALARS = frozenset((int, str, bool, type(None)))


def _same_scalars(a: dict, b: dict) -> bool:
    """The same keys in the same order, every value a scalar of the same type on both
    sides and equal: then every field of the two is _same. (False says nothing.)"""
    if a != b or list(a) != list(b):
        return False
    types = list(map(type, a.values()))
    return types == list(map(type, b.values())) and _SCALARS.issuperset(types)


def first_difference(mine: dict, recorded: dict) -> str | None:
    """`rflags 0x246 != 0x346` for the first field that differs, or None. Registers are named
    bare on a one-vCPU machine and `name[i]` (bhyvectl's style) on a larger one."""
    if not _same(mine["icount"], recorded["icount"]):
        return f"icount {mine['icount']} != {recorded['icount']}"
    if not _same(mine["now"], recorded["now"]):
        return f"virtual time {mine['now']} ns != {recorded['now']} ns"
    nv = len(recorded["regs"])
    if len(mine["regs"]) != nv:
        return f"vCPUs {len(mine['regs'])} != {nv}"

    def label(name: str, i: int) -> str:
        return name if nv == 1 else f"{name}[{i}]"

    # (each group compared whole first: a replay that agrees, nearly every checkpoint,
    # needs no field by field walk)
    for i in range(nv):
        a, b = mine["vcpus"][i], recorded["vcpus"][i]
        if not _same_scalars(a, b):
            for k in VCPU_ORDER:
                if not _same(a.get(k), b.get(k)):
                    return f"{label(k, i)} {_fmt(k, a.get(k))} != {_fmt(k, b.get(k))}"
        a, b = mine["regs"][i], recorded["regs"][i]
        if not _same_scalars(a, b):
            for k in REG_ORDER:
                if not _same(a.get(k), b.get(k)):
                    return f"{label(k, i)} {_fmt(k, a.get(k))} != {_fmt(k, b.get(k))}"
    if not _same_scalars(mine["knobs"], recorded["knobs"]):
        for k in sorted(set(mine["knobs"]) | set(recorded["knobs"])):
            a, b = mine["knobs"].get(k), recorded["knobs"].get(k)
            if not _same(a, b):
                return f"debug.nit.{k} {a} != {b}"
    if not _same(mine.get("surface"), recorded.get("surface")):
        return f"surface {mine.get('surface')} != {recorded.get('surface')}"
    if not _same_scalars(mine["digests"], recorded["digests"]):
        for k in DIGEST_ORDER:
            a, b = mine["digests"].get(k), recorded["digests"].get(k)
            if not _same(a, b):
                return f"{k} digest {str(a)[:12]} != {str(b)[:12]}"
    return None
