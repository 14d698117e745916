"""The i386 guest on nitdbg: the seed's tsnmi test (task-gate NMI, debug.tsnmi, the
speculative-unblock stat), the ordinary interrupt-gate NMI, and the same console transcript
as under QEMU."""

from __future__ import annotations

import pytest
from qemu_serial import find_qemu, run_script

from nitdbg.machine import I386_KERNEL, Machine

STEPS = [("serial", "kldload tsnmi"), ("monitor", "nmi"), ("serial", "sysctl debug.tsnmi"),
         ("monitor", "nmi"), ("serial", "sysctl debug.tsnmi")]


def nitdbg_transcript(steps=STEPS) -> tuple[str, Machine]:
    m = Machine(kernel=I386_KERNEL, vcpus=1)
    m.boot_to_prompt()
    for kind, text in steps:
        if kind == "serial":
            m.type_line(text)
        else:
            m.host("bhyvectl --vm=vm2 --cpu=0 --assert-lapic-lvt=1")
            m.settle()
    return m.console_output().decode().replace("\r\n", "\n"), m


def stat(m: Machine, desc: str) -> int:
    return int(m.host(f'bhyvectl --vm=vm2 --get-stats | grep "{desc}"').split("\t")[-1])


def test_tsnmi_counts_nmis_through_the_task_gate_and_unblocks_speculatively():
    text, m = nitdbg_transcript()
    assert "debug.tsnmi: 1\n" in text and "debug.tsnmi: 2\n" in text
    assert stat(m, "Number of times vNMI unblocked speculatively") == 2
    assert stat(m, "vNMI unblocked precisely") == 0
    ktr = "\n".join(m.vm.ktr.messages())
    assert "vNMIs unblocked speculatively" in ktr and "iret tracing enabled" not in ktr


def test_nmi_through_the_interrupt_gate_is_unblocked_precisely():
    text, m = nitdbg_transcript([("monitor", "nmi"), ("serial", "sysctl debug.nmi_count")])
    assert "debug.nmi_count: 1\n" in text
    assert stat(m, "vNMI unblocked precisely") == 1
    assert stat(m, "Number of times vNMI unblocked speculatively") == 0


@pytest.mark.skipif(find_qemu() is None, reason="QEMU is not installed")
def test_console_transcript_matches_qemu():
    ours, _ = nitdbg_transcript()
    theirs = run_script(I386_KERNEL, STEPS, timeout=15)
    assert ours == theirs
