"""The debugger and bad input: a refused line changes nothing (checked by digest), its page
walks leave the guest's page tables alone, and nothing a person types runs unbounded."""

from __future__ import annotations

import contextlib

import pytest

from nitdbg.fuzz import digest
from nitdbg.machine import Machine
from nitdbg.x86.paging import PT_A, walk

# Lines db> refuses: each must print one line and leave every digest part as it was.
REFUSED = [
    "x/q 0", "x/xq cpu_idle_acpi", "x/i 7f0000000000", "x 0xffff800000000000",
    "write/g 7f0000000000 1",
    "write/b cpu_idle_acpi 1 2 3 )", "set $nosuch = 1", "set $rip", "b", "d 1234",
    "show nosuch", "nosuch", "x/i (" * 400, "p " + "-" * 3000 + "1", "p (1", "p 1/0",
    "x cpu_idle_acpi,100000", "hwatch", "s,", "print/q 1", "x $nosuch", "x/i nosuchsym",
    "write/g ffffffffffff0ff8 1 2 3",     # the last values would fall off mapped memory
]


@pytest.fixture(scope="module")
def machine() -> Machine:
    m = Machine(vcpus=1)
    m.boot_to_prompt()
    m.type_line("sysctl machdep.kdb_on_nmi=1")
    m.assert_lapic_lvt(0)
    out = m.enter_debugger(m.settle())
    assert "Stopped at" in out
    return m


@pytest.mark.parametrize("line", REFUSED, ids=lambda s: s[:30])
def test_a_refused_ddb_line_prints_one_line_and_changes_nothing(machine, line):
    machine.debugger("x/gx $rsp,2")           # something for the refused line to undo
    before = digest.parts(machine)
    res = machine.ddb.command(line)
    assert res.rejected, res.output
    assert res.output.count("\n") == 1 and res.output.endswith("\n")
    assert digest.changed(before, digest.parts(machine)) == []


def test_a_bad_x_format_does_not_stick(machine):
    machine.debugger("x/gx $rsp")
    assert machine.ddb.command("x/q $rsp").rejected
    out = machine.debugger("x $rsp")
    assert "Bad modifier" not in out
    assert machine.ddb.examine_format == "gx"


def test_a_blank_line_after_a_refused_x_repeats_the_last_good_one(machine):
    machine.debugger("x/gx $rsp")
    nxt = machine.ddb.next_addr
    machine.debugger("x/q 0")
    out = machine.debugger("")
    assert f"{nxt:x}"[-4:] in out or machine.ddb.next_addr == nxt + 8


def test_deeply_nested_expression_is_one_line_not_a_recursion_error(machine):
    out = machine.debugger("p " + "(" * 5000 + "1" + ")" * 5000)
    assert out == "Expression too deeply nested (more than 64 levels)\n"
    assert machine.debugger("p ((((1+2))))") == "       3\n"


def test_examine_with_a_huge_count_is_refused_up_front(machine):
    out = machine.debugger("x/i cpu_idle_acpi,7fffffffffffffff")
    assert out.startswith("Count too large")
    assert len(machine.debugger("x/i cpu_idle_acpi,10").splitlines()) == 16


def test_examine_strings_are_bounded(machine):
    out = machine.debugger("x/s cpu_idle_acpi,4")
    assert len(out) < 4 * 0x400 * 4 + 400


def _clear_accessed(m: Machine, gla: int) -> list[tuple[int, int, int]]:
    """Clear A in every entry the walk for `gla` reaches (guest RAM is 1:1 in host-physical
    memory); returns (address, size, original entry) to put back."""
    from nitdbg.x86.faults import Fault
    ents: list[tuple[int, int]] = []
    rd = m.vm.mem.read
    with contextlib.suppress(Fault):          # the walk may end at a not-present entry
        # reading every entry with A clear makes the walk report each one it uses
        walk(m.vm.vcpus[0].cpu, gla, 0x100, lambda a, size: rd(a, size) & ~PT_A,
             lambda a, size, e: ents.append((a, size)))
    saved = [(a, size, rd(a, size)) for a, size in ents]
    for a, size, e in saved:
        m.vm.mem.write(a, size, e & ~PT_A)
    return saved


def _restore(m: Machine, saved: list[tuple[int, int, int]]) -> None:
    for a, size, e in saved:
        m.vm.mem.write(a, size, e)


def test_debugger_reads_set_no_accessed_bit_in_guest_page_tables(machine):
    """bhyve's vm_gla2gpa_nofault: a debugger's walk is check-only (the processor sets A
    for its own accesses, SDM vol 3 4.8; a debugger is not the processor)."""
    m = machine
    gla = m.symbols.address("cpu_idle_acpi")
    saved = _clear_accessed(m, gla)
    try:
        assert len(saved) >= 3                # PML4E, PDPTE, PDE (2 MiB page) at least
        before = m.vm.mem.digest()
        m.debugger(f"x/gx {gla:x},4")
        m.debugger(f"x/i {gla:x}")
        m.debugger(f"write/b {gla:x} {m.vm.read_guest(m.vcpus[0], gla, 1)[0]:x}")
        assert m.vm.mem.digest() == before
    finally:
        _restore(m, saved)


def test_a_failing_debugger_read_sets_no_accessed_bit_either(machine):
    m = machine
    cpu = m.vm.vcpus[0].cpu
    # The first unmapped 2 MiB region after the kernel's: its walk ends below the top level.
    base = m.symbols.address("cpu_idle_acpi") & ~0x1F_FFFF
    gla = next(a for a in range(base, base + (1 << 33), 1 << 21) if _unmapped(m, a))
    saved = _clear_accessed(m, gla)
    try:
        assert saved                          # upper levels were present
        before, cr2 = m.vm.mem.digest(), cpu.cr2
        out = m.debugger(f"x/gx {gla:x}")
        assert out.startswith("*** error reading from address")
        assert m.vm.mem.digest() == before
        assert cpu.cr2 == cr2                 # no #PF state left in the vCPU either
    finally:
        _restore(m, saved)


def _unmapped(m: Machine, gla: int) -> bool:
    from nitdbg.x86.faults import Fault
    try:
        walk(m.vm.vcpus[0].cpu, gla, 0x100, m.vm.mem.read)
    except Fault:
        return True
    return False


def test_backtrace_count_is_bounded(machine):
    out = machine.debugger("bt,7fffffffffffffff")
    assert out.startswith("Tracing pid")
    assert len(out.splitlines()) <= 1026
