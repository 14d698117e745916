"""The MC146818 real-time clock and CMOS RAM on IRQ 8 (bhyve's vrtc).

Port 0x70 selects a register (bits 6..0; bit 7 is the PC's NMI-disable bit), port 0x71
reads or writes it. Register names from the Motorola MC146818A datasheet:

- Time registers 0x00..0x09 (seconds, alarm seconds, minutes, ..., year), in BCD unless
  register B's DM bit is set, 12-hour unless 24/12. The clock starts at a fixed date
  (2000-01-01 00:00:00, a Saturday) and runs on the virtual clock: no wall clock.
- Register A: UIP (bit 7, read-only: 1 from 244 us (tBUC) before an update cycle until
  it ends, 1984 us (tUC at 32.768 kHz) later), DV2..DV0 (bits 6..4, the divider: 010 =
  32.768 kHz time base, the only setting that runs the clock, the update cycle and the
  periodic interrupt, as bhyve requires), RS3..RS0
  (the periodic rate: 1 -> 256 Hz, 2 -> 128 Hz, n >= 3 -> 32768 >> (n - 1) Hz, 0 off).
- Register B: SET (bit 7), PIE (6), AIE (5), UIE (4), SQWE (3), DM (2), 24/12 (1),
  DSE (0).
- Register C (read-only): IRQF (bit 7) = PF.PIE | AF.AIE | UF.UIE, PF (6), AF (5), UF (4).
  PF is set at the periodic rate whether or not PIE is set (datasheet); reading C
  returns it and clears it. UF is set at the end of each update cycle, once a second of
  virtual time, whether or not UIE is set; IRQF (and IRQ 8) follow it only with UIE.
- Register D: VRT (bit 7, valid RAM and time) reads 1.
- 0x0E..0x7F: battery-backed RAM.

IRQ 8 is the IRQF output: it goes high when IRQF becomes 1 and low when C is read, so
if the guest never reads C only one interrupt arrives (bhyve's vrtc_set_reg_c pulses on
the 0->1 change only). It drives the slave 8259's IR0 and I/O APIC pin 8 (``on_irq8``).
The update cycle of second k ends at k s of virtual time (the time registers then show
the new second) and runs while the divider is 010 and SET is 0; SET=1 stops it, clears
UIE and UIP (datasheet, register B "SET"). The alarm is not modelled (AF stays 0). Writes
to C and D are ignored. Port 0x70's NMI-disable bit is stored and shown but gates nothing, as in
bhyve (vrtc_addr_handler keeps ``val & 0x7f``) and QEMU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nitdbg.vmm.devices.iobus import checked_state

RTC_PORT = 0x70
NS_PER_S = 1_000_000_000
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
A_UIP, A_DV_MASK, A_DV_32K, A_RS_MASK = 0x80, 0x70, 0x20, 0x0F
B_SET, B_PIE, B_AIE, B_UIE, B_SQWE, B_DM, B_24H, B_DSE = 0x80, 0x40, 0x20, 0x10, 8, 4, 2, 1
C_IRQF, C_PF, C_AF, C_UF = 0x80, 0x40, 0x20, 0x10
D_VRT = 0x80
NMI_DISABLE = 0x80
UPDATE_NS = 1_984_000           # tUC: the update cycle at a 32.768 kHz time base
UIP_LEAD_NS = 244_000           # tBUC: UIP rises this long before the cycle begins
UIP_NS = UIP_LEAD_NS + UPDATE_NS
EPOCH_DAYS_WEEKDAY = 7          # 2000-01-01 was a Saturday (day of week 7, Sunday = 1)

Trace = Callable[..., None]


def periodic_hz(reg_a: int) -> int:
    """The periodic interrupt rate register A selects (0: off)."""
    if (reg_a & A_DV_MASK) != A_DV_32K:
        return 0
    rs = reg_a & A_RS_MASK
    if rs == 0:
        return 0
    if rs <= 2:
        return 256 >> (rs - 1)
    return 32768 >> (rs - 1)


def _bcd(v: int) -> int:
    return ((v // 10) << 4) | (v % 10)


def _civil(days: int) -> tuple[int, int, int]:
    """(year, month, day) of ``days`` since 2000-01-01 (proleptic Gregorian)."""
    y = 2000
    while True:
        n = 366 if (y % 4 == 0 and (y % 100 or y % 400 == 0)) else 365
        if days < n:
            break
        days -= n
        y += 1
    leap = y % 4 == 0 and (y % 100 or y % 400 == 0)
    for m, dm in enumerate((31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)):
        if days < dm:
            return y, m + 1, days + 1
        days -= dm
    raise AssertionError("unreachable")


class Rtc:
    name = "rtc"

    def __init__(self, on_irq8: Callable[[bool], None] | None = None,
                 trace: Trace | None = None, now: Callable[[], int] | None = None):
        self.on_irq8 = on_irq8
        self.trace = trace or (lambda *a: None)
        self._now = now or (lambda: 0)
        self.index = 0
        self.nmi_disable = False
        self.nvram = bytearray(128)
        self.reg_a = A_DV_32K          # reset: 32.768 kHz time base, no periodic rate
        self.reg_b = B_24H
        self.reg_c = 0
        self.periodic_start = 0        # virtual ns the periodic divider was (re)started
        self.periodic_seen = 0         # periods already accounted for in PF
        self.next_pf: int | None = None
        self.updates_seen = 0          # seconds whose update cycle is accounted for in UF
        self.next_uf: int | None = None
        self.irq8 = False
        # ("update" joins the counters at the first update cycle a guest observes)
        self.counters = {"periodic": 0, "irq8": 0, "reg_c_reads": 0}

    # -- the periodic interrupt ------------------------------------------------
    def _period_ns(self) -> int:
        hz = periodic_hz(self.reg_a)
        return NS_PER_S // hz if hz else 0

    def _restart_periodic(self, now: int) -> None:
        self.periodic_start, self.periodic_seen = now, 0
        self._schedule()

    def _schedule(self) -> None:
        self._schedule_update()
        p = self._period_ns()
        # A deadline only matters when PF would raise IRQ 8; otherwise PF is brought up
        # to date lazily when C is read.
        if p and self.reg_b & B_PIE and not self.reg_b & B_SET:
            self.next_pf = self.periodic_start + p * (self.periodic_seen + 1)
        else:
            self.next_pf = None

    def _catch_up(self, now: int) -> None:
        self._catch_up_updates(now)
        p = self._period_ns()
        if not p or self.reg_b & B_SET:
            return
        n = (now - self.periodic_start) // p
        if n > self.periodic_seen:
            self.counters["periodic"] += n - self.periodic_seen
            self.periodic_seen = n
            self._set_reg_c(self.reg_c | C_PF)

    # -- the update cycle -----------------------------------------------------------
    def _updating(self) -> bool:
        return (self.reg_a & A_DV_MASK) == A_DV_32K and not self.reg_b & B_SET

    def _catch_up_updates(self, now: int) -> None:
        """Account for the update cycles that ended by `now`: each sets UF. While the
        clock is stopped (divider, SET) the seconds pass without a cycle."""
        k = now // NS_PER_S
        if k <= self.updates_seen:
            return
        n, self.updates_seen = k - self.updates_seen, k
        if self._updating():
            self.counters["update"] = self.counters.get("update", 0) + n
            self._set_reg_c(self.reg_c | C_UF)

    def _schedule_update(self) -> None:
        # A deadline only when UF would raise IRQ 8; otherwise UF is caught up lazily.
        if self.reg_b & B_UIE and self._updating():
            self.next_uf = (self.updates_seen + 1) * NS_PER_S
        else:
            self.next_uf = None

    def _uip(self, now: int) -> int:
        """UIP: 1 within tBUC + tUC before an update cycle ends (MC146818A datasheet)."""
        if self._updating() and now % NS_PER_S >= NS_PER_S - UIP_NS:
            return A_UIP
        return 0

    def next_deadline(self) -> int | None:
        pf, uf = self.next_pf, self.next_uf
        if pf is None or uf is None:
            return uf if pf is None else pf
        return pf if pf <= uf else uf

    def fire(self, now: int) -> bool:
        d = self.next_deadline()
        if d is None or now < d:
            return False
        before = self.irq8
        self._catch_up(now)
        self._schedule()
        return self.irq8 and not before

    def _set_reg_c(self, value: int) -> None:
        flags = value & (C_PF | C_AF | C_UF)
        irqf = bool(flags & C_PF and self.reg_b & B_PIE or flags & C_AF and self.reg_b & B_AIE
                    or flags & C_UF and self.reg_b & B_UIE)
        self.reg_c = flags | (C_IRQF if irqf else 0)
        if irqf != self.irq8:
            self.irq8 = irqf
            if irqf:
                self.counters["irq8"] += 1
                self.trace("rtc irq8 asserted (reg_c %#x)", self.reg_c)
            if self.on_irq8 is not None:
                self.on_irq8(irqf)

    # -- time registers ----------------------------------------------------------
    def _time_reg(self, reg: int, now: int) -> int:
        secs = now // NS_PER_S
        days, rem = divmod(secs, 86400)
        hour, rem = divmod(rem, 3600)
        minute, sec = divmod(rem, 60)
        year, month, day = _civil(days)
        if reg == 4 and not self.reg_b & B_24H:
            pm = hour >= 12
            hour = hour % 12 or 12
            v = hour if self.reg_b & B_DM else _bcd(hour)
            return v | (0x80 if pm else 0)
        value = {0: sec, 2: minute, 4: hour, 6: (days + EPOCH_DAYS_WEEKDAY - 1) % 7 + 1,
                 7: day, 8: month, 9: year % 100}.get(reg)
        if value is None:
            return self.nvram[reg]         # the alarm registers are plain storage here
        return value if self.reg_b & B_DM else _bcd(value)

    # -- I/O bus -------------------------------------------------------------------
    def io_read(self, port: int, size: int, vcpu: int) -> int:
        if port == RTC_PORT:
            return 0xFF                    # the index register is write-only on a PC
        reg, now = self.index, self._now()
        if reg < REG_A:
            return self._time_reg(reg, now)
        if reg == REG_A:
            return (self.reg_a & ~A_UIP) | self._uip(now)
        if reg == REG_B:
            return self.reg_b
        if reg == REG_C:
            self._catch_up(now)
            value = self.reg_c
            self.counters["reg_c_reads"] += 1
            self._set_reg_c(0)
            return value
        if reg == REG_D:
            return D_VRT
        return self.nvram[reg]

    def io_write(self, port: int, size: int, value: int, vcpu: int) -> None:
        value &= 0xFF
        if port == RTC_PORT:
            nmi_off = bool(value & NMI_DISABLE)
            if nmi_off != self.nmi_disable:
                self.trace("rtc port 0x70 NMI-disable bit %d (ignored)", int(nmi_off))
            self.nmi_disable = nmi_off
            self.index = value & 0x7F
            return
        reg, now = self.index, self._now()
        if reg == REG_A:
            self._catch_up(now)
            old = periodic_hz(self.reg_a)
            self.reg_a = value & ~A_UIP
            if periodic_hz(self.reg_a) != old:
                self.trace("rtc periodic rate %d Hz", periodic_hz(self.reg_a))
                self._restart_periodic(now)
            self._schedule()               # the divider also runs the update cycle
        elif reg == REG_B:
            self._catch_up(now)
            if value & B_SET:
                value &= ~B_UIE            # SET clears UIE (datasheet, register B)
            self.reg_b = value
            self.trace("rtc reg_b %#x", value)
            self._set_reg_c(self.reg_c)    # PIE may raise or drop IRQF at once
            self._schedule()
        elif reg in (REG_C, REG_D):
            pass                           # read-only
        else:
            self.nvram[reg] = value        # time registers: the clock is not settable here

    def state(self) -> dict[str, Any]:
        st = {"index": self.index, "nmi_disable": self.nmi_disable,
              "nvram": list(self.nvram), "reg_a": self.reg_a, "reg_b": self.reg_b,
              "reg_c": self.reg_c, "periodic_start": self.periodic_start,
              "periodic_seen": self.periodic_seen, "next_pf": self.next_pf,
              "irq8": self.irq8, "counters": dict(self.counters)}
        # The update cycle's fields only once a guest has looked at the RTC: a machine
        # whose guest never did has the state (and the session digests) it always had.
        if self.updates_seen or self.next_uf is not None:
            st["updates_seen"], st["next_uf"] = self.updates_seen, self.next_uf
        return st

    def load_state(self, state: dict[str, Any]) -> None:
        st = checked_state(state, {"index": int, "nmi_disable": bool, "nvram": list,
                                   "reg_a": int, "reg_b": int, "reg_c": int,
                                   "periodic_start": int, "periodic_seen": int,
                                   "irq8": bool, "counters": dict}, self.name)
        if len(st["nvram"]) != 128 or "next_pf" not in st:
            raise ValueError("rtc: state needs 128 bytes of nvram and next_pf")
        for k in ("index", "nmi_disable", "reg_a", "reg_b", "reg_c", "periodic_start",
                  "periodic_seen", "next_pf", "irq8"):
            setattr(self, k, st[k])
        # a state without them: no update cycle observed yet (or saved before they existed)
        updates_seen, next_uf = state.get("updates_seen", 0), state.get("next_uf")
        if type(updates_seen) is not int or not (next_uf is None or type(next_uf) is int):
            raise ValueError("rtc: updates_seen and next_uf must be integers")
        self.updates_seen, self.next_uf = updates_seen, next_uf
        self.nvram = bytearray(st["nvram"])
        self.counters = dict(st["counters"])

    def describe(self) -> str:
        return (f"rtc: A {self.reg_a:#04x} ({periodic_hz(self.reg_a)} Hz periodic) "
                f"B {self.reg_b:#04x} C {self.reg_c:#04x}, {self.counters.get('update', 0)} update"
                f" cycles, IRQ 8 "
                f"{'high' if self.irq8 else 'low'}, NMI-disable {int(self.nmi_disable)}")
