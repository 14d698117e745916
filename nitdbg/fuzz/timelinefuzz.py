"""The timeline fuzzed: random inputs (runs with stop conditions, steps, NMIs, host and
console lines, register and memory writes) interleaved with step_back / back_to_stop at
odd points (the start of the history, just after a mark, after going back already).

Judged: nothing escapes but a one-line MachineError; and going back is exact: a step
forward of vCPU k followed by step_back(k) gives the state before the step again (digest)."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import strategies as st

from ..machine import Machine, MachineError
from ..timeline import Timeline
from . import digest
from .targets import Outcome, Target, _escape, internal_errors

BPS = [0, 0xFFFF_FFFF_8020_0000, 0xFFFF_FFFF_FFFF_FFFF]


@st.composite
def op(draw: Callable) -> tuple:
    k = draw(st.sampled_from(["run", "step", "back", "back", "backstop", "nmi", "host",
                              "console", "wreg", "wmem", "check"]))
    v = draw(st.integers(-1, 2))
    if k == "run":
        return (k, v, draw(st.integers(1, 30_000)), draw(st.booleans()))
    if k in ("step", "back", "check"):
        return (k, v)
    if k == "backstop":
        return (k, tuple(draw(st.lists(st.sampled_from(BPS), max_size=2))),
                draw(st.booleans()))
    if k == "host":
        return (k, draw(st.sampled_from(["sysctl debug.nit.recursive_nmi=1", "ktrdump -c",
                                         "bhyvectl --vm=vm2 --get-rip --cpu=0", "nope",
                                         "sysctl debug.nit.nosuch=1"])))
    if k == "console":
        return (k, draw(st.sampled_from([b"ls\r", b"\x03", b"", b"sysctl kern\r"])))
    if k == "wreg":
        return (k, v, draw(st.sampled_from(["rax", "rip", "rflags", "cr0", "nosuch"])),
                draw(st.sampled_from([0, 1, 1 << 63, (1 << 64) - 1, -1])))
    if k == "wmem":
        return (k, v, draw(st.sampled_from([0, 0x1000, (1 << 64) - 1, 0xFFFF_8000_0000_0000])),
                draw(st.binary(min_size=1, max_size=4)))
    return (k, v, draw(st.sampled_from(["ls\r", b"\x03"])))


def _do(m: Machine, o: tuple) -> Outcome | None:
    k = o[0]
    if k == "run":
        _, v, n, stop_at_bp = o
        vcpus = tuple(range(len(m.vcpus))) if v < 0 else (v,)
        stops = {i: {"bps": frozenset(BPS[1:2]) if stop_at_bp else frozenset()} for i in vcpus}
        m.run_stops(vcpus, stops, n)
    elif k == "step":
        m.run_stops((o[1],), {o[1]: {"step": True}}, 100_000)
    elif k == "back":
        m.step_back(o[1])
    elif k == "backstop":
        m.back_to_stop(o[1], ((0x1000, 0x2000, 1),) if o[2] else ())
    elif k == "nmi":
        m.inject_nmi(o[1])
    elif k == "host":
        m.host(o[1])
    elif k == "console":
        m.console_input(o[1])
    elif k == "wreg":
        m.write_reg(o[1], o[2], o[3])
    elif k == "wmem":
        m.write_mem(o[1], o[2], o[3])
    elif k == "check":
        v = o[1]
        if not 0 <= v < len(m.vcpus):
            return None
        before = digest.parts(m)
        cpu = m.vcpus[v]
        icount, exits = cpu.cpu.icount, cpu.exit_count
        m.run_stops((v,), {v: {"step": True}}, 100_000)
        if m.vcpus[v].cpu.icount != icount + 1 or m.vcpus[v].exit_count != exits:
            return None         # an exit or an event in the step: "back" is not "before"
        ev = m.step_back(v)
        if ev.reason != "begin":
            changed = digest.changed(before, digest.parts(m))
            if changed:
                return Outcome("changed", f"a step then a step back changed {changed}")
    return None


def timeline_target() -> Target:
    base = Machine(vcpus=2)
    base.boot_to_prompt()

    def run(ops: list[tuple]) -> Outcome:
        m = base.clone()
        Timeline(m)
        m.hold("gdb")
        try:
            for o in ops:
                try:
                    out = _do(m, o)
                except MachineError as e:
                    if "\n" in str(e).strip():
                        return Outcome("multiline", str(e))
                    continue
                if out is not None:
                    return out
        except Exception as e:  # noqa: BLE001 - the fuzzer's outermost layer counts escapes
            return _escape(e)
        errs = internal_errors(m)
        return Outcome("internal", errs[0]) if errs else Outcome()

    return Target("timeline", st.lists(op(), min_size=1, max_size=8), run)
