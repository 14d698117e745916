"""Recording a policy run's external inputs where they reached the guest's instruction stream
(`m.observed`; not the gdb stub's reverse-execution history, `m.timeline`, nitdbg/timeline.py).

The reference must see the same inputs at the same points of each vCPU's instruction stream,
whatever the hypervisor did to time in between (exit costs, delay_usecs, HLT jumps). So the
points are retired-instruction indices, not virtual times. The recording is one ordered list:

    ("run", vcpu, icount, kind)     the vCPU ran up to `icount` retired instructions and
                                     stopped with the user exit `kind` ("" mid-slice)
    ("nmi", vcpu, icount)           an NMI was raised for it (bhyvectl, LVT LINT1, an NMI IPI,
                                     the second NMI recursive_nmi raises at the port-0x61 read)
    ("intr", vcpu, icount, vector, level)  a fixed interrupt reached its local APIC's IRR
                                     (timer, IPI, an I/O APIC pin; level: its trigger mode)
    ("mem", vcpu, icount, hpa, b)   the hypervisor wrote guest memory (the frame
                                     iret_trigger_gpf corrupts)
    ("dr", vcpu, icount, n, value)  the host set a debug register (bhyvectl --set-drN)
    ("console", data)               bytes typed at COM1
    ("ddb_enter", vcpu) / ("ddb_cmd", line) / ("leave", vcpu)   the debugger's inputs

The slices ("run") are the scheduler's, so vCPUs sharing memory interleave the same way in
the reference. Knobs that only concern the hypervisor (invalidate_nested_mappings,
bounce_to_userspace, delay_usecs, pause exits) leave nothing here: they change time only.

Recording wraps methods of one machine's own objects (no class is changed), so any policy's
run can be recorded without the vmm knowing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..x86.faults import Fault

if TYPE_CHECKING:
    from ..machine import Machine

STOP_KINDS = frozenset({"kdb", "panic", "debug_exit", "shutdown", "unhandled"})


@dataclass
class Recording:
    """A policy run's inputs, and the configuration that rebuilds its machine."""

    config: dict[str, Any]
    entries: list[tuple] = field(default_factory=list)
    running: int | None = None
    marks: dict[int, int] = field(default_factory=dict)   # vcpu -> icount of its last "run"

    def add(self, m: Machine, entry: tuple) -> None:
        # An input in the middle of a slice ends the slice there, so the reference runs the
        # vCPU exactly as far before taking the input.
        r = self.running
        if r is not None:
            n = m.vm.vcpus[r].cpu.icount
            if self.marks.get(r, 0) != n:
                self.entries.append(("run", r, n, ""))
                self.marks[r] = n
        self.entries.append(entry)

    def slice_end(self, vcpu: int, icount: int, kind: str) -> None:
        if self.marks.get(vcpu, 0) != icount or kind in STOP_KINDS:
            self.entries.append(("run", vcpu, icount, kind))
            self.marks[vcpu] = icount

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.entries:
            out[e[0]] = out.get(e[0], 0) + 1
        return out


def _config(m: Machine) -> dict[str, Any]:
    vm = m.vm
    tunables = {}
    if vm.knobs.trace_guest_exceptions:
        tunables["hw.vmm.trace_guest_exceptions"] = str(vm.knobs.trace_guest_exceptions)
    return {"kernel": str(m.kernel_path), "vcpus": len(vm.vcpus), "ram_size": vm.ram_size,
            "name": vm.name, "tunables": tunables, "quantum": m.quantum,
            "retire_order": vm.vcpus[0].cpu.retire.capacity.bit_length() - 1}


class _Hook:
    """A recording wrapper around one bound method. A plain object, not a closure, so a deep
    copy of the machine (Machine.clone) copies it with the machine and its recording."""

    def __init__(self, fn: Callable, orig: Callable, tl: Recording, m: Machine, arg: Any = None):
        self.fn, self.orig, self.tl, self.m, self.arg = fn, orig, tl, m, arg

    def __call__(self, *a: Any, **kw: Any) -> Any:
        return self.fn(self, *a, **kw)


def _wrap(obj: object, name: str, fn: Callable, tl: Recording, m: Machine,
          arg: Any = None) -> _Hook:
    h = _Hook(fn, getattr(obj, name), tl, m, arg)
    setattr(obj, name, h)
    return h


def _run(h: _Hook, budget: int):
    v = h.arg
    h.tl.running = v.id
    try:
        ux = h.orig(budget)
    finally:
        h.tl.running = None
    h.tl.slice_end(v.id, v.cpu.icount, ux.kind)
    return ux


def _nmi(h: _Hook) -> None:
    h.tl.add(h.m, ("nmi", h.arg.id, h.arg.cpu.icount))
    h.orig()


def _intr(h: _Hook, vector: int, level: bool = False) -> bool:
    i = h.arg
    h.tl.add(h.m, ("intr", i, h.m.vm.vcpus[i].cpu.icount, vector, level))
    return h.orig(vector, level)


def _dr(h: _Hook, n: int, val: int) -> None:
    h.tl.add(h.m, ("dr", h.arg.id, h.arg.cpu.icount, n, val))
    h.orig(n, val)


def _feed(h: _Hook, data: bytes) -> None:
    h.tl.add(h.m, ("console", bytes(data)))
    h.orig(data)


def _gpf(h: _Hook, v) -> None:
    vm = h.m.vm
    try:
        hpa = vm.gla2hpa(v, v.vmcb.rsp)
    except (Fault, ValueError):     # the knob itself reports an unreachable frame
        h.orig(v)
        return
    before = vm.mem.read_bytes(hpa, 8)
    h.orig(v)
    after = vm.mem.read_bytes(hpa, 8)
    if after != before:
        h.tl.add(h.m, ("mem", v.id, v.cpu.icount, hpa, after))


def _enter(h: _Hook, vcpu: int, info: dict):
    h.tl.add(h.m, ("ddb_enter", vcpu))
    return h.orig(vcpu, info)


def _command(h: _Hook, line: str):
    h.tl.add(h.m, ("ddb_cmd", line))
    return h.orig(line)


def _leave(h: _Hook, vcpu: int) -> None:
    h.tl.add(h.m, ("leave", vcpu))
    h.orig(vcpu)


def record(m: Machine) -> Recording:
    """Start recording `m`'s inputs (before it has run). Returns the recording it fills."""
    tl = Recording(_config(m))
    vm = m.vm
    for v in vm.vcpus:
        _wrap(v, "run", _run, tl, m, v)
        _wrap(v, "set_dr", _dr, tl, m, v)
        vm.vlapics[v.id].on_nmi = _wrap(v, "inject_nmi", _nmi, tl, m, v)
    for i, vl in enumerate(vm.vlapics):
        _wrap(vl, "set_intr", _intr, tl, m, i)
    _wrap(vm.com1, "feed", _feed, tl, m)
    _wrap(vm, "_iret_trigger_gpf", _gpf, tl, m)
    _wrap(m.ddb, "enter", _enter, tl, m)
    _wrap(m.ddb, "command", _command, tl, m)
    _wrap(m, "leave_kdb", _leave, tl, m)
    m.observed = tl   # type: ignore[attr-defined]
    return tl
