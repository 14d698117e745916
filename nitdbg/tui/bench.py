"""TUI figures for `nitdbg bench`. A front end: it reads the wall clock to measure.

How they are taken (`bench_figures()`):

* The app runs in a fresh process, `nitdbg --no-record` exactly as a user starts it (through
  `nitdbg.cli.main`, real Linux driver), on a pseudo-terminal of the given size. This
  process plays the terminal: it reads everything the app writes and types the keys.
* `tui_start_to_first_paint_s`: from just before the child process is spawned (so Python's
  own start-up and every import count) to the moment the first frame's bytes ("booting the
  guest…" in the panes) arrive on the terminal. `tui_start_to_booted_s`: to the paint of
  the booted guest's first snapshot (the machine boots on the worker after the first paint).
* Then, as a user: F3, `sysctl machdep.kdb_on_nmi=1`, Esc, `n` (ddb stops on the NMI).
* Key figures: from writing the key's bytes to the terminal to the moment the app has
  painted the result. The app reports its paints through `NitdbgApp.paint_probe` (set only
  here, in the child): the main screen calls it after applying a snapshot or a selection;
  the probe waits until the screen has nothing left to draw (two clean refreshes in a row),
  then puts a mark on the driver's output queue, and reports the moment the last frame's
  bytes before that mark were flushed to the terminal (not the mark's own flush, which
  comes a frame or two after the repaint). Both processes read the same clock
  (`time.perf_counter`, CLOCK_MONOTONIC).
  - `tui_step_key_to_repaint_ms`: `s` in ddb: key parsing, the worker's ddb step in the
    machine, the snapshot, and the repaint of every pane that changed (median of N).
  - `tui_ui_key_to_repaint_ms`: `v` (next vCPU): a repaint from the snapshot at hand, the
    UI-only path (median of N); the worker's follow-up snapshot is waited for before the
    next key but not counted.
  - `tui_step_key_to_repaint_p90_ms`: the 90th percentile of the same.
  - `tui_running_updates_per_s`: `c` in ddb, then the progress paints of the running guest
    over RUNNING_S; `tui_pause_key_to_stopped_ms`: then `p` to the paint of the stopped
    guest.
  - For the split of the `s` figure, measured in this process on a machine of its own
    stopped the same way: `tui_machine_step_ms` (`machine.debugger("s")`) and
    `tui_snapshot_ms` (building the snapshot after it), medians of N.
  Every panel is visible at the default size (160x45, the wide layout).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time

BOOTING = b"booting the guest"
RUNNING_S = 2.0          # how long the running guest's progress paints are counted
PROBE_TIMEOUT_S = 2.0    # a paint not drawn by then is reported as it stands


async def wait_idle(app, pilot, timeout: float = 30.0) -> None:  # noqa: ANN001
    """Until the worker has done everything asked of it and the screen shows the result."""
    scr = app.main_screen
    for _ in range(int(timeout / 0.01)):
        snap = scr.snap
        if app.machine.idle and snap is not None and snap.seq == app.machine.state.completed:
            await pilot.pause()
            return
        if app.machine.state.error:
            raise RuntimeError(app.machine.state.error)
        await pilot.pause(0.01)
    raise TimeoutError("the machine worker did not become idle")


def screen_rows(app) -> list:  # noqa: ANN001
    """The rows of the screen on top as the terminal receives them (Strips: `.text` and the
    styled segments), for tests that check what is on the screen, not in a widget."""
    return app.screen._compositor.render_strips()


# ---------------------------------------------------------------------- the terminal side
class _Terminal:
    """A child `nitdbg --no-record` on a pty, and what it reports."""

    def __init__(self, size: tuple[int, int]) -> None:
        import fcntl
        import struct
        import subprocess
        import termios
        import threading
        cols, rows = size
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        rfd, wfd = os.pipe()
        env = dict(os.environ, TERM="xterm-256color", COLUMNS=str(cols), LINES=str(rows))
        env.pop("TEXTUAL", None)           # no devtools
        self.first_bytes: float | None = None
        self.t_spawn = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nitdbg.tui.bench", "--child", str(wfd), "--no-record"],
            stdin=slave, stdout=slave, stderr=slave, pass_fds=(wfd,),
            start_new_session=True, env=env, close_fds=True)
        os.close(slave)
        os.close(wfd)
        self.reports = rfd
        self._pending = b""
        self.tail = b""
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        """Read what the app writes (a terminal that stops reading would block it)."""
        seen = b""
        while True:
            try:
                data = os.read(self.master, 1 << 16)
            except OSError:
                return
            if not data:
                return
            if self.first_bytes is None:
                seen = (seen + data)[-4096:]
                if BOOTING in seen:
                    self.first_bytes = time.perf_counter()
            self.tail = (self.tail + data)[-8192:]

    def write(self, data: bytes) -> float:
        t = time.perf_counter()
        os.write(self.master, data)
        return t

    def report(self, timeout: float = 30.0) -> dict:
        """The next paint the app reports: {kind, arg, seq, idle, surface, t}."""
        import select
        while b"\n" not in self._pending:      # unbuffered: select() sees every byte
            if not select.select([self.reports], [], [], timeout)[0]:
                raise TimeoutError(f"the app reported no paint in {timeout}s; "
                                   f"screen tail: {self.tail[-300:]!r}")
            data = os.read(self.reports, 4096)
            if not data:
                raise RuntimeError(f"the app ended; screen tail: {self.tail[-300:]!r}")
            self._pending += data
        line, _, self._pending = self._pending.partition(b"\n")
        kind, arg, seq, idle, surface, t = line.decode().split()
        return {"kind": kind, "arg": arg, "seq": int(seq), "idle": idle == "1",
                "surface": surface, "t": float(t)}

    def until(self, pred, timeout: float = 30.0) -> dict:  # noqa: ANN001
        end = time.perf_counter() + timeout
        while True:
            r = self.report(max(0.1, end - time.perf_counter()))
            if pred(r):
                return r

    def close(self) -> None:
        try:
            self.write(b"\x11")            # ctrl+q
            self.proc.wait(timeout=5)
        except Exception:  # noqa: BLE001 - it must go, one way or the other
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
        os.close(self.reports)


def _measure(keys: int, size: tuple[int, int]) -> dict[str, float]:
    term = _Terminal(size)
    try:
        term.until(lambda r: r["kind"] == "first")
        booted = term.until(lambda r: r["kind"] == "update" and r["idle"], timeout=60)
        if term.first_bytes is None:
            raise RuntimeError("the first frame (\"booting the guest\") never reached the "
                               f"terminal; screen tail: {term.tail[-300:]!r}")
        out = {"tui_start_to_first_paint_s": round(term.first_bytes - term.t_spawn, 3),
               "tui_start_to_booted_s": round(booted["t"] - term.t_spawn, 3)}
        seq = booted["seq"]

        def settle(after: int) -> dict:
            return term.until(lambda r: r["kind"] == "update" and r["idle"]
                              and r["seq"] > after)
        # the seed's first test, typed: kdb_on_nmi=1 on the guest console, then an NMI
        term.write(b"\x1bOR")                              # F3: guest#
        time.sleep(0.2)
        term.write(b"sysctl machdep.kdb_on_nmi=1\r")
        seq = settle(seq)["seq"]
        term.write(b"\x1b")                                # leave the command line
        time.sleep(0.3)
        term.write(b"n")
        r = settle(seq)
        seq = r["seq"]
        if r["surface"] != "ddb":
            raise RuntimeError(f"no ddb stop after the NMI (surface {r['surface']})")
        step = []
        for _ in range(keys):
            t = term.write(b"s")
            r = settle(seq)
            seq = r["seq"]
            step.append(r["t"] - t)
        ui = []
        for _ in range(keys):
            prev = seq
            t = term.write(b"v")
            painted = None
            while True:            # the select paint, and the worker's snapshot after it
                r = term.report()
                if r["kind"] == "select":
                    painted = r["t"]
                elif r["kind"] == "update" and r["idle"] and r["seq"] > seq:
                    seq = r["seq"]
                if painted is not None and seq > prev:
                    break
            ui.append(painted - t)
        # running: `c` in ddb, the progress paints for RUNNING_S, then `p`
        t = term.write(b"c")
        running = []
        while True:
            r = term.report()
            if r["kind"] == "update" and not r["idle"]:
                running.append(r["t"])
            if running and r["t"] - running[0] >= RUNNING_S:
                break
            if r["t"] - t > 30:
                raise RuntimeError("the guest did not run after c")
        t = term.write(b"p")
        r = term.until(lambda r: r["kind"] == "update" and r["idle"] and r["t"] > t)
        span = running[-1] - running[0]
        out.update({
            "tui_step_key_to_repaint_ms": round(statistics.median(step) * 1000, 2),
            "tui_step_key_to_repaint_p90_ms": round(
                statistics.quantiles(step, n=10)[-1] * 1000, 2),
            "tui_ui_key_to_repaint_ms": round(statistics.median(ui) * 1000, 2),
            "tui_running_updates_per_s": round((len(running) - 1) / span, 1) if span else 0.0,
            "tui_pause_key_to_stopped_ms": round((r["t"] - t) * 1000, 1),
            "tui_keys_measured": float(keys),
        })
        return out
    finally:
        term.close()


def _split(keys: int) -> dict[str, float]:
    """The machine's and the snapshot's share of an `s`, on a machine in this process."""
    from ..ddb.disasm import Disassembler
    from ..machine import Machine
    from .snapshot import SnapshotBuilder
    m = Machine()
    m.boot_to_prompt()
    m.type_line("sysctl machdep.kdb_on_nmi=1")
    m.host(f"bhyvectl --vm={m.summary().name} --cpu=0 --assert-lapic-lvt=1")
    ev = m.settle()
    m.enter_debugger(ev)
    b = SnapshotBuilder(Disassembler(m.symbols))
    since = dict(enumerate(m.summary().icounts))
    b.build(m, 0, since, 0, True, False)
    step, snap = [], []
    for i in range(keys):
        t0 = time.perf_counter()
        m.debugger("s")
        t1 = time.perf_counter()
        b.build(m, 0, since, i + 1, True, False)
        since = dict(enumerate(m.summary().icounts))     # as the worker: from this stop
        step.append(t1 - t0)
        snap.append(time.perf_counter() - t1)
    return {"tui_machine_step_ms": round(statistics.median(step) * 1000, 2),
            "tui_snapshot_ms": round(statistics.median(snap) * 1000, 2)}


def bench_figures(keys: int = 15, size: tuple[int, int] = (160, 45)) -> dict[str, float]:
    """Wide layout (every pane visible); see the module docstring for how."""
    return {**_measure(keys, size), **_split(keys)}


# ---------------------------------------------------------------------- the app side
class _Mark(str):
    """Put on the driver's output queue behind a frame: written as nothing, it tells the
    clock below that every byte before it has gone to the terminal."""


class _FlushClock:
    """The terminal file the app's driver writes to (its writer thread), passing everything
    through. A `_Mark` written to it is answered, at the flush that follows it, by calling
    the mark's callback with the moment the last bytes before it reached the pty: the end
    of the last frame drawn before the mark (the mark itself is queued a frame or two later,
    once the screen was seen clean)."""

    def __init__(self, file) -> None:  # noqa: ANN001 - a text file
        self._file = file
        self._waiting: list = []
        self._dirty = False
        self.last_bytes = 0.0        # when bytes last went out

    def write(self, text: str) -> int:
        if isinstance(text, _Mark):
            self._waiting.append(text)
            return 0
        if text:
            self._dirty = True
        return self._file.write(text)

    def flush(self) -> None:
        self._file.flush()
        t = time.perf_counter()
        if self._dirty:
            self.last_bytes, self._dirty = t, False
        waiting, self._waiting = self._waiting, []
        for mark in waiting:
            mark.done(self.last_bytes)          # type: ignore[attr-defined]

    def __getattr__(self, name: str):  # noqa: ANN204 - fileno, isatty, encoding, ...
        return getattr(self._file, name)


def painted(app) -> bool:  # noqa: ANN001
    """Nothing is left to draw: no widget waits to be repainted or laid out, the screen has
    no dirty region and no message (a widget's Update) waiting, no batch is open. Textual
    keeps these as private state; this is the benchmark's reading of it. The main screen
    must be the one on top (pushed and current): only that one is drawn."""
    scr = app.screen
    if scr is not app.main_screen or not scr.is_current:
        return False
    if (app._batch_count or scr._dirty_widgets or scr._layout_required
            or scr._repaint_required or scr._scroll_required or scr._recompose_required
            or not scr._message_queue.empty()):
        return False
    return not any(w._repaint_required or w._layout_required or not w._message_queue.empty()
                   for w in scr.walk_children(with_self=False))


def _child(fd: int, argv: list[str]) -> int:
    """`nitdbg ARGV` as a user runs it, reporting each paint on file descriptor `fd`: when
    the screen has applied something (`paint_probe`), wait until it has been drawn
    (`painted`) and the frame's bytes have been flushed to the terminal, then report that
    moment."""
    out = os.fdopen(fd, "w", buffering=1)
    clock = _FlushClock(sys.__stderr__)
    sys.__stderr__ = clock            # the Linux driver's output file (read at its start)

    def probe(app, kind: str, arg: object = "-") -> None:  # noqa: ANN001
        snap = app.main_screen.snap
        line = (f"{kind} {arg} {snap.seq if snap else -1} {int(app.machine.idle)} "
                f"{snap.surface if snap else '-'}")
        clean = [0]
        t_applied = time.perf_counter()      # a paint that drew nothing new ends here
        loop = asyncio.get_running_loop()

        def check() -> None:
            # clean twice in a row: the callbacks queued beside this one (a scroll after
            # the refresh) have run too and drawn nothing more. Between two looks the
            # event loop runs the other tasks (each widget is one): a callback queued
            # straight back would keep the screen's task busy and the widgets waiting,
            # and no frame could be drawn while the probe waits for it
            clean[0] = clean[0] + 1 if painted(app) else 0
            if clean[0] < 2 and time.perf_counter() - t_applied < PROBE_TIMEOUT_S:
                loop.call_soon(app.screen.call_after_refresh, check)
                return
            mark = _Mark("")
            mark.done = lambda t: out.write(                     # type: ignore[attr-defined]
                f"{line} {max(t, t_applied)!r}\n")
            app._driver.write(mark)        # behind the frame just drawn

        app.screen.call_after_refresh(check)

    from .app import NitdbgApp
    NitdbgApp.paint_probe = staticmethod(probe)
    from ..cli import main
    return main(argv)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.exit(_child(int(sys.argv[2]), sys.argv[3:]))
    # python3 -m nitdbg.tui.bench [COLSxROWS]: the TUI figures alone, at that size
    cols, _, rows = (sys.argv[1] if len(sys.argv) > 1 else "160x45").partition("x")
    print(bench_figures(size=(int(cols), int(rows))))
