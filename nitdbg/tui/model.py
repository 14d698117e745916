"""What the panes show, as plain data built from the machine (no Textual here).

`build_snapshot()` runs on the machine worker's thread; the UI thread only ever sees the
frozen `Snapshot`, so no pane reads the machine while it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice

from ..ddb.disasm import Disassembler
from ..svm import exitcodes as ec
from ..svm.intinfo import describe as intinfo_describe
from ..x86.regs import GPR_NAMES
from ..x86.retire import EV_EXCEPTION, EV_INJECT, EV_INTR, EV_NMI, EV_VMEXIT
from .explain import Explanation, explain

DISASM_BEFORE = 8          # instructions shown above the current one
DISASM_AFTER = 14          # ... and from it on
KTR_TAIL = 400             # KTR entries carried in a snapshot
TIMELINE_EVENTS = 1500     # newest events carried per vCPU (PAUSE exits left out) ...
TIMELINE_SCAN = 1 << 16    # ... from this many newest retirement-log events
CONSOLE_TAIL = 8000        # bytes of serial output carried


@dataclass(frozen=True)
class DisLine:
    addr: int
    where: str              # sym+off
    text: str               # AT&T, ddb spelling
    current: bool = False
    breakpoint: bool = False
    retired: bool = False   # retired since the previous stop
    iret_window: bool = False   # retired between the IRET exit and the unblocking


@dataclass(frozen=True)
class VmcbView:
    intercepts: tuple[str, ...]
    exitcode: int
    exitname: str
    exitinfo1: int
    exitinfo2: int
    exitintinfo: str
    eventinj: str
    v_irq: int
    v_intr_vector: int
    interrupt_shadow: int
    rflags: int
    rip: int
    dr6: int
    dr7: int

    def fields(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class TimelineEvent:
    time: int               # virtual ns
    kind: str               # exit, inject, db, nmi, iret, intr, exc
    label: str


@dataclass(frozen=True)
class VcpuView:
    id: int
    in_ddb: bool
    halted: bool
    icount: int
    rip: int
    regs: dict[str, int]            # of the trapframe while in ddb, else the live vCPU
    regs_source: str                # "trapframe" or "vCPU"
    rflags: int
    rflags_source: str
    rflags_now: int | None          # the frame's RFLAGS now (ddb clears PSL_T on entry)
    nmi_state: str
    last_unblock: str
    nmi_pending: bool
    iret_exit_seen: bool            # the last exit was the IRET intercept
    vmcb: VmcbView
    stats: str
    timeline: tuple[TimelineEvent, ...]
    now: int


@dataclass(frozen=True)
class Snapshot:
    seq: int                        # requests completed when it was taken
    is_stop: bool                   # False: a progress snapshot while the guest runs
    running: bool
    selected: int
    surface: str                    # "ddb" or "guest"
    policy: str
    vm_name: str
    vcpus: tuple[VcpuView, ...]
    disasm: tuple[DisLine, ...]
    ktr: tuple[tuple[int, int, int, str], ...]    # index, cpu, timestamp, message
    console: str
    audit_summary: str
    audit_ok: bool
    audit_steps: int
    explain: tuple[Explanation, ...]
    ddb_vcpu: int | None
    breakpoints: tuple[int, ...]
    total_retired: int
    now: int
    status: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def vcpu(self) -> VcpuView:
        return self.vcpus[self.selected]


# ---------------------------------------------------------------------- builders
def _vcpu_regs(m, v, ddb_here: bool) -> tuple[dict[str, int], str, int, str, int | None]:
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


def _pushed_rflags(v, tf_rip: int) -> tuple[int, str] | None:
    """RFLAGS as the processor pushed them into the trapframe when it delivered the event
    that stopped the guest (the newest #DB/#BP/NMI delivery whose pushed RIP is the stop)."""
    for e in reversed(v.cpu.retire.events):
        if e.kind in (EV_EXCEPTION, EV_NMI) and e.rip in (tf_rip, tf_rip + 1):
            name = {1: "#DB", 2: "NMI", 3: "#BP"}.get(e.vector, f"vector {e.vector}")
            return e.rflags, f"trapframe as pushed by {name}"
    return None


def _vmcb_view(v) -> VmcbView:
    b = v.vmcb
    code = ec.exitcode_from_u64(b.exitcode)
    return VmcbView(tuple(b.intercept_names()), code, ec.apm_name(code), b.exitinfo1,
                    b.exitinfo2, intinfo_describe(b.exitintinfo), intinfo_describe(b.eventinj),
                    b.v_irq, b.v_intr_vector, b.interrupt_shadow, b.rflags, b.rip, b.dr6,
                    b.dr7)


def _timeline(v) -> tuple[TimelineEvent, ...]:
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
        else:
            continue
        out.append(TimelineEvent(log.time_of(e.seq), kind, label))
    return tuple(reversed(out))


def _iret_window(v) -> tuple[int, int] | None:
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


def _rips(log, start: int, end: int) -> set[int]:
    start = max(start, end - log.capacity, 0)
    if start >= end:
        return set()
    a, b = start & log.mask, end & log.mask
    if a < b:
        return set(log.rips[a:b])
    return set(log.rips[a:]) | set(log.rips[:b])


def _disasm(m, v, rip: int, dis: Disassembler, since: int, bps: set[int]
            ) -> tuple[DisLine, ...]:
    hit = m.symbols.lookup(rip)
    start = rip - hit[1] if hit is not None and hit[1] <= 0x400 else rip
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
        d = dis.decode(code[off:off + 15], addr)
        insns.append(d)
        if addr < rip < d.next:             # decoding from the symbol went out of step
            insns = []
            addr = rip
            continue
        addr = d.next
    idx = next((i for i, d in enumerate(insns) if d.addr == rip), 0)
    window = insns[max(0, idx - DISASM_BEFORE): idx + DISASM_AFTER]
    log = v.cpu.retire
    retired = _rips(log, since, v.cpu.icount) if since < v.cpu.icount else set()
    win = _iret_window(v)
    iret = _rips(log, win[0], win[1]) if win else set()
    return tuple(DisLine(d.addr, m.symbols.format(d.addr), d.text, d.addr == rip,
                         d.addr in bps, d.addr in retired, d.addr in iret) for d in window)


def build_snapshot(m, selected: int, since: dict[int, int], seq: int, is_stop: bool,
                   running: bool, dis: Disassembler, status: str = "") -> Snapshot:
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
            v.id, v.id in m.in_kdb, v.halted, v.cpu.icount, regs["rip"], regs, src, rflags,
            fsrc, fnow, v.nmi_state, v.last_unblock, v.nmi_pending,
            last is not None and last.code == ec.VMEXIT_IRET, _vmcb_view(v),
            m.vm.stats.format_stats(v.id), _timeline(v), v.now()))
    sel = views[selected]
    v = m.vm.vcpus[selected]
    disasm = _disasm(m, v, sel.rip, dis, since.get(selected, 0), bps)
    ktr = tuple((e.index, e.cpu, e.timestamp, e.message) for e in m.vm.ktr.tail(KTR_TAIL))
    console = m.console_output()[-CONSOLE_TAIL:].decode(errors="replace")
    audit = ddb.audit
    return Snapshot(
        seq, is_stop, running, selected, m.surface, m.vm.policy.name, m.vm.name, tuple(views),
        disasm, ktr, console, audit.summary(), audit.ok, len(audit.checks),
        tuple(explain(m, selected)), ddb_vcpu, tuple(sorted(bps)), m.total_retired, m.now(),
        status)
