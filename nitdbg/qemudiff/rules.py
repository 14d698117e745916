"""Which manual's rule a side breaks at the first divergence.

Each checker is a small function with the rule's name and its SDM/APM citation. It reads
one side's trace (instructions with the registers before them, and deliveries) in a window
around the divergence, and returns a Finding for every place the rule decides: obeyed or
broken, with the evidence. A rule whose inputs a side's trace does not hold (a pushed frame
QEMU's log does not show, a register dump nitdbg did not take) decides nothing there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache

import capstone

from .core import Delivery, Trace

TF, IF, NT, RF = 1 << 8, 1 << 9, 1 << 14, 1 << 16
DR6_BS, DR6_BD, DR7_GD = 1 << 14, 1 << 13, 1 << 13
# Fault-class exceptions (SDM table 6-1); #DB is a fault or a trap by its condition.
FAULTS = frozenset({0, 5, 6, 7, 10, 11, 12, 13, 14, 16, 17, 19, 20, 21})
ERRCODE = frozenset({8, 10, 11, 12, 13, 14, 17, 21})
WINDOW = 64          # instructions each side of the divergence


@dataclass(frozen=True)
class Ins:
    mnemonic: str
    op_str: str
    size: int

    def __str__(self) -> str:
        return f"{self.mnemonic} {self.op_str}".strip()


class Code:
    """Decodes the instruction at an address (both sides run the same kernel image)."""

    def __init__(self, read: Callable[[int, int], bytes]):
        self._read = read
        self._md = {m: capstone.Cs(capstone.CS_ARCH_X86, cs)
                    for m, cs in ((16, capstone.CS_MODE_16), (32, capstone.CS_MODE_32),
                                  (64, capstone.CS_MODE_64))}
        self.at = lru_cache(maxsize=4096)(self._at)

    def _at(self, rip: int, mode: int = 32) -> Ins | None:
        try:
            raw = self._read(rip, 16)
        except Exception:  # noqa: BLE001 - outside memory: nothing to decode
            return None
        for i in self._md.get(mode, self._md[32]).disasm(raw, rip, 1):
            return Ins(i.mnemonic, i.op_str, i.size)
        return None


@dataclass(frozen=True)
class Finding:
    rule: Rule
    broken: bool
    index: int            # the instruction (index into the side's steps) it is about
    rip: int
    detail: str


@dataclass(frozen=True)
class Rule:
    name: str
    cite: str
    check: Callable[[View], Iterator[tuple[bool, int, int, str]]]


class View:
    """One side's trace in the window [lo, hi) of instruction indices."""

    def __init__(self, side: str, trace: Trace, code: Code, lo: int, hi: int):
        self.side, self.t, self.code = side, trace, code
        self.lo, self.hi = max(0, lo), min(hi, len(trace.steps))
        self.steps = trace.steps

    def indices(self) -> range:
        return range(self.lo, self.hi)

    def deliveries(self) -> list[Delivery]:
        return [d for d in self.t.deliveries if self.lo <= d.handler_at <= self.hi]

    def ins(self, i: int) -> Ins | None:
        if 0 <= i < len(self.steps):
            s = self.steps[i]
            return self.code.at(s.rip, s.mode)
        return None

    def ins_at(self, rip: int, mode: int = 32) -> Ins | None:
        return self.code.at(rip, mode)

    def at_boundary(self, i: int) -> list[Delivery]:
        """Deliveries after instruction i completed, in the order they were delivered."""
        return [d for d in self.t.deliveries if d.after == i]

    def completed(self, i: int) -> bool:
        return i + 1 < len(self.steps)


def _is(ins: Ins | None, *mn: str) -> bool:
    return ins is not None and ins.mnemonic in mn


def _loads_ss(ins: Ins | None) -> bool:
    # MOV SS, r/m and POP SS (SDM 6.8.3)
    if ins is None:
        return False
    if ins.mnemonic == "pop":
        return ins.op_str == "ss"
    return ins.mnemonic == "mov" and ins.op_str.startswith("ss,")


def _no_sstep(ins: Ins | None) -> bool:
    # INT n / INT3 / INTO / INT1 start the handler with TF=0: no single-step trap after them
    return _is(ins, "int", "int3", "into", "int1", "hlt")


def _rip(v: View, i: int) -> int:
    return v.steps[i].rip


# -- the checkers -----------------------------------------------------------------------------

def fault_pushes_rf(v: View):  # noqa: ANN201 - yields (broken, index, rip, detail)
    """SDM 17.3.1.1: 'for any fault-class exception except a debug exception generated in
    response to an instruction breakpoint, the value pushed for RF is 1' (so the
    general-detect #DB pushes RF=1 too)."""
    for d in v.deliveries():
        if d.kind != "exception" or d.pushed_rflags is None:
            continue
        if d.vector not in FAULTS and not _general_detect(v, d):
            continue
        rip = d.at_rip if d.at_rip is not None else d.pushed_rip or 0
        src = ("written on the stack" if d.frame_from == "stack"
               else "as the handler's IRET loaded it")
        rf = (d.pushed_rflags >> 16) & 1
        yield (not rf, d.after, rip, f"vector {d.vector:#x}: pushed RFLAGS {d.pushed_rflags:#x}"
               f" ({src}) has RF={rf}")


def _mov_dr(ins: Ins | None) -> bool:
    return ins is not None and ins.mnemonic == "mov" and "dr" in ins.op_str


def _source(v: View, d: Delivery) -> tuple[int, Ins | None] | None:
    """The instruction a fault-class exception points at (its RIP at delivery, or the
    pushed RIP where the log does not give that)."""
    rip = d.at_rip if d.at_rip is not None else d.pushed_rip
    if rip is None:
        return None
    mode = v.steps[d.after].mode if 0 <= d.after < len(v.steps) else 32
    return rip, v.ins_at(rip, mode)


def _general_detect(v: View, d: Delivery) -> bool:
    """A #DB with DR6.BD at a MOV DR: the general-detect fault (SDM 17.2.4)."""
    if d.vector != 1 or d.kind != "exception" or d.dr6 is None or not d.dr6 & DR6_BD:
        return False
    src = _source(v, d)
    return src is not None and _mov_dr(src[1])


def single_step_trap(v: View):  # noqa: ANN201
    """SDM 17.3.1.4: with TF=1 at the start of an instruction, a #DB trap follows it (not
    after INT n/INT3/INTO/INT1, which clear TF; after MOV SS/POP SS it waits one more
    instruction, SDM 6.8.3)."""
    for i in v.indices():
        fl = v.steps[i].regs.get("rflags")
        if fl is None or not fl & TF or not v.completed(i):
            continue
        ins = v.ins(i)
        if _no_sstep(ins) or _loads_ss(ins):
            continue
        evs = v.at_boundary(i)
        dbs = [d for d in evs if d.vector == 1 and d.kind == "exception"]
        if not dbs:
            got = ", ".join(f"vector {d.vector:#x}" for d in evs) or "nothing"
            yield (True, i, _rip(v, i), f"{ins}: began with TF=1, then {got} was delivered")
        else:
            yield (False, i, _rip(v, i), f"{ins}: began with TF=1, #DB followed")


def single_step_sets_bs(v: View):  # noqa: ANN201
    """SDM 17.2.3: a single-step #DB sets DR6.BS."""
    for i in v.indices():
        fl = v.steps[i].regs.get("rflags")
        if fl is None or not fl & TF or _no_sstep(v.ins(i)) or _loads_ss(v.ins(i)):
            continue
        for d in v.at_boundary(i):
            if d.vector == 1 and d.kind == "exception" and d.dr6 is not None:
                yield (not d.dr6 & DR6_BS, i, _rip(v, i), f"DR6 in the #DB handler {d.dr6:#x}")


def _exec_breakpoints(regs: dict[str, int]) -> list[tuple[int, int]]:
    """(n, address) of the DRn enabled (L or G) as instruction breakpoints (R/W=00)."""
    dr7 = regs.get("dr7")
    if dr7 is None:
        return []
    return [(n, regs[f"dr{n}"]) for n in range(4)
            if dr7 >> (2 * n) & 3 and not dr7 >> (16 + 4 * n) & 3 and f"dr{n}" in regs]


def ibp_faults_before(v: View):  # noqa: ANN201
    """SDM 17.3.1.1: an enabled instruction breakpoint raises a fault-class #DB before the
    instruction executes (unless RF=1 or the MOV SS shadow suppresses it), DR6.Bn set."""
    for i in v.indices():
        regs = v.steps[i].regs
        for n, addr in _exec_breakpoints(regs):
            if addr != v.steps[i].rip or "rflags" not in regs:
                continue
            if regs["rflags"] & RF or _loads_ss(v.ins(i - 1)):
                continue
            yield (True, i, addr, f"DR{n}={addr:#x} enabled, RF=0: the instruction completed "
                                  "without a #DB")
    for d in v.deliveries():
        if d.vector != 1 or d.kind != "exception" or d.pushed_rip is None:
            continue
        regs = v.steps[d.handler_at].regs if d.handler_at < len(v.steps) else {}
        for n, addr in _exec_breakpoints(regs):
            if addr == d.pushed_rip and d.dr6 is not None:
                yield (not d.dr6 >> n & 1, d.after, addr,
                       f"#DB before the instruction at DR{n}, DR6 {d.dr6:#x}")


def rf_suppresses_ibp(v: View):  # noqa: ANN201
    """SDM 17.3.1.1: when RF=1 the processor ignores instruction breakpoints (for the one
    instruction: RF is cleared after it)."""
    for i in v.indices():
        regs = v.steps[i].regs
        for n, addr in _exec_breakpoints(regs):
            if addr == v.steps[i].rip and regs.get("rflags", 0) & RF:
                yield (False, i, addr, f"RF=1 at DR{n}'s instruction: it ran, no #DB")
    for d in v.deliveries():
        if d.vector != 1 or d.kind != "exception" or d.pushed_rip is None:
            continue
        fl = d.at_rflags if d.at_rflags is not None else d.pushed_rflags
        regs = v.steps[d.handler_at].regs if d.handler_at < len(v.steps) else {}
        if fl is not None and fl & RF and any(a == d.pushed_rip
                                              for _, a in _exec_breakpoints(regs)):
            yield (True, d.after, d.pushed_rip, f"#DB for the breakpoint although RFLAGS "
                                                f"{fl:#x} had RF=1")


def general_detect(v: View):  # noqa: ANN201
    """SDM 17.2.4: with DR7.GD=1 a MOV to or from a debug register raises a #DB fault
    before it executes, with DR6.BD=1 (and GD cleared for the handler)."""
    for i in v.indices():
        regs = v.steps[i].regs
        if regs.get("dr7", 0) & DR7_GD and _mov_dr(v.ins(i)) and v.completed(i):
            yield (True, i, _rip(v, i), f"{v.ins(i)} completed with DR7.GD=1 "
                                        f"(DR7 {regs['dr7']:#x})")
    for d in v.deliveries():
        if _general_detect(v, d):
            src = _source(v, d)
            yield (False, d.after, src[0] if src else 0,
                   f"#DB before {src[1] if src else 'the MOV DR'}, DR6 {d.dr6:#x}")


def _data_breakpoints(regs: dict[str, int]) -> list[int]:
    dr7 = regs.get("dr7")
    if dr7 is None:
        return []
    return [n for n in range(4) if dr7 >> (2 * n) & 3 and dr7 >> (16 + 4 * n) & 3 in (1, 3)]


def data_bp_is_trap(v: View):  # noqa: ANN201
    """SDM 17.3.1.2: a data breakpoint raises a #DB trap after the accessing instruction:
    the pushed RIP is the next instruction's, DR6.Bn=1."""
    for d in v.deliveries():
        if d.vector != 1 or d.kind != "exception" or d.dr6 is None or d.pushed_rip is None:
            continue
        if not 0 <= d.after < len(v.steps) or d.handler_at >= len(v.steps):
            continue
        hit = [n for n in _data_breakpoints(v.steps[d.handler_at].regs) if d.dr6 >> n & 1]
        ins = v.ins(d.after)
        if not hit or ins is None or ins.mnemonic.startswith(("j", "call", "ret", "loop")):
            continue
        nxt = v.steps[d.after].rip + ins.size
        yield (d.pushed_rip != nxt, d.after, v.steps[d.after].rip,
               f"DR{hit[0]} data breakpoint after {ins}: pushed RIP {d.pushed_rip:#x}, "
               f"next instruction {nxt:#x}, DR6 {d.dr6:#x}")


def sti_shadow(v: View):  # noqa: ANN201
    """SDM 6.8.3: STI with IF=0 inhibits maskable interrupts until after the next
    instruction."""
    for i in v.indices():
        fl = v.steps[i].regs.get("rflags")
        if fl is None or fl & IF or not _is(v.ins(i), "sti"):
            continue
        for d in v.at_boundary(i):
            if d.kind == "intr":
                yield (True, i, _rip(v, i), f"interrupt vector {d.vector:#x} right after STI")
        for d in v.at_boundary(i + 1):
            if d.kind == "intr":
                yield (False, i, _rip(v, i), f"interrupt vector {d.vector:#x} after the "
                                             "instruction that follows STI")


def movss_shadow(v: View):  # noqa: ANN201
    """SDM 6.8.3: MOV SS / POP SS hold #DB traps, NMIs and interrupts until after the next
    instruction."""
    for i in v.indices():
        ins = v.ins(i)
        if not _loads_ss(ins) or not v.completed(i):
            continue
        held = [d for d in v.at_boundary(i)
                if d.kind in ("nmi", "intr") or (d.kind == "exception" and d.vector == 1)]
        for d in held:
            yield (True, i, _rip(v, i), f"vector {d.vector:#x} delivered right after {ins}")
        fl = v.steps[i].regs.get("rflags")
        if not held and fl is not None and fl & TF and \
                any(d.vector == 1 for d in v.at_boundary(i + 1)):
            yield (False, i, _rip(v, i), f"TF=1: the #DB after {ins} waited one instruction")


def nmi_blocked_until_iret(v: View):  # noqa: ANN201
    """SDM 6.7.1: after an NMI is delivered, further NMIs are blocked until the next
    IRET."""
    nmis = [d for d in v.t.deliveries if d.kind == "nmi"]
    for a, b in zip(nmis, nmis[1:], strict=False):
        if not (v.lo <= b.handler_at <= v.hi):
            continue
        irets = [j for j in range(a.handler_at, b.handler_at) if _is(v.ins(j), "iret", "iretd",
                                                                      "iretq")]
        rip = v.steps[b.after].rip if 0 <= b.after < len(v.steps) else 0
        yield (not irets, b.after, rip, "a second NMI " + (
            f"after the IRET at index {irets[0]}" if irets else "with no IRET since the first"))


def gate_clears_tf_rf(v: View):  # noqa: ANN201
    """SDM 6.12.1.3: a delivery through an interrupt or trap gate clears TF, RF and NT
    (after pushing RFLAGS): the handler's first instruction starts with them 0."""
    for d in v.deliveries():
        if d.handler_at >= len(v.steps):
            continue
        fl = v.steps[d.handler_at].regs.get("rflags")
        if fl is None:
            continue
        left = [n for n, b in (("TF", TF), ("RF", RF), ("NT", NT)) if fl & b]
        yield (bool(left), d.handler_at, v.steps[d.handler_at].rip,
               f"vector {d.vector:#x}: handler starts with RFLAGS {fl:#x}"
               + (f" ({', '.join(left)} set)" if left else ""))


def int1_is_db_trap(v: View):  # noqa: ANN201
    """SDM vol 3 table 17-2 and vol 2 'INT n/INTO/INT3/INT1': INT1 (ICEBP, F1) raises #DB
    as a trap: the pushed RIP is the next instruction."""
    for d in v.deliveries():
        cands = []
        if 0 <= d.after < len(v.steps):
            s = v.steps[d.after]
            cands.append((s.rip, s.mode))
        if d.at_rip is not None:
            cands.append((d.at_rip, v.steps[d.after].mode if 0 <= d.after < len(v.steps)
                          else 32))
        for rip, mode in cands:
            ins = v.ins_at(rip, mode)
            if not _is(ins, "int1"):
                continue
            if d.vector != 1:
                yield (True, d.after, rip, f"INT1 delivered vector {d.vector:#x}, not #DB")
            elif d.pushed_rip is not None:
                yield (d.pushed_rip != rip + ins.size, d.after, rip,
                       f"#DB pushed RIP {d.pushed_rip:#x} (the next instruction is "
                       f"{rip + ins.size:#x})")
            break


def error_codes(v: View):  # noqa: ANN201
    """SDM 6.13 and table 6-1: an exception pushes an error code exactly for vectors 8,
    10-14, 17 and 21; #DF's is 0 (SDM 6.15)."""
    for d in v.deliveries():
        if d.kind != "exception":
            continue
        rip = d.at_rip if d.at_rip is not None else d.pushed_rip or 0
        if d.vector == 8 and d.error is not None:
            yield (d.error != 0, d.after, rip, f"#DF error code {d.error:#x}")
        elif d.error_seen:
            has = d.error is not None
            if has != (d.vector in ERRCODE):
                yield (True, d.after, rip, f"vector {d.vector:#x} "
                                           + ("pushed" if has else "did not push")
                                           + " an error code")


# SDM table 6-2 priorities of what can be pending at one instruction boundary
_PRIORITY = {"db": 4, "nmi": 5, "intr": 6}


def priority_table_6_2(v: View):  # noqa: ANN201
    """SDM table 6-2: at one instruction boundary a trap-class #DB (priority 4) goes before
    an NMI (5), and an NMI before a maskable interrupt (6)."""
    for i in v.indices():
        evs = v.at_boundary(i)
        kinds = [("db" if d.vector == 1 and d.kind == "exception" else d.kind) for d in evs]
        ranks = [_PRIORITY[k] for k in kinds if k in _PRIORITY]
        if len(set(ranks)) > 1:
            yield (ranks != sorted(ranks), i, _rip(v, i),
                   "at one boundary: " + ", ".join(
                       f"vector {d.vector:#x}" for d in evs) + " (in delivery order)")


RULES: tuple[Rule, ...] = (
    Rule("a fault-class exception pushes RF=1 in the RFLAGS image", "SDM 17.3.1.1",
         fault_pushes_rf),
    Rule("a single-step #DB trap follows each instruction that began with TF=1",
         "SDM 17.3.1.4", single_step_trap),
    Rule("a single-step #DB sets DR6.BS", "SDM 17.2.3", single_step_sets_bs),
    Rule("an enabled instruction breakpoint raises a #DB fault before the instruction, "
         "with DR6.Bn set", "SDM 17.3.1.1", ibp_faults_before),
    Rule("RF=1 suppresses instruction breakpoints for one instruction", "SDM 17.3.1.1",
         rf_suppresses_ibp),
    Rule("with DR7.GD=1 a MOV DR raises a #DB fault before it, with DR6.BD", "SDM 17.2.4",
         general_detect),
    Rule("a data breakpoint raises a #DB trap after the access, with DR6.Bn",
         "SDM 17.3.1.2", data_bp_is_trap),
    Rule("STI blocks maskable interrupts for one instruction", "SDM 6.8.3", sti_shadow),
    Rule("MOV SS/POP SS block #DB, NMI and interrupts for one instruction", "SDM 6.8.3",
         movss_shadow),
    Rule("NMIs are blocked from NMI delivery until the next IRET", "SDM 6.7.1",
         nmi_blocked_until_iret),
    Rule("delivery through an IDT gate clears TF, RF and NT", "SDM 6.12.1.3",
         gate_clears_tf_rf),
    Rule("INT1 (ICEBP) raises #DB as a trap: the pushed RIP is the next instruction",
         "SDM vol 3 table 17-2, vol 2 INT1", int1_is_db_trap),
    Rule("an error code is pushed exactly for vectors 8, 10-14, 17, 21; #DF's is 0",
         "SDM 6.13, table 6-1", error_codes),
    Rule("at one boundary a trap-class #DB goes before an NMI, an NMI before an interrupt",
         "SDM table 6-2", priority_table_6_2),
)


def evaluate(side: str, trace: Trace, code: Code, index: int,
             rules: tuple[Rule, ...] = RULES, window: int = WINDOW) -> list[Finding]:
    """Every place a rule decides in [index - window, index + window] of this side."""
    v = View(side, trace, code, index - window, index + window)
    out: list[Finding] = []
    for r in rules:
        for broken, i, rip, detail in r.check(v):
            out.append(Finding(r, broken, i, rip, detail))
    return out


def resolve_iret_frames(trace: Trace, code: Code) -> None:
    """Where a side's log does not show the frame it pushed (QEMU's), take it from the
    handler's IRET: the first IRET after the delivery that brings RSP back to its value
    before the push loaded the RIP and RFLAGS of the frame (unless the handler changed
    them: the detail says where the values come from)."""
    steps = trace.steps
    for d in trace.deliveries:
        if d.pushed_rflags is not None or d.sp is None:
            continue
        for j in range(d.handler_at + 1, len(steps)):
            prev = steps[j - 1]
            if _is(code.at(prev.rip, prev.mode), "iret", "iretd", "iretq"):
                rsp = steps[j].regs.get("rsp")
                if rsp is not None and rsp & 0xFFFF_FFFF == d.sp & 0xFFFF_FFFF:
                    d.pushed_rip, d.frame_from = steps[j].rip, "iret"
                    d.pushed_rflags = steps[j].regs.get("rflags")
                    break


def verdict_lines(sides: dict[str, list[Finding]], sym: Callable[[int], str]) -> list[str]:
    """For each side, the rules it breaks with the evidence; for a rule one side breaks,
    what the other side did at its place; or that no rule decides."""
    out = ["rules (each side's trace within "
           f"{WINDOW} instructions of the divergence):\n"]
    broken_any = False
    for side, finds in sides.items():
        seen: set[str] = set()
        for f in finds:
            if not f.broken or f.rule.name in seen:
                continue
            seen.add(f.rule.name)
            broken_any = True
            out.append(f"  {side} breaks: {f.rule.name} ({f.rule.cite})\n")
            out.append(f"    at {sym(f.rip)} ({f.rip:#x}): {f.detail}\n")
            for other, ofinds in sides.items():
                if other == side:
                    continue
                same = [g for g in ofinds if g.rule is f.rule]
                if not same:
                    out.append(f"    {other}: the rule decides nothing in its trace here\n")
                elif not any(g.broken for g in same):
                    g = min(same, key=lambda g: abs(g.index - f.index))
                    out.append(f"    {other} obeys it at {sym(g.rip)}: {g.detail}\n")
    if not broken_any:
        out.append("  no rule in nitdbg's list decides this divergence\n")
    return out
