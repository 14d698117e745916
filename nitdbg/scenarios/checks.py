"""The evidence each debug.nit knob must leave in the trace, and the invariants every NMI
must satisfy; shared by the single-knob scenarios and the knob matrix."""

from __future__ import annotations

from ..machine import Machine
from ..x86.retire import EV_INJECT, EV_NMI, EV_VMEXIT
from .base import BHYVE_LINES, SEED_LINES, UPSTREAM_WHY, Ctx
from .evidence import ANY_UNBLOCK, PRECISE, Trace, lines

NPF_RE = r"^nested page fault on gpa (\S+) at rip (0x[0-9a-f]+)$"
NPF_EXIT_RE = r"^(handled|unhandled) nptfault vmexit at (0x[0-9a-f]+)/0$"
VMEXIT_IRET = 0x74


def delay_checks(ctx: Ctx, tr: Trace, usecs: int, guest_dies: bool = False) -> None:
    """`guest_dies`: with iret_trigger_gpf the idle guest stops in its debugger with
    interrupts disabled right after the unblocking, so the interrupt may stay pending; it
    still must not be delivered before."""
    d = tr.find(rf"^Delaying {usecs} usecs$")
    p = tr.find(r"^Cannot inject vector (\d+) due to rflags", after=d) if d else None
    ctx.check(f'there is a pending interrupt after "Delaying {usecs} usecs"',
              d is not None and p is not None, lines(d, p),
              detail="no 'Delaying' line" if d is None else "no 'Cannot inject vector' after it")
    if p is None:
        return
    vec = p.group(1)
    u = tr.find(PRECISE, after=p)
    inj = tr.find(rf"^Injecting hwintr at vector {vec} ", after=d)
    early = tr.all(rf"^Injecting hwintr at vector {vec} ", after=d, before=u) if u else []
    delivered = inj is not None and inj.pos > (u.pos if u else -1)
    note = [] if inj is not None or not guest_dies else [
        f"vector {vec} still pending: the guest stopped in its debugger with interrupts off"]
    ctx.check(f'the interrupt (vector {vec}) is delivered only after "vNMIs unblocked '
              'precisely"', u is not None and not early and (delivered or (guest_dies and
                                                                          inj is None)),
              lines(u, inj) + note, detail="" if u else "no 'vNMIs unblocked precisely' after it",
              upstream=UPSTREAM_WHY, trace=tr, only=SEED_LINES)


def recursive_checks(ctx: Ctx, tr: Trace, before: int, after: int) -> None:
    ctx.check('"vNMI unblocked precisely" went up by 2 (two NMIs were injected)',
              after - before == 2, [f"vNMI unblocked precisely: {before} -> {after}"],
              upstream="upstream never counts 'vNMI unblocked precisely': it clears blocking "
              "at the IRET intercept instead", only=SEED_LINES)
    r = tr.find(r"^Injecting recursive vNMI$")
    held = tr.find(r"^Cannot inject NMI due to NMI-blocking$", after=r) if r else None
    ctx.check('there is a pending NMI after "Injecting recursive vNMI"',
              r is not None and held is not None, lines(r, held), only=BHYVE_LINES)
    if held is None:
        return
    u = tr.find(PRECISE, after=held)
    second = tr.find(r"^Injecting vNMI$", after=r)
    ctx.check('this NMI is delivered ("Injecting vNMI") only after "vNMIs unblocked '
              'precisely"', u is not None and second is not None and second.pos > u.pos,
              lines(u, second), upstream=UPSTREAM_WHY, trace=tr, only=SEED_LINES)


def npf_checks(ctx: Ctx, m: Machine, tr: Trace, bounce: bool) -> None:
    t = tr.find(r"^vNMI iret tracing enabled$")
    rm = tr.find(r"^Removing all nested pages$", after=t) if t else None
    ctx.check('"Removing all nested pages" appears after "vNMI iret tracing enabled"',
              rm is not None, lines(t, rm),
              detail="no 'vNMI iret tracing enabled'" if t is None else "",
              upstream="upstream does not trace the IRET, so there is no 'vNMI iret tracing "
              "enabled' (the knob acts at its IRET exit without it)", trace=tr, only=SEED_LINES)
    start = rm or tr.find(r"^Removing all nested pages$")
    if start is None:
        return
    u = tr.find(PRECISE, after=start)
    npfs = tr.all(NPF_RE, after=start, before=u)
    exits = tr.all(NPF_EXIT_RE, after=start, before=u)
    ctx.check("there are a number of nested page fault VM exits", len(npfs) >= 1
              and len(exits) == len(npfs), lines(*npfs[:3], *exits[:3]) +
              ([f"... {len(npfs)} nested page faults, {len(exits)} nptfault exits"]
               if len(npfs) > 3 else []))
    nmi_iret = m.symbols.address("nmi_iret")
    rips = {int(x.group(2), 16) for x in npfs} | {int(x.group(2), 16) for x in exits}
    ctx.check(f"all these VM exits occur at the %rip of the NMI handler's iret "
              f"(nmi_iret = {nmi_iret:#x})", bool(rips) and rips == {nmi_iret},
              [f"exit rips: {', '.join(m.symbols.format(r) for r in sorted(rips))}"],
              upstream="upstream clears blocking at the IRET exit and lets the guest run on, "
              "so the nested page faults continue past the IRET, in the code after it",
              only=SEED_LINES)   # the window ends at "vNMIs unblocked precisely"
    ctx.check('this is followed by "vNMIs unblocked precisely"', u is not None
              and (not npfs or u.pos > npfs[-1].pos), lines(u),
              upstream=UPSTREAM_WHY, trace=tr, only=SEED_LINES)
    if bounce:
        b = tr.find(r"^Bouncing to userspace$", after=start, before=u)
        n = len(tr.all(r"^Bouncing to userspace$", after=start, before=u))
        ctx.check('"Bouncing to userspace" during iret tracing', b is not None,
                  lines(b) + [f"{n} bounces while the IRET was traced"],
                  upstream=UPSTREAM_WHY, trace=tr, only=SEED_LINES)


def gpf_checks(ctx: Ctx, tr: Trace) -> None:
    g = tr.find(r"updated to non-canonical value 0xdeadbeefbeefdead")
    u = tr.find(PRECISE, after=g) if g else None
    r = tr.find(r"^Reflecting exception 13/0 into the guest$", after=u) if u else None
    ctx.check('"updated to non-canonical value 0xdeadbeefbeefdead"', g is not None, lines(g))
    ctx.check('then "vNMIs unblocked precisely" (SDM 6.7.1: the faulting IRET unblocks NMIs)',
              u is not None, lines(u), upstream=UPSTREAM_WHY, trace=tr, only=SEED_LINES)
    ctx.check('then "Reflecting exception 13/0 into the guest"', r is not None, lines(r),
              upstream="upstream's IRET exit does not intercept #GP; the guest takes the #GP "
              "directly, so nothing is reflected", trace=tr, only=SEED_LINES)


def invariants(ctx: Ctx, m: Machine, tr: Trace, expected_nmis: int, since_seq: int) -> None:
    """Every injected NMI is delivered once, interrupts are delivered only after unblocking,
    no NMI is injected while an IRET is being traced (or has not yet retired)."""
    v = m.vcpus[0]
    injected = tr.all(r"^Injecting vNMI$")
    unblocks = tr.all(ANY_UNBLOCK)
    events = sorted((e for e in v.cpu.retire.events if e.seq >= since_seq), key=lambda e: e.seq)
    delivered = [e for e in events if e.kind == EV_NMI]
    ctx.check(f"invariant: every injected NMI is delivered once ({expected_nmis} expected)",
              len(injected) == expected_nmis and len(delivered) == expected_nmis
              and len(unblocks) == expected_nmis,
              [f"'Injecting vNMI' x{len(injected)}, NMI deliveries in the retirement log "
               f"x{len(delivered)}, unblockings x{len(unblocks)}"], only=BHYVE_LINES)
    early = []
    for o, c in tr.windows(r"^Injecting vNMI$", ANY_UNBLOCK):
        early += tr.all(r"^Injecting hwintr ", after=o, before=c)
    ctx.check("invariant: interrupts are delivered only after NMI unblocking", not early,
              lines(*early[:3]) or ["no 'Injecting hwintr' inside any NMI-blocked window"],
              only=BHYVE_LINES)
    traced = []
    for o, c in tr.windows(r"^vNMI iret tracing enabled$", ANY_UNBLOCK):
        traced += tr.all(r"^Injecting (vNMI|nmi at vector 2)", after=o, before=c)
    # policy-neutral, from the retirement log: no NMI between an IRET exit and that IRET's
    # retirement (upstream's admitted hole)
    hole = []
    since = iret = None
    for e in events:
        if e.kind == EV_VMEXIT and e.info == VMEXIT_IRET:
            since, iret = e.seq, e.rip          # the guest RIP at the exit is the IRET
        elif since is not None and e.kind == EV_INJECT and e.vector == 2:
            if iret not in {r.rip for r in v.cpu.retire.retired(since, e.seq)}:
                hole.append(f"NMI injected at retirement #{e.seq}, the IRET exit was at "
                            f"#{since} and the IRET at {m.symbols.format(iret)} had not "
                            "retired")
            since = None
    ctx.check("invariant: no NMI is injected while an IRET is being traced (or before it "
              "retired)", not traced and not hole,
              lines(*traced[:3]) + hole[:3] or ["none"],
              upstream="upstream unblocks at the IRET exit, so a pending NMI can be injected "
              "before the IRET executes (its own comment admits it)")
