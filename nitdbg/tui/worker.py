"""The machine worker: the Machine lives on one thread (a Textual thread worker) and talks to
the UI only through Messages, so the UI never blocks and never reads a running machine.

Requests come in on a queue; after each one the worker posts the output text and a fresh
`Snapshot`. A long run (`c`, a ddb command that resumes, a host-level run) goes in chunks of
guest instructions, with a progress snapshot after each chunk. The front end sizes the
chunks from the host's speed (about RUN_SLICE_S of wall time each, so the screen updates
some 20 times a second), but each chunk is a machine input counted in instructions
(`run(max_insns=N)`, recorded as such). `p` stops the chunk in progress at once, at the
machine's next scheduling step (`Machine.request_interrupt`, as ^C in the console): the
machine notes which step that was (`interrupted_at`), a recording keeps it in the input's
checkpoint, and a replay stops that input at the same step, so at the same instruction
count, whatever the host's speed.
"""

from __future__ import annotations

import gc
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from textual.message import Message

from .messages import ExitHistory, MachineOutput, MachineUpdate, Request
from .recording import RecordingMixin
from .replaying import ReplayMixin

if TYPE_CHECKING:          # the machine is imported on the worker thread, after first paint
    from ..machine import Machine, StopEvent
    from .model import Snapshot
    from .snapshot import SnapshotBuilder

# requests, recording and replay live in messages.py, recording.py and replaying.py

# on_machine(machine, say): say(text, source) adds a line to the transcript
OnMachine = Callable[["Machine", Callable[[str, str], None]], object]

# requests that only look at the machine: no new stop for the panes' marks
READS = ("select", "refresh", "audit", "exits")
CHUNK = 250_000        # guest instructions at most in one chunk of a run
CHUNK_MIN = 2_000      # ... and at least
FIRST_CHUNK = 20_000   # before the host's speed is known
RUN_SLICE_S = 0.03     # wall time a chunk should take (a front end may read the clock)
# A progress snapshot of a run is built only once the screen has applied the previous one:
# on a loaded host the screen would otherwise fall behind, paint snapshots already stale
# and make garbage for the collector, and `p`'s stop would wait in the queue behind them.
# A consumer that never says it applied one (a test's list) still gets one every
# PROGRESS_STALE_S.
PROGRESS_STALE_S = 0.5
# The cyclic collector's full passes go through every object not frozen: tens of
# milliseconds once the session has made some 100 000 objects (the panes' rendered lines,
# the snapshots, the machine's state since boot), on whichever thread allocates at the time,
# in the middle of a step's repaint or of p. So the worker does that pass itself when it has
# been idle GC_IDLE_S after a stop (a user reads the result), and freezes what survives a
# full pass (its own or the collector's, while the guest runs): the next pass goes only
# through what is newer. Every FULL_GC_EVERY-th freeze, the pass looks at the frozen objects
# too, so that what died among them is freed.
GC_IDLE_S = 0.1
FULL_GC_EVERY = 50
# While the guest runs, the collector's automatic full passes are put off (one lands on
# whichever thread allocates, in the middle of a paint or of p, and the one due when the
# usual thresholds come back lands in the stop's paint): the worker makes one between two
# chunks every RUN_FULL_GC_S (the screen's rendered lines die in cycles, Textual's Strips
# caching themselves, some 15 000 objects a second: the pass stays some 30 ms), and the
# idle pass after the stop sets the usual thresholds again.
GC_RUNNING_THRESHOLD2 = 1_000_000
RUN_FULL_GC_S = 1.5
# the test plan's note on a broadcast NMI (seed, "Single step guest kernel", step 4)
BROADCAST_NOTE = ("The test plan: a broadcast NMI (--cpu=-1) does not work with "
                  "kdb_on_nmi=1; every vCPU tries to enter the debugger and they deadlock "
                  "waiting for each other to stop.")


@dataclass
class WorkerState:
    submitted: int = 0
    completed: int = 0
    running: bool = False
    booted: bool = False
    error: str = ""
    history: list[str] = field(default_factory=list)


class MachineWorker(RecordingMixin, ReplayMixin):
    def __init__(self, machine_kwargs: dict | None, post: Callable[[Message], object],
                 boot: bool = True, kdb_on_nmi: bool = False, record: str | None = None,
                 on_machine: OnMachine | None = None, host_dir: str | None = None):
        self.kwargs = dict(machine_kwargs or {})
        # the host shell's files are the real files in this directory (DiskFiles), made on
        # the worker thread with the machine (nitdbg.hostcmds is not needed to paint)
        self.host_dir = host_dir
        # called once the first machine is built and booted (the recorder's machine when
        # recording), with a function that says a line in the transcript: `nitdbg --gdb`
        # serves gdb beside the TUI through it
        self.on_machine = on_machine
        # None: no recording; "": into the user's data directory; else that path
        self.record_at_start = record
        self.post = post
        self.boot = boot
        self.kdb_on_nmi = kdb_on_nmi
        self.q: queue.Queue[Request] = queue.Queue()
        self.state = WorkerState()
        self.interrupt = threading.Event()
        self.finished = threading.Event()     # the loop has ended (session closed)
        self.m: Machine | None = None
        self.selected = 0
        self.since: dict[int, int] = {}
        self.builder: SnapshotBuilder | None = None
        self._built_for: Machine | None = None
        self.recorder = None
        self.replay = None
        self._lock = threading.Lock()
        self._said: list[tuple[str, str]] = []      # output waiting for the next snapshot
        self.deadlock: dict[int, str] = {}          # vCPU -> where it spins (the watchdog's)
        self.chunk = FIRST_CHUNK                     # instructions per chunk of a run
        self.last_session = ""                       # the recording stopped last
        self._confirm_record = False                 # r said what it would do: r again does
        self._confirm_reset = False                  # the same for R outside a deadlock
        self._boots = 1

    # ------------------------------------------------------------------ UI thread side
    def submit(self, req: Request) -> None:
        if req.kind == "pause":
            m = self.m
            if self.state.running and m is not None:
                # stop the chunk in progress now, not at its end (up to RUN_SLICE_S later):
                # the flag first, so that the worker, seeing `interrupt`, finds it set
                m.request_interrupt()
            self.interrupt.set()
        with self._lock:
            self.state.submitted += 1
        self.q.put(req)

    @property
    def idle(self) -> bool:
        s = self.state
        return s.booted and not s.running and s.completed == s.submitted

    # ------------------------------------------------------------------ worker thread
    def loop(self) -> None:
        try:
            self._loop()
        finally:
            self._gc_thresholds_back()
            self.finished.set()

    def _loop(self) -> None:
        from ..machine import MachineError
        from ..session.format import SessionError
        try:
            self._start()
        except MachineError as e:
            self.state.error = str(e)
            self.post(MachineOutput(f"nitdbg: {e}\n", "error"))
            return
        while True:
            self._gc_for(self.state.running)
            if self.state.running:
                try:
                    req = self.q.get_nowait()
                except queue.Empty:
                    self._run_chunk()
                    continue
            else:
                req = self._next_request()
            if req.kind == "quit":
                if self.recorder is not None:
                    self.recorder.close()      # the end record: the session is complete
                    self.recorder = None
                return
            try:
                self._handle(req)
            except (MachineError, SessionError) as e:   # a bad input, path or session
                self._out(f"{e}\n", "error")
            except Exception as e:  # noqa: BLE001 - keep the app alive, say what broke
                self._out(f"internal error: {type(e).__name__}: {e}\n", "error")
            with self._lock:
                self.state.completed += 1
            self._gc_due = True
            if self.m is not self._frozen_for:
                self._freeze_heap()
            if not self.state.running:
                if req.kind == "select" and self._last is not None and not self._said:
                    # v: the screen has already drawn the other vCPU from the snapshot at
                    # hand (it has every vCPU); nothing ran, so that snapshot is still the
                    # machine's: it is sent again as done, not built again while the
                    # screen draws
                    self.post(MachineUpdate(replace(self._last, seq=self.state.completed,
                                                    selected=self.selected,
                                                    new_stop=False), ()))
                    continue
                # a read (v, the audit, the exit list) shows the same stop again: the
                # "retired since" and "changed since" marks stay those of the last stop
                self._snap(True, new_stop=req.kind not in READS)
            else:
                self._flush()

    def _start(self) -> None:
        from ..machine import Machine
        if self.host_dir is not None:
            from ..hostcmds import DiskFiles
            self.kwargs["host_files"] = DiskFiles(self.host_dir)
        if self.record_at_start is not None:
            self._begin_recording(self.record_at_start)
        else:
            self.m = Machine(**self.kwargs)
        self._new_builder()
        if self.boot:
            self.m.boot_to_prompt()
            if self.kdb_on_nmi:
                self.m.type_line("sysctl machdep.kdb_on_nmi=1")
        self._mark_stop()
        if self.on_machine is not None:
            self.on_machine(self.recorder.machine if self.recorder is not None else self.m,
                            self._out)
        self._freeze_heap()
        self.state.booted = True
        m = self.m
        ms = m.summary()
        self._out(f"vm {ms.name}: {ms.vcpus} vCPUs, policy {ms.policy}"
                  + (", at the guest shell prompt" if self.boot else "") + "\n"
                  "try: F3 then 'sysctl machdep.kdb_on_nmi=1', then n (NMI), then s (step); "
                  "? for help\n", "info")
        self._snap(True)

    _frozen_for: Machine | None = None
    _gc_due = True
    _freezes = 0
    _gen2_seen = 0

    def _next_request(self) -> Request:
        """The next request, waiting as long as it takes; after a stop, the collector's
        work is done first if none comes within GC_IDLE_S."""
        if self._gc_due:
            try:
                return self.q.get(timeout=GC_IDLE_S)
            except queue.Empty:
                self._idle_gc()
        return self.q.get()

    _gc_idle_thresholds: tuple[int, ...] | None = None    # set while the guest runs
    _gc_run_pass = 0.0

    def _gc_for(self, running: bool) -> None:
        """No automatic full pass while the guest runs (GC_RUNNING_THRESHOLD2) and until the
        idle pass after the stop, which sets the usual thresholds again."""
        if running and self._gc_idle_thresholds is None:
            self._gc_idle_thresholds = t = gc.get_threshold()
            gc.set_threshold(t[0], t[1], GC_RUNNING_THRESHOLD2)
            self._gc_run_pass = time.perf_counter()
        elif running and time.perf_counter() - self._gc_run_pass >= RUN_FULL_GC_S:
            self._collect(full=False)
            self._gc_run_pass = time.perf_counter()

    def _gc_thresholds_back(self) -> None:
        """The usual thresholds again: only once the full pass put off while running has
        been done (else the collector makes it at the first chance, in the stop's paint)."""
        if self._gc_idle_thresholds is not None:
            gc.set_threshold(*self._gc_idle_thresholds)
            self._gc_idle_thresholds = None

    def _idle_gc(self) -> None:
        self._gc_due = False
        self._collect(full=False)
        self._gc_thresholds_back()

    def _collect(self, full: bool) -> None:
        """A full pass (over the frozen objects too when `full` or every FULL_GC_EVERY-th
        time), then freeze what survived."""
        self._freezes += 1
        if full or self._freezes >= FULL_GC_EVERY:
            gc.unfreeze()
            self._freezes = 0
        gc.collect()
        gc.freeze()
        self._gen2_seen = gc.get_stats()[2]["collections"]

    def _freeze_after_full_pass(self) -> None:
        """The collector made a full pass of its own (on either thread): what survived it is
        long-lived, frozen now so that the next pass leaves it alone."""
        n = gc.get_stats()[2]["collections"]
        if n != self._gen2_seen:
            self._gen2_seen = n
            self._freezes += 1
            if self._freezes >= FULL_GC_EVERY:
                self._collect(full=True)
            else:
                gc.freeze()

    def _freeze_heap(self) -> None:
        """Move what exists now (the app, the booted machine) out of the collector's sight
        (GC_IDLE_S). A machine that replaced another gets the old one collected first
        (frozen, it would never be freed)."""
        if self._frozen_for is not None:
            self._collect(full=True)
        else:
            gc.freeze()
        self._frozen_for = self.m

    def _out(self, text: str, source: str) -> None:
        if text:
            self._said.append((text, source))

    def _flush(self) -> None:
        """Output that no snapshot will carry soon (the guest runs on)."""
        said, self._said = self._said, []
        for text, source in said:
            self.post(MachineOutput(text, source))

    def _mark_stop(self) -> None:
        assert self.m is not None
        self._since_next = dict(enumerate(self.m.summary().icounts))

    _since_next: dict[int, int] = {}
    _last: Snapshot | None = None       # the last stop's snapshot (sent again after v)

    def _new_builder(self) -> None:
        """A machine came (boot, recording, replay): nothing cached about the old one."""
        from ..ddb.disasm import Disassembler
        from .snapshot import SnapshotBuilder
        assert self.m is not None
        for i in range(self.m.summary().vcpus):
            self.m.exit_history(i)           # keep each vCPU's exits from now on (X)
        if self.builder is None or self._built_for is not self.m:
            self.builder = SnapshotBuilder(Disassembler(self.m.symbols))
            self._built_for = self.m

    def _snap(self, is_stop: bool, status: str = "", new_stop: bool = True) -> None:
        m = self.m
        assert m is not None
        if getattr(m, "boots", 1) != self._boots:
            self._machine_reset()        # reset from the host shell (F2) as well as by R
        assert self.builder is not None
        if is_stop and new_stop:
            # "retired since the last stop": from the previous stop up to this one
            self.since = dict(self._since_next)
            self._since_next = dict(enumerate(m.summary().icounts))
        snap = self.builder.build(m, self.selected, self.since, self.state.completed,
                                  is_stop, self.state.running, status or self._status())
        if not new_stop:
            snap = replace(snap, new_stop=False)
        self._last = snap if is_stop else None
        said, self._said = tuple(self._said), []
        msg = MachineUpdate(snap, said)
        if not is_stop:
            self._progress, self._progress_at = msg, time.perf_counter()
        self.post(msg)

    def _status(self) -> str:
        m = self.m
        assert m is not None
        if self.deadlock:
            spins = ", ".join(f"vCPU {c} spins in {sym}" for c, sym in self.deadlock.items())
            return f"DEADLOCK: {spins} · R: force-reset"
        if self.state.running:
            return "running"
        if m.shutdown:
            return f"shutdown ({m.shutdown})"
        if m.surface == "ddb":
            return f"vCPU {m.ddb.vcpu} in ddb"
        return "guest paused"

    # ------------------------------------------------------------------ requests
    def _handle(self, r: Request) -> None:
        m = self.m
        assert m is not None
        k = r.kind
        if k not in ("record", "refresh"):
            self._confirm_record = False
        if k == "force_reset" and not self.deadlock and not self._confirm_reset:
            # not the way out of a deadlock: a reset loses the guest's state, say so first
            self._confirm_reset = True
            self._out("R resets the VM on the host (bhyvectl --force-reset): press R again "
                      "to do it, any other key to keep the guest as it is\n", "error")
            return
        self._confirm_reset = False
        if k == "pause":
            # a run that ended by itself before the flag was seen must not leave it to stop
            # the next one
            m.clear_interrupt()
            self.interrupt.clear()
            if self.state.running:
                self.state.running = False
                self._out("interrupted\n", "info")
            return
        if self.state.running and k in ("ddb", "step", "host_step", "continue", "guest",
                                        "host"):
            if k != "continue":
                self._out("the guest is running: pause it first (p)\n", "error")
            return
        if k == "select":
            self.selected = r.num % m.summary().vcpus
            return
        if k in READS:      # reads: not inputs to the machine
            if k == "audit":
                self._out(m.ddb.audit.report(), "audit")
            elif k == "exits":
                at = int(r.arg) if r.arg else None          # picked on the timeline
                vcpu = r.num % m.summary().vcpus if at is not None else self.selected
                exits = m.exit_history(vcpu)
                names = {a: m.symbols.format(a) for x in exits
                         for a in (x.exit.rip, x.regs["rip"])}
                self.post(ExitHistory(vcpu, exits, names, at))
            return
        self.deadlock = {}              # an input: the watchdog says again if it still holds
        if k == "ddb":
            self._ddb(r.arg)
        elif k == "step":
            if m.surface == "ddb":
                self._ddb("s")
            else:
                self._out("the guest is not in ddb: a host-level step instead\n", "info")
                self._host_step("insn")
        elif k == "continue":
            if m.surface == "ddb":
                self._ddb("c")
            else:
                self.state.running = True
        elif k == "host":
            self._out(m.host(r.arg), "host")
            self._settle()
        elif k == "guest":
            m.console_input(r.arg.encode() + b"\r")
            self._settle()
        elif k in ("nmi", "broadcast"):
            cpu = -1 if k == "broadcast" else self.selected
            line = f"bhyvectl --vm={m.summary().name} --cpu={cpu} --assert-lapic-lvt=1"
            self._out(f"host$ {line}\n", "host")
            self._out(m.host(line), "host")
            self._settle()
        elif k == "host_step":
            self._host_step(r.arg or "insn")
        elif k == "force_reset":
            self._force_reset()
        elif k == "scenario":
            self._scenario(r.arg)
        elif k == "policy":
            self._policy(r.arg)
        elif k == "record":
            self._record(r.arg)
        elif k == "replay_open":
            self._replay_open(r.arg)
        elif k == "replay_step":
            self._replay_step(r.num)
        else:
            self._out(f"unknown request {k}\n", "error")

    def _ddb(self, line: str) -> None:
        m = self.m
        assert m is not None
        if m.surface != "ddb":
            self._out("db: the guest is not in the debugger\n", "error")
            return
        self._out(f"db> {line}\n", "ddb")
        self._out(self._timed(lambda n: m.debugger(line, max_insns=n)), "ddb")
        self._after_resume()

    def _after_resume(self) -> None:
        """A ddb command or a stop handler let the guest run for one chunk: go on running
        until the next stop unless it already stopped."""
        m = self.m
        assert m is not None
        if m.surface != "ddb" and m.shutdown is None:
            self.state.running = True

    def _timed(self, run):  # noqa: ANN001, ANN202 - run(n) -> what the machine returned
        """One chunk of `self.chunk` instructions; the next chunk is sized from how long
        this one took (the wall clock only decides the size, the machine sees a count)."""
        m = self.m
        assert m is not None
        before, t0 = m.total_retired, time.perf_counter()
        out = run(self.chunk)
        dt = time.perf_counter() - t0
        done = m.total_retired - before
        if done >= CHUNK_MIN // 2 and dt > 0:
            self.chunk = max(CHUNK_MIN, min(CHUNK, int(done / dt * RUN_SLICE_S)))
        return out

    def _run_chunk(self) -> None:
        m = self.m
        assert m is not None
        if self.interrupt.is_set():
            return           # the pause request is in the queue
        self._freeze_after_full_pass()
        ev = self._timed(lambda n: m.run(max_insns=n))
        if ev.reason == "budget":
            if self._progress_due():
                self._snap(False, "running")
            return
        if ev.reason == "interrupted":
            return           # by `p`: its request, next in the queue, shows the stop
        self._stopped(ev)
        if m.surface == "ddb" or ev.reason != "kdb":
            self.state.running = False
            self._snap(True)

    _progress: MachineUpdate | None = None     # the last progress update posted
    _progress_at = 0.0

    def _progress_due(self) -> bool:
        """A progress snapshot now: not while `p` waits (its stop comes next), nor while the
        screen has not applied the previous one (see PROGRESS_STALE_S)."""
        if self.interrupt.is_set():
            return False
        prev = self._progress
        return (prev is None or prev.applied
                or time.perf_counter() - self._progress_at >= PROGRESS_STALE_S)

    def _force_reset(self) -> None:
        """The way out of a deadlock: bhyvectl --force-reset through the host shell (an
        input like any other, so a recording goes on), then boot to the prompt again."""
        m = self.m
        assert m is not None
        line = f"bhyvectl --vm={m.summary().name} --force-reset"
        self._out(f"host$ {line}\n", "host")
        self._out(m.host(line), "host")
        if getattr(m, "boots", 1) != self._boots:
            self._machine_reset()
            if self.boot:
                m.boot_to_prompt()
            self._out(f"vm {m.summary().name} reset and booted to the prompt\n", "info")

    def _policy(self, name: str) -> None:
        """A new machine under NMI policy `name` (the CLI's --policy at start), booted as
        the first one was. A recording in progress is closed first: a session is one
        machine's inputs."""
        from ..machine import Machine
        from ..vmm.nmi_policy import POLICIES
        if name not in POLICIES:
            self._out(f"unknown policy '{name}' (one of: {', '.join(POLICIES)})\n", "error")
            return
        if self.replay is not None:
            self._out("the replay is closed: a new machine runs instead\n", "info")
            self.replay = None
        if self.recorder is not None:
            self.recorder.close()
            self._out(f"recording stopped: {self.recorder.path} (r records the new "
                      "machine)\n", "info")
            self.last_session = str(self.recorder.path)
            self.recorder = None
        self.state.running = False
        self.kwargs["policy"] = name
        self.m = Machine(**self.kwargs)
        self.deadlock = {}
        self._new_builder()
        self._machine_reset()
        if self.boot:
            self.m.boot_to_prompt()
            if self.kdb_on_nmi:
                self.m.type_line("sysctl machdep.kdb_on_nmi=1")
        self._mark_stop()
        self.since = dict(self._since_next)
        ms = self.m.summary()
        self._out(f"vm {ms.name}: {ms.vcpus} vCPUs, now under policy {ms.policy}"
                  + (", at the guest shell prompt" if self.boot else "") + "\n", "info")

    def _machine_reset(self) -> None:
        """The machine rebuilt its VM (force-reset): nothing cached about the old one."""
        m = self.m
        assert m is not None
        self._boots = getattr(m, "boots", 1)
        self.builder = None
        self._new_builder()
        self._mark_stop()
        self.since = dict(self._since_next)

    def _stopped(self, ev: StopEvent) -> None:
        m = self.m
        assert m is not None
        if ev.reason == "deadlock":
            self.deadlock = dict(ev.info.get("spins", {}))
            self._out(f"DEADLOCK. {BROADCAST_NOTE} Press R to run bhyvectl "
                      f"--vm={m.summary().name} --force-reset on the host (the recording "
                      "goes on)\n", "error")
        if ev.reason == "kdb":
            self._out(self._timed(lambda n: m.enter_debugger(ev, max_insns=n)), "ddb")
        else:
            from ..machine import describe_stop
            self._out(describe_stop(m, ev) or f"stopped: {ev.reason}\n", "info")

    def _settle(self) -> None:
        m = self.m
        assert m is not None
        if m.surface == "ddb":
            return
        ev = m.settle()
        if ev.reason in ("kdb", "deadlock", "shutdown", "debug_exit", "panic", "unhandled"):
            self._stopped(ev)
            if ev.reason == "kdb":
                self._after_resume()     # a stop handler may have resumed (s,N)

    def _host_step(self, unit: str) -> None:
        m = self.m
        assert m is not None
        vcpu = self.selected
        before = m.view(vcpu).regs["rip"]
        ev = m.step_vcpu(vcpu, unit)
        after_view = m.view(vcpu)
        after = after_view.regs["rip"]
        sym = m.symbols.format
        what = "one instruction" if unit == "insn" else "to the next VM exit"
        msg = f"host step vCPU {vcpu} ({what}): "
        n = ev.info.get("retired", 0)
        if ev.reason == "step" and "delivered" in ev.info:
            msg += (f"{ev.info['delivered']} vector {ev.info['vector']} delivered at "
                    f"{sym(before)}, now at the handler {sym(after)}; no instruction retired "
                    "(a delivery is a stop of its own)")
        elif ev.reason == "step" and unit == "exit" and after_view.last_exit is not None:
            msg += (f"{n} instruction{'s' if n != 1 else ''} from {sym(before)}, then "
                    f"{after_view.last_exit.where()}, rip {sym(after_view.last_exit.rip)}, "
                    "handled; stopped before the next VMRUN")
        elif ev.reason == "step":
            how = "retired" if n else "completed by the hypervisor"
            exitname = ""
            if "exitcode" in ev.info:
                from ..svm.exitcodes import apm_name
                exitname = f" (exit {apm_name(ev.info['exitcode'])})"
            msg += f"{sym(before)} {how}{exitname}, now at {sym(after)}"
        else:
            msg += f"{sym(before)} -> {sym(after)} ({ev.reason})"
        self._out(msg + "\n", "info")
        if ev.reason == "kdb" and not m.ddb.active:
            self._stopped(ev)            # the step ran into the debugger hypercall

    # ------------------------------------------------------------------ scenarios
    def _scenario(self, name: str) -> None:
        from ..scenarios import ScenarioError, list_scenarios, run_scenario
        if not name:
            names = [s.name for s in list_scenarios()]
            self._out("scenarios: " + ", ".join(names) + "\n", "info")
            return
        policy = self.m.summary().policy if self.m else "iret-tracing"
        # a scenario builds its own machines; the one on screen is left as it is
        def say(line: str) -> None:      # a scenario takes a while: its lines as they come
            self._out(line + "\n", "info")
            self._flush()
        try:
            res = run_scenario(name, policy=policy, out=say)
        except ScenarioError as e:          # no such scenario: one line, nothing ran
            self._out(f"{e}\n", "error")
            return
        self._out(f"scenario {name}: {'PASS' if res.ok else 'FAIL'}\n",
                  "info" if res.ok else "error")


__all__ = ["MachineOutput", "MachineUpdate", "MachineWorker", "Request", "WorkerState"]
