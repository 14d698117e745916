"""`nitdbg run --kernel FILE`: run any supported ELF headless.

The events file is JSON Lines, one object per line, in the order things happened per vCPU
(chunks of execution are flushed in turn). Schema, every record has "type" and "vcpu":

    {"type": "event", "vcpu": 0, "seq": 1234, "time": 12340, "kind": "exception"|"nmi"|
     "intr"|"softint"|"inject"|"vmrun"|"vmexit"|"iret", "vector": 1, "error_code": null,
     "rip": "0x...", "rflags": "0x...", "dr6": "0x..."}   (rip/rflags: the pushed values for
                                                          deliveries, what an IRET loaded,
                                                          guest RIP otherwise)
    {"type": "vmexit", "vcpu": 0, "seq": 1240, "code": "0x74", "name": "VMEXIT_IRET",
     "info1": "0x0", "info2": "0x0", "intinfo": "0x0", "rip": "0x...", "nrip": "0x..."}
    {"type": "ktr", "index": 17, "cpu": 0, "time": 12345, "message": "vm vm2[0]: ..."}
    {"type": "insn", "vcpu": 0, "seq": 1235, "time": 12350, "rip": "0x..."}
                                                          (only with --trace-instructions)
    {"type": "end", "reason": "debug_exit", "retired": 123456, "exit_status": 3}

`seq` is the vCPU's retirement count at that point; `time` is virtual nanoseconds.
The exit status follows isa-debug-exit ((value << 1) | 1, as QEMU) when the guest uses it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from .machine import Machine, describe_stop
from .svm import exitcodes as ec
from .x86.retire import EV_NAMES

CHUNK = 100_000


def _hex(v: int | None) -> str | None:
    return None if v is None else f"{v:#x}"


class EventWriter:
    def __init__(self, m: Machine, f: TextIO, trace_insns: bool):
        self.m = m
        self.f = f
        self.trace = trace_insns
        self.seq = [0] * len(m.vcpus)
        self.ev_seen = [0] * len(m.vcpus)
        self.ktr_seq = 0
        for v in m.vcpus:
            v.exit_listeners.append(self._exit)

    def _w(self, obj: dict) -> None:
        self.f.write(json.dumps(obj) + "\n")

    def _exit(self, vcpu, e) -> None:  # noqa: ANN001
        self._w({"type": "vmexit", "vcpu": vcpu.id, "seq": vcpu.cpu.icount,
                 "code": _hex(e.code & 0xFFFF_FFFF_FFFF_FFFF), "name": ec.apm_name(e.code),
                 "info1": _hex(e.info1), "info2": _hex(e.info2), "intinfo": _hex(e.intinfo),
                 "rip": _hex(e.rip), "nrip": _hex(e.nrip)})

    def flush(self) -> None:
        for v in self.m.vcpus:
            log = v.cpu.retire
            evs = list(log.events)
            total = len(evs)
            # events appended since last flush (the deque may have dropped old ones)
            new = evs[max(0, total - (v.cpu.retire_events_total() - self.ev_seen[v.id])):]
            self.ev_seen[v.id] = v.cpu.retire_events_total()
            for e in new:
                self._w({"type": "event", "vcpu": v.id, "seq": e.seq,
                         "time": log.time_of(e.seq), "kind": EV_NAMES[e.kind],
                         "vector": e.vector, "error_code": e.error_code, "rip": _hex(e.rip),
                         "rflags": _hex(e.rflags), "dr6": _hex(e.dr6)})
            if self.trace:
                for r in log.retired(self.seq[v.id], v.cpu.icount):
                    self._w({"type": "insn", "vcpu": v.id, "seq": r.seq, "time": r.time,
                             "rip": _hex(r.rip)})
            self.seq[v.id] = v.cpu.icount
        for ent in self.m.vm.ktr.iter_entries():
            if ent.seq < self.ktr_seq:
                continue
            self._w({"type": "ktr", "index": ent.index, "cpu": ent.cpu,
                     "time": ent.timestamp, "message": ent.message})
            self.ktr_seq = ent.seq + 1


def run_headless(a: argparse.Namespace, m: Machine) -> int:
    for s in a.sysctl:
        res = m.vm.sysctl.run([s])
        if res.status:
            print(res.stderr.strip(), file=sys.stderr)
            return 1
    events = serial = None
    try:
        # both output files open before the run, so a bad path refuses it (not after it)
        if a.events_out:
            events = open(a.events_out, "w")  # noqa: SIM115 - closed below
        if a.serial_out:
            serial = open(a.serial_out, "wb")  # noqa: SIM115 - closed below
    except OSError as e:
        print(f"nitdbg: {e.filename}: {e.strerror}", file=sys.stderr)
        if events is not None:
            events.close()
        return 1
    writer = EventWriter(m, events, a.trace_instructions) if events else None
    left = a.max_instructions
    until_ns = m.now() + int(a.max_seconds * 1_000_000_000)
    ev = None
    try:
        while left > 0:
            before = m.total_retired
            ev = m.run(max_insns=min(CHUNK, left), until_ns=until_ns)
            left -= m.total_retired - before
            if writer:
                writer.flush()
            if ev.reason not in ("budget",):
                break
    finally:
        out = m.console_output()
        if serial is not None:
            with serial:
                serial.write(out)
        else:
            sys.stdout.buffer.write(out)
        sys.stdout.buffer.write(bytes(m.vm.debugcon_out))
        sys.stdout.flush()
        if events:
            events.write(json.dumps({"type": "end", "reason": ev.reason if ev else "none",
                                     "retired": m.total_retired,
                                     "exit_status": m.exit_status}) + "\n")
            events.close()
    if ev is not None and ev.reason not in ("budget", "debug_exit", "idle", "time"):
        msg = describe_stop(m, ev) or f"stopped: {ev.reason}\n"
        sys.stderr.write(msg)
        if ev.reason == "internal":
            return 70            # EX_SOFTWARE: a bug in nitdbg, not the guest's exit status
    if m.exit_status is not None:
        return m.exit_status
    return 1 if ev is not None and ev.reason == "unhandled" else 0
