"""Reverse execution for a live machine: checkpoints plus deterministic re-execution, after
rr's ReplayTimeline.

The timeline records every input the machine is given (each outermost call of a Machine
method marked @_input: runs, steps, NMIs, console input, sysctls and other host commands,
ddb commands, register and memory writes from gdb) and keeps marks: full clones of the
machine between inputs, spaced by retired instructions and thinned as they age so memory
stays bounded. The machine is deterministic, so restoring a mark and repeating the inputs
after it reproduces the history exactly, and a stop condition armed during the repeat
(x86/hoststop.py) stops it at any earlier position:

  step_back(k)   the position just before vCPU k executed its last instruction
  back_to_stop() the last breakpoint or watchpoint hit before now, found by repeating the
                 history from a mark with probes that count hits without stopping

After going back, the recorded future is dropped: running forward executes live again.
"""

from __future__ import annotations

import copy
import zlib
from array import array
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .machine import MachineError, StopEvent
from .x86.hoststop import Seek

if TYPE_CHECKING:
    from .machine import Machine
    from .x86.cpu import Cpu

SPACING = 100_000       # retired instructions between marks (a step back repeats at most this)
STOP_SPACING = 2_000    # ... or this many when the machine stopped for a host debugger
STOP_OPS = 16           # ... or after this many inputs since the last mark
RECENT = 8              # the newest marks are all kept ...
PER_BAND = 2            # ... older ones: this many per power-of-two band of age


@dataclass
class Op:
    """One recorded input: a Machine method and its arguments. `cut` is set on the last op
    when the history was cut inside it (vcpu -> the position where it stops); `end` is
    every vCPU's (retired count, rip) after it."""

    name: str
    args: tuple
    kwargs: dict
    cut: dict[int, Seek] | None = None
    end: tuple[tuple[int, int], ...] | None = None


@dataclass
class Mark:
    n_ops: int                  # inputs applied before this state
    total: int                  # machine.total_retired
    icounts: tuple[int, ...]
    machine: Machine            # its retirement rings are empty: they are in `rings`
    # each vCPU's retirement ring, zlib-compressed: 2 MiB a vCPU of RIPs, mostly the same few
    # loops, shrink ~100x, and a mark is read back only when the history is repeated
    rings: tuple[bytes, ...] = field(default=(), repr=False)


def _pack_rings(m: Machine) -> tuple[bytes, ...]:
    """Take the retirement rings out of `m` (a fresh clone), compressed."""
    out = []
    for v in m.vm.vcpus:
        log = v.cpu.retire
        out.append(zlib.compress(log.rips, 1))
        log.rips = array(log.rips.typecode)
    return tuple(out)


def _unpack_rings(m: Machine, rings: tuple[bytes, ...]) -> None:
    for v, packed in zip(m.vm.vcpus, rings, strict=True):
        a = array(v.cpu.retire.rips.typecode)
        a.frombytes(zlib.decompress(packed))
        v.cpu.retire.rips = a


class Timeline:
    def __init__(self, m: Machine, spacing: int = SPACING):
        self.m = m
        self.spacing = spacing
        self.ops: list[Op] = []
        self.marks: list[Mark] = []
        self.replaying = False
        m.timeline = self
        self._mark()

    # ------------------------------------------------------------------ recording
    def apply(self, name: str, args: tuple, kwargs: dict) -> Any:
        """Perform and record one input (called by Machine's @_input methods)."""
        m = self.m
        op = Op(name, copy.deepcopy(args), copy.deepcopy(kwargs))
        before = m.total_retired
        m._in_op = True
        try:
            return getattr(m, name)(*args, **kwargs)
        finally:
            m._in_op = False
            op.end = self._positions()
            self.ops.append(op)
            last = self.marks[-1]
            ran = m.total_retired - last.total
            # near a stop, marks come closer, so a step back repeats little
            if ran >= self.spacing or (name == "run_stops" and m.total_retired > before and (
                    ran >= STOP_SPACING or len(self.ops) - last.n_ops >= STOP_OPS)):
                self._mark()

    def _icounts(self) -> tuple[int, ...]:
        return tuple(v.cpu.icount for v in self.m.vm.vcpus)

    def _positions(self) -> tuple[tuple[int, int], ...]:
        return tuple((v.cpu.icount, _rip(v)) for v in self.m.vm.vcpus)

    def _mark(self) -> None:
        clone = self.m.clone()
        self.marks.append(Mark(len(self.ops), self.m.total_retired, self._icounts(), clone,
                               _pack_rings(clone)))
        self._thin()

    def _thin(self) -> None:
        """Keep the first mark, the RECENT newest, and PER_BAND per band of age
        [2^b, 2^(b+1)) * spacing among the others."""
        if len(self.marks) <= RECENT + 1:
            return
        now = self.m.total_retired
        old = self.marks[1:-RECENT]
        seen: dict[int, int] = {}
        kept = []
        for mk in reversed(old):                 # newest first: keep the newest per band
            band = ((now - mk.total) // self.spacing).bit_length()
            if seen.get(band, 0) < PER_BAND:
                seen[band] = seen.get(band, 0) + 1
                kept.append(mk)
        self.marks = [self.marks[0], *reversed(kept), *self.marks[-RECENT:]]

    def memory_bytes(self) -> int:
        """Guest memory and retirement logs (as stored, compressed) held by the marks (the
        bulk of a clone)."""
        total = 0
        for mk in self.marks:
            vm = mk.machine.vm
            total += len(vm.mem.pages) * 4096
            for v in vm.vcpus:
                total += v.cpu.retire.rips.itemsize * len(v.cpu.retire.rips)
            total += sum(len(r) for r in mk.rings)
        return total

    # ------------------------------------------------------------------ re-execution
    def _restore(self, mk: Mark) -> None:
        """Make the machine object itself the mark's state (front ends keep their reference)."""
        m = self.m
        listeners = m.listeners
        old_vm = m.vm
        state = copy.deepcopy(mk.machine.__dict__, {id(mk.machine): m})
        m.__dict__.clear()
        m.__dict__.update(state)
        _unpack_rings(m, mk.rings)
        m.listeners = listeners
        m.timeline = self
        # The state replaced is garbage in reference cycles, which only the cyclic collector
        # frees, when it next runs; its retirement rings (2 MiB a vCPU, the bulk of it) go
        # now: twenty reverse steps held some 80 MiB of them.
        for v in old_vm.vcpus:
            v.cpu.retire.rips = array(v.cpu.retire.rips.typecode)

    def _repeat(self, op: Op, overlay: dict[int, dict]) -> None:
        m = self.m
        ov = {k: dict(v) for k, v in overlay.items()}
        for k, s in (op.cut or {}).items():
            ov.setdefault(k, {}).setdefault("seek", s)
        m.host_overlay = ov or None
        m._in_op = True
        try:
            m.arm_host_stops({})
            getattr(m, op.name)(*copy.deepcopy(op.args), **copy.deepcopy(op.kwargs))
        except MachineError:
            pass                        # it failed the first time too, changing nothing
        finally:
            m._in_op = False
            m.host_overlay = None
            m.arm_host_stops({})

    def _replay(self, mk: Mark, end: int, overlay: dict[int, dict], fired: list) -> int | None:
        """Restore `mk` and repeat ops up to `end` with `overlay` armed; the index of the op
        in which the overlay's seek fired (then stop there), or None."""
        self._restore(mk)
        self.replaying = True
        try:
            for i in range(mk.n_ops, end):
                self._repeat(self.ops[i], overlay)
                if fired:
                    return i
        finally:
            self.replaying = False
        return None

    def _cut(self, i: int, vcpu: int, seek: Seek) -> None:
        """The history now ends inside op i, at `seek` on `vcpu`."""
        op = self.ops[i]
        cut = dict(op.cut or {})
        cut[vcpu] = seek
        self.ops[i + 1:] = []
        self.ops[i] = replace(op, cut=cut, end=self._positions())
        self.marks = [mk for mk in self.marks if mk.n_ops <= i] or self.marks[:1]

    def _seek(self, vcpu: int, seek: Seek, mk: Mark) -> bool:
        fired: list = []

        def probe(cpu: Cpu, what: tuple) -> None:
            if what == ("seek",):
                fired.append(True)

        overlay = {vcpu: {"seek": seek, "probe": probe}}
        i = self._replay(mk, len(self.ops), overlay, fired)
        if i is None:
            # not found: rebuild the present and say so
            self._replay(mk, len(self.ops), {}, [])
            return False
        if self.ops[i].end == self._positions():
            i = self._past_held_ops(i, overlay, fired, mk)
        self._cut(i, vcpu, seek)
        return True

    def _past_held_ops(self, i: int, overlay: dict, fired: list, mk: Mark) -> int:
        """The seek fired where op i ended anyway (a step stops where the next one starts):
        the inputs recorded after op i while the vCPU stood there (console input, an NMI, a
        sysctl) came before its next instruction, so the position is in the later op that
        runs the vCPU on, and the history is cut there (the fuzzer found a step back that
        dropped a console input typed between two steps). A later op in which the seek
        fires but which also ended there (a step of this vCPU cut where it began, by an
        earlier step back) is passed over the same way: the position lasts until the op in
        which the vCPU goes on from it (the fuzzer found a step back that also undid another
        vCPU's step recorded after such an op)."""
        self.replaying = True
        try:
            for j in range(i + 1, len(self.ops)):
                fired.clear()
                self._repeat(self.ops[j], overlay)
                if fired and self.ops[j].end != self._positions():
                    return j
        finally:
            self.replaying = False
        fired.clear()                   # not reached again: back to the first position
        first = self._replay(mk, len(self.ops), overlay, fired)
        return i if first is None else first

    # ------------------------------------------------------------------ going back
    # the gdb stub's breakpoints and watchpoints, for `back-stop` typed at the console
    points_provider = None

    def gdb_points(self) -> tuple[tuple[int, ...], tuple]:
        if self.points_provider is None:
            return (), ()
        return self.points_provider()

    def at_start(self, vcpu: int) -> bool:
        return self._icounts()[vcpu] <= self.marks[0].icounts[vcpu]

    def step_back(self, vcpu: int) -> StopEvent:
        """Back to the position just before vCPU `vcpu` executed its last instruction."""
        m = self.m
        m._vcpu(vcpu)
        if self.at_start(vcpu):
            return StopEvent("begin", vcpu, {"hit": ("begin",)})
        cpu = m.vm.vcpus[vcpu].cpu
        t = cpu.icount - 1
        seek = Seek("B", t, cpu.retire.rips[t & cpu.retire.mask])
        mk = max((mk for mk in self.marks if mk.icounts[vcpu] <= t), key=lambda x: x.n_ops)
        if not self._seek(vcpu, seek, mk):
            raise MachineError(f"the history does not reach vCPU {vcpu} at {t}")
        return StopEvent("gdb", vcpu, {"hit": ("step",)})

    def back_to_stop(self, bps: tuple[int, ...] = (), watches: tuple = ()) -> StopEvent:
        """Back to the newest hit of a breakpoint (linear addresses) or watchpoint
        ((lo, hi, kind) ranges) before now, on any vCPU; to the start of the history
        when there is none."""
        m = self.m
        n = len(m.vm.vcpus)
        present = (self._icounts(), tuple(_rip(v) for v in m.vm.vcpus))
        end = len(self.ops)
        for j in range(len(self.marks) - 1, -1, -1):
            mk = self.marks[j]
            hits: list[tuple] = []
            last: dict[int, tuple] = {}

            def probe(cpu: Cpu, what: tuple, hits=hits, last=last) -> None:
                if what == ("seek",):
                    return
                pos = ("A" if what[0] == "watch" else "B", cpu.icount, cpu.rip)
                if last.get(cpu.vcpu_id) == pos:       # the same boundary, after an exit
                    return
                last[cpu.vcpu_id] = pos
                hits.append((cpu.vcpu_id, pos, what, self._icounts()))

            ov = {k: {"probe": probe, "bps": bps, "watches": watches} for k in range(n)}
            self._replay(mk, end, ov, [])
            hits = [h for h in hits
                    if (h[3], h[1][2]) != (present[0], present[1][h[0]])]
            if hits:
                k, (point, icount, rip), what, _ = hits[-1]
                if not self._seek(k, Seek(point, icount, rip), mk):
                    raise MachineError("the earlier stop could not be reached again")
                return StopEvent("gdb", k, {"hit": what})
            if j > 0:
                end = mk.n_ops
        # no earlier hit: the start of the history
        first = self.marks[0]
        self._restore(first)
        self.ops[first.n_ops:] = []
        self.marks = [first]
        return StopEvent("begin", None, {"hit": ("begin",)})


def _rip(v) -> int:  # noqa: ANN001 - a Vcpu
    return v.cpu.rip if v.svm.in_guest else v.vmcb.rip
