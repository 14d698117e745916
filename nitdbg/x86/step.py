"""The step loop and event priority.

The hot loop runs cached, pre-translated instructions and checks one flag, `attention`; every
state change that can produce an event at an instruction boundary (TF, RF, a pending NMI or
interrupt, an interrupt shadow, a pending debug trap, enabled breakpoints, HLT) sets it, and
the slow step then works through the boundary in the order of SDM vol 3 table 6-2 / APM vol 2
8.5 before executing one instruction with all debug checks.
"""

from __future__ import annotations

from . import blocks, interrupts
from .decode import F_LOADS_RF, F_NO_SSTEP
from .events import Events
from .faults import BUG_ERRORS, Fault, Intercepted, InternalError
from .mmu import Mmu
from .regs import (
    CS,
    DR6_BS,
    IF,
    RF,
    SHADOW_MOVSS,
    TF,
)


def held_traps_after_fault(shadow: int, pending: int) -> int:
    """The #DB traps still pending after the instruction at a boundary faulted.

    Traps a MOV SS / POP SS held for the next instruction are discarded when that
    instruction faults: the fault is delivered and the held #DB never is (SDM vol 3 6.9:
    lower-priority exceptions are discarded; the trap belongs to an instruction that will
    not be re-executed; the behaviour on Intel and AMD parts exercised by Linux's
    tools/testing/selftests/x86/mov_ss_trap.c, "any fault: drop the pending #DB trap")."""
    return 0 if shadow == SHADOW_MOVSS else pending


class StepLoop(Events, Mmu):
    # ------------------------------------------------------------------ running
    def run(self, budget: int) -> int:
        """Run up to `budget` instructions. Returns the number retired; `stop_reason` says why
        it stopped: "budget", "hlt", "intercept", "shutdown", "stop", or "internal" (a bug in
        nitdbg: `internal_error` holds the record, and the vCPU runs no further)."""
        start = self.icount
        if self.internal_error is not None:
            self.stop_reason = "internal"
            return 0
        try:
            return self._run(budget)
        except (InternalError, *BUG_ERRORS) as e:
            # a bug outside an instruction's own execution (event delivery, a boundary event)
            self._internal_error(self.rip, e)
            return self.icount - start

    def _run(self, budget: int) -> int:
        ring = self.retire.rips
        mask = self.retire.mask
        self.stop_reason = ""
        start = self.icount
        end = start + budget
        # Anything that changes the decode cache in use (mode, CPL) sets `attention`, so the
        # local copy is refreshed after every slow step.
        icache = self.icache
        bcache = self.bcache
        use_blocks = self.blocks_enabled and not self.data_bps
        hot_min = blocks.HOT
        bhot = self.bhot
        # Blocks start where control arrives other than by falling through an instruction a
        # block could have held (a branch target, the instruction after one the translator
        # does not take, after a block or an event): only those starts are counted and looked
        # up, not every instruction of a straight run (they would all come due at once).
        straight = blocks.STRAIGHT_IDS
        fall = -1
        while self.icount < end:
            if self.attention:
                if self._slow_step() < 0:
                    return self.icount - start
                icache = self.icache
                bcache = self.bcache
                use_blocks = self.blocks_enabled and not self.data_bps
                fall = -1
                continue
            rip = self.rip
            if use_blocks and rip != fall:
                blk = bcache.get(rip, 0)
                if blk == 0:
                    hot = bhot.get(rip, 0) + 1
                    bhot[rip] = hot
                    # (decoded on an earlier pass; not turned down on an earlier visit)
                    if hot >= hot_min and rip in icache and hot >= self.bnext.get(rip, 0):
                        blk = blocks.build(self, rip, hot)
                        if blk.__class__ is int:
                            self.bnext[rip] = blk     # not worth translating yet
                            blk = None
                        else:
                            bcache[rip] = blk
                if blk:
                    try:
                        if blk(self, end - self.icount):
                            fall = -1
                            continue
                    except Fault as f:
                        # the block left the state as at the start of the faulting instruction
                        if self._fault(f) < 0:
                            return self.icount - start
                        icache = self.icache
                        bcache = self.bcache
                        fall = -1
                        continue
                    except Intercepted:
                        self.stop_reason = "intercept"
                        return self.icount - start
                    except (InternalError, *BUG_ERRORS) as e:
                        # the block left RIP at the instruction that raised it
                        self._internal_error(self.rip, e)
                        return self.icount - start
            insn = icache.get(rip)
            try:
                if insn is None:
                    insn = self.fetch_insn(rip)
                self.rip = insn.next
                insn.fn(self)
            except Fault as f:
                self.rip = rip
                if self._fault(f) < 0:
                    return self.icount - start
                icache = self.icache
                bcache = self.bcache
                fall = -1
                continue
            except Intercepted:
                self.rip = rip
                self.stop_reason = "intercept"
                return self.icount - start
            except (InternalError, *BUG_ERRORS) as e:
                # A bug in nitdbg must not escape as a Python exception: the run stops and
                # the record names the instruction (InternalError).
                self._internal_error(rip, e)
                return self.icount - start
            n = self.icount
            ring[n & mask] = rip
            self.icount = n + 1
            fall = insn.next if insn.id in straight else -1
        self.stop_reason = "budget"
        return self.icount - start

    def _slow_step(self) -> int:
        """One instruction boundary with every event check, then at most one instruction.

        Returns 1 if an instruction retired, 0 if only an event was handled, -1 to stop.
        """
        if self.shutdown:
            self.stop_reason = "shutdown"
            return -1
        if self.stop_requested:
            self.stop_requested = False
            self.stop_reason = "stop"
            return -1
        hs = self.host_stop
        if hs is not None and hs.before_events(self):
            self.stop_reason = "host"
            return -1
        shadow = self.shadow
        try:
            r = self._boundary_event(shadow)
        except Fault as f:
            return 0 if self._fault(f) >= 0 else -1
        except Intercepted:
            self.stop_reason = "intercept"
            return -1
        if r:
            if r < 0:
                return r
            # Delivered. The handler's first instruction takes the exact path only if
            # something still needs it (delivery cleared TF and RF): so a single-stepped
            # guest's #DB handler runs on the fast path and in blocks.
            self.recompute_attention()
            return 0
        if hs is not None and hs.before_fetch(self):
            self.stop_reason = "host"
            return -1
        self.shadow = 0
        rip = self.rip
        rflags = self.rflags
        pending = self.pending_db
        try:
            # 7. Instruction breakpoints are faults checked before execution, before the
            # fetch's own faults (8), ignored when RF=1 (SDM 17.3.1.1, APM 13.1.3.1), and on
            # the instruction after MOV SS / POP SS "as if EFLAGS.RF were 1" (SDM vol 3
            # 6.15, interrupt 1). Delivered with RF as it is (0): the one fault-class
            # exception that does not push RF=1, hence not kind "fault" (SDM 17.3.1.1).
            if self.exec_bps and not rflags & RF and shadow != SHADOW_MOVSS:
                lin = rip if self.mode == 64 else (rip + self.seg[CS].base) & 0xFFFF_FFFF
                hit = 0
                for addr, i in self.exec_bps:
                    if addr == lin:
                        hit |= 1 << i
                if hit:
                    self.dr[6] |= hit
                    self.deliver_exception(1, None)
                    return 0
            insn = self.icache.get(rip)
            if insn is None:
                insn = self.fetch_insn(rip)
            self.rip = insn.next
            insn.fn(self)
        except Fault as f:
            # The instruction did not complete: no single-step trap for it, and data
            # breakpoints it hit before faulting are dropped (SDM 17.3.1.2).
            self.pending_db = held_traps_after_fault(shadow, pending)
            self.rip = rip
            self.shadow = 0
            return 0 if self._fault(f) >= 0 else -1
        except Intercepted:
            self.pending_db = pending
            self.rip = rip
            self.shadow = shadow
            self.stop_reason = "intercept"
            return -1
        except (InternalError, *BUG_ERRORS) as e:
            self.pending_db = pending
            self.shadow = shadow
            return self._internal_error(rip, e)
        # RF is cleared once an instruction completes, unless that instruction loaded it
        # (IRET, task switch): then it lasts one more instruction (APM 13.1.3.1).
        if self.rflags & RF and not insn.flags & F_LOADS_RF:
            self.rflags &= ~RF
        # TF is sampled at the start of the instruction: an instruction that sets TF is not
        # followed by a #DB, one that clears it still is (SDM 17.3.1.4, APM 13.1.4).
        if rflags & TF and not insn.flags & F_NO_SSTEP and self.shadow != SHADOW_MOVSS:
            # (MOV SS / POP SS: its single-step trap is suppressed, not held: SDM vol 3 6.15
            # interrupt 1, "if EFLAGS.TF is 1, no single-step trap is generated")
            self.pending_db |= DR6_BS
        self.retire.rips[self.icount & self.retire.mask] = rip
        self.icount += 1
        self.recompute_attention()
        return 1

    def wake_event(self) -> bool:
        """An event that ends HLT: an unblocked NMI or an unmasked INTR (SDM vol 2 HLT)."""
        return bool((self.nmi_pending and not self.nmi_blocked)
                    or (self.intr_pending and self.rflags & IF))

    def _boundary_event(self, shadow: int) -> int:
        """Take the highest-priority event pending at this instruction boundary.

        Returns 0 when the next instruction may execute, 1 when an event was delivered,
        -1 to stop (halted). The order is SDM vol 3 table 6-2 (APM vol 2 8.5):
          4. traps on the previous instruction: single-step, data breakpoints, task-switch T
          5. NMI
          6. maskable interrupts (INTR)
          7. code breakpoints (in _slow_step, with the instruction fetch)
        A halted CPU takes nothing until a wake event arrives: a single-step trap from the
        HLT itself is delivered first after wake-up, with RIP after the HLT (REFERENCE.md,
        checked on QEMU and Bochs).
        """
        if self.halted and not self.wake_event():
            self.stop_reason = "hlt"
            return -1
        # 4. Traps from the previous instruction. After MOV SS / POP SS they wait until the
        # next instruction completes (SDM 6.8.3).
        if self.pending_db and shadow != SHADOW_MOVSS:
            self.dr[6] |= self.pending_db
            self.pending_db = 0
            self.halted = False
            self.deliver_exception(1, None)
            return 1
        # 5, 6. NMI, then INTR; both held off by an interrupt shadow (APM 15.21.5).
        if self.nmi_pending and not self.nmi_blocked and not shadow:
            self.hooks.nmi(self)
            self.nmi_pending = False
            self.nmi_blocked = True     # until the next IRET (SDM 6.7.1)
            self.halted = False
            interrupts.deliver(self, 2, "nmi", None)
            return 1
        if self.intr_pending and self.rflags & IF and not shadow:
            self.hooks.intr(self)
            vector = self.intr_ack()
            if vector is not None:
                self.halted = False
                interrupts.deliver(self, vector, "intr", None)
                return 1
        if self.halted:
            self.stop_reason = "hlt"
            return -1
        return 0

    def recompute_attention(self) -> None:
        self.attention = bool(
            self.rflags & (TF | RF) or self.pending_db or self.shadow or self.nmi_pending
            or (self.intr_pending and self.rflags & IF) or self.exec_bps or self.halted
            or self.shutdown or self.stop_requested or self.host_stop is not None)

    def request_stop(self) -> None:
        self.stop_requested = True
        self.attention = True
