"""The 8254 programmable interval timer, channel 0 on IRQ 0 (bhyve's vatpit).

Ports 0x40-0x42 are the counters, 0x43 the control word register. Register names and
modes from the Intel 8254 datasheet (order 231164):

- Control word: SC1 SC0 (D7..D6) select the counter (11 = read-back), RW1 RW0 (D5..D4)
  the access (00 counter latch command, 01 LSB, 10 MSB, 11 LSB then MSB), M2..M0 (D3..D1)
  the mode, BCD (D0). Writing it stops the counter until the count is written.
- Mode 0 (interrupt on terminal count): OUT goes low when the count is written and high
  when it reaches zero, once. Mode 2 (rate generator) and mode 3 (square wave): the
  count reloads; OUT rises once per period, which is the edge IRQ 0 sees.
- A count of 0 means 65536 (binary). The input clock is 1.193182 MHz.
- The counter latch command freezes the count for the next read(s); read-back (D7..D6
  = 11) latches the count and/or status of the selected counters.

Channel 0's OUT is wired to ISA IRQ 0: the 8259 master IR0 and I/O APIC pin 2, as bhyve's
vatpit_callout_handler pulses both (``on_irq0``). Channels 1 and 2 count but drive
nothing (channel 2's gate and speaker bits in port 0x61 are not modelled). BCD counting
is accepted and counted as binary. Time is the virtual clock: the device is told
``now`` (virtual ns) and gives its next deadline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nitdbg.vmm.devices.iobus import checked_state

PIT_PORT = 0x40
PIT_HZ = 1_193_182
NS_PER_S = 1_000_000_000

Trace = Callable[..., None]


def ticks_to_ns(ticks: int) -> int:
    return ticks * NS_PER_S // PIT_HZ


class Counter:
    _STATE = {"mode": int, "rw": int, "count": int, "start": int, "armed": bool,
              "latched": int, "latch_bytes": int, "status_latched": int, "write_lsb": bool,
              "read_msb": bool, "partial": int, "fired": bool, "bcd": int}

    def __init__(self) -> None:
        self.mode = 0
        self.rw = 3
        self.bcd = 0
        self.count = 0          # the programmed initial count (0 = 65536)
        self.start = 0          # virtual ns at which counting began
        self.armed = False      # counting (a count has been written since the control word)
        self.latched = 0
        self.latch_bytes = 0    # bytes of the latched count still to read
        self.status_latched = -1
        self.write_lsb = True   # RW=11: next write is the LSB
        self.read_msb = False   # RW=11: next read is the MSB
        self.partial = 0
        self.fired = False      # mode 0: terminal count reached

    @property
    def period_ticks(self) -> int:
        return self.count or 0x10000

    def current(self, now: int) -> int:
        """The count as the counter element holds it at ``now``."""
        if not self.armed:
            return self.count & 0xFFFF
        elapsed = (now - self.start) * PIT_HZ // NS_PER_S
        p = self.period_ticks
        if self.mode in (2, 3):
            return (p - elapsed % p) & 0xFFFF
        if elapsed < p:
            return (p - elapsed) & 0xFFFF
        return (0x10000 - (elapsed - p) % 0x10000) & 0xFFFF    # mode 0 wraps and goes on

    def out(self, now: int) -> int:
        if self.mode == 0:
            return 1 if (not self.armed or self.fired
                         or (now - self.start) * PIT_HZ // NS_PER_S >= self.period_ticks) else 0
        return 1

    def state(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._STATE}

    def load_state(self, st: dict[str, Any]) -> None:
        checked_state(st, self._STATE, "atpit counter")
        for k in self._STATE:
            setattr(self, k, st[k])


class AtPit:
    name = "atpit"

    def __init__(self, on_irq0: Callable[[], None] | None = None,
                 trace: Trace | None = None, now: Callable[[], int] | None = None):
        self.counters_ = [Counter(), Counter(), Counter()]
        self.on_irq0 = on_irq0
        self.trace = trace or (lambda *a: None)
        self._now = now or (lambda: 0)
        self.next_edge: int | None = None    # channel 0's next OUT rising edge (virtual ns)
        self.edges = 0                       # channel 0 periods elapsed since armed
        self.counters = {"irq0_pulses": 0, "irq0_coalesced": 0}

    # -- time ----------------------------------------------------------------
    def next_deadline(self) -> int | None:
        return self.next_edge

    def _arm0(self, now: int) -> None:
        c = self.counters_[0]
        self.edges = 0
        if not c.armed:
            self.next_edge = None
        elif c.mode in (2, 3) or (c.mode == 0 and not c.fired):
            self.next_edge = c.start + ticks_to_ns(c.period_ticks)
        else:
            self.next_edge = None

    def fire(self, now: int) -> bool:
        """Raise IRQ 0 for channel 0's OUT edge if ``now`` has reached it."""
        edge = self.next_edge
        if edge is None or now < edge:
            return False
        c = self.counters_[0]
        if c.mode == 0:
            c.fired = True
            self.next_edge = None
        else:
            # Periodic: count periods from the start so the rate stays exact; a caller
            # late by several periods gets one interrupt (the others coalesce, as a
            # callout that runs late in bhyve).
            self.edges += 1
            nxt = c.start + ticks_to_ns(c.period_ticks * (self.edges + 1))
            if nxt <= now:
                late = (now - c.start) * PIT_HZ // NS_PER_S // c.period_ticks
                self.counters["irq0_coalesced"] += late - self.edges
                self.edges = late
                nxt = c.start + ticks_to_ns(c.period_ticks * (self.edges + 1))
            self.next_edge = nxt
        self.counters["irq0_pulses"] += 1
        if self.on_irq0 is not None:
            self.on_irq0()
        return True

    # -- I/O bus -------------------------------------------------------------
    def io_write(self, port: int, size: int, value: int, vcpu: int) -> None:
        value &= 0xFF
        now = self._now()
        if port == PIT_PORT + 3:
            self._control(value, now)
            return
        ch = port - PIT_PORT
        c = self.counters_[ch]
        if c.rw == 1:
            c.count = value
        elif c.rw == 2:
            c.count = value << 8
        elif c.write_lsb:
            c.partial = value
            c.write_lsb = False
            return
        else:
            c.count = c.partial | (value << 8)
            c.write_lsb = True
        c.start, c.armed, c.fired = now, True, False
        if ch == 0:
            self.trace("atpit channel 0 mode %d count %d", c.mode, c.period_ticks)
            self._arm0(now)

    def _control(self, value: int, now: int) -> None:
        sc, rw, mode = value >> 6, (value >> 4) & 3, (value >> 1) & 7
        if sc == 3:                       # read-back command
            for ch in range(3):
                if value & (2 << ch):
                    c = self.counters_[ch]
                    if not value & 0x20:
                        self._latch(c, now)
                    if not value & 0x10:
                        c.status_latched = (c.out(now) << 7) | (c.rw << 4) | (c.mode << 1) | c.bcd
            return
        c = self.counters_[sc]
        if rw == 0:                       # counter latch command
            self._latch(c, now)
            return
        c.rw, c.mode, c.bcd = rw, (mode & 3) if mode >= 6 else mode, value & 1
        c.armed, c.fired = False, False
        c.write_lsb, c.read_msb = True, False
        if sc == 0:
            self.next_edge = None

    @staticmethod
    def _latch(c: Counter, now: int) -> None:
        if c.latch_bytes == 0:
            c.latched = c.current(now)
            c.latch_bytes = 2 if c.rw == 3 else 1

    def io_read(self, port: int, size: int, vcpu: int) -> int:
        if port == PIT_PORT + 3:
            return 0xFF                    # the control word register cannot be read
        c = self.counters_[port - PIT_PORT]
        if c.status_latched >= 0:
            v, c.status_latched = c.status_latched, -1
            return v
        value = c.latched if c.latch_bytes else c.current(self._now())
        if c.rw == 1:
            byte = value & 0xFF
        elif c.rw == 2:
            byte = value >> 8
        else:
            byte = (value >> 8) if c.read_msb else value & 0xFF
            c.read_msb = not c.read_msb
        if c.latch_bytes:
            c.latch_bytes -= 1
        return byte & 0xFF

    def state(self) -> dict[str, Any]:
        return {"counters_": [c.state() for c in self.counters_], "next_edge": self.next_edge,
                "edges": self.edges, "counters": dict(self.counters)}

    def load_state(self, state: dict[str, Any]) -> None:
        st = checked_state(state, {"counters_": list, "edges": int, "counters": dict},
                           self.name)
        if len(st["counters_"]) != 3 or "next_edge" not in st:
            raise ValueError("atpit: state needs three counters and next_edge")
        for c, cs in zip(self.counters_, st["counters_"], strict=True):
            c.load_state(cs)
        self.next_edge = st["next_edge"]
        self.edges = st["edges"]
        self.counters = dict(st["counters"])

    def describe(self) -> str:
        c = self.counters_[0]
        run = f"count {c.period_ticks}" if c.armed else "stopped"
        return f"atpit: channel 0 mode {c.mode}, {run}, next IRQ 0 at {self.next_edge}"
