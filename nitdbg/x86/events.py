"""Exception delivery and escalation (#DF, triple fault), event injection, the NMI and
INTR input pins, and the event records of the retirement log."""

from __future__ import annotations

from collections.abc import Callable

from . import interrupts
from .faults import Fault, Intercepted, InternalError, Unsupported
from .retire import Event, new_event
from .state import CpuState


class Events(CpuState):
    # ------------------------------------------------------------------ events
    def _fault(self, f: Fault) -> int:
        """Deliver an exception raised by an instruction or an event delivery."""
        try:
            if isinstance(f, Unsupported):
                self.last_unsupported = self.last_unsupported or (self.rip, b"", f.text)
            self.deliver_exception(f.vector, f.error_code, fault=True, cr2=f.cr2)
        except Intercepted:
            self.stop_reason = "intercept"
            return -1
        return -1 if self.shutdown else 0

    def _internal_error(self, rip: int, e: BaseException) -> int:
        """A bug in nitdbg (not the guest's doing): stop with RIP at the instruction and keep
        the record; the layers above turn it into a stop the front ends print. The guest
        gets nothing (an invented #UD would be a lie about the architecture)."""
        if not isinstance(e, InternalError):
            insn = self.icache.get(rip)
            e = InternalError(rip, insn.code if insn else b"", insn.text if insn else "", e)
        self.rip = rip
        self.internal_error = e
        self.stop_reason = "internal"
        self.attention = True
        return -1

    def deliver_exception(self, vector: int, error_code: int | None, fault: bool = False,
                          cr2: int | None = None) -> None:
        """Raise an exception at the current RIP: offer it to the layer above, and deliver it
        through the IDT. A fault during delivery escalates (SDM 6.15 table 6-5)."""
        if cr2 is not None:
            self.cr2 = cr2
        self.hooks.exception(self, vector, error_code)
        try:
            interrupts.deliver(self, vector, "fault" if fault else "trap", error_code)
        except Fault as f2:
            self._escalate(vector, f2)

    # Exception classes for double-fault detection (SDM vol 3 table 6-4, APM vol 2 8.2.9).
    CONTRIBUTORY = frozenset({0, 10, 11, 12, 13})

    def _escalate(self, first: int, f2: Fault) -> None:
        """A second exception `f2` arose while delivering `first` (-1: NMI or INTR, benign).

        SDM table 6-5: benign first -> the second is handled serially; contributory then
        contributory, or #PF then contributory/#PF -> #DF; anything while delivering #DF ->
        shutdown (triple fault)."""
        self.delivering = None
        second = f2.vector
        if first == 8:
            self.triple_fault(f"exception {second} while delivering #DF")
            return
        if f2.cr2 is not None:
            self.cr2 = f2.cr2
        contributory = self.CONTRIBUTORY
        if (first in contributory and second in contributory) or (
                first == 14 and (second in contributory or second == 14)):
            self.hooks.exception(self, 8, 0)
            try:
                interrupts.deliver(self, 8, "fault", 0)
            except Fault as f3:
                self.delivering = None
                self.triple_fault(f"exception {f3.vector} while delivering #DF")
            return
        self.deliver_exception(second, f2.error_code, fault=True)

    def triple_fault(self, reason: str) -> None:
        """Shutdown (SDM 6.15 #DF, APM 8.2.9): the vCPU stops; never an exception to Python."""
        self.shutdown = True
        self.halted = False
        self.attention = True
        self.stop_reason = "shutdown"
        self.hooks.shutdown(self, reason)

    def inject(self, kind: str, vector: int, error_code: int | None = None) -> None:
        """Deliver an event now, at the current RIP (SVM EVENTINJ). kind: intr, nmi,
        exception, softint. A fault while delivering it is delivered (or escalated) in turn;
        NMI blocking is the injector's business (the hypervisor tracks virtual NMIs)."""
        try:
            if kind == "exception":
                # Injected events are not subject to intercept checks (APM 15.20); a fault
                # raised while delivering one is. An injected event is delivered as if it
                # had occurred in the guest (APM 15.20): #BP and #OF are traps, whose frame
                # does not get RF=1 (SDM 17.3.1.1); an injected #DB keeps RF as it is too.
                interrupts.deliver(self, vector, "trap" if vector in (1, 3, 4) else "fault",
                                   error_code)
            else:
                interrupts.deliver(self, vector, "soft" if kind == "softint" else kind,
                                   error_code)
        except Fault as f2:
            self._escalate(vector if kind == "exception" else -1, f2)
        self.halted = False
        self.attention = True

    # ------------------------------------------------------------------ input pins
    def raise_nmi(self) -> None:
        """Assert the NMI input. While NMIs are blocked one NMI is held pending; further ones
        merge into it (SDM 6.7.1)."""
        self.nmi_pending = True
        self.attention = True

    def set_intr_line(self, pending: bool, ack: Callable[[], int | None] | None = None) -> None:
        """Drive the INTR input. `ack` is the interrupt-acknowledge cycle: it returns the
        vector (or None if the request went away) when the CPU takes the interrupt."""
        self.intr_pending = pending
        if ack is not None:
            self.intr_ack = ack
        self.attention = True

    def retire_events_total(self) -> int:
        """How many events were ever recorded (the event ring keeps only the newest)."""
        return self._events_total

    _events_total = 0

    def record_event(self, kind: int, vector: int, error_code: int | None, rip: int,
                     rflags: int, info: int = 0) -> None:
        self._events_total += 1
        self.retire.events.append(new_event(Event, (self.icount, kind, vector, error_code,
                                                    rip, rflags, self.dr[6], info)))
