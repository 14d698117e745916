"""`bt` over a frame chain that loops stops at its frame limit and says it was cut."""

from __future__ import annotations

from nitdbg.ddb.trace import MAX_FRAMES
from nitdbg.machine import Machine


def test_a_looping_frame_chain_is_cut_and_bt_says_so():
    m = Machine(vcpus=1)
    m.boot_to_prompt()
    m.type_line("sysctl machdep.kdb_on_nmi=1")
    m.host("bhyvectl --vm=vm2 --assert-lapic-lvt=1 --cpu=0")
    m.enter_debugger(m.settle())
    frame = m.ddb.frame()["tf_rbp"]
    m.debugger(f"write/g {frame:#x} {frame:#x}")          # the saved %rbp points at itself
    out = m.debugger("bt").splitlines()
    assert out[-1] == (f"--- stopped after {MAX_FRAMES} frames: the frame chain goes on "
                       "(it may loop) ---")
    assert len(out) == 1 + MAX_FRAMES + 1
    short = m.debugger("bt,5").splitlines()               # a count the user asked for
    assert len(short) == 1 + 5 and "stopped after" not in short[-1]
