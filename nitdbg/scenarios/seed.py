"""Every section of the seed's test plan as a scenario: its setup, its actions in the plan's
own words, and each piece of evidence it says to look for, checked against machine output."""

from __future__ import annotations

import re

from ..machine import I386_KERNEL, Machine, describe_stop
from .base import CONTINUE_INSNS, SEED_LINES, UPSTREAM_WHY, Ctx, Scenario
from .checks import delay_checks, gpf_checks, invariants, npf_checks, recursive_checks
from .evidence import PRECISE, SPECULATIVE, Trace, lines

TRACE_EXC = {"hw.vmm.trace_guest_exceptions": "1"}
STEPS = 20
I386_INTR_GATE, I386_TASK_GATE = 0xE, 0x5


def _stopped_at(text: str) -> list[str]:
    return re.findall(r"^(?:Stopped|Breakpoint) at\t([^:]+):", text, re.M)


def _addr(m: Machine, where: str) -> int:
    name, _, off = where.partition("+")
    return m.symbols.address(name) + (int(off, 16) if off else 0)


def _ktr_since(m: Machine, seq: int, vcpu: int) -> list[str]:
    return [e.message for e in m.vm.ktr.iter_entries() if e.seq >= seq
            and e.message.startswith(f"vm {m.vm.name}[{vcpu}]: ")]


def _ktr_seq(m: Machine) -> int:
    return m.vm.ktr.total_logged() if callable(m.vm.ktr.total_logged) else m.vm.ktr.total_logged


# ---------------------------------------------------------------------------- section 1
def single_step_after_nmi(ctx: Ctx) -> None:
    m = ctx.boot(vcpus=2, pause_exits=True, kdb_on_nmi=1)
    seq = _ktr_seq(m)
    ctx.host(m, "bhyvectl --vm=vm2 --assert-lapic-lvt=1 --cpu=0")
    ev = m.settle()
    ctx.check("the NMI makes vCPU 0 enter the debugger", ev.reason == "kdb" and ev.vcpu == 0,
              [f"stop: {ev.reason} on vCPU {ev.vcpu}", describe_stop(m, ev).strip()])
    if ev.reason != "kdb":
        return
    banner = ctx.enter(m, ev)
    where = (_stopped_at(banner) or ["?"])[0]
    at = _addr(m, where) if where != "?" else 0
    prev = m.vm.read_guest(m.vcpus[0], at - 1, 1) if at else b""
    ctx.check("it stops at the instruction following 'hlt' in cpu_idle_acpi()",
              where.startswith("cpu_idle_acpi") and prev == b"\xf4",
              [banner.strip().splitlines()[-1], f"byte before {where}: {prev.hex()} (f4 = hlt)"])
    stops = []
    for _ in range(STEPS):
        stops += _stopped_at(ctx.ddb(m, "s"))
    ctx.check(f"'s' single-steps the guest: {STEPS} steps, {STEPS} stops", len(stops) == STEPS,
              [f"stops: {', '.join(stops[:6])} ... {', '.join(stops[-3:])}"])
    msgs = _ktr_since(m, seq, 0)
    first_step = m.ddb.audit.checks[0] if m.ddb.audit.checks else None
    ctx.check("the first step returns from the NMI (its IRET, traced: 'vNMIs unblocked "
              "precisely') and executes the interrupted instruction",
              first_step is not None and first_step.ok
              and first_step.executed[0].rip == at
              and any(x.endswith("vNMIs unblocked precisely") for x in msgs),
              ([m.ddb.audit.report().splitlines()[1]] if first_step else [])
              + [x for x in msgs if "unblocked" in x or "tracing" in x][:2],
              upstream=UPSTREAM_WHY, only=SEED_LINES)
    ctx.check("step audit: no instruction omitted", m.ddb.audit.ok
              and len(m.ddb.audit.checks) == STEPS, [m.ddb.audit.summary()]
              + [ln for ln in m.ddb.audit.report().splitlines() if "VIOLATION" in ln][:3])
    ctx.ddb(m, "c", max_insns=CONTINUE_INSNS)
    out = ctx.guest(m, "sysctl machdep.kdb_on_nmi")
    ctx.check("after 'c' the guest runs on (its shell answers)",
              m.surface == "guest" and "machdep.kdb_on_nmi: 1" in out, [out.strip()])


def broadcast_nmi_deadlock(ctx: Ctx) -> None:
    m = ctx.boot(vcpus=2, pause_exits=True, kdb_on_nmi=1)
    ctx.host(m, "bhyvectl --vm=vm2 --assert-lapic-lvt=1 --cpu=-1")
    lvts = ctx.host(m, 'bhyvectl --vm=vm2 --cpu=-1 --get-stats | grep "lvts triggered\\[1\\]"')
    ctx.check("--cpu=-1 asserts LINT1 (NMI) on every vCPU",
              lvts.count("\t1") == len(m.vcpus), lvts.strip().splitlines())
    ev = m.settle()
    spins = ev.info.get("spins", {}) if ev.reason == "deadlock" else {}
    ctx.check("the vCPUs deadlock: the watchdog reports it", ev.reason == "deadlock",
              [describe_stop(m, ev).strip() or f"stop: {ev.reason}"])
    ctx.check("every vCPU tried to enter the debugger and spins waiting for the others "
              "(stop_cpus_hard)", sorted(spins) == list(range(len(m.vcpus)))
              and all(s.startswith("stop_cpus_hard") for s in spins.values()),
              [f"vCPU {c}: {s}" for c, s in sorted(spins.items())])
    ctx.check("no vCPU reached the debugger", m.surface == "guest", [f"surface: {m.surface}"])


# ---------------------------------------------------------------------------- sections 2-5
def pending_interrupt(ctx: Ctx) -> None:
    m = ctx.boot(knobs={"delay_usecs": 800000})
    tr = ctx.capture(m)
    delay_checks(ctx, tr, 800000)


def pending_nmi(ctx: Ctx) -> None:
    m = ctx.boot(knobs={"recursive_nmi": 1})
    before = ctx.stat(m, "vNMI unblocked precisely")
    tr = ctx.capture(m)
    after = ctx.stat(m, "vNMI unblocked precisely")
    recursive_checks(ctx, tr, before, after)


def nested_page_fault(ctx: Ctx) -> None:
    m = ctx.boot(knobs={"invalidate_nested_mappings": 1})
    npf_checks(ctx, m, ctx.capture(m), bounce=False)


def nested_page_fault_bounce(ctx: Ctx) -> None:
    m = ctx.boot(knobs={"invalidate_nested_mappings": 1, "bounce_to_userspace": 1})
    npf_checks(ctx, m, ctx.capture(m), bounce=True)


def iret_gpf_kernel(ctx: Ctx) -> None:
    m = ctx.boot(knobs={"iret_trigger_gpf": 1})
    start = len(m.console_output())
    tr = ctx.capture(m, sleep=None, settle=True)
    gpf_checks(ctx, tr)
    ev = ctx.last_stop
    text = m.console_output()[start:].decode(errors="replace")
    fatal = "Fatal trap 9: general protection fault while in kernel mode"
    ctx.check(f'idle guest: "{fatal}"', fatal in text,
              [ln for ln in text.splitlines() if "Fatal trap" in ln or "instruction pointer"
               in ln])
    banner = ctx.enter(m, ev) if ev is not None and ev.reason == "kdb" else ""
    ctx.check("and it enters the debugger", ev is not None and ev.reason == "kdb"
              and m.surface == "ddb", [ln for ln in banner.splitlines() if "at\t" in ln]
              or [f"stop: {ev.reason if ev else None}"])


def iret_gpf_user(ctx: Ctx) -> None:
    m = ctx.boot(knobs={"iret_trigger_gpf": 1})
    m.console_input(b"while [ 1 ]; do : done\r")
    ctx._echo("guest# ", "while [ 1 ]; do : done", "")
    m.run(max_insns=300_000)
    spinning = m.vcpus[0].cpu.cpl == 3
    start = len(m.console_output())
    ctx.host(m, "sudo sysctl debug.ktr.clear=1")
    ctx.host(m, "sudo bhyvectl --vm=vm2 --cpu=0 --assert-lapic-lvt=1")
    back = m.run_until_output(b"# ", max_insns=3_000_000)
    ctx.host(m, "sudo ktrdump -cto /tmp/ktrdump.out")
    tr = Trace(m.shell.files.get("/tmp/ktrdump.out", ""))
    gpf_checks(ctx, tr)
    text = m.console_output()[start:].decode(errors="replace")
    sig = re.search(r".*exited on signal 10.*", text)
    ctx.check("the loop runs in user mode when the NMI arrives", spinning,
              [f"cpl {m.vcpus[0].cpu.cpl} before the NMI" if not spinning else "cpl 3"])
    ctx.check('the running program exits on SIGBUS ("exited on signal 10")', sig is not None,
              lines(sig.group(0) if sig else None) or [text.strip()[-200:]])
    ctx.check("the shell prompt returns", back and m.surface == "guest",
              [repr(text[-40:])])


# ---------------------------------------------------------------------------- misc
def trace_guest_exceptions(ctx: Ctx) -> None:
    m = ctx.boot(vcpus=2, pause_exits=True, kdb_on_nmi=1, tunables=TRACE_EXC)
    out = ctx.host(m, "sysctl hw.vmm.trace_guest_exceptions")
    want = 0xFFFFFFFF & ~((1 << 2) | (1 << 9))
    icpts = [v.vmcb.exception_intercepts for v in m.vcpus]
    ctx.check("the boot-time tunable is set and every exception but 2 and 9 is intercepted",
              "trace_guest_exceptions: 1" in out and all(i == want for i in icpts),
              [out.strip()] + [f"vCPU {i} exception intercepts {x:#010x}"
                               for i, x in enumerate(icpts)])
    before = ctx.stat(m, "number of vm exits due to exceptions")
    ctx.host(m, "sudo sysctl debug.ktr.clear=1")
    ctx.host(m, "bhyvectl --vm=vm2 --assert-lapic-lvt=1 --cpu=0")
    ev = m.settle()
    if ev.reason != "kdb":
        ctx.check("the NMI enters the debugger", False, [f"stop: {ev.reason}"])
        return
    ctx.enter(m, ev)
    for _ in range(5):
        ctx.ddb(m, "s")
    ctx.ddb(m, "c", max_insns=CONTINUE_INSNS)
    ctx.host(m, "sudo ktrdump -cto /tmp/ktrdump.out")
    tr = Trace(m.shell.files["/tmp/ktrdump.out"])
    refl = tr.all(r"^Reflecting exception 1/0 into the guest$")
    after = ctx.stat(m, "number of vm exits due to exceptions")
    ctx.check("the guest's single-step #DBs are intercepted and reflected "
              '("Reflecting exception 1/0 into the guest")', len(refl) >= 5,
              lines(*refl[:2]) + [f"{len(refl)} reflected; exception exits {before} -> {after}"])
    ctx.check("step audit: no instruction omitted", m.ddb.audit.ok and
              len(m.ddb.audit.checks) == 5, [m.ddb.audit.summary()])
    out = ctx.guest(m, "sysctl kern.ostype")
    ctx.check("the guest still works", "kern.ostype: FreeBSD" in out, [out.strip()])


def guest_breakpoint(ctx: Ctx) -> None:
    m = ctx.boot(vcpus=2, pause_exits=True, kdb_on_nmi=1, tunables=TRACE_EXC)
    ctx.host(m, "bhyvectl --vm=vm2 --assert-lapic-lvt=1 --cpu=0")
    ev = m.settle()
    if ev.reason != "kdb":
        ctx.check("the NMI enters the debugger", False, [f"stop: {ev.reason}"])
        return
    ctx.enter(m, ev)
    ctx.host(m, "sudo sysctl debug.ktr.clear=1")
    ctx.ddb(m, "b tty_read")
    hit = ctx.ddb(m, "c", max_insns=5_000_000)
    bp = re.search(r"^Breakpoint at\t(\S+):.*$", hit, re.M)
    ctx.check("'b tty_read', 'c': the breakpoint is hit at tty_read",
              bp is not None and bp.group(1) == "tty_read", lines(bp.group(0) if bp else None)
              or [hit.strip()[-200:]])
    stepped = ctx.ddb(m, "s")
    ctx.check("the debugger works at the breakpoint: 's' steps off it, the audit agrees",
              _stopped_at(stepped)[:1] != ["tty_read"] and m.ddb.audit.ok,
              [stepped.strip().splitlines()[-1] if stepped.strip() else "", m.ddb.audit.summary()])
    bt = ctx.ddb(m, "bt")
    ctx.check("'bt' shows the call chain", "tty_read" in bt or "syscall" in bt,
              bt.strip().splitlines()[:3])
    ctx.ddb(m, "d tty_read")
    ctx.ddb(m, "c", max_insns=CONTINUE_INSNS)
    ctx.host(m, "sudo ktrdump -cto /tmp/ktrdump.out")
    tr = Trace(m.shell.files["/tmp/ktrdump.out"])
    r3 = tr.find(r"^Reflecting exception 3/0 into the guest$")
    ctx.check('with trace_guest_exceptions the #BP was reflected ("Reflecting exception 3/0")',
              r3 is not None, lines(r3))
    out = ctx.guest(m, "sysctl kern.ostype")
    ctx.check("'d tty_read', 'c': the guest runs on", m.surface == "guest"
              and "kern.ostype: FreeBSD" in out, [out.strip()])


def _idt_gate_type(m: Machine, vector: int) -> int:
    hi = int.from_bytes(m.vm.read_guest(m.vcpus[0], m.symbols.address("idt") + vector * 8, 8),
                        "little")
    return (hi >> 40) & 0x1F


def nmi_interrupt_gate(ctx: Ctx) -> None:
    m = ctx.boot(kernel=I386_KERNEL, pause_exits=True, tunables=TRACE_EXC)
    gate = _idt_gate_type(m, 2)
    ctx.check("IDT vector 2 is an ordinary 32-bit interrupt gate", gate == I386_INTR_GATE,
              [f"gate type {gate:#x} (0xe = interrupt gate)"])
    n0 = _sysctl_int(ctx, m, "debug.nmi_count")
    s0 = ctx.stat(m, "vNMI unblocked precisely")
    seq = m.vcpus[0].cpu.icount
    tr = ctx.capture(m)
    n1 = _sysctl_int(ctx, m, "debug.nmi_count")
    s1 = ctx.stat(m, "vNMI unblocked precisely")
    ctx.check("the guest's NMI handler ran once (debug.nmi_count incremented)", n1 == n0 + 1,
              [f"debug.nmi_count: {n0} -> {n1}"])
    inj = tr.find(r"^Injecting vNMI$")
    t = tr.find(r"^vNMI iret tracing enabled$", after=inj)
    u = tr.find(PRECISE, after=t) if t else None
    ctx.check('its IRET is traced and NMIs are "unblocked precisely"', u is not None
              and s1 == s0 + 1, lines(inj, t, u) + [f"vNMI unblocked precisely: {s0} -> {s1}"],
              upstream=UPSTREAM_WHY, trace=tr, only=SEED_LINES)
    invariants(ctx, m, tr, 1, seq)


def _sysctl_int(ctx: Ctx, m: Machine, name: str) -> int:
    out = ctx.guest(m, f"sysctl {name}")
    mo = re.search(rf"{re.escape(name)}: (-?\d+)", out)
    return int(mo.group(1)) if mo else -1


def tsnmi_task_gate(ctx: Ctx) -> None:
    m = ctx.boot(kernel=I386_KERNEL, pause_exits=True, tunables=TRACE_EXC)
    out = ctx.guest(m, "kldload tsnmi")
    gate = _idt_gate_type(m, 2)
    ctx.check("'kldload tsnmi' turns IDT vector 2 into a task gate", gate == I386_TASK_GATE,
              [out.strip().splitlines()[-2] if out.strip() else "",
               f"gate type {gate:#x} (0x5 = task gate)"])
    n0 = _sysctl_int(ctx, m, "debug.tsnmi")
    s0 = ctx.stat(m, "Number of times vNMI unblocked speculatively")
    tr = ctx.capture(m)
    n1 = _sysctl_int(ctx, m, "debug.tsnmi")
    s1 = ctx.stat(m, "Number of times vNMI unblocked speculatively")
    ctx.check("debug.tsnmi is incremented", n1 == n0 + 1, [f"debug.tsnmi: {n0} -> {n1}"])
    ctx.check('the stat "Number of times vNMI unblocked speculatively" is incremented',
              s1 == s0 + 1, [f"{s0} -> {s1}"], upstream="upstream has no such counter: it "
              "clears blocking at every IRET exit the same way", only=SEED_LINES)
    sp = tr.find(SPECULATIVE)
    ctx.check("the task-switching IRET cannot be traced: \"vNMIs unblocked speculatively\"",
              sp is not None, lines(tr.find(r"^Injecting vNMI$"), sp),
              upstream=UPSTREAM_WHY, trace=tr, only=SEED_LINES)


SCENARIOS = [
    Scenario("single-step-after-nmi", "Single step guest kernel and make sure all instructions "
             "traced properly", "amd64, 2 vCPUs, machdep.kdb_on_nmi=1, NMI to vCPU 0, "
             f"'s' x{STEPS}", single_step_after_nmi),
    Scenario("broadcast-nmi-deadlock", "Single step ... (4) broadcast NMI", "amd64, 2 vCPUs, "
             "machdep.kdb_on_nmi=1, --cpu=-1", broadcast_nmi_deadlock),
    Scenario("pending-interrupt", "Pending interrupt during iret tracing", "amd64, 1 vCPU, "
             "pause exits off, kdb_on_nmi=0, debug.nit.delay_usecs=800000", pending_interrupt),
    Scenario("pending-nmi", "Pending NMI during iret tracing", "amd64, 1 vCPU, pause exits off, "
             "kdb_on_nmi=0, debug.nit.recursive_nmi=1", pending_nmi),
    Scenario("nested-page-fault", "Nested Page Fault during iret tracing", "amd64, 1 vCPU, "
             "pause exits off, debug.nit.invalidate_nested_mappings=1", nested_page_fault),
    Scenario("nested-page-fault-bounce", "Nested Page Fault during iret tracing (6)",
             "amd64, 1 vCPU, invalidate_nested_mappings=1, bounce_to_userspace=1",
             nested_page_fault_bounce),
    Scenario("iret-gpf-kernel", "#GP exception triggered by \"iret\" (idle guest)",
             "amd64, 1 vCPU, debug.nit.iret_trigger_gpf=1", iret_gpf_kernel),
    Scenario("iret-gpf-user", "#GP exception triggered by \"iret\" (while loop)",
             "amd64, 1 vCPU, iret_trigger_gpf=1, `while [ 1 ]; do : done`", iret_gpf_user),
    Scenario("trace-guest-exceptions", "Miscellaneous: hw.vmm.trace_guest_exceptions=1",
             "amd64, 2 vCPUs, tunable at boot, NMI, 's' x5, 'c'", trace_guest_exceptions),
    Scenario("guest-breakpoint", "Miscellaneous: set breakpoint in the guest",
             "amd64, 2 vCPUs, trace_guest_exceptions=1, 'b tty_read', 'c'", guest_breakpoint),
    Scenario("nmi-interrupt-gate", "Miscellaneous: NMI handled using an interrupt gate",
             "i386, 1 vCPU, trace_guest_exceptions=1", nmi_interrupt_gate),
    Scenario("tsnmi-task-gate", "Miscellaneous: i386 guest, tsnmi.ko (NMI task gate)",
             "i386, 1 vCPU, trace_guest_exceptions=1, kldload tsnmi", tsnmi_task_gate),
]
