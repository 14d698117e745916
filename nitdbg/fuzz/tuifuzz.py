"""The TUI's inputs below the Textual app: the machine worker's requests (nitdbg/tui/
worker.py), as the screens send them: lines typed at host$, guest# and db>, keys (step,
continue, pause, NMI, host step, vCPU select, force reset), scenario and policy names, the
paths given to record and open-for-replay, replay steps, and kinds no screen sends.

Driven as the worker's own loop does, without a thread or an app: each request through
`_handle`, then a snapshot; a run that a request starts goes a few chunks, then is paused.
Judged: nothing but MachineError and SessionError leaves `_handle` (the loop would print
anything else as "internal error"), and no vCPU internal error."""

from __future__ import annotations

from pathlib import Path

from hypothesis import strategies as st

from ..machine import MachineError
from .targets import (
    DDB_WORDS,
    SESSIONS,
    Outcome,
    Target,
    _escape,
    _line,
    host_line,
    in_ddb,
    internal_errors,
)

CHUNKS = 3          # run chunks a request that starts a run may take before the pause


def _requests(tmp: Path) -> st.SearchStrategy:
    from ..tui.messages import Request
    session = str(min(SESSIONS.glob("*.nitrec"), key=lambda p: p.stat().st_size))
    # record writes: only into the scratch folder (never over a session of the repository)
    mine = [str(tmp), str(tmp / "missing" / "x.nitrec"), str(tmp / "junk.nitrec"), "\0",
            str(tmp / "r.nitrec"), str(tmp / "junk.nitrec" / "x")]
    paths = st.sampled_from(mine)
    opened = st.sampled_from([*mine, "/dev/null", session, "", "/nonexistent.nitrec"])
    text = st.text(max_size=12)
    kinds = st.one_of(
        st.builds(Request, st.just("ddb"), _line(DDB_WORDS)),
        st.builds(Request, st.just("host"), host_line()),
        st.builds(Request, st.just("guest"), st.sampled_from(["ls", "sysctl kern", ""]) | text),
        st.builds(Request, st.sampled_from(["step", "continue", "pause", "nmi", "broadcast",
                                            "audit", "exits", "refresh", "force_reset"])),
        st.builds(Request, st.just("host_step"), st.sampled_from(["", "insn", "exit", "x"])),
        st.builds(Request, st.just("select"), num=st.integers(-3, 1 << 40)),
        st.builds(Request, st.just("scenario"), st.sampled_from(["nosuch", " ", "../x"]) | text),
        st.builds(Request, st.just("policy"), st.sampled_from(["nope", ""]) | text),
        st.builds(Request, st.just("record"), paths),
        st.builds(Request, st.just("replay_open"), opened),
        st.builds(Request, st.just("replay_step"), num=st.integers(-5, 5)),
        st.builds(Request, text, text, st.integers(-2, 2)),
    )
    return st.tuples(st.booleans(), st.lists(kinds, min_size=1, max_size=5))


def tui_target(tmpdir: Path) -> Target:
    from ..tui.worker import MachineWorker
    from .targets import _booted
    tmpdir.mkdir(parents=True, exist_ok=True)
    (tmpdir / "junk.nitrec").write_bytes(b'{"type": "header"}\n\xff\n')
    bases = {False: _booted(), True: in_ddb()}

    def run(case: tuple[bool, list]) -> Outcome:
        ddb, reqs = case
        posted: list = []
        w = MachineWorker({}, posted.append, boot=False)
        w.m = bases[ddb].clone()
        w._new_builder()
        w._mark_stop()
        w.state.booted = True
        try:
            for r in reqs:
                _one(w, r)
            if w.recorder is not None:
                w.recorder.close()
        except Exception as e:  # noqa: BLE001 - the fuzzer's outermost layer counts escapes
            return _escape(e)
        said = [t for msg in posted for t, _ in
                (getattr(msg, "outputs", ()) or ((getattr(msg, "text", ""), ""),))]
        bad = [t for t in said + [t for t, _ in w._said] if "internal error" in t]
        if bad:
            return Outcome("escape", bad[0].strip()[:300])
        errs = internal_errors(w.m) if w.m is not None else []
        return Outcome("internal", errs[0]) if errs else Outcome()

    return Target("tui", _requests(tmpdir), run)


def _one(w, r) -> None:  # noqa: ANN001 - a MachineWorker and a Request
    """What the worker's loop does with one request (worker.py, _loop)."""
    if r.kind == "quit":
        return
    if r.kind == "pause":
        w.interrupt.set()
    try:
        w._handle(r)
    except MachineError:
        pass
    except Exception as e:
        if type(e).__name__ != "SessionError":
            raise
    w.interrupt.clear()
    for _ in range(CHUNKS):
        if not w.state.running:
            break
        w._run_chunk()
    w.state.running = False
    w._snap(True)

