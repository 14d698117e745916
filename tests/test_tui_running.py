"""While the guest runs, the worker sends the screen a progress snapshot only once the
screen applied the previous one (none while `p` waits), and the collector's automatic full
passes are put off until the idle pass after the stop."""

from __future__ import annotations

import gc
import threading
import time

from nitdbg.tui import worker as worker_mod
from nitdbg.tui.messages import MachineUpdate, Request
from nitdbg.tui.worker import MachineWorker


def _booted(posts: list) -> tuple[MachineWorker, threading.Thread]:
    w = MachineWorker({}, posts.append)
    t = threading.Thread(target=w.loop, daemon=True)
    t.start()
    for _ in range(3000):
        if w.idle:
            break
        time.sleep(0.01)
    assert w.idle
    return w, t


def test_progress_snapshot_waits_until_the_screen_applied_the_previous_one(monkeypatch):
    monkeypatch.setattr(worker_mod, "PROGRESS_STALE_S", 3600.0)
    posts: list = []
    w, t = _booted(posts)
    try:
        w.submit(Request("continue"))
        progress = []
        for _ in range(1000):
            progress = [p for p in posts
                        if isinstance(p, MachineUpdate) and not p.snapshot.is_stop]
            if progress:
                break
            time.sleep(0.01)
        assert len(progress) == 1
        time.sleep(0.3)             # several chunks: none applied, so no second snapshot
        progress = [p for p in posts
                    if isinstance(p, MachineUpdate) and not p.snapshot.is_stop]
        assert len(progress) == 1
        progress[0].applied = True  # the screen drew it: the next chunk sends another
        for _ in range(1000):
            if sum(isinstance(p, MachineUpdate) and not p.snapshot.is_stop
                   for p in posts) > 1:
                break
            time.sleep(0.01)
        assert sum(isinstance(p, MachineUpdate) and not p.snapshot.is_stop
                   for p in posts) > 1
    finally:
        w.submit(Request("quit"))
        t.join(10)


def test_no_progress_snapshot_while_a_pause_waits():
    w = MachineWorker({}, lambda msg: None)
    assert w._progress_due()
    w.interrupt.set()
    assert not w._progress_due()


def test_full_passes_put_off_while_running_and_back_after_the_idle_pass():
    before = gc.get_threshold()
    w = MachineWorker({}, lambda msg: None)
    try:
        w._gc_for(True)
        assert gc.get_threshold() == (before[0], before[1], worker_mod.GC_RUNNING_THRESHOLD2)
        w._gc_for(False)               # stopped: still off until the idle pass is done
        assert gc.get_threshold()[2] == worker_mod.GC_RUNNING_THRESHOLD2
        w._idle_gc()
        assert gc.get_threshold() == before
    finally:
        w._gc_thresholds_back()
        gc.unfreeze()
