"""Explanations are derived from what happened: each link of a chain needs its event (and the
hypervisor's KTR line for it); change the event and the explanation changes or goes.

The unit tests build the facts by hand (retirement-log events, KTR lines at their virtual
times, the policy's state); the machine tests take them from a real run."""

from __future__ import annotations

from dataclasses import replace

import pytest

from nitdbg.svm import exitcodes as ec
from nitdbg.tui.explain import AuditVerdict, StepFacts, chain, explain
from nitdbg.view import KtrLine, NmiView, TimedEvent

TF, RF, BS = 1 << 8, 1 << 16, 1 << 14
IRET_RIP, NEXT = 0x1000, 0x2000
IDLE = NmiView("iret-tracing", "idle", "precisely", "", False, False)


def sym(addr: int) -> str:
    return {IRET_RIP: "nmi_iret", NEXT: "cpu_idle_acpi+0x2"}.get(addr, f"{addr:#x}")


def ev(seq: int, time: int, kind: str, *, vector: int = 0, rip: int = 0, rflags: int = 0x2,
       dr6: int = 0xFFFF0FF0, info: int = 0) -> TimedEvent:
    return TimedEvent(seq, time, kind, vector, None, rip, rflags, dr6, info)


def ktr(time: int, msg: str) -> KtrLine:
    return KtrLine(0, 0, time, f"vm vm2[0]: {msg}")


def iret_step(*, bs: bool = True, unblocked: bool = True, guest_tf: bool = True,
              reflect_db: bool = False) -> StepFacts:
    """The first step after the NMI: IRET exit, TF|RF planted, IRET retired, #DB exit."""
    loaded = 0x246 | (TF if guest_tf else 0)
    events = (
        ev(10, 1000, "vmexit", rip=IRET_RIP, rflags=0x86, info=ec.VMEXIT_IRET),
        ev(10, 1000, "vmrun", rip=IRET_RIP, rflags=0x86 | TF | RF),
        ev(11, 1010, "iret", rip=NEXT, rflags=loaded),
        ev(11, 1510, "vmexit", rip=NEXT, rflags=loaded, dr6=0xFFFF0FF0 | (BS if bs else 0),
           info=ec.vmexit_excp(1)),
        ev(11, 1510, "vmrun", rip=NEXT, rflags=loaded),
    )
    lines = [ktr(1000, "vNMI iret tracing enabled"),
             ktr(1000, "handled iret vmexit at 0x1000/0")]
    if unblocked:
        lines.append(ktr(1510, "vNMIs unblocked precisely"))
    else:
        lines.append(ktr(1510, "Reflecting exception 1/0 into the guest"))
    if reflect_db:
        lines.append(ktr(1510, "Injecting exception at vector 1 errcode 0"))
    return StepFacts(0, events, tuple(lines), IDLE, "step",
                     AuditVerdict(1, True, ("cpu_idle_acpi+0x2: ret",), ()))


def titles(facts: StepFacts) -> list[str]:
    return [x.title for x in chain(facts, sym)]


def test_step_across_the_iret_shows_the_chain_in_the_order_it_happened():
    assert titles(iret_step()) == [
        "IRET exit", "TF|RF planted", "IRET retired", "#DB exit, DR6.BS=1",
        "vNMIs unblocked precisely", "the guest's own TF kept"]
    out = explain(iret_step(), sym)
    assert out[0].title == "ddb step across the NMI handler's IRET"
    assert "exactly one instruction ran: cpu_idle_acpi+0x2: ret" in out[0].evidence
    planted = next(x for x in out if x.title == "TF|RF planted")
    assert "0x10100" in planted.evidence and "15.5" in planted.source
    assert all(x.source for x in out)                  # every link names its rule


def test_without_the_policy_unblocking_the_db_exit_is_not_the_iret_trap():
    t = titles(iret_step(unblocked=False))
    assert "vNMIs unblocked precisely" not in t and "#DB exit, DR6.BS=1" not in t
    assert "exception 1 intercepted and reflected" in t


def test_a_db_exit_without_dr6_bs_is_not_called_a_single_step_trap():
    t = titles(iret_step(bs=False))
    assert "#DB exit, DR6.BS=1" not in t


def test_no_iret_exit_no_iret_links_and_a_plain_step_title():
    f = iret_step()
    f = replace(f, events=f.events[3:], ktr=f.ktr[2:])
    t = titles(f)
    assert "IRET exit" not in t and "TF|RF planted" not in t and "IRET retired" not in t
    assert explain(f, sym)[0].title == "ddb step"


def test_the_guests_tf_is_said_kept_only_when_the_vmrun_after_has_it():
    assert "the guest's own TF clear" in titles(iret_step(guest_tf=False))
    assert "the guest's own TF kept" not in titles(iret_step(guest_tf=False))


def test_the_guests_db_is_said_reflected_only_when_the_hypervisor_injected_it():
    assert "the guest's #DB reflected" in titles(iret_step(reflect_db=True))
    assert "the guest's #DB reflected" not in titles(iret_step())


def test_an_iret_fault_is_explained_from_the_unblocking_and_the_reflection():
    events = (ev(10, 1000, "vmexit", rip=IRET_RIP, info=ec.VMEXIT_IRET),
              ev(10, 1000, "vmrun", rip=IRET_RIP, rflags=0x2 | TF | RF),
              ev(10, 1500, "vmexit", rip=IRET_RIP, info=ec.vmexit_excp(13)),
              ev(10, 1500, "vmrun", rip=IRET_RIP, rflags=0x2))
    lines = (ktr(1000, "vNMI iret tracing enabled"), ktr(1500, "vNMIs unblocked precisely"),
             ktr(1500, "Reflecting exception 13/0 into the guest"))
    f = StepFacts(0, events, lines, IDLE)
    assert "the IRET faulted (exception 13)" in titles(f)
    # the same exit when the policy did not unblock: only a reflected exception
    g = replace(f, ktr=lines[:1] + lines[2:])
    assert "the IRET faulted (exception 13)" not in titles(g)
    assert "exception 13 intercepted and reflected" in titles(g)


def test_a_breakpoint_is_explained_without_rf():
    f = StepFacts(0, (ev(5, 500, "exception", vector=3, rip=NEXT + 1),), (), IDLE,
                  "breakpoint")
    out = explain(f, sym)
    assert [x.title for x in out] == ["breakpoint", "#BP in the guest"]
    assert all("RF" not in x.rule for x in out)


def test_the_step_verdict_is_the_audits():
    bad = AuditVerdict(3, False, (), ("2 instructions omitted: 0x10 f+0x1",))
    f = replace(iret_step(), audit=bad)
    first = explain(f, sym)[0]
    assert "exactly one" not in first.evidence and "omitted" in first.evidence
    assert "not a step" in explain(replace(f, audit=None), sym)[0].evidence


def test_an_nmi_from_hlt_is_said_to_return_after_the_hlt_only_when_a_hlt_exit_was_there():
    nmi = ev(20, 2000, "nmi", rip=NEXT)
    hlt = ev(19, 1900, "vmexit", rip=NEXT - 1, info=ec.VMEXIT_HLT)
    with_hlt = explain(StepFacts(0, (hlt, nmi), (), IDLE, "T_NMI"), sym)[0]
    without = explain(StepFacts(0, (nmi,), (), IDLE, "T_NMI"), sym)[0]
    assert "after the hlt" in with_hlt.rule and "after the hlt" not in without.rule


def test_the_state_explanation_follows_the_policys_state():
    blocked = replace(IDLE, state="blocked", blocked=True)
    assert explain(StepFacts(0, (), (), blocked), sym)[-1].title == "NMIs blocked"
    assert explain(StepFacts(0, (), (), IDLE), sym) == []


# ---------------------------------------------------------------------- on the machine
def _first_steps(policy: str = "iret-tracing", tunables: dict | None = None):  # noqa: ANN202
    from nitdbg.ddb.disasm import Disassembler
    from nitdbg.machine import Machine
    from nitdbg.tui.snapshot import SnapshotBuilder
    m = Machine(policy=policy, tunables=tunables)
    m.boot_to_prompt()
    m.type_line("sysctl machdep.kdb_on_nmi=1")
    b = SnapshotBuilder(Disassembler(m.symbols))
    m.host("bhyvectl --vm=vm2 --cpu=0 --assert-lapic-lvt=1")
    m.enter_debugger(m.settle())
    out = []
    for _ in range(2):
        since = {v.id: v.cpu.icount for v in m.vcpus}
        m.debugger("s")
        out.append([x.title for x in b.build(m, 0, since, 0, True, False).vcpus[0].explain])
    return out


def test_on_the_machine_the_first_step_after_the_nmi_shows_the_iret_chain():
    first, second = _first_steps()
    assert first[:7] == ["ddb step across the NMI handler's IRET", "IRET exit",
                         "TF|RF planted", "IRET retired", "#DB exit, DR6.BS=1",
                         "vNMIs unblocked precisely", "the guest's own TF kept"]
    assert second[0] == "ddb step" and "IRET exit" not in second


@pytest.mark.parametrize("policy", ["bhyve-upstream"])
def test_on_the_machine_upstream_clears_blocking_at_the_exit_and_plants_nothing(policy):
    first, _ = _first_steps(policy)
    assert "blocking cleared at the IRET exit" in first
    assert "TF|RF planted" not in first and "vNMIs unblocked precisely" not in first


def test_on_the_machine_a_traced_single_step_exit_is_a_reflected_exception_not_an_iret():
    _, second = _first_steps(tunables={"hw.vmm.trace_guest_exceptions": "1"})
    assert "exception 1 intercepted and reflected" in second
    assert not any("IRET" in t or "unblocked" in t for t in second)


def test_tf_rf_planted_needs_the_policys_tracing_line():
    f = iret_step()
    f = replace(f, ktr=tuple(k for k in f.ktr if "iret tracing enabled" not in k.message))
    assert "TF|RF planted" not in titles(f)


def test_a_speculative_unblock_is_said_only_when_the_policy_logged_it():
    events = (ev(10, 1000, "vmexit", rip=IRET_RIP, info=ec.VMEXIT_IRET),)
    with_line = StepFacts(0, events, (ktr(1000, "vNMIs unblocked speculatively"),), IDLE)
    assert "unblocked speculatively" in titles(with_line)
    assert "unblocked speculatively" not in titles(replace(with_line, ktr=()))


def test_a_nested_page_fault_is_a_link_only_between_the_iret_exit_and_its_end():
    npf = ev(10, 1200, "vmexit", rip=IRET_RIP, info=ec.VMEXIT_NPF)
    f = iret_step()
    during = replace(f, events=f.events[:2] + (npf,) + f.events[2:])
    assert "nested page fault at the IRET" in titles(during)
    alone = StepFacts(0, (npf,), (), IDLE)
    assert titles(alone) == []


def test_injections_and_deliveries_are_links_by_their_vector_and_dr6():
    nmi_inj = ev(5, 500, "inject", vector=2, rip=NEXT)
    other_inj = ev(5, 500, "inject", vector=32, rip=NEXT)
    assert titles(StepFacts(0, (nmi_inj,), (), IDLE)) == ["vNMI injected"]
    assert titles(StepFacts(0, (other_inj,), (), IDLE)) == []
    db_bs = ev(6, 600, "exception", vector=1, rip=NEXT, dr6=0xFFFF0FF0 | BS)
    db_nobs = ev(6, 600, "exception", vector=1, rip=NEXT, dr6=0xFFFF0FF0)
    assert titles(StepFacts(0, (db_bs,), (), IDLE)) == ["single-step #DB in the guest"]
    assert titles(StepFacts(0, (db_nobs,), (), IDLE)) == []
    assert titles(StepFacts(0, (ev(7, 700, "nmi", rip=NEXT),), (), IDLE)) == ["NMI delivered"]
