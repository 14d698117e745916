"""^C stops a long run (a `sleep 3600`) at a scheduling step, the console goes on, and a
recording replays the same stop."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time

from nitdbg.machine import Machine
from nitdbg.session import replay, start_recording


def _interrupt_after(m: Machine, calls: int) -> None:
    """Press ^C (deterministically) once vCPU 0 has been run `calls` times."""
    v = m.vm.vcpus[0]
    run, n = v.run, [0]

    def counted(q):  # noqa: ANN001, ANN202
        n[0] += 1
        if n[0] == calls:
            m.request_interrupt()
        return run(q)
    v.run = counted


def test_an_interrupted_sleep_stops_early_and_says_how_far_it_got():
    m = Machine(vcpus=1)
    m.boot_to_prompt()
    t = m.now()
    _interrupt_after(m, 50)
    out = m.host("sleep 3600")
    mo = re.fullmatch(r"sleep: interrupted \(\^C\) after (\d+\.\d{3}) s of virtual time\n", out)
    assert mo and 0 < float(mo.group(1)) < 3600, out
    # the idle guest wakes twice a second: 50 runs of vCPU 0 are about 25 s of virtual time
    assert 0 < m.now() - t < 60_000_000_000
    assert m.host("sleep 0.01") == ""             # the next command is not interrupted


def test_a_recording_with_an_interrupt_replays_the_same_stop(tmp_path):
    path = tmp_path / "int.nitrec"
    rec = start_recording(path, vcpus=1, sync=False)
    rec.boot_to_prompt()
    _interrupt_after(rec.machine, 120)
    assert rec.host("sleep 3600").startswith("sleep: interrupted")
    rec.type_line("sysctl kern.ticks")
    rec.close()
    cks = [json.loads(ln) for ln in path.read_text().splitlines()]
    assert [c["interrupted_at"] for c in cks if "interrupted_at" in c] != []
    res = replay(path, verify=True)
    assert res.ok, res.divergence


def test_ctrl_c_in_the_console_stops_the_sleep_and_the_next_line_runs():
    p = subprocess.Popen([sys.executable, "-m", "nitdbg", "console", "--no-record",
                          "--vcpus", "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, bufsize=1)
    try:
        p.stdin.write("sleep 3600\n@guest sysctl kern.ostype\n")
        p.stdin.close()
        seen = ""
        deadline = time.monotonic() + 120
        fd = p.stdout.fileno()
        while "host$ sleep 3600\n" not in seen and time.monotonic() < deadline:
            if select.select([fd], [], [], 1)[0]:
                seen += os.read(fd, 4096).decode()
        time.sleep(0.5)                            # let the sleep get going
        os.kill(p.pid, signal.SIGINT)
        p.wait(timeout=120)
        rest, err = p.stdout.read(), p.stderr.read()
    finally:
        p.kill()
    assert "sleep: interrupted (^C) after" in rest, seen + rest + err
    assert "kern.ostype: FreeBSD" in rest and "Traceback" not in rest + err
    assert p.returncode == 0
