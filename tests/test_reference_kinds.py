"""One test per difference kind: a test-only NMI policy that breaks exactly one rule makes the
comparison with the hardware reference name exactly that kind, at the right place, and
nothing else. The policies are registered only here (monkeypatch of the registry)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from nitdbg.compare.matrix import run_cell
from nitdbg.scenarios.base import Scenario
from nitdbg.vmm import nmi_policy
from nitdbg.vmm.nmi_policy import NMI_TRACING, BhyveUpstream, IretTracing, NmiState, TracingState
from nitdbg.x86.regs import DR6_BS, RF, RSP


class EarlyNmi(BhyveUpstream):
    """Upstream without the interrupt shadow at the IRET exit: a pending NMI is injected
    on the IRET itself, before it has executed."""
    name = "test-early-nmi"

    def iret_exit(self, v):
        super().iret_exit(v)
        v.vmcb.interrupt_shadow = 0


@dataclass
class HoldState(TracingState):
    hold: bool = False               # the one extra refusal is still owed


class LateNmi(IretTracing):
    """Keeps NMIs blocked for one more VM entry after the traced IRET."""
    name = "test-late-nmi"
    state_type = HoldState

    def _end_tracing(self, v, what):
        super()._end_tracing(v, what)
        self.state(v).hold = True

    def inj_nmi(self, v):
        st = self.state(v)
        if st.hold:
            st.hold = False
            v.log("Cannot inject NMI due to NMI-blocking")   # as if still blocked
            return False
        return super().inj_nmi(v)


class DropsNmi(BhyveUpstream):
    """Forgets an NMI that is pending when the IRET exits."""
    name = "test-drops-nmi"

    def iret_exit(self, v):
        super().iret_exit(v)
        v.nmi_pending = False


def _traced_db(v, vector):
    return v.nmi_state == NMI_TRACING and vector == 1 and v.vmcb.dr6 & DR6_BS


class SwallowsDb(IretTracing):
    """Keeps intercepting #DB after the traced IRET and swallows the next one, as a
    hypervisor that takes every #DB after an NMI window for its own would."""
    name = "test-swallows-db"
    state_type = HoldState

    def _end_tracing(self, v, what):
        super()._end_tracing(v, what)
        v.vmcb.set_exception_intercept(1, True)
        self.state(v).hold = True

    def exception_exit(self, v, vector, info1, info2):
        st = self.state(v)
        if vector == 1 and st.hold and v.nmi_state != NMI_TRACING:
            st.hold = False
            v.vmcb.set_exception_intercept(1, False)
            v.vmcb.dr6 = v.vmcb.dr6 & ~DR6_BS
            return True
        return super().exception_exit(v, vector, info1, info2)


class ExtraDb(IretTracing):
    """Reflects its own tracing #DB into the guest."""
    name = "test-extra-db"

    def exception_exit(self, v, vector, info1, info2):
        if _traced_db(v, vector):
            self._end_tracing(v, "#DB after the IRET, reflected")
            v.reflect_exception(1, None)
            return True
        return super().exception_exit(v, vector, info1, info2)


class LeaksRf(IretTracing):
    """Leaves RF set after the traced IRET: the next frame pushed shows it."""
    name = "test-leaks-rf"

    def _end_tracing(self, v, what):
        super()._end_tracing(v, what)
        v.vmcb.rflags = v.vmcb.rflags | RF


class LateIntr(IretTracing):
    """Refuses interrupt injection for one more VM entry after the traced IRET."""
    name = "test-late-intr"
    state_type = HoldState

    def _end_tracing(self, v, what):
        super()._end_tracing(v, what)
        self.state(v).hold = True

    def intr_allowed(self, v):
        st = self.state(v)
        if st.hold:
            st.hold = False
            return False
        return super().intr_allowed(v)


class RewritesFrame(BhyveUpstream):
    """At the IRET exit rewrites the return RIP of an idle NMI frame (the `ret` after `hlt`)
    to the `sti` before it."""
    name = "test-rewrites-frame"

    def iret_exit(self, v):
        super().iret_exit(v)
        hpa = v.vm.gla2hpa(v, v.vmcb.rsp)
        rip = v.vm.mem.read(hpa, 8)
        if v.vm.mem.read(v.vm.gla2hpa(v, rip), 1) == 0xC3:
            v.vm.mem.write(hpa, 8, rip - 2)


@dataclass
class RepeatState(NmiState):
    done: bool = False               # the one restart has been made


class RepeatsInsn(BhyveUpstream):
    """Restarts the guest at the IRET exit two instructions before the IRET (with the
    stack those two expect, so they do the same again)."""
    name = "test-repeats-insn"
    state_type = RepeatState

    def iret_exit(self, v):
        super().iret_exit(v)
        st = self.state(v)
        if not st.done:
            st.done = True
            # mov 0x70(%rsp),%r15; add $0x98,%rsp; iretq
            v.vmcb.rip = v.vmcb.rip - 12
            v.vmcb.rsp = v.vmcb.rsp - 0x98
            v.cpu.regs[RSP] = v.vmcb.rsp


class SkipsRet(IretTracing):
    """After the traced IRET, completes the `ret` it returned to itself (as if it had been
    executed), so the guest never retires it."""
    name = "test-skips-ret"

    def exception_exit(self, v, vector, info1, info2):
        traced = _traced_db(v, vector)
        handled = super().exception_exit(v, vector, info1, info2)
        vm, vmcb = v.vm, v.vmcb
        if traced and vm.mem.read(vm.gla2hpa(v, vmcb.rip), 1) == 0xC3:
            vmcb.rip = vm.mem.read(vm.gla2hpa(v, vmcb.rsp), 8)
            vmcb.rsp = vmcb.rsp + 8
            v.cpu.regs[RSP] = vmcb.rsp
        return handled


def _short(knobs: dict[str, int], steps: int = 0, kdb: int = 0) -> Scenario:
    """An NMI into an idle 1-vCPU guest with the knobs set, run for a bounded number of
    instructions (or `steps` ddb single steps when the guest enters its debugger)."""
    def fn(ctx):
        m = ctx.boot(knobs=knobs, kdb_on_nmi=kdb)
        ctx.host(m, "bhyvectl --vm=vm2 --cpu=0 --assert-lapic-lvt=1")
        ev = m.run(max_insns=30_000)
        if ev.reason == "kdb":
            ctx.enter(m, ev)
            for _ in range(steps):
                ctx.ddb(m, "s", max_insns=30_000)
    return Scenario("short:" + "+".join(knobs), "test", str(knobs), fn)


RNMI = {"recursive_nmi": 1}
DELAY = {"delay_usecs": 800000}
CASES = [
    (EarlyNmi, _short(RNMI), "nmi_early", "nmi_iret"),
    (LateNmi, _short(RNMI), "nmi_late", "cpu_idle_acpi"),
    (DropsNmi, _short(RNMI), "nmi_count", "cpu_idle_acpi"),
    (SwallowsDb, _short({}, steps=3, kdb=1), "lost_db", "syscall+0x20f"),
    (ExtraDb, _short({}), "extra_db", "cpu_idle_acpi"),
    (LeaksRf, _short(RNMI), "tf_visible", "cpu_idle_acpi"),
    (LateIntr, _short(DELAY), "intr_late", "cpu_idle_acpi"),
    (RewritesFrame, _short({}), "frame_overwritten", "nmi_iret"),
    (RepeatsInsn, _short({}), "insn_repeated", "Xnmi+0xee"),
    (SkipsRet, _short({}), "insn_skipped", "cpu_idle_acpi"),
]


@pytest.mark.parametrize(("policy", "scenario", "kind", "where"), CASES,
                         ids=[c[2] for c in CASES])
def test_a_policy_breaking_one_rule_shows_exactly_that_difference(monkeypatch, policy,
                                                                 scenario, kind, where):
    monkeypatch.setitem(nmi_policy.POLICIES, policy.name, policy)
    cell = run_cell(scenario, policy.name)
    kinds = [d["kind"] for d in cell.differences]
    assert kinds == [kind], cell.differences
    d = cell.differences[0]
    assert d["vcpu"] == 0 and where in d["at"], d


def test_the_shipped_policies_are_the_same_as_hardware_on_a_pending_nmi():
    for name in ("iret-tracing", "bhyve-upstream"):
        assert run_cell("pending-nmi", name).same_as_hardware
