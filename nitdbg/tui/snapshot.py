"""Building a `Snapshot` from the machine: runs on the machine worker's thread only.

A `SnapshotBuilder` lives as long as its machine and keeps what does not need recomputing
on every update: the KTR rows already formatted (only entries logged since the previous
snapshot are formatted) and decoded instructions by address and bytes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import fields as dataclass_fields
from itertools import islice

from ..ddb.disasm import Disassembler, DisInsn
from ..ddb.errors import DdbError
from ..svm import exitcodes as ec
from ..view import KtrLine, read_guest, retired_among
from ..x86.faults import Fault
from ..x86.regs import GPR_NAMES
from .explain import AuditVerdict, StepFacts, explain
from .model import DisLine, Snapshot, TimelineEvent, VcpuView, VmcbView

DISASM_BEFORE = 24         # instructions carried above the current one (the pane shows
DISASM_AFTER = 26          # as many as centre it in its height) ... and from it on
DISASM_BACK = 0x800        # bytes decoded before RIP at most (from a symbol's start)
KTR_TAIL = 400             # KTR entries carried in a snapshot
TIMELINE_EVENTS = 1500     # newest events carried per vCPU (PAUSE exits left out)
EVENT_TAIL = 4096          # newest events of each vCPU kept by the builder
RETIRED_SCAN = 1 << 14     # retirements looked at for the dimmed "retired since" marks
IRET_SCAN = 512            # newest events searched for the IRET exit of the window
CONSOLE_TAIL = 8000        # bytes of serial output carried
DECODE_CACHE = 8192        # decoded instructions kept (guest code is small)
SYMBOL_CACHE = 8192        # addresses kept formatted as sym+off

EXPLAIN_EVENTS = 1024      # newest events of the window the explanation looks at
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
        self._named: dict[int, str] = {}
        self._explained: dict[int, tuple] = {}
        self._tails: dict[int, EventTail] = {}
        self._iret: dict[int, tuple] = {}

    def decode(self, code: bytes, addr: int) -> DisInsn:
        key = (addr, code)
        d = self._decoded.get(key)
        if d is None:
            if len(self._decoded) >= DECODE_CACHE:
                self._decoded.clear()
            d = self._decoded[key] = self.dis.decode(code, addr)
        return d

    def sym(self, addr: int) -> str:
        """`addr` as sym+off, formatted once (the explanations name every event's address,
        the disassembly every row's, on every snapshot; the symbol table never changes:
        the builder is its machine's)."""
        name = self._named.get(addr)
        if name is None:
            if len(self._named) >= SYMBOL_CACHE:
                self._named.clear()
            name = self._named[addr] = self.dis.symbols.format(addr)
        return name

    def build(self, m, selected: int, since: dict[int, int], seq: int, is_stop: bool,  # noqa: ANN001
              running: bool, status: str = "") -> Snapshot:
        """Everything the panes show. `since[vcpu]` is the retirement count at the previous
        stop (for the dimmed "retired since" instructions and the explanation's window).
        What a vCPU looks like comes from the machine's read-only view (nitdbg.view)."""
        ddb = m.ddb
        ddb_vcpu = ddb.vcpu if ddb.active else None
        bps = {b.address for b in ddb.breaks.list if not b.temporary}
        self.ktr.update(m.vm.ktr)
        views = []
        ms = m.summary()
        for i in range(ms.vcpus):
            st = m.view(i)
            here = ddb_vcpu == i
            regs, src, rflags, fsrc, fnow = _vcpu_regs(m, st, here)
            last = st.last_exit
            start = since.get(i, 0)
            tail = self._tails.setdefault(i, EventTail())
            tail.update(m, i, st.events_total)
            if is_stop or i not in self._explained:
                # explanations at stops only: a progress snapshot keeps the last ones
                events = tail.since(start)
                if events is None:
                    events = tail.newest(EXPLAIN_EVENTS)
                facts = self._facts(m, i, st, events[-EXPLAIN_EVENTS:], here)
                self._explained[i] = tuple(explain(facts, self.sym))
            key = (st.events_total, st.nmi.blocked)
            if self._iret.get(i, (None,))[0] != key:
                self._iret[i] = (key, _iret_window(tail.newest(IRET_SCAN), st.nmi,
                                                   st.icount))
            win = self._iret[i][1]
            timeline = tuple(tail.timeline)
            views.append(VcpuView(
                i, st.in_ddb, st.halted, st.icount, regs["rip"], regs, src,
                rflags, fsrc, fnow, st.nmi.state, st.nmi.last_unblock, st.nmi.pending,
                last is not None and last.code == ec.VMEXIT_IRET, _vmcb_view(st),
                m.vm.stats.format_stats(i), timeline, st.now,
                self._disasm(m, i, regs["rip"], start if is_stop else st.icount, st.icount,
                             bps, win),
                self._explained[i], st.nmi.blocked, st.nmi.last_transition))
        console = m.console_output()[-CONSOLE_TAIL:].decode(errors="replace")
        audit = ddb.audit
        return Snapshot(
            seq, is_stop, running, selected, ms.surface, ms.policy, ms.name,
            tuple(views), tuple(self.ktr.rows), console, audit.summary(), audit.ok,
            len(audit.checks), ddb_vcpu, tuple(sorted(bps)), m.total_retired, m.now(),
            status, self.ktr.total, self.ktr.epoch)

    def _facts(self, m, vcpu: int, st, events, here: bool) -> StepFacts:  # noqa: ANN001
        """What happened on `vcpu` since its previous stop, for the explanations."""
        t0 = events[0].time if events else st.now
        ktr = tuple(KtrLine(*row) for row in self.ktr.rows if row[1] == vcpu and row[2] >= t0)
        reason = verdict = None
        if here:
            reason = m.ddb.stop_reason
            checks = m.ddb.audit.checks
            chk = checks[-1] if checks else None
            if chk is not None and chk.vcpu == vcpu and chk.to_seq == st.icount:
                verdict = AuditVerdict(chk.number, chk.ok,
                                       tuple(f"{r.where}: {r.text}" for r in chk.executed),
                                       tuple(chk.problems))
        return StepFacts(vcpu, events, ktr, st.nmi, reason, verdict)

    def _disasm(self, m, vcpu: int, rip: int, since: int, icount: int, bps: set[int],  # noqa: ANN001
                win: tuple[int, int] | None) -> tuple[DisLine, ...]:
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
            code = _read_code(m, vcpu, lo, rip - lo + DISASM_AFTER * 15)
            if len(code) > rip - lo:           # readable up to RIP at least
                start = lo
                break
            code = b""
        if not code:
            return (DisLine(rip, self.sym(rip), "*** unreadable ***", current=True),)
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
        # marks from the newest RETIRED_SCAN retirements at most (a long run's are old news)
        since = max(since, icount - RETIRED_SCAN)
        retired = retired_among(m, vcpu, since, icount, shown) if since < icount else set()
        iret = (retired_among(m, vcpu, max(win[0], win[1] - RETIRED_SCAN), win[1], shown)
                if win else set())
        return tuple(DisLine(d.addr, self.sym(d.addr), d.text, d.addr == rip,
                             d.addr in bps, d.addr in retired, d.addr in iret)
                     for d in window)


# ---------------------------------------------------------------------- pieces
def _read_code(m, vcpu: int, addr: int, n: int) -> bytes:  # noqa: ANN001
    """Up to `n` bytes of guest code from `addr`, page by page, ending where a page cannot
    be read: the walk faults (#PF for a page not present, #GP for a non-canonical address,
    Unsupported for a paging mode the model lacks: nitdbg.x86.faults) or the address it
    gives is not guest memory (ValueError from the host's view, e.g. an AP whose paging is
    still off holding the kernel's virtual RIP)."""
    out = b""
    while n > 0:
        chunk = min(n, 4096 - (addr & 0xFFF))
        try:
            out += read_guest(m, vcpu, addr, chunk)
        except (Fault, ValueError):
            break
        addr = (addr + chunk) & 0xFFFF_FFFF_FFFF_FFFF
        n -= chunk
    return out


def _vcpu_regs(m, st, ddb_here: bool) -> tuple[dict[str, int], str, int, str, int | None]:  # noqa: ANN001
    """Registers to show: the trapframe's while this vCPU is in ddb (those are what ddb
    shows and writes), else the vCPU's as the machine's view has them."""
    if ddb_here:
        try:
            tf = m.ddb.frame()
        except DdbError:     # the trapframe's page is unreadable: show the vCPU's own
            tf = None
        if tf is not None:
            regs = {n: tf.get("tf_" + n, 0) for n in GPR_NAMES}
            regs["rip"] = tf["tf_rip"]
            pushed = _pushed_rflags(m.recent_events(st.id, 0, limit=64, scan=64),
                                    tf["tf_rip"])
            if pushed is not None:
                return regs, "trapframe", pushed[0], pushed[1], tf["tf_rflags"]
            return regs, "trapframe", tf["tf_rflags"], "trapframe", None
    regs = {n: st.regs[n] for n in GPR_NAMES}
    regs["rip"] = st.regs["rip"]
    return regs, "vCPU", st.regs["rflags"], "vCPU", None


def _pushed_rflags(events, tf_rip: int) -> tuple[int, str] | None:  # noqa: ANN001
    """RFLAGS as the processor pushed them into the trapframe when it delivered the event
    that stopped the guest (the newest #DB/#BP/NMI delivery whose pushed RIP is the stop)."""
    for e in reversed(events):
        if e.kind in ("exception", "nmi") and e.rip in (tf_rip, tf_rip + 1):
            name = {1: "#DB", 2: "NMI", 3: "#BP"}.get(e.vector, f"vector {e.vector}")
            return e.rflags, f"trapframe as pushed by {name}"
    return None


def _vmcb_view(st) -> VmcbView:  # noqa: ANN001 - nitdbg.view.VcpuState
    b = st.vmcb
    ex = st.last_exit
    return VmcbView(**{f.name: getattr(b, f.name) for f in dataclass_fields(b)},
                    exit=ex.where() if ex is not None else "", in_guest=st.in_guest)


_TIMELINE_KIND = {"inject": "inject", "nmi": "nmi", "intr": "intr", "iret": "ret"}


def timeline_event(e) -> TimelineEvent | None:  # noqa: ANN001 - nitdbg.view.TimedEvent
    if e.kind == "vmexit":
        if e.info == ec.VMEXIT_PAUSE:          # spin-loop noise
            return None
        if e.info == ec.VMEXIT_IRET:
            kind, label = "iret", "IRET exit"
        elif e.info == ec.vmexit_excp(1):
            kind, label = "db", "#DB exit"
        else:
            kind, label = "exit", ec.ktr_name(e.info)
    elif e.kind == "inject":
        kind, label = "inject", "inject " + ("NMI" if e.vector == 2 else f"vec {e.vector}")
    elif e.kind == "nmi":
        kind, label = "nmi", "NMI delivered"
    elif e.kind == "exception":
        kind, label = ("db", "#DB") if e.vector == 1 else ("exc", f"exception {e.vector}")
    elif e.kind == "intr":
        kind, label = "intr", f"interrupt {e.vector}"
    elif e.kind == "iret":
        kind, label = "ret", "IRET retired"
    else:
        return None
    return TimelineEvent(e.time, kind, label)


class EventTail:
    """The newest events of one vCPU's retirement log, taken from the machine's view only
    as they come (the count of events ever recorded says how many are new), and the
    timeline built from them the same way."""

    def __init__(self) -> None:
        self.events: deque = deque(maxlen=EVENT_TAIL)
        self.timeline: deque[TimelineEvent] = deque(maxlen=TIMELINE_EVENTS)
        self.total = 0

    def update(self, m, vcpu: int, total: int) -> bool:  # noqa: ANN001
        """Take the events recorded since the last look; True if there were any."""
        new = total - self.total
        if new == 0:
            return False
        if not 0 < new <= EVENT_TAIL:
            self.events.clear()
            self.timeline.clear()
            new = EVENT_TAIL if new > 0 else min(total, EVENT_TAIL)
        got = m.recent_events(vcpu, 0, limit=new, scan=new)
        self.events.extend(got)
        self.timeline.extend(t for t in map(timeline_event, got) if t is not None)
        self.total = total
        return True

    def newest(self, n: int) -> tuple:
        """The newest `n` events. When `since(seq)` is None, every event held is newer than
        `seq`, so these are the newest `n` since `seq` as the machine would give them (the
        tail holds the log's newest events without a gap): no need to ask it again."""
        ev = self.events
        return tuple(islice(ev, max(0, len(ev) - n), None))

    def since(self, seq: int) -> tuple | None:
        """The events with seq >= `seq`, or None when the tail does not reach back so far."""
        ev = self.events
        if not ev or ev[0].seq > seq and len(ev) == ev.maxlen:
            return None
        out = []
        for e in reversed(ev):
            if e.seq < seq:
                break
            out.append(e)
        out.reverse()
        return tuple(out)


def _iret_window(events, nmi, icount: int) -> tuple[int, int] | None:  # noqa: ANN001
    """Retirement counts [from, to) between the newest IRET exit and the unblocking: the
    exception exit that ended the tracing (#DB with BS, or the IRET's fault); when the policy
    unblocked at the IRET exit itself (it is neither tracing nor blocking now), the next
    exit; while it still traces, up to now."""
    for i in range(len(events) - 1, -1, -1):
        e = events[i]
        if e.kind == "vmexit" and e.info == ec.VMEXIT_IRET:
            later = [x for x in events[i + 1:] if x.kind == "vmexit"]
            end = next((x.seq for x in later if ec.is_exception_exit(x.info)), None)
            if end is None and later and not nmi.blocked:
                end = later[0].seq
            return e.seq, end if end is not None else icount
    return None
