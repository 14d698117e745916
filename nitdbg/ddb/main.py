"""The debugger proper (after sys/ddb/db_main.c, db_run.c): entry from the guest's kdb
hypercall, the stop banner, and the run modes that resume the guest (step, continue over a
breakpoint, until, next)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from ..guest.abi import (
    PSL_T,
    AbiError,
    TrapType,
    pack_trapframe,
    unpack_trapframe,
)
from ..guest.symbols import SymbolTable
from ..vmm.vm import Vm
from ..x86.faults import Fault
from .audit import StepAudit
from .breakpoints import Breakpoint, BreakpointTable
from .disasm import Disassembler, DisInsn
from .errors import DdbError
from .regs import AMD64_TRAPFRAME_SIZE, DEBUG_REGS, FRAME_REGS
from .watch import HwWatchpoints

DR6_BS = 1 << 14
DR6_BMASK = 0xF
UNTIL_MAX = 100_000          # steps `until` makes before it gives up
IDLE_PID = 11                # FreeBSD's "idle" process
TID_BASE = 100000            # FreeBSD numbers threads from 100000


@dataclass
class DdbResult:
    output: str          # what to print
    resume: bool = False  # True: leave kdb, run the guest, call enter() at the next stop
    rejected: bool = False  # the line was refused: nothing changed, output is one line


@dataclass
class RunState:
    """What the debugger does at the next stop of `vcpu` (db_run_mode)."""

    mode: str            # "step", "until", "cont_over", "next"
    vcpu: int
    left: int = 1
    rsp: int = 0         # next: the stack pointer at the call
    then: str = ""       # cont_over: the mode to go on with after the step ("next")


class Ddb:
    """The guest debugger. The machine layer calls enter() when the guest makes the
    KDB_ENTER hypercall and command() for each line typed at "db> "; a result with
    resume=True means: leave kdb, run the guest, call enter() at the next kdb stop."""

    prompt = "db> "

    def __init__(self, vm: Vm, symbols: SymbolTable):
        self.vm = vm
        self.symbols = symbols
        self.active = False
        self.vcpu: int | None = None
        self.tf_addr = 0
        self.trap_type = 0
        self.cpu_id = 0
        self.stop_reason = ""
        self.breaks = BreakpointTable()
        self.watch = HwWatchpoints(vm)
        self.dis = Disassembler(symbols)
        self.audit = StepAudit(vm, symbols)
        self.run_state: RunState | None = None
        self.tf_set = False                 # ddb set PSL_T in the frame it resumed with
        self.last_line = ""
        self.next_addr = 0                  # db_next: where a repeated `x` continues
        self.dot = 0                        # db_dot
        self.examine_format = "x"           # db_examine_format: the last x format
        self.thread = (IDLE_PID, TID_BASE + 3)

    # ------------------------------------------------------------------ guest access
    def _v(self):
        return self.vm.vcpus[self.vcpu if self.vcpu is not None else 0]

    def read(self, addr: int, n: int) -> bytes:
        try:
            return self.vm.read_guest(self._v(), addr & ((1 << 64) - 1), n)
        except (Fault, ValueError):
            raise DdbError(f"*** error reading from address {addr & ((1 << 64) - 1):x} ***"
                           ) from None

    def read_q(self, addr: int) -> int:
        return int.from_bytes(self.read(addr, 8), "little")

    def write(self, addr: int, data: bytes) -> None:
        try:
            self.vm.write_guest(self._v(), addr & ((1 << 64) - 1), data)
        except (Fault, ValueError):
            raise DdbError(f"*** error writing to address {addr:x} ***") from None

    def disasm(self, addr: int) -> DisInsn:
        try:
            code = self.read(addr, 15)
        except DdbError:
            code = b""
            for n in range(14, 0, -1):       # the instruction may end before a bad page
                try:
                    code = self.read(addr, n)
                    break
                except DdbError:
                    continue
            if not code:
                raise
        return self.dis.decode(code, addr)

    def frame(self) -> dict[str, int]:
        """The trapframe the guest handed to the debugger."""
        if not self.active:
            raise DdbError("not in the debugger")
        return unpack_trapframe(self.read(self.tf_addr, AMD64_TRAPFRAME_SIZE))

    def set_frame(self, **fields: int) -> None:
        raw = self.read(self.tf_addr, AMD64_TRAPFRAME_SIZE)
        try:
            self.write(self.tf_addr, pack_trapframe(fields, raw))
        except AbiError as e:
            raise DdbError(str(e)) from None

    def register(self, name: str) -> int:
        """$name in an expression: a trapframe register or a debug register."""
        name = name.lower()
        if name in FRAME_REGS:
            return self.frame()[FRAME_REGS[name]]
        if name in DEBUG_REGS:
            i = int(name[2])
            v = self._v()
            return v.vmcb.dr6 if i in (4, 6) else v.vmcb.dr7 if i in (5, 7) else v.cpu.dr[i]
        raise DdbError(f"Unknown variable ${name}")

    def loc_and_insn(self, addr: int) -> str:
        """db_print_loc_and_inst: "sym+off:\tinsn"."""
        try:
            text = self.disasm(addr).text
        except DdbError as e:
            text = str(e)
        return f"{self.symbols.format(addr)}:\t{text}\n"

    def _thread_ids(self, cpu: int) -> tuple[int, int]:
        """pid and tid of the thread that trapped, from the firmware's proc0 (as its
        curproc_name: the shell on CPU 0 unless it is blocked, else the idle process).
        The firmware has no thread ids; ddb shows tid = 100000 + pid for the shell and
        FreeBSD's idle-thread numbering (100003 + cpu) for the idle threads."""
        if "proc0" in self.symbols and cpu == 0:
            try:
                raw = self.read(self.symbols.address("proc0"), 28)
                pid = int.from_bytes(raw[0:4], "little", signed=True)
                idle = int.from_bytes(raw[24:28], "little")
                if pid and not idle:
                    return pid, TID_BASE + pid
            except DdbError:
                pass
        return IDLE_PID, TID_BASE + 3 + cpu

    # ------------------------------------------------------------------ entry
    def enter(self, vcpu: int, info: dict) -> DdbResult:
        """The guest made the KDB_ENTER hypercall on `vcpu` with info = {trapframe, type,
        cpu}. Returns the stop banner, or resume=True while a run mode goes on."""
        v = self.vm.vcpus[vcpu]
        self.active = True
        self.vcpu = vcpu
        self.tf_addr = int(info.get("trapframe", 0))
        self.trap_type = int(info.get("type", 0))
        self.cpu_id = int(info.get("cpu", vcpu))
        # db_clear_breakpoints: the int3 bytes never stay in memory while ddb runs
        self.breaks.remove(self._poke)
        try:
            tf = self.frame()
        except DdbError as e:
            self.stop_reason = "bad frame"
            self.run_state = None
            return DdbResult(f"{e}\n")
        if self.tf_set:
            tf["tf_rflags"] &= ~PSL_T
            self.set_frame(tf_rflags=tf["tf_rflags"])
            self.tf_set = False
        dr6 = v.vmcb.dr6
        watched = {w.slot for w in self.watch.active()}
        watch_hit = self.trap_type == TrapType.T_TRCTRAP and any(
            dr6 & (1 << i) for i in watched)
        sstep = self.trap_type == TrapType.T_TRCTRAP and bool(dr6 & DR6_BS)
        if dr6 & (DR6_BMASK | DR6_BS):
            # Software clears the DR6 status bits so the next #DB tells its own cause.
            v.vmcb.dr6 = dr6 & ~(DR6_BMASK | DR6_BS)
            v.cpu.dr[6] = v.vmcb.dr6
        rip = tf["tf_rip"]
        bp: Breakpoint | None = None
        if self.trap_type == TrapType.T_BPTFLT:
            bp = self.breaks.find(rip - 1)
            if bp is not None:
                rip -= 1                      # FIXUP_PC_AFTER_BREAK: back to the int3
                self.set_frame(tf_rip=rip)
        if bp is not None:
            reason = "breakpoint"
        elif watch_hit:
            reason = "watchpoint"
        elif sstep:
            reason = "step"
        else:
            try:
                reason = TrapType(self.trap_type).name
            except ValueError:
                reason = f"trap {self.trap_type}"
        self.stop_reason = reason
        self.audit.stopped(vcpu, v.cpu.icount, rip, reason)
        self.thread = self._thread_ids(self.cpu_id)
        self.dot = self.next_addr = rip

        rs = self.run_state
        self.run_state = None
        if rs is not None and rs.vcpu == vcpu:
            if rs.mode == "step" and reason == "step" and rs.left > 1:
                rs.left -= 1
                return self._resume(rs, step=True)
            if (rs.mode == "until" and reason == "step" and rs.left > 1
                    and not self.disasm(rip).is_return):
                rs.left -= 1
                return self._resume(rs, step=True)
            if rs.mode == "cont_over" and reason == "step":
                after = RunState(rs.then, vcpu, rsp=rs.rsp) if rs.then else None
                return self._resume(after, step=False)
            if rs.mode == "next" and bp is not None and bp.temporary:
                if tf["tf_rsp"] < rs.rsp:
                    # a deeper, recursive activation returned here: go on
                    self.breaks.set(rip, 1, temporary=True)
                    return self._resume(RunState("cont_over", vcpu, rsp=rs.rsp, then="next"),
                                        step=True)
                reason = self.stop_reason = "next"
                bp = None
        if bp is not None and not bp.temporary:
            bp.count -= 1
            if bp.count > 0:                  # not yet: step over it and go on
                return self._resume(RunState("cont_over", vcpu), step=True)
            bp.count = bp.init_count
        self.breaks.drop_temporary()
        head = {"breakpoint": "Breakpoint at", "watchpoint": "Watchpoint at"}.get(
            reason, "Stopped at")
        pid, tid = self.thread
        return DdbResult(f"[ thread pid {pid} tid {tid} ]\n{head}\t{self.loc_and_insn(rip)}")

    def _poke(self, addr: int, data: bytes) -> None:
        # an unmapped breakpoint stays out, as ddb's db_put_value fails
        with contextlib.suppress(DdbError):
            self.write(addr, data)

    # ------------------------------------------------------------------ resuming
    def _resume(self, rs: RunState | None, step: bool) -> DdbResult:
        """Leave the debugger: with PSL_T for a step, else with the breakpoints in."""
        assert self.vcpu is not None
        v = self.vm.vcpus[self.vcpu]
        tf = self.frame()
        if step:
            self.set_frame(tf_rflags=tf["tf_rflags"] | PSL_T)
            self.tf_set = True
        else:
            self.breaks.insert(self.read, self._poke)
        self.run_state = rs
        self.audit.resumed(self.vcpu, v.cpu.icount, tf["tf_rip"], step)
        self.active = False
        return DdbResult("", True)

    def do_step(self, count: int, mode: str = "step") -> DdbResult:
        assert self.vcpu is not None
        return self._resume(RunState(mode, self.vcpu, max(count, 1)), step=True)

    def do_continue(self) -> DdbResult:
        """c: step over a breakpoint at the resume address first, then insert them all."""
        assert self.vcpu is not None
        rip = self.frame()["tf_rip"]
        if self.breaks.find(rip) is not None:
            return self._resume(RunState("cont_over", self.vcpu), step=True)
        return self._resume(None, step=False)

    def do_next(self) -> DdbResult:
        """next: over a call, run to the instruction after it; otherwise one step."""
        assert self.vcpu is not None
        tf = self.frame()
        d = self.disasm(tf["tf_rip"])
        if not d.is_call:
            return self.do_step(1)
        self.breaks.set(d.next, 1, temporary=True)
        if self.breaks.find(tf["tf_rip"]) is not None and not self.breaks.find(
                tf["tf_rip"]).temporary:
            # a breakpoint on the call itself: step over it first
            return self._resume(RunState("cont_over", self.vcpu, rsp=tf["tf_rsp"],
                                         then="next"), step=True)
        return self._resume(RunState("next", self.vcpu, rsp=tf["tf_rsp"]), step=False)

    # ------------------------------------------------------------------ commands
    def command(self, line: str) -> DdbResult:
        """One line typed at "db> "."""
        from .commands import execute
        if not self.active:
            return DdbResult("db: the guest is not in the debugger\n")
        return execute(self, line)
