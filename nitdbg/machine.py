"""The facade every front end uses: build a VM, run it, talk to its console, and the host
commands of the seed (bhyvectl, sysctl, ktrdump, sleep, cat, grep).

Scheduling is deterministic: the runnable vCPU with the smallest virtual time runs next for
one quantum of instructions; a halted vCPU waits at its next timer deadline.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .guest.boot import BootImage, VcpuBootState, load_kernel
from .guest.elf import LoadError
from .guest.symbols import SymbolTable
from .hostcmds import POWERED_OFF, HostFiles, HostShell
from .vmm import initsipi
from .vmm.vcpu import UserExit, Vcpu
from .vmm.vm import Vm
from .x86.faults import Fault
from .x86.regs import GPR_NAMES, RAX

FIRMWARE_DIR = Path(__file__).resolve().parent.parent / "firmware"
DEFAULT_KERNEL = FIRMWARE_DIR / "amd64" / "kernel.elf"
I386_KERNEL = FIRMWARE_DIR / "i386" / "kernel.elf"
# Instructions a vCPU runs before the simulator turns to the next runnable one. Small, because
# real vCPUs run in parallel and races like the broadcast-NMI deadlock depend on it; a lone
# runnable vCPU runs in long slices.
QUANTUM = 100
SOLO_QUANTUM = 20_000
INF = float("inf")
# The deadlock watchdog: every running vCPU has taken this many PAUSE exits in a row at the
# same spin-loop RIP, with nothing else happening.
SPIN_EXITS = 200
SPIN_NS = 500_000   # ... and all of them have spun together for 0.5 ms of virtual time
SETTLE_NS = 100_000_000          # settle(): at most 100 ms of virtual time ...
SETTLE_INSNS = 3_000_000         # ... or this many instructions
RESUME_INSNS = 2_000_000         # a multi-step debugger command gives the prompt back after this
# A debugger command that resumes the guest waits this long in virtual time for the next stop:
# a step over an idle HLT stops when the CPU next wakes, and a tickless idle CPU wakes at
# least twice a second (firmware/amd64/clock.c), so half a second and a margin.
RESUME_NS = 1_000_000_000


class MachineError(Exception):
    """A one-line error for the user (bad option, bad file, bad state)."""


def _input(fn: Callable) -> Callable:
    """Mark a method that gives the machine an input or runs it: with a timeline attached
    (nitdbg/timeline.py) the outermost such call is recorded, so re-execution from a
    checkpoint repeats it exactly."""
    @functools.wraps(fn)
    def wrapper(self: Machine, *args, **kwargs):
        lock = self.lock
        if lock is not None:               # a gdb stub on another thread (gdb/server.py)
            with lock:
                return _call(self, fn, args, kwargs)
        return _call(self, fn, args, kwargs)
    return wrapper


def _call(m: Machine, fn: Callable, args: tuple, kwargs: dict):  # noqa: ANN202
    tl = m.timeline
    if tl is None or m._in_op:
        return fn(m, *args, **kwargs)
    return tl.apply(fn.__name__, args, kwargs)


@dataclass
class StopEvent:
    """Why run() returned."""

    reason: str                 # budget, kdb, shutdown, debug_exit, idle, panic, unhandled,
    vcpu: int | None = None     # time, until, stopped, poweroff,
    #                             internal (info: rip, bytes, insn, error, message)
    info: dict = field(default_factory=dict)


class Machine:
    def __init__(self, kernel: str | os.PathLike | None = None, vcpus: int | None = None,
                 ram_size: int = 64 << 20, policy: str = "iret-tracing", name: str = "vm2",
                 tunables: dict[str, str] | None = None, quantum: int = QUANTUM,
                 retire_order: int = 18, host_files: HostFiles | None = None,
                 boot: str = "auto"):
        path = Path(kernel) if kernel is not None else DEFAULT_KERNEL
        if not 1 <= quantum <= 1_000_000:
            raise MachineError(f"quantum {quantum} is out of range 1..1000000 instructions")
        # what force_reset() rebuilds the VM from
        self._config = {"kernel": path, "vcpus": vcpus, "ram_size": ram_size,
                        "policy": policy, "name": name, "tunables": dict(tunables or {}),
                        "retire_order": retire_order, "boot": boot}
        self.kernel_path = path
        self.quantum = quantum
        self._build()
        self.boots = 1                          # 1 + resets: front ends restart their views
        self.powered_off = False
        self.listeners: list[Callable[[StopEvent], None]] = []
        self.total_retired = 0
        # ^C: a front end's signal handler sets the flag (request_interrupt); run() stops at
        # its next scheduling step and notes which step it was, so a recording can replay
        # the same stop (stop_at_step) without anything here reading a clock.
        self.sched_steps = 0
        self._interrupt = False
        self.interrupted_at: int | None = None
        self.stop_at_step: int | None = None
        # where ktrdump -o writes and cat/grep read: a memory table unless a front end
        # passes the real disk (DiskFiles)
        self.shell = HostShell(self, host_files)

    def _build(self) -> None:
        """Load the kernel into a new VM from self._config (construction and reset)."""
        c = self._config
        path = c["kernel"]
        try:
            image = load_kernel(str(path), c["vcpus"], c["ram_size"], boot=c["boot"])
        except LoadError as e:
            raise MachineError(str(e)) from None
        except OSError as e:
            raise MachineError(f"{path}: {e.strerror or e}") from None
        try:
            vm = Vm(c["name"], len(image.vcpus), c["ram_size"], c["policy"],
                    c["retire_order"])
        except ValueError as e:
            raise MachineError(str(e)) from None
        for oid, value in c["tunables"].items():
            res = vm.sysctl.run([f"{oid}={value}"])
            if res.status:
                raise MachineError(res.stderr.strip().splitlines()[0])
        self.vm = vm
        self.image = image
        self.symbols: SymbolTable = image.symbols
        self.vm.boot()
        self._load(image)
        self.in_kdb: dict[int, dict] = {}       # vcpu -> hypercall info while in the debugger
        self.stopped: set[int] = set()          # vCPUs the front end holds
        self.shutdown: str | None = None
        self.exit_status: int | None = None
        self._ddb = None

    # ------------------------------------------------------------------ reset / power off
    @_input
    def force_reset(self) -> None:
        """bhyvectl --force-reset: reboot the VM from the same kernel, vCPUs, policy and
        tunables. What belongs to the host survives: the KTR ring, the debug.nit knobs, the
        host clock (the new vCPUs start at the present virtual time) and the recording."""
        old, t = self.vm, self.now()
        self._build()
        self.vm.ktr.take_over(old.ktr)
        for name, value in old.knobs.as_dict().items():
            if name != "trace_guest_exceptions":     # a boot tunable: from the config
                setattr(self.vm.knobs, name, value)
        for v in self.vm.vcpus:
            v.cpu.advance_time(t - v.now())
        self.boots += 1
        self.powered_off = False

    @_input
    def force_poweroff(self) -> None:
        """bhyvectl --force-poweroff: stop the VM; it runs again only after force_reset().
        The host side (KTR, stats, sysctl, files) stays readable."""
        for vcpu in list(self.in_kdb):
            self.leave_kdb(vcpu)
        self.powered_off = True

    def request_interrupt(self) -> None:
        """^C: stop the current run at its next scheduling step (safe from a signal
        handler: it only sets a flag)."""
        self._interrupt = True

    def clear_interrupt(self) -> None:
        """A ^C that came after the run it meant to stop stops nothing later."""
        self._interrupt = False

    def _check_on(self) -> None:
        if self.powered_off:
            raise MachineError(POWERED_OFF.format(name=self.vm.name))

    def clone(self) -> Machine:
        """A complete, independent copy of the machine in its current state (a checkpoint
        to return to: replay steps back by cloning forward from the nearest one)."""
        import copy
        listeners, self.listeners = self.listeners, []
        # the timeline (it holds clones) and a thread lock are the host's, not the state's
        host = {k: self.__dict__.pop(k) for k in ("timeline", "lock") if k in self.__dict__}
        try:
            return copy.deepcopy(self)
        finally:
            self.listeners = listeners
            self.__dict__.update(host)

    # ------------------------------------------------------------------ host side
    def host(self, line: str) -> str:
        """A host command line (bhyvectl, sysctl, ktrdump, sleep, cat, | grep), or `back
        [VCPU]` / `back-stop` to go back in time (with a timeline attached)."""
        word, _, rest = line.strip().partition(" ")
        if word in ("back", "back-stop"):
            return self._back(word, rest.strip())
        return self._host(line)

    @_input
    def _host(self, line: str) -> str:
        return self.shell.run(line)

    def _back(self, word: str, rest: str) -> str:
        try:
            if word == "back":
                if rest and not rest.isdigit():
                    return "back: usage: back [VCPU]\n"
                ev = self.step_back(int(rest or "0"))
            else:
                if rest:
                    return "back-stop: usage: back-stop\n"
                ddb = [b.address for b in self._ddb.breaks.user_breakpoints()] \
                    if self._ddb is not None else []
                gdb = self.timeline.gdb_points() if self.timeline is not None else ((), ())
                ev = self.back_to_stop(tuple(ddb) + tuple(gdb[0]), tuple(gdb[1]))
        except MachineError as e:
            return f"{word}: {e}\n"
        if ev.reason == "begin":
            return f"{word}: at the start of the recorded history\n"
        k = ev.vcpu if ev.vcpu is not None else 0
        rip = self.live_regs(k)["rip"]
        return (f"{word}: vCPU {k} at {self.symbols.format(rip)} ({rip:#x}), "
                f"{self.vm.vcpus[k].cpu.icount} instructions retired\n")

    @_input
    def assert_lapic_lvt(self, vcpu: int, pin: int = 1) -> None:
        self._check_on()
        self._catch_up(vcpu)
        self.vm.assert_lapic_lvt(vcpu, pin)

    @_input
    def inject_nmi(self, vcpu: int) -> None:
        self._check_on()
        self._catch_up(vcpu)
        self.vm.inject_nmi(vcpu)

    # ------------------------------------------------------------------ boot
    def boot_path(self) -> str:
        """The boot path this machine was built with: auto, amd64 or multiboot."""
        return self._config["boot"]

    def _load(self, image: BootImage) -> None:
        for gpa, data in image.memory:
            self.vm.mem.write_bytes(gpa, data)
        for v, st in zip(self.vm.vcpus, image.vcpus, strict=True):
            apply_boot_state(v, st)

    # ------------------------------------------------------------------ accessors
    @property
    def vcpus(self) -> list[Vcpu]:
        return self.vm.vcpus

    def now(self) -> int:
        """Virtual time of the machine as the host sees it: the most advanced vCPU (a
        halted vCPU's clock catches up when it wakes)."""
        return max(v.now() for v in self.vm.vcpus)

    def _catch_up(self, vcpu: int) -> None:
        """A host event reaches a sleeping vCPU at the host's present time. A vCPU the VM
        does not have is refused here, before anything changes (a negative number would
        otherwise index from the end: the fuzzer found inject_nmi(-1) and (9) raising)."""
        v = self._vcpu(vcpu)
        t = self.now()
        if v.halted and v.now() < t:
            v.cpu.advance_time(t - v.now())

    def console_output(self) -> bytes:
        return bytes(self.vm.console_out)

    @_input
    def console_input(self, data: bytes) -> None:
        self._check_on()
        self._catch_up(0)       # the UART's interrupt reaches the BSP at the host's present
        self.vm.com1.feed(data)

    # ------------------------------------------------------------------ running
    def _wake_time(self, v: Vcpu) -> float:
        if v.id in self.in_kdb or v.id in self.stopped:
            return INF
        if v.halted and not v.wake_pending():
            d = self.vm.next_deadline(v)
            return INF if d is None else max(d, v.now())
        return v.now()

    def _runnable(self) -> int:
        return sum(1 for v in self.vm.vcpus if v.id not in self.in_kdb
                   and v.id not in self.stopped and not (v.halted and not v.wake_pending()))

    def pick(self) -> Vcpu | None:
        best, bt = None, INF
        for v in self.vm.vcpus:
            t = self._wake_time(v)
            if t < bt:
                best, bt = v, t
        return best

    @_input
    def run(self, max_insns: int | None = None, until_ns: int | None = None,
            until: Callable[[], bool] | None = None) -> StopEvent:
        """Run the vCPUs until a stop: the debugger is entered, the budget of instructions or
        virtual time is used up, `until()` holds, or nothing can run."""
        if self.powered_off:
            return StopEvent("poweroff")
        if self.shutdown is not None:
            return StopEvent("shutdown", None, {"reason": self.shutdown})
        if self.held_by is not None and not self._host_running:
            return StopEvent("held", None, {"by": self.held_by})
        if self.in_kdb:
            return StopEvent("kdb", next(iter(self.in_kdb)), {})
        retired = 0
        while True:
            if max_insns is not None and retired >= max_insns:
                return StopEvent("budget")
            if self._interrupt or self.sched_steps == self.stop_at_step:
                self._interrupt = False
                self.interrupted_at = self.sched_steps
                return StopEvent("interrupted")
            self.sched_steps += 1
            if until is not None and until():
                return StopEvent("until")
            v = self.pick()
            if v is None:
                return StopEvent("idle")
            if until_ns is not None and self._wake_time(v) >= until_ns:
                # everyone has reached the target time
                for w in self.vm.vcpus:
                    if w.halted and w.now() < until_ns and w.id not in self.in_kdb:
                        w.cpu.advance_time(until_ns - w.now())
                return StopEvent("time")
            slept = v.halted and not v.wake_pending()
            if slept:
                self.vm.sleep_until_event(v)
            q = self.quantum if self._runnable() > 1 else SOLO_QUANTUM
            if max_insns is not None:
                q = min(q, max_insns - retired)
            before, restarts = v.cpu.icount, v.restarts
            ux = v.run(q)
            # the budget counts instructions, and restarts of an emulated REP INS/OUTS as
            # the work they are (they retire nothing until its last iteration), and a timer
            # deadline that leaves a halted vCPU halted (IF=0: only an NMI or INIT wakes
            # it), so run(max_insns) ends (the fuzzer found `cli; hlt` running forever)
            retired += v.cpu.icount - before + v.restarts - restarts
            if slept and v.halted and v.cpu.icount == before:
                retired += 1
            self.total_retired += v.cpu.icount - before
            ev = self._userspace(ux)
            if ev is None:
                ev = self._watchdog()
            if ev is not None:
                for cb in self.listeners:
                    cb(ev)
                return ev

    @_input
    def step_vcpu(self, vcpu: int, unit: str = "insn", limit: int = 1_000_000) -> StopEvent:
        """Host-level single step of one vCPU, without the guest's involvement: exactly one
        guest instruction, or one event delivery ("insn"); or up to its next VM exit and
        the exit's handling, stopping before the next VMRUN ("exit"). See hoststep.py."""
        from .hoststep import host_step
        return host_step(self, vcpu, unit, limit)

    def _watchdog(self) -> StopEvent | None:
        running = [v for v in self.vm.vcpus if v.id not in self.in_kdb and not v.halted]
        if not running or self.in_kdb:
            return None
        starts = [v.spin_start(SPIN_EXITS) for v in running]
        if None not in starts and max(starts) + SPIN_NS <= min(v.now() for v in running):
            spins = {v.id: self.symbols.format(v.pause_spin[0]) for v in running}
            for v in running:
                v.pause_spin = None
            return StopEvent("deadlock", None, {"spins": spins})
        return None

    @_input
    def settle(self, max_insns: int = SETTLE_INSNS, ns: int = SETTLE_NS) -> StopEvent:
        """Let the guest react to an input: run until the debugger is entered, a stop, or
        `ns` of virtual time / `max_insns` instructions have passed."""
        return self.run(max_insns=max_insns, until_ns=self.now() + ns)

    def _userspace(self, ux: UserExit) -> StopEvent | None:
        """bhyve's userspace half: act on exits the kernel part could not handle."""
        kind = ux.kind
        if kind in ("quantum", "hlt", "bogus"):
            return None
        if kind == "kdb":
            self.in_kdb[ux.vcpu] = dict(ux.info)
            self.vm.vcpus[ux.vcpu].stopped_by_host = True
            return StopEvent("kdb", ux.vcpu, dict(ux.info))
        if kind == "debug_exit":
            self.exit_status = ux.info["status"]
            return StopEvent("debug_exit", ux.vcpu, dict(ux.info))
        if kind == "shutdown":
            self.shutdown = ux.info.get("reason", "triple fault")
            return StopEvent("shutdown", ux.vcpu, dict(ux.info))
        return StopEvent(kind, ux.vcpu, dict(ux.info))

    @_input
    def leave_kdb(self, vcpu: int) -> None:
        self.in_kdb.pop(vcpu, None)
        self.vm.vcpus[vcpu].stopped_by_host = False

    # ------------------------------------------------------------------ the debugger
    @property
    def ddb(self):
        """The guest debugger (created on first use)."""
        if self._ddb is None:
            from .ddb import Ddb
            self._ddb = Ddb(self.vm, self.symbols)
        return self._ddb

    @property
    def surface(self) -> str:
        """Which surface has the input: "ddb" while a vCPU is in the debugger, else "guest"."""
        return "ddb" if self.in_kdb else "guest"

    @_input
    def enter_debugger(self, ev: StopEvent, max_insns: int = SETTLE_INSNS) -> str:
        """A kdb stop: let ddb take it (and follow `s,N` / step-over resumes)."""
        res = self.ddb.enter(ev.vcpu, ev.info)
        out = res.output
        if res.resume:
            out += self._resume(ev.vcpu, max_insns)
        return out

    @_input
    def debugger(self, line: str, max_insns: int = SETTLE_INSNS) -> str:
        """One line typed at the db> prompt; if it resumes the guest, run until the next
        stop (or as long as settle() would) and return what the debugger printed."""
        if not self.in_kdb:
            return "db: the guest is not in the debugger\n"
        res = self.ddb.command(line)
        out = res.output
        if res.resume:
            out += self._resume(self.ddb.vcpu, max_insns)
        return out

    def _resume(self, vcpu: int, max_insns: int) -> str:
        out = ""
        start = self.total_retired
        while True:
            self.leave_kdb(vcpu)
            ev = self.run(max_insns=max_insns, until_ns=self.now() + RESUME_NS)
            if ev.reason != "kdb":
                return out + describe_stop(self, ev)
            spent = self.total_retired - start
            if spent > RESUME_INSNS and self.ddb.run_state is not None:
                # a long s,N / until: give the prompt back rather than hang the front end
                self.ddb.run_state = None
                out += f"db: stopped after {spent} guest instructions; repeat the " \
                       "command to go on\n"
            res = self.ddb.enter(ev.vcpu, ev.info)
            out += res.output
            vcpu = ev.vcpu
            if not res.resume:
                return out

    # ------------------------------------------------------------------ convenience
    @_input
    def run_until_output(self, text: bytes, max_insns: int = 50_000_000) -> bool:
        start = len(self.vm.console_out)
        ev = self.run(max_insns=max_insns,
                      until=lambda: text in self.vm.console_out[start:])
        return ev.reason == "until"

    @_input
    def boot_to_prompt(self, prompt: bytes = b"# ", max_insns: int = 50_000_000) -> None:
        if not self.run_until_output(prompt, max_insns):
            raise MachineError(f"the guest did not reach its prompt {prompt!r}")

    @_input
    def type_line(self, line: str, max_insns: int = 50_000_000, wait_prompt: bool = True
                  ) -> str:
        """Type a line at the guest console and run until the prompt comes back."""
        start = len(self.vm.console_out)
        self.console_input(line.encode() + b"\r")
        if wait_prompt:
            self.run(max_insns=max_insns,
                     until=lambda: self.vm.console_out[start:].rstrip(b" ").endswith(b"\n#")
                     or self.vm.console_out[start:].endswith(b"# "))
        return self.vm.console_out[start:].decode(errors="replace")

    # ------------------------------------------------------------------ read-only views
    def summary(self):  # noqa: ANN201 - nitdbg.view.MachineSummary
        """The VM's name, policy, per-vCPU retirement counts, time and surface."""
        from .view import summary
        return summary(self)

    def view(self, vcpu: int):  # noqa: ANN201 - nitdbg.view.VcpuState
        """A frozen picture of one vCPU for the front ends (registers, VMCB, the exit its
        save area is from, the NMI policy's state): see nitdbg/view.py."""
        from .view import vcpu_state
        return vcpu_state(self, vcpu)

    def recent_events(self, vcpu: int, since_seq: int = 0, limit: int = 4096,  # noqa: ANN201
                      skip_exits: frozenset[int] = frozenset(), scan: int = 1 << 16):
        """The vCPU's retirement-log events since `since_seq`, with their virtual times."""
        from .view import recent_events
        return recent_events(self, vcpu, since_seq, limit, skip_exits, scan)

    def exit_history(self, vcpu: int):  # noqa: ANN201 - tuple[nitdbg.view.ExitSnapshot, ...]
        """The vCPU's recent #VMEXITs with the VMCB and registers as each left them (kept
        from the first call on)."""
        from .view import exit_history
        return exit_history(self, vcpu)

    def ktr_since(self, vcpu: int, since_ns: int, limit: int = 2000):  # noqa: ANN201
        """The vCPU's KTR lines logged at or after virtual time `since_ns`."""
        from .view import ktr_since
        return ktr_since(self, vcpu, since_ns, limit)

    def regs(self, vcpu: int) -> dict[str, int]:
        """The guest registers as the hypervisor sees them (VMCB + saved GPRs)."""
        v = self.vm.vcpus[vcpu]
        d = {n: v.cpu.regs[i] for i, n in enumerate(GPR_NAMES)}
        d["rax"] = v.vmcb.rax
        d["rsp"] = v.vmcb.rsp
        d["rip"] = v.vmcb.rip
        d["rflags"] = v.vmcb.rflags
        return d


    # ------------------------------------------------------------------ host debugger (gdb)
    # The gdb stub (nitdbg/gdb/) and the timeline (nitdbg/timeline.py) work through these.
    timeline = None                  # a Timeline records the inputs while attached
    _in_op = False                   # inside a recorded input (nested calls are not inputs)
    host_overlay: dict | None = None  # the timeline's seek/probe conditions during re-execution
    held_by: str | None = None       # "gdb" while the stub holds every vCPU
    _host_running = False            # run_stops is running them for it
    lock = None                      # a threading.RLock when gdb runs on its own thread

    def live_regs(self, vcpu: int) -> dict[str, int]:
        """The guest registers now: the CPU model's while the vCPU stays in guest mode
        across slices, else the VMCB save area and the saved GPRs (what VMRUN loads)."""
        v = self._vcpu(vcpu)
        c = v.cpu
        d = {n: c.regs[i] for i, n in enumerate(GPR_NAMES)}
        names = ("es", "cs", "ss", "ds", "fs", "gs")
        if v.svm.in_guest:
            d.update(rip=c.rip, rflags=c.rflags, efer=c.efer)
            for n, sg in zip(names, c.seg, strict=True):
                d[n], d[n + "_base"] = sg.sel, sg.base
        else:
            vm = v.vmcb
            d.update(rax=vm.rax, rsp=vm.rsp, rip=vm.rip, rflags=vm.rflags, efer=vm.efer)
            for n in names:
                sg = vm.seg(n)
                d[n], d[n + "_base"] = sg.selector, sg.base
        return d

    @_input
    def write_reg(self, vcpu: int, name: str, value: int) -> None:
        """Set one guest register (rip, rflags, a GPR, fs_base, gs_base)."""
        from .x86.regs import FS, GS
        v = self._vcpu(vcpu)
        c = v.cpu
        value &= (1 << 64) - 1
        if name in ("rip", "rflags", "rax", "rsp") and not v.svm.in_guest:
            setattr(v.vmcb, name, value | 2 if name == "rflags" else value)
            if name == "rip":
                v.nextrip = value
            if name not in ("rax", "rsp"):
                return
        if name == "rip":
            c.rip = value
            c.attention = True
        elif name == "rflags":
            c.set_rflags(value)
        elif name in GPR_NAMES:
            c.regs[GPR_NAMES.index(name)] = value
        elif name in ("fs_base", "gs_base"):
            if v.svm.in_guest:
                c.seg[FS if name == "fs_base" else GS].base = value
            else:
                v.vmcb.seg(name[:2]).base = value
        else:
            raise MachineError(f"register {name} cannot be written")

    def read_mem(self, vcpu: int, addr: int, n: int) -> bytes:
        """Guest-virtual memory as the vCPU sees it (its page tables, guest RAM)."""
        v, vm = self._vcpu(vcpu), self.vm
        if _before_first_vmrun(v):
            # before its first VMRUN the guest's paging state is only in the VMCB: read
            # through a copy that has done that VMRUN's load, so a read changes nothing (the
            # fuzzer found a refused gdb `m` changing the registers)
            vm = self.clone().vm
            v = vm.vcpus[vcpu]
            v.svm.load_guest()
        try:
            return vm.read_guest(v, addr, n)
        except (Fault, ValueError) as e:    # #PF, or outside guest RAM: one line for the user
            raise MachineError(f"cannot access memory at {addr:#x}") from e

    @_input
    def write_mem(self, vcpu: int, addr: int, data: bytes) -> None:
        v = self._vcpu(vcpu)
        self.read_mem(vcpu, addr, len(data))    # every page reachable before any write
        if _before_first_vmrun(v):
            v.svm.load_guest()      # what that VMRUN does: the bytes go where the guest looks
        self.vm.write_guest(v, addr, data)

    def _vcpu(self, vcpu: int) -> Vcpu:
        if not 0 <= vcpu < len(self.vm.vcpus):
            raise MachineError(f"no vCPU {vcpu} (the VM has {len(self.vm.vcpus)})")
        return self.vm.vcpus[vcpu]

    @_input
    def hold(self, holder: str | None) -> None:
        """A host debugger holds every vCPU (holder "gdb") or lets them go (None)."""
        self.held_by = holder
        if holder is None:
            self.stopped.clear()
        else:
            self.stopped.update(range(len(self.vm.vcpus)))

    @_input
    def run_stops(self, vcpus: tuple[int, ...], stops: dict, max_insns: int) -> StopEvent:
        """Run the vCPUs in `vcpus` (the others stay held) until one meets its stop
        conditions: stops[i] = {"bps": addresses, "watches": ((lo, hi, kind), ...),
        "step": bool}, checked at instruction boundaries (x86/hoststop.py), or until
        `max_insns` instructions have retired or anything else stops the machine."""
        saved = set(self.stopped)
        self.stopped = set(range(len(self.vm.vcpus))) - set(vcpus)
        self.arm_host_stops(stops)
        self._host_running = True
        try:
            ev = self.run(max_insns=max_insns)
            if ev.reason == "gdb":
                hs = self.vm.vcpus[ev.vcpu].cpu.host_stop
                ev.info["hit"] = hs.hit if hs is not None else None
            return ev
        finally:
            self._host_running = False
            self.stopped = saved
            self.arm_host_stops({})

    def arm_host_stops(self, stops: dict) -> None:
        """Give each vCPU its stop conditions plus the timeline's overlay (seek, probes)."""
        from .x86.hoststop import HostStop, arm
        ov = self.host_overlay or {}
        for v in self.vm.vcpus:
            a, o = stops.get(v.id), ov.get(v.id)
            if a is None and o is None:
                arm(v.cpu, None)
                continue
            rip = v.cpu.rip if v.svm.in_guest else v.vmcb.rip
            hs = HostStop(resume=(v.cpu.icount, rip))
            if a is not None:
                hs.bps = frozenset(a.get("bps", ()))
                hs.watches = tuple((lo, hi, k, True) for lo, hi, k in a.get("watches", ()))
                hs.step = bool(a.get("step"))
            if o is not None:
                hs.seek = o.get("seek")
                hs.probe = o.get("probe")
                hs.probe_bps = frozenset(o.get("bps", ()))
                hs.watches += tuple((lo, hi, k, False) for lo, hi, k in o.get("watches", ()))
            arm(v.cpu, hs)

    def step_back(self, vcpu: int = 0) -> StopEvent:
        """Reverse-stepi: back to just before vCPU `vcpu` executed its last instruction."""
        if self.timeline is None:
            raise MachineError("going back needs the history: start with --timeline or --gdb")
        return self.timeline.step_back(vcpu)

    def back_to_stop(self, bps: tuple[int, ...] = (), watches: tuple = ()) -> StopEvent:
        """Reverse-continue: back to the previous hit of a breakpoint or watchpoint."""
        if self.timeline is None:
            raise MachineError("going back needs the history: start with --timeline or --gdb")
        return self.timeline.back_to_stop(bps, watches)

def _before_first_vmrun(v: Vcpu) -> bool:
    """The guest's paging state is still only in the VMCB (nothing has run yet)."""
    return not v.svm.in_guest and v.exit_count == 0 and v.cpu.icount == 0


def describe_stop(m: Machine, ev: StopEvent) -> str:
    """One line for a stop that is not a debugger entry (empty when there is nothing to say)."""
    if ev.reason == "deadlock":
        spins = ", ".join(f"vCPU {c} spins in {sym}" for c, sym in ev.info["spins"].items())
        return f"watchdog: no vCPU makes progress: {spins} (bhyvectl --vm={m.vm.name} " \
               "--force-reset reboots the VM)\n"
    if ev.reason == "poweroff":
        return POWERED_OFF.format(name=m.vm.name) + "\n"
    if ev.reason == "interrupted":
        return "^C: stopped\n"
    if ev.reason == "shutdown":
        return f"vm {m.vm.name}: shutdown ({ev.info.get('reason', 'triple fault')})\n"
    if ev.reason == "debug_exit":
        return f"vm {m.vm.name}: isa-debug-exit, status {ev.info['status']}\n"
    if ev.reason == "unhandled":
        return describe_unhandled(m, ev.info)
    if ev.reason == "panic":
        return f"vm {m.vm.name}: guest panic\n"
    if ev.reason == "internal":
        return f"vm {m.vm.name}: vCPU {ev.vcpu} stopped: {ev.info.get('message')}\n"
    if ev.reason == "held":
        return f"vm {m.vm.name}: {ev.info['by']} holds every vCPU; continue there to run them\n"
    if ev.reason == "kassert":
        # the hypervisor's own assertion (a bhyve kernel with INVARIANTS panics here)
        return f"vm {m.vm.name}[{ev.vcpu}]: hypervisor panic: {ev.info.get('message', '')}\n"
    return ""


def describe_unhandled(m: Machine, info: dict) -> str:
    """One line for an exit the hypervisor cannot handle: the exit, where, the guest RIP."""
    from .svm import exitcodes as ec
    code = info.get("exitcode")
    what = f"{ec.apm_name(code)} ({code:#x})" if isinstance(code, int) else "exit"
    where = ""
    if "gpa" in info:
        where = f" at gpa {info['gpa']:#x}"
    elif "port" in info:
        where = f" at port {info['port']:#x}"
    rip = info.get("rip")
    at = f", guest rip {rip:#x} ({m.symbols.format(rip)})" if isinstance(rip, int) else ""
    return f"vm {m.vm.name}: unhandled exit {what}{where}{at}\n"


def apply_boot_state(v: Vcpu, st: VcpuBootState) -> None:
    """Put a loader's start state into the VMCB save area and the saved GPRs."""
    vmcb = v.vmcb
    for name, s in st.segs.items():
        vmcb.seg(name).set(s.selector, s.attrib, s.limit, s.base)
    vmcb.seg("gdtr").set(0, 0, st.gdtr[1], st.gdtr[0])
    vmcb.seg("idtr").set(0, 0, st.idtr[1], st.idtr[0])
    vmcb.cr0, vmcb.cr3, vmcb.cr4, vmcb.efer = st.cr0, st.cr3, st.cr4, st.efer
    vmcb.rflags = st.rflags | 2
    vmcb.rip = st.rip
    vmcb.rsp = st.rsp
    vmcb.dr6, vmcb.dr7 = 0xFFFF0FF0, 0x400
    vmcb.cpl = 0
    for name, val in st.gprs.items():
        i = GPR_NAMES.index(name)
        if i == RAX:
            vmcb.rax = val
        else:
            v.cpu.regs[i] = val
    v.nextrip = st.rip
    if st.wait_for_sipi:
        initsipi.enter_wait_for_sipi(v.vm, v)
