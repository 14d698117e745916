"""`nitdbg replay FILE [--verify] [--show]`: a front end (it measures wall time for its
report; nothing below it reads the clock)."""

from __future__ import annotations

import argparse
import sys
import time

from .format import SessionError
from .replay import replay


def main_replay(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nitdbg replay",
                                description="Replay a recorded .nitrec session.")
    p.add_argument("file", help="the .nitrec session")
    p.add_argument("--verify", action="store_true",
                   help="compare every checkpoint; report OK or the first divergence")
    p.add_argument("--show", action="store_true", help="print the inputs and their output")
    p.add_argument("--step", action="store_true",
                   help="with --show on a terminal: wait for Enter after each input (q quits)")
    p.add_argument("--rerecord", metavar="OUT", help="record the replay into OUT")
    a = p.parse_args(argv)
    show = sys.stdout.write if a.show else None
    if a.show and a.step and sys.stdin.isatty():
        show = _stepper
    t0 = time.perf_counter()
    try:
        res = replay(a.file, verify=a.verify, show=show, record_to=a.rerecord)
    except SessionError as e:
        print(f"nitdbg replay: {e}", file=sys.stderr)
        return 1
    except _Quit:
        print("replay stopped", file=sys.stderr)
        return 0
    wall = time.perf_counter() - t0
    for note in res.notes:
        print(f"note: {note}", file=sys.stderr)
    rate = res.retired / wall if wall > 0 else 0.0
    stats = (f"{res.inputs} inputs, {res.checkpoints} checkpoints, {res.retired} instructions "
             f"in {wall:.2f} s ({rate / 1e6:.2f} M instr/s)")
    if not a.verify:
        print(f"replayed {a.file}: {stats}")
        return 0
    if res.ok:
        print(f"OK {a.file}: {stats}")
        return 0
    print(f"DIVERGED {a.file}: {res.divergence}")
    return 1


class _Quit(Exception):  # noqa: N818 - control flow for "q" at the step prompt
    pass


def _stepper(text: str) -> None:
    """--step: print one input and its output, then wait for Enter (q to stop)."""
    sys.stdout.write(text)
    sys.stdout.flush()
    try:
        answer = input("-- Enter: next input, q: quit -- ")
    except EOFError:
        raise _Quit from None
    if answer.strip().lower().startswith("q"):
        raise _Quit
