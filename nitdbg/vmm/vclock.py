"""The virtual clock: time is retired instructions, never the wall clock.

One retired guest instruction is NS_PER_INSN ns of virtual time; HLT and delays jump the clock
forward. Timers fire in (deadline, registration order), so two runs of the same inputs fire
the same callbacks in the same order.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field

NS_PER_INSN = 10
NS_PER_USEC = 1_000


class ClockError(ValueError):
    """Time would run backwards, or a bad timer request."""


@dataclass(order=True)
class Timer:
    deadline: int
    seq: int
    name: str = field(compare=False)
    callback: Callable[[int], None] = field(compare=False, repr=False)
    cancelled: bool = field(default=False, compare=False)


class VirtualClock:
    __slots__ = ("_now", "_heap", "_seq", "_live")

    def __init__(self, start: int = 0) -> None:
        if start < 0:
            raise ClockError(f"vclock: negative start time {start}")
        self._now = start
        self._heap: list[Timer] = []
        self._seq = 0
        self._live = 0   # timers neither fired nor cancelled

    def now(self) -> int:
        return self._now

    def advance(self, ns: int) -> int:
        if ns < 0:
            raise ClockError(f"vclock: cannot advance by {ns} ns")
        self._now += ns
        return self._now

    def retire(self, insns: int = 1) -> int:
        """Account `insns` retired instructions."""
        return self.advance(insns * NS_PER_INSN)

    def advance_to(self, t: int) -> int:
        """Jump to t (e.g. HLT to the next deadline); never backwards."""
        if t < self._now:
            raise ClockError(f"vclock: cannot go back from {self._now} to {t}")
        self._now = t
        return t

    def add_timer(self, deadline: int, callback: Callable[[int], None],
                  name: str = "timer") -> Timer:
        """callback(now) runs from run_due() once now >= deadline."""
        if deadline < 0:
            raise ClockError(f"vclock: negative deadline {deadline}")
        t = Timer(deadline, self._seq, name, callback)
        self._seq += 1
        self._live += 1
        heapq.heappush(self._heap, t)
        return t

    def add_timer_in(self, delay: int, callback: Callable[[int], None],
                     name: str = "timer") -> Timer:
        if delay < 0:
            raise ClockError(f"vclock: negative delay {delay}")
        return self.add_timer(self._now + delay, callback, name)

    def cancel(self, timer: Timer) -> None:
        if not timer.cancelled:
            timer.cancelled = True
            self._live -= 1

    def _drop_cancelled(self) -> None:
        heap = self._heap
        while heap and heap[0].cancelled:
            heapq.heappop(heap)

    def next_deadline(self) -> int | None:
        self._drop_cancelled()
        return self._heap[0].deadline if self._heap else None

    def run_due(self, now: int | None = None) -> int:
        """Fire every timer with deadline <= now (default: the clock's time), in (deadline,
        registration) order; returns how many fired. Timers that callbacks add wait for the
        next call, so a timer re-armed into the past cannot loop forever."""
        limit = self._now if now is None else now
        horizon = self._seq
        fired = 0
        heap = self._heap
        deferred: list[Timer] = []
        while heap and heap[0].deadline <= limit:
            t = heapq.heappop(heap)
            if t.cancelled:
                continue
            if t.seq >= horizon:
                deferred.append(t)
                continue
            t.cancelled = True   # fired: cancel() on it is now a no-op
            self._live -= 1
            fired += 1
            t.callback(limit)
        for t in deferred:
            heapq.heappush(heap, t)
        return fired

    def pending(self) -> list[tuple[int, int, str]]:
        """(deadline, seq, name) of live timers, in firing order."""
        return sorted((t.deadline, t.seq, t.name) for t in self._heap if not t.cancelled)

    def snapshot(self) -> dict:
        return {"now": self._now, "timers": self.pending()}
