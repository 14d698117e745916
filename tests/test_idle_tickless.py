"""Tickless idle in the amd64 firmware (firmware/amd64/clock.c), as FreeBSD's event timers in
one-shot mode do it: an idle CPU halts until its next event, skipping at most hz/2 - 1 ticks
(kern_clocksource.c getnextcpuevent), the ticks slept through are accounted to kern.ticks on
wakeup, the busy CPU keeps its hz tick, and console input wakes the idle CPU by interrupt."""

from __future__ import annotations

import re

import pytest

from nitdbg.machine import Machine

HZ = 100
TICK_NS = 1_000_000_000 // HZ


def _ticks(m: Machine) -> int:
    out = m.type_line("sysctl kern.ticks")
    mo = re.search(r"kern\.ticks: (\d+)", out)
    assert mo, out
    return int(mo.group(1))


def _fired(m: Machine) -> list[int]:
    return [vl.counters["timer_fired"] for vl in m.vm.vlapics]


@pytest.fixture
def m2() -> Machine:
    m = Machine(vcpus=2)
    m.boot_to_prompt()
    return m


def test_an_idle_cpu_skips_at_most_hz_over_2_minus_1_ticks_so_every_vcpu_wakes_twice_a_second(m2):
    before = _fired(m2)
    m2.host("sleep 10")
    woke = [a - b for a, b in zip(_fired(m2), before, strict=True)]
    # 10 s at two wake-ups a second, each vCPU (not 1000 ticks each)
    assert all(19 <= w <= 21 for w in woke), woke


def test_kern_ticks_after_an_idle_period_is_the_virtual_time_in_ticks(m2):
    m2.host("sleep 120")
    ticks = _ticks(m2)
    assert abs(ticks - m2.now() // TICK_NS) <= 1, (ticks, m2.now())


def test_hlt_jumps_to_the_next_deadline_so_the_idle_hour_retires_few_instructions():
    m = Machine(vcpus=1)
    m.boot_to_prompt()
    n = m.vcpus[0].cpu.icount
    m.host("sleep 3600")
    # 7200 wake-ups of a few hundred instructions, not 360000 ticks
    assert m.vcpus[0].cpu.icount - n < 7200 * 400
    assert abs(_ticks(m) - m.now() // TICK_NS) <= 1


def test_a_busy_cpu_keeps_its_hz_tick_and_stops_on_ctrl_c(m2):
    m2.console_input(b"while [ 1 ]; do : done\r")
    m2.run(max_insns=200_000)
    assert m2.vcpus[0].cpu.cpl == 3                      # the loop runs in user mode
    t0, f0 = m2.now(), _fired(m2)[0]
    m2.run(until_ns=m2.now() + 200_000_000)
    assert 19 <= _fired(m2)[0] - f0 <= 21                # 100 Hz while busy
    assert m2.now() - t0 >= 200_000_000
    m2.console_input(b"\x03")
    assert m2.run_until_output(b"^C\r\n# ", max_insns=2_000_000)   # the shell's SIGINT handler
    assert m2.vcpus[0].cpu.cpl == 0 or m2.vcpus[0].halted


def test_idletick_1_keeps_the_tick_while_idle_as_in_freebsd(m2):
    assert "kern.eventtimer.idletick: 0 -> 1" in m2.type_line("sysctl kern.eventtimer.idletick=1")
    f0 = _fired(m2)
    m2.host("sleep 1")
    woke = [a - b for a, b in zip(_fired(m2), f0, strict=True)]
    assert all(99 <= w <= 101 for w in woke), woke
    assert abs(_ticks(m2) - m2.now() // TICK_NS) <= 1


def test_typed_input_wakes_the_idle_guest_by_its_interrupt_not_at_a_tick(m2):
    m2.host("sleep 0.3")
    t = m2.now()
    out = m2.type_line("sysctl hw.ncpu")
    assert "hw.ncpu: 2" in out
    assert m2.now() - t < TICK_NS                        # well before the next wake-up


def test_the_i386_guest_is_tickless_in_idle_too():
    from nitdbg.machine import I386_KERNEL
    m = Machine(kernel=I386_KERNEL, vcpus=1)
    m.boot_to_prompt()
    f0 = _fired(m)[0]
    m.host("sleep 10")
    assert 19 <= _fired(m)[0] - f0 <= 21
    assert abs(_ticks(m) - m.now() // TICK_NS) <= 1


@pytest.mark.parametrize("scenario", ["pending-interrupt", "tsnmi-task-gate"])
def test_the_idle_clock_branches_on_no_time_so_the_run_is_the_same_as_hardware(capsys,
                                                                             scenario):
    # The hardware reference keeps its own clock (no exit costs, no delay_usecs), so guest
    # code that branched on the TSC would differ from it; the clock code must not.
    import json

    from nitdbg.cli import main
    assert main(["compare", "--scenario", scenario, "--policy", "iret-tracing", "--json",
                 "--jobs", "1"]) == 0
    row = json.loads(capsys.readouterr().out)["rows"][0]
    assert row["same_as_hardware"], row["differences"]
