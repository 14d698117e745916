"""Building a `Snapshot` from the machine: runs on the machine worker's thread only.

A `SnapshotBuilder` lives as long as its machine and keeps what does not need recomputing
on every update: the KTR rows already formatted (only entries logged since the previous
snapshot are formatted) and decoded instructions by address and bytes.
"""

from __future__ import annotations

from collections import deque
from itertools import islice

from ..ddb.disasm import Disassembler, DisInsn
from ..svm import exitcodes as ec
from ..svm.intinfo import describe as intinfo_describe
from ..x86.regs import GPR_NAMES
from ..x86.retire import EV_EXCEPTION, EV_INJECT, EV_INTR, EV_IRET, EV_NMI, EV_VMEXIT
from .explain import explain
from .model import DisLine, Snapshot, TimelineEvent, VcpuView, VmcbView

DISASM_BEFORE = 24         # instructions carried above the current one (the pane shows
DISASM_AFTER = 26          # as many as centre it in its height) ... and from it on
DISASM_BACK = 0x800        # bytes decoded before RIP at most (from a symbol's start)
KTR_TAIL = 400             # KTR entries carried in a snapshot
TIMELINE_EVENTS = 1500     # newest events carried per vCPU (PAUSE exits left out) ...
TIMELINE_SCAN = 1 << 16    # ... from this many newest retirement-log events
CONSOLE_TAIL = 8000        # bytes of serial output carried
DECODE_CACHE = 8192        # decoded instructions kept (guest code is small)

KtrRow = tuple[int, int, int, str]


class KtrTail:
    """The newest KTR_TAIL entries of one ring, formatted once each.

    The ring's `seq` counts entries since the last clear and never wraps, so the entries
    logged since the previous look are the newest `total_logged - total` ones, provided the
    entry before them is still the one seen last (else the ring was cleared: start over)."""

    def __init__(self) -> None:
        self.rows: deque[KtrRow] = deque(maxlen=KTR_TAIL)
        self.total = 0              # entries logged up to rows[-1]
        self.epoch = 0              # changes when rows do not continue the previous ones
        self._ktr = None
        self._last: tuple[int, int, int] | None = None     # seq, index, timestamp of rows[-1]

    def update(self, ktr) -> None:  # noqa: ANN001 - nitdbg.vmm.ktr.Ktr
        n = ktr.total_logged
        new = n - self.total
        if ktr is self._ktr and 0 <= new < KTR_TAIL:
            if self._last is None:
                if n == 0:
                    return
                got = ktr.tail(new) if new else []
                if len(got) == new:
                    self._extend(got, n)
                    return
            else:
                got = ktr.tail(new + 1)
                e = got[0] if got else None
                if (len(got) == new + 1 and e is not None
                        and (e.seq, e.index, e.timestamp) == self._last):
                    self._extend(got[1:], n)
                    return
        self._ktr = ktr
        self.epoch += 1
        self.rows.clear()
        self._last = None
        self._extend(ktr.tail(KTR_TAIL), n)

    def _extend(self, entries: list, total: int) -> None:
        self.rows.extend((e.index, e.cpu, e.timestamp, e.message) for e in entries)
        self.total = total
        if entries:
            e = entries[-1]
            self._last = (e.seq, e.index, e.timestamp)


class SnapshotBuilder:
    def __init__(self, dis: Disassembler) -> None:
        self.dis = dis
        self.ktr = KtrTail()
        self._decoded: dict[tuple[int, bytes], DisInsn] = {}

    def decode(self, code: bytes, addr: int) -> DisInsn:
        key = (addr, code)
        d = self._decoded.get(key)
        if d is None:
            if len(self._decoded) >= DECODE_CACHE:
                self._decoded.clear()
            d = self._decoded[key] = self.dis.decode(code, addr)
        return d

    def build(self, m, selected: int, since: dict[int, int], seq: int, is_stop: bool,  # noqa: ANN001
              running: bool, status: str = "") -> Snapshot:
        """Everything the panes show. `since[vcpu]` is the retirement count at the previous
        stop (for the dimmed "retired since" instructions)."""
        ddb = m.ddb
        ddb_vcpu = ddb.vcpu if ddb.active else None
        bps = {b.address for b in ddb.breaks.list if not b.temporary}
        views = []
        for v in m.vm.vcpus:
            here = ddb_vcpu == v.id
            regs, src, rflags, fsrc, fnow = _vcpu_regs(m, v, here)
            last = v.last_exit
            views.append(VcpuView(
                v.id, v.id in m.in_kdb, v.halted, v.cpu.icount, regs["rip"], regs, src,
                rflags, fsrc, fnow, v.nmi_state, v.last_unblock, v.nmi_pending,
                last is not None and last.code == ec.VMEXIT_IRET, _vmcb_view(v),
                m.vm.stats.format_stats(v.id), _timeline(v), v.now(),
                self._disasm(m, v, regs["rip"], since.get(v.id, 0), bps),
                tuple(explain(m, v.id))))
        self.ktr.update(m.vm.ktr)
        console = m.console_output()[-CONSOLE_TAIL:].decode(errors="replace")
        audit = ddb.audit
        return Snapshot(
            seq, is_stop, running, selected, m.surface, m.vm.policy.name, m.vm.name,
            tuple(views), tuple(self.ktr.rows), console, audit.summary(), audit.ok,
            len(audit.checks), ddb_vcpu, tuple(sorted(bps)), m.total_retired, m.now(),
            status, self.ktr.total, self.ktr.epoch)

    def _disasm(self, m, v, rip: int, since: int, bps: set[int]  # noqa: ANN001
                ) -> tuple[DisLine, ...]:
        # decode from a symbol's start (instruction boundaries are known there), going back
        # a symbol or two when RIP is near the start of its own, so rows above ▶ are filled
        start = probe = rip
        for _ in range(3):
            hit = m.symbols.lookup(probe)
            if hit is None or rip - (probe - hit[1]) > DISASM_BACK:
                break
            start = probe - hit[1]
            if rip - start >= DISASM_BEFORE * 4 or start == 0:
                break
            probe = start - 1
        code = b""
        for lo in (start, rip):
            try:
                code = m.vm.read_guest(v, lo, rip - lo + DISASM_AFTER * 15)
                start = lo
                break
            except Exception:  # noqa: BLE001 - unreadable bytes: try from RIP, then give up
                continue
        if not code:
            return (DisLine(rip, m.symbols.format(rip), "*** unreadable ***", current=True),)
        insns = []
        addr = start
        while addr - start < len(code) - 15 or (addr <= rip):
            off = addr - start
            if off >= len(code):
                break
            d = self.decode(code[off:off + 15], addr)
            insns.append(d)
            if addr < rip < d.next:             # decoding from the symbol went out of step
                insns = []
                addr = rip
                continue
            addr = d.next
        idx = next((i for i, d in enumerate(insns) if d.addr == rip), 0)
        window = insns[max(0, idx - DISASM_BEFORE): idx + DISASM_AFTER]
        shown = {d.addr for d in window}
        log = v.cpu.retire
        retired = _rips(log, since, v.cpu.icount, shown) if since < v.cpu.icount else set()
        win = _iret_window(v)
        iret = _rips(log, win[0], win[1], shown) if win else set()
        return tuple(DisLine(d.addr, m.symbols.format(d.addr), d.text, d.addr == rip,
                             d.addr in bps, d.addr in retired, d.addr in iret)
                     for d in window)


# ---------------------------------------------------------------------- pieces
def _vcpu_regs(m, v, ddb_here: bool) -> tuple[dict[str, int], str, int, str, int | None]:  # noqa: ANN001
    """Registers to show: the trapframe's while this vCPU is in ddb (those are what ddb
    shows and writes), else the live vCPU's (the VMCB holds RAX/RSP/RIP/RFLAGS after an
    exit)."""
    if ddb_here:
        try:
            tf = m.ddb.frame()
        except Exception:  # noqa: BLE001 - a bad frame: fall back to the vCPU
            tf = None
        if tf is not None:
            regs = {n: tf.get("tf_" + n, 0) for n in GPR_NAMES}
            regs["rip"] = tf["tf_rip"]
            pushed = _pushed_rflags(v, tf["tf_rip"])
            if pushed is not None:
                return regs, "trapframe", pushed[0], pushed[1], tf["tf_rflags"]
            return regs, "trapframe", tf["tf_rflags"], "trapframe", None
    c = v.cpu
    regs = {n: c.regs[i] for i, n in enumerate(GPR_NAMES)}
    if v.svm.in_guest:
        regs["rip"], rflags = c.rip, c.rflags
    else:
        regs["rax"], regs["rsp"] = v.vmcb.rax, v.vmcb.rsp
        regs["rip"], rflags = v.vmcb.rip, v.vmcb.rflags
    return regs, "vCPU", rflags, "vCPU", None


def _pushed_rflags(v, tf_rip: int) -> tuple[int, str] | None:  # noqa: ANN001
    """RFLAGS as the processor pushed them into the trapframe when it delivered the event
    that stopped the guest (the newest #DB/#BP/NMI delivery whose pushed RIP is the stop)."""
    for e in reversed(v.cpu.retire.events):
        if e.kind in (EV_EXCEPTION, EV_NMI) and e.rip in (tf_rip, tf_rip + 1):
            name = {1: "#DB", 2: "NMI", 3: "#BP"}.get(e.vector, f"vector {e.vector}")
            return e.rflags, f"trapframe as pushed by {name}"
    return None


def _vmcb_view(v) -> VmcbView:  # noqa: ANN001
    b = v.vmcb
    code = ec.exitcode_from_u64(b.exitcode)
    return VmcbView(tuple(b.intercept_names()), code, ec.apm_name(code), b.exitinfo1,
                    b.exitinfo2, intinfo_describe(b.exitintinfo), intinfo_describe(b.eventinj),
                    b.v_irq, b.v_intr_vector, b.interrupt_shadow, b.rflags, b.rip, b.dr6,
                    b.dr7)


def _timeline(v) -> tuple[TimelineEvent, ...]:  # noqa: ANN001
    log = v.cpu.retire
    out: list[TimelineEvent] = []
    for e in islice(reversed(log.events), TIMELINE_SCAN):
        if len(out) >= TIMELINE_EVENTS:
            break
        if e.kind == EV_VMEXIT:
            if e.info == ec.VMEXIT_PAUSE:      # spin-loop noise
                continue
            if e.info == ec.VMEXIT_IRET:
                kind, label = "iret", "IRET exit"
            elif e.info == ec.vmexit_excp(1):
                kind, label = "db", "#DB exit"
            else:
                kind, label = "exit", ec.ktr_name(e.info)
        elif e.kind == EV_INJECT:
            kind, label = "inject", "inject " + ("NMI" if e.vector == 2 else f"vec {e.vector}")
        elif e.kind == EV_NMI:
            kind, label = "nmi", "NMI delivered"
        elif e.kind == EV_EXCEPTION:
            kind, label = ("db", "#DB") if e.vector == 1 else ("exc", f"exception {e.vector}")
        elif e.kind == EV_INTR:
            kind, label = "intr", f"interrupt {e.vector}"
        elif e.kind == EV_IRET:
            kind, label = "ret", "IRET retired"
        else:
            continue
        out.append(TimelineEvent(log.time_of(e.seq), kind, label))
    return tuple(reversed(out))


def _iret_window(v) -> tuple[int, int] | None:  # noqa: ANN001
    """Retirement counts [from, to) between the newest IRET exit and the unblocking: the
    exception exit that ends tracing (#DB with BS, or the IRET's fault), else the next exit
    (bhyve-upstream unblocks at the IRET exit itself)."""
    evs = list(v.cpu.retire.events)
    for i in range(len(evs) - 1, -1, -1):
        e = evs[i]
        if e.kind == EV_VMEXIT and e.info == ec.VMEXIT_IRET:
            later = [x for x in evs[i + 1:] if x.kind == EV_VMEXIT]
            end = next((x.seq for x in later if ec.is_exception_exit(x.info)), None)
            if end is None and later and v.policy.name != "iret-tracing":
                end = later[0].seq
            return e.seq, end if end is not None else v.cpu.icount
    return None


def _rips(log, start: int, end: int, wanted: set[int]) -> set[int]:  # noqa: ANN001
    """Which of the `wanted` addresses were retired in [start, end) (as far as the log
    still holds)."""
    start = max(start, end - log.capacity, 0)
    if start >= end or not wanted:
        return set()
    a, b = start & log.mask, end & log.mask
    if a < b:
        return wanted.intersection(log.rips[a:b])
    return wanted.intersection(log.rips[a:]) | wanted.intersection(log.rips[:b])
