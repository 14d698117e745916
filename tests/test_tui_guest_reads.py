"""The snapshot's guest reads catch what a guest read raises, and nothing else: the page
walk's #PF/#GP (x86 Fault), a guest-physical address the host view does not back
(ValueError), an unreadable trapframe (DdbError); any other exception is a bug and is
not swallowed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from nitdbg.ddb.errors import DdbError
from nitdbg.tui import snapshot
from nitdbg.x86.faults import Fault

PAGE = 0x1000


def _memory(bad_from: int, exc: Exception):  # noqa: ANN202
    """read_guest over a guest whose pages from `bad_from` on cannot be read."""
    def read_guest(m, vcpu, addr, n):  # noqa: ANN001, ANN202
        if addr + n > bad_from:
            raise exc
        return bytes((addr + i) & 0xFF for i in range(n))
    return read_guest


@pytest.mark.parametrize("exc", [Fault(14, 0), Fault(13, 0), ValueError("not guest memory")],
                         ids=["#PF", "#GP", "not-guest-memory"])
def test_a_code_read_keeps_the_pages_before_the_first_unreadable_one(monkeypatch, exc):
    monkeypatch.setattr(snapshot, "read_guest", _memory(2 * PAGE, exc))
    got = snapshot._read_code(None, 0, 2 * PAGE - 0x30, 0x100)
    assert got == bytes((2 * PAGE - 0x30 + i) & 0xFF for i in range(0x30))
    assert snapshot._read_code(None, 0, 2 * PAGE, 0x10) == b""


def test_a_code_read_does_not_swallow_a_bug(monkeypatch):
    monkeypatch.setattr(snapshot, "read_guest", _memory(0, KeyError("a bug")))
    with pytest.raises(KeyError):
        snapshot._read_code(None, 0, 0, 0x10)


def _machine(frame):  # noqa: ANN001, ANN202 - ddb.frame() behaviour
    return SimpleNamespace(ddb=SimpleNamespace(frame=frame))


def _vcpu_state():  # noqa: ANN202
    regs = {n: i for i, n in enumerate(snapshot.GPR_NAMES)}
    return SimpleNamespace(id=0, regs=regs | {"rip": 0x1234, "rflags": 0x202})


def test_an_unreadable_trapframe_shows_the_vcpus_own_registers():
    def frame() -> dict:
        raise DdbError("*** error reading from address dead000 ***")
    regs, src, rflags, fsrc, now = snapshot._vcpu_regs(_machine(frame), _vcpu_state(), True)
    assert src == "vCPU" and fsrc == "vCPU" and regs["rip"] == 0x1234 and rflags == 0x202
    assert list(regs) == [*snapshot.GPR_NAMES, "rip"]          # the order the pane shows


def test_a_trapframe_bug_is_not_taken_for_an_unreadable_frame():
    def frame() -> dict:
        raise TypeError("a bug")
    with pytest.raises(TypeError):
        snapshot._vcpu_regs(_machine(frame), _vcpu_state(), True)
