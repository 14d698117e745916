"""Scenarios where the NMI policies really differ (issue 16 item 4), each runnable under every
policy. Every check states what the guest sees on bare metal (SDM/APM rules cited) and is
measured from the retirement log, the guest's own counters and the debugger's stops, so a
policy that changes what the guest sees fails it with the evidence; none reads a KTR line.

Inputs are deterministic: NMIs are asserted at points chosen by guest state (an instruction
address, a guest counter), never by time. `debug.sstest` is firmware/amd64/sstest.c.
"""

from __future__ import annotations

import copy

from ..guest import abi
from ..machine import Machine, StopEvent
from ..session.record import RecordingMachine
from ..x86.retire import EV_EXCEPTION, EV_IRET, EV_NMI, Event
from .base import CONTINUE_INSNS, Ctx, Scenario

SSTEST_N = 20
SSTEST_TRAPS = 2 * SSTEST_N + 3       # see firmware/amd64/sstest.c
SSTEST_NMI_AFTER = 10                 # assert the NMI once the guest has counted this many
T_TRCTRAP, T_NMI = 10, 19
TF_RIP = abi.trapframe_field("tf_rip").offset
DR6_B0, DR6_B1 = 1 << 0, 1 << 1


# ---------------------------------------------------------------------------- helpers
def _events(m: Machine, vcpu: int, since: int) -> list[Event]:
    return sorted((e for e in m.vcpus[vcpu].cpu.retire.events if e.seq >= since),
                  key=lambda e: e.seq)


def _fmt(m: Machine, e: Event) -> str:
    kind = {EV_NMI: "NMI", EV_IRET: "IRET", EV_EXCEPTION: f"exception {e.vector}"}.get(
        e.kind, str(e.kind))
    return f"#{e.seq} {kind} at {m.symbols.format(e.rip)} rflags {e.rflags:#x}"


def _guest_int(m: Machine, sym: str) -> int:
    return int.from_bytes(m.vm.read_guest(m.vcpus[0], m.symbols.address(sym), 4), "little")


def _nmi_stop(ctx: Ctx, m: Machine) -> StopEvent | None:
    """Assert LINT1 on vCPU 0 (kdb_on_nmi=1) and enter the debugger at its stop."""
    ctx.host(m, "bhyvectl --vm=vm2 --assert-lapic-lvt=1 --cpu=0")
    ev = m.settle()
    ok = ev.reason == "kdb" and ev.info.get("type") == T_NMI
    ctx.check("the NMI makes vCPU 0 enter the debugger", ok, [f"stop: {ev.reason} "
                                                             f"{ev.info.get('type')}"])
    if not ok:
        return None
    ctx.enter(m, ev)
    return ev


def _set_dr(ctx: Ctx, m: Machine, slot: int, addr: int, rw: int, length: int) -> None:
    """Program DRn and its DR7 enable/RW/LEN bits from the host (bhyvectl --set-drN, a
    recorded input; SDM 17.2.4: LEN 0 = 1 byte, 2 = 8 bytes; RW 0 = execute, 3 = r/w)."""
    len_bits = {1: 0, 2: 1, 4: 3, 8: 2}[length]
    dr7 = m.vcpus[0].vmcb.dr7 | (1 << (2 * slot))
    dr7 &= ~(0xF << (16 + 4 * slot))
    dr7 |= (rw | (len_bits << 2)) << (16 + 4 * slot)
    ctx.host(m, f"bhyvectl --vm=vm2 --cpu=-1 --set-dr{slot}={addr:#x} --set-dr7={dr7:#x}")


def _clear_drs(ctx: Ctx, m: Machine) -> None:
    ctx.host(m, "bhyvectl --vm=vm2 --cpu=-1 --set-dr7=0x400")


def _kdb_stop(ctx: Ctx, m: Machine, out: str) -> dict:
    """The trapframe of the debugger stop `c` ended in (empty if it did not stop)."""
    if not m.in_kdb:
        return {}
    info = m.in_kdb.get(0) or next(iter(m.in_kdb.values()))
    tf = abi.unpack_trapframe(m.vm.read_guest(m.vcpus[0], info["trapframe"], 192))
    tf["type"] = info.get("type")
    return tf


# ---------------------------------------------------------------------------- scenarios
def sstep_recursive_nmi(ctx: Ctx) -> None:
    """The guest single-steps ordinary code (debug.sstest) when an NMI arrives with a second
    one pending behind it (recursive_nmi)."""
    m = ctx.boot(knobs={"recursive_nmi": 1})
    out = ctx.guest(m, f"sysctl debug.sstest={SSTEST_N}")
    base = _guest_int(m, "sstest_traps")
    ctx.check(f"without an NMI the guest counts 2N+3 = {SSTEST_TRAPS} trace traps "
              "(SDM 17.3.1.4: POPF setting TF is not trapped, every later instruction is)",
              base == SSTEST_TRAPS, [out.strip().splitlines()[-1] if out.strip() else "",
                                     f"debug.sstest_traps = {base}"])
    m.console_input(f"sysctl debug.sstest={SSTEST_N}\r".encode())
    lo, hi = m.symbols.address("sstest_loop"), m.symbols.address("sstest_done")
    # Find, on a scratch copy, how many instructions until the guest is back in its loop
    # (no trap pending) after SSTEST_NMI_AFTER traps; then run the machine exactly that far
    # (one recorded input instead of thousands of steps).
    scratch = copy.deepcopy(m.machine if isinstance(m, RecordingMachine) else m)
    sv, start = scratch.vcpus[0], scratch.total_retired
    for _ in range(400_000):
        scratch.step_vcpu(0)
        if lo <= sv.cpu.rip < hi and not sv.cpu.pending_db and \
                _guest_int(scratch, "sstest_traps") >= SSTEST_NMI_AFTER:
            break
    m.run(max_insns=scratch.total_retired - start)
    v = m.vcpus[0]
    at = v.cpu.rip
    ctx.check(f"the NMI is asserted while the guest steps its loop (after {SSTEST_NMI_AFTER} "
              "traps)", lo <= at < hi and not v.cpu.pending_db,
              [f"vCPU 0 at {m.symbols.format(at)}, traps so far "
               f"{_guest_int(m, 'sstest_traps')}"])
    seq = v.cpu.icount
    ctx.host(m, "sudo bhyvectl --vm=vm2 --cpu=0 --assert-lapic-lvt=1")
    # bounded: a policy may livelock the guest (bhyve-upstream-noshadow's IRET that returns
    # to itself); the loop and the prompt take about 40 000 instructions
    back = m.run_until_output(b"# ", max_insns=500_000)
    evs = _events(m, 0, seq)
    nmis = [e for e in evs if e.kind == EV_NMI]
    ctx.check("two NMIs are delivered (the second was pending behind the first)",
              len(nmis) == 2, [_fmt(m, e) for e in nmis] or ["no NMI delivered"])
    ctx.check("both NMIs interrupt the stepped code with TF=1 in their frame (the first "
              "handler's IRET popped it, SDM 6.7.1 unblocks NMIs there)",
              len(nmis) == 2 and all(lo <= e.rip < hi and e.rflags & 0x100 for e in nmis),
              [_fmt(m, e) for e in nmis])
    traps = _guest_int(m, "sstest_traps")
    done = bool(back)                 # the shell prompt came back: the loop has ended
    ctx.check(f"the guest still counts {SSTEST_TRAPS} trace traps: no single-step #DB is "
              "lost across the NMI handlers' IRETs", done and traps == SSTEST_TRAPS,
              [f"debug.sstest_traps = {traps}" + ("" if done else " (loop not finished)")])


def nmi_iret_breakpoint_second_nmi(ctx: Ctx) -> None:
    """'b nmi_iret', 'c', a second NMI while stopped there, then 's' (issue 16)."""
    m = ctx.boot(kdb_on_nmi=1)
    if _nmi_stop(ctx, m) is None:
        return
    ctx.ddb(m, "b nmi_iret")
    hit = ctx.ddb(m, "c", max_insns=CONTINUE_INSNS)
    at_bp = "Breakpoint at\tnmi_iret" in hit
    ctx.check("'b nmi_iret', 'c': the breakpoint is hit at nmi_iret", at_bp,
              [ln for ln in hit.splitlines() if "at\t" in ln][-1:] or [hit.strip()[-120:]])
    if not at_bp:
        return
    ctx.host(m, "bhyvectl --vm=vm2 --assert-lapic-lvt=1 --cpu=0")
    seq = m.vcpus[0].cpu.icount
    iret = m.symbols.address("nmi_iret")
    out = ctx.ddb(m, "s")
    evs = _events(m, 0, seq)
    nmi = next((e for e in evs if e.kind == EV_NMI), None)
    retired = m.vcpus[0].cpu.retire.retired(seq, nmi.seq) if nmi else []
    ctx.check("the pending NMI is delivered before nmi_iret executes: the #BP handler's own "
              "IRET back into the NMI handler unblocked NMIs (SDM 6.7.1, any IRET)",
              nmi is not None and iret not in {r.rip for r in retired},
              [_fmt(m, nmi)] if nmi else ["no NMI delivered"])
    ctx.check("it nests on the NMI's IST stack: the next stop is the nested NMI (T_NMI), "
              "not the single-step trap", m.in_kdb.get(0, {}).get("type") == T_NMI,
              [ln for ln in out.splitlines() if "at\t" in ln or "NMI" in ln][:2]
              or [out.strip()[-120:]])
    m.ddb.command("d nmi_iret")


def hw_breakpoint_nmi_return(ctx: Ctx) -> None:
    """A DR0 instruction breakpoint on the instruction the NMI interrupted (RF)."""
    m = ctx.boot(kdb_on_nmi=1)
    ev = _nmi_stop(ctx, m)
    if ev is None:
        return
    tf = abi.unpack_trapframe(m.vm.read_guest(m.vcpus[0], ev.info["trapframe"], 192))
    target = tf["tf_rip"]
    _set_dr(ctx, m, 0, target, 0, 1)
    seq = m.vcpus[0].cpu.icount
    out = ctx.ddb(m, "c", max_insns=CONTINUE_INSNS)
    stop = _kdb_stop(ctx, m, out)
    evs = _events(m, 0, seq)
    db = next((e for e in evs if e.kind == EV_EXCEPTION and e.vector == 1), None)
    ctx.check(f"the NMI handler's IRET returns to {m.symbols.format(target)} with RF=0 from "
              "the NMI frame, so the DR0 breakpoint there fires before it executes (APM "
              "13.1.3.1)", stop.get("type") == T_TRCTRAP and stop.get("tf_rip") == target
              and db is not None and db.dr6 & DR6_B0 and not db.dr6 & 0x4000,
              ([_fmt(m, db) + f" dr6 {db.dr6:#x}"] if db else ["no #DB"])
              + [f"stop: type {stop.get('type')} at "
                 f"{m.symbols.format(stop['tf_rip']) if stop else '-'}"])
    _clear_drs(ctx, m)
    ctx.ddb(m, "c", max_insns=CONTINUE_INSNS)
    ans = ctx.guest(m, "sysctl kern.ostype")
    ctx.check("with DR7 cleared, 'c': the guest runs on", "kern.ostype: FreeBSD" in ans,
              [ans.strip()])


def watch_nmi_frame(ctx: Ctx) -> None:
    """A data watchpoint on the NMI frame slot the IRET pops (its return RIP)."""
    m = ctx.boot(kdb_on_nmi=1)
    ev = _nmi_stop(ctx, m)
    if ev is None:
        return
    slot = ev.info["trapframe"] + TF_RIP
    target = abi.unpack_trapframe(m.vm.read_guest(m.vcpus[0], ev.info["trapframe"],
                                                  192))["tf_rip"]
    _set_dr(ctx, m, 1, slot, 3, 8)
    seq = m.vcpus[0].cpu.icount
    out = ctx.ddb(m, "c", max_insns=CONTINUE_INSNS)
    stop = _kdb_stop(ctx, m, out)
    evs = _events(m, 0, seq)
    iret = next((e for e in evs if e.kind == EV_IRET), None)
    db = next((e for e in evs if e.kind == EV_EXCEPTION and e.vector == 1), None)
    ctx.check("the IRET's read of the watched frame slot traps after the IRET (APM 13.1.3.2): "
              f"#DB with DR6.B1 at the return address {m.symbols.format(target)}",
              db is not None and iret is not None and db.seq >= iret.seq
              and db.dr6 & DR6_B1 and stop.get("type") == T_TRCTRAP
              and stop.get("tf_rip") == target,
              ([_fmt(m, iret)] if iret else []) + ([_fmt(m, db) + f" dr6 {db.dr6:#x}"] if db
                                                   else ["no #DB"]))
    ctx.check("the #DB is the watchpoint's alone (DR6.BS clear: nobody single-stepped)",
              db is not None and not db.dr6 & 0x4000, [f"dr6 {db.dr6:#x}" if db else "no #DB"])
    _clear_drs(ctx, m)
    ctx.ddb(m, "c", max_insns=CONTINUE_INSNS)


def _two_nmis_checks(ctx: Ctx, m: Machine, seq: int, where: str) -> list[Event]:
    evs = _events(m, 0, seq)
    nmis = [e for e in evs if e.kind == EV_NMI]
    ctx.check("two NMIs are delivered (one pending behind the first, SDM 6.7.1)",
              len(nmis) == 2, [_fmt(m, e) for e in nmis] or ["none"])
    if len(nmis) == 2:
        between = [e for e in evs if nmis[0].seq <= e.seq <= nmis[1].seq
                   and e.kind in (EV_IRET, EV_EXCEPTION) and e is not nmis[0]]
        ctx.check(f"the second is delivered only after the first handler's IRET {where}",
                  bool(between) and between[0].rip != m.symbols.address("nmi_iret"),
                  [_fmt(m, e) for e in (nmis[0], *between[:1], nmis[1])])
    return nmis


def npf_iret_pending_nmi(ctx: Ctx) -> None:
    """An IRET whose stack page is not in the nested page table while an NMI is pending."""
    m = ctx.boot(knobs={"invalidate_nested_mappings": 1, "recursive_nmi": 1})
    seq = m.vcpus[0].cpu.icount
    ctx.capture(m)
    nmis = _two_nmis_checks(ctx, m, seq, "retired (the nested page faults it takes first "
                            "are the hypervisor's, invisible to the guest)")
    evs = _events(m, 0, seq)
    irets = [e for e in evs if e.kind == EV_IRET]
    ctx.check("the guest returns to where the first NMI interrupted it",
              bool(nmis) and bool(irets) and irets[-1].rip == nmis[0].rip,
              [_fmt(m, e) for e in irets[-2:]])


def iret_gpf_pending_nmi(ctx: Ctx) -> None:
    """An NMI pending while the #GP the IRET raises is delivered (iret_trigger_gpf with
    recursive_nmi: the seed says not to combine them, because of what follows)."""
    m = ctx.boot(knobs={"iret_trigger_gpf": 1, "recursive_nmi": 1})
    seq = m.vcpus[0].cpu.icount
    ctx.capture(m, sleep=None, settle=True)
    evs = _events(m, 0, seq)
    iret = m.symbols.address("nmi_iret")
    gp = next((e for e in evs if e.kind == EV_EXCEPTION and e.vector == 13), None)
    nmis = [e for e in evs if e.kind == EV_NMI]
    ctx.check("the NMI handler's IRET raises #GP (its frame's RIP is non-canonical)",
              gp is not None and gp.rip == iret, [_fmt(m, gp)] if gp else ["no #GP"])
    second = nmis[1] if len(nmis) > 1 else None
    ctx.check("the pending NMI is delivered right after the #GP delivery: the faulting IRET "
              "unblocked NMIs (SDM 6.7.1), and it nests on the IST stack over both frames",
              gp is not None and second is not None and second.seq == gp.seq,
              [_fmt(m, e) for e in nmis] or ["no NMI"])


def nmi_two_vcpus(ctx: Ctx) -> None:
    """NMIs on two vCPUs at once (--cpu=-1, kdb_on_nmi=0)."""
    m = ctx.boot(vcpus=2, pause_exits=True)
    seqs = [v.cpu.icount for v in m.vcpus]
    ctx.host(m, "bhyvectl --vm=vm2 --assert-lapic-lvt=1 --cpu=-1")
    m.settle()
    for i in range(2):
        evs = _events(m, i, seqs[i])
        nmis = [e for e in evs if e.kind == EV_NMI]
        irets = [e for e in evs if e.kind == EV_IRET and nmis and e.seq >= nmis[0].seq]
        ctx.check(f"vCPU {i}: one NMI delivered, and its IRET returns to the interrupted "
                  "instruction", len(nmis) == 1 and bool(irets)
                  and irets[0].rip == nmis[0].rip,
                  [_fmt(m, e) for e in nmis + irets[:1]] or ["no NMI"])
    ans = ctx.guest(m, "sysctl hw.ncpu")
    ctx.check("the guest runs on", "hw.ncpu: 2" in ans, [ans.strip()])


SCENARIOS = [
    Scenario("sstep-recursive-nmi", "Policies: a guest single-stepping ordinary code gets an "
             "NMI with a second one pending", f"amd64, 1 vCPU, recursive_nmi=1, "
             f"sysctl debug.sstest={SSTEST_N}, NMI after {SSTEST_NMI_AFTER} traps",
             sstep_recursive_nmi),
    Scenario("nmi-iret-breakpoint", "Policies: breakpoint at nmi_iret, a second NMI, 's'",
             "amd64, 1 vCPU, kdb_on_nmi=1, NMI, 'b nmi_iret', 'c', NMI, 's'",
             nmi_iret_breakpoint_second_nmi),
    Scenario("hw-breakpoint-nmi-return", "Policies: DR0 instruction breakpoint on the "
             "instruction the NMI interrupted (RF)", "amd64, 1 vCPU, kdb_on_nmi=1, NMI, DR0 "
             "at the frame's RIP, 'c'", hw_breakpoint_nmi_return),
    Scenario("watch-nmi-frame", "Policies: data watchpoint on the NMI frame slot the IRET "
             "pops", "amd64, 1 vCPU, kdb_on_nmi=1, NMI, DR1 r/w on tf_rip, 'c'",
             watch_nmi_frame),
    Scenario("npf-iret-pending-nmi", "Policies: the IRET's stack is not in the nested page "
             "table while an NMI is pending", "amd64, 1 vCPU, invalidate_nested_mappings=1, "
             "recursive_nmi=1", npf_iret_pending_nmi),
    Scenario("iret-gpf-pending-nmi", "Policies: an NMI pending while the IRET's #GP is "
             "delivered", "amd64, 1 vCPU, iret_trigger_gpf=1, recursive_nmi=1",
             iret_gpf_pending_nmi),
    Scenario("nmi-two-vcpus", "Policies: NMIs on two vCPUs at once", "amd64, 2 vCPUs, "
             "kdb_on_nmi=0, --assert-lapic-lvt=1 --cpu=-1", nmi_two_vcpus),
]
