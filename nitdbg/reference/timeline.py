"""Recording a policy run's external inputs where they reached the guest's instruction stream.

The reference must see the same inputs at the same points of each vCPU's instruction stream,
whatever the hypervisor did to time in between (exit costs, delay_usecs, HLT jumps). So the
points are retired-instruction indices, not virtual times. The timeline is one ordered list:

    ("run", vcpu, icount, kind)     the vCPU ran up to `icount` retired instructions and
                                     stopped with the user exit `kind` ("" mid-slice)
    ("nmi", vcpu, icount)           an NMI was raised for it (bhyvectl, LVT LINT1, an NMI IPI,
                                     the second NMI recursive_nmi raises at the port-0x61 read)
    ("intr", vcpu, icount, vector)  a fixed interrupt reached its local APIC's IRR (timer, IPI)
    ("mem", vcpu, icount, hpa, b)   the hypervisor wrote guest memory (the frame
                                     iret_trigger_gpf corrupts)
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

if TYPE_CHECKING:
    from ..machine import Machine

STOP_KINDS = frozenset({"kdb", "panic", "debug_exit", "shutdown", "unhandled"})


@dataclass
class Timeline:
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


def _wrap(obj: object, name: str, make: Callable[[Callable], Callable]) -> None:
    setattr(obj, name, make(getattr(obj, name)))


def record(m: Machine) -> Timeline:
    """Start recording `m`'s inputs (before it has run). Returns the timeline it fills."""
    tl = Timeline(_config(m))
    vm = m.vm

    for v in vm.vcpus:
        def run_(orig: Callable, v=v) -> Callable:
            def run(budget: int):
                tl.running = v.id
                try:
                    ux = orig(budget)
                finally:
                    tl.running = None
                tl.slice_end(v.id, v.cpu.icount, ux.kind)
                return ux
            return run
        _wrap(v, "run", run_)

        def nmi_(orig: Callable, v=v) -> Callable:
            def inject_nmi() -> None:
                tl.add(m, ("nmi", v.id, v.cpu.icount))
                orig()
            return inject_nmi
        _wrap(v, "inject_nmi", nmi_)
        vm.vlapics[v.id].on_nmi = v.inject_nmi

    for i, vl in enumerate(vm.vlapics):
        def intr_(orig: Callable, i=i) -> Callable:
            def set_intr(vector: int) -> bool:
                tl.add(m, ("intr", i, vm.vcpus[i].cpu.icount, vector))
                return orig(vector)
            return set_intr
        _wrap(vl, "set_intr", intr_)

    def feed_(orig: Callable) -> Callable:
        def feed(data: bytes) -> None:
            tl.add(m, ("console", bytes(data)))
            orig(data)
        return feed
    _wrap(vm.com1, "feed", feed_)

    def gpf_(orig: Callable) -> Callable:
        def iret_trigger_gpf(v) -> None:
            try:
                hpa = vm.gla2hpa(v, v.vmcb.rsp)
            except Exception:  # noqa: BLE001 - the knob itself reports an unreachable frame
                orig(v)
                return
            before = vm.mem.read_bytes(hpa, 8)
            orig(v)
            after = vm.mem.read_bytes(hpa, 8)
            if after != before:
                tl.add(m, ("mem", v.id, v.cpu.icount, hpa, after))
        return iret_trigger_gpf
    _wrap(vm, "_iret_trigger_gpf", gpf_)

    ddb = m.ddb

    def enter_(orig: Callable) -> Callable:
        def enter(vcpu: int, info: dict):
            tl.add(m, ("ddb_enter", vcpu))
            return orig(vcpu, info)
        return enter
    _wrap(ddb, "enter", enter_)

    def cmd_(orig: Callable) -> Callable:
        def command(line: str):
            tl.add(m, ("ddb_cmd", line))
            return orig(line)
        return command
    _wrap(ddb, "command", cmd_)

    def leave_(orig: Callable) -> Callable:
        def leave_kdb(vcpu: int) -> None:
            tl.add(m, ("leave", vcpu))
            orig(vcpu)
        return leave_kdb
    _wrap(m, "leave_kdb", leave_)
    m.timeline = tl   # type: ignore[attr-defined]
    return tl
