"""`nitdbg replay FILE [--verify] [--show]`: a front end (it measures wall time for its
report; nothing below it reads the clock)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

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
    g = p.add_mutually_exclusive_group()
    g.add_argument("--files-dir", metavar="DIR",
                   help="where the files the session wrote (ktrdump -o) are written again "
                        "(default: a scratch folder in the user's data directory)")
    g.add_argument("--in-place", action="store_true",
                   help="write those files at their own paths, as the recording did")
    a = p.parse_args(argv)
    if a.files_dir and os.path.exists(a.files_dir) and not os.path.isdir(a.files_dir):
        # refused before the replay, not when the session first writes a file there
        print(f"nitdbg replay: --files-dir {a.files_dir}: not a folder", file=sys.stderr)
        return 1
    from ..hostcmds import DiskFiles
    from .record import data_dir
    scratch = None if a.in_place else (a.files_dir or str(
        data_dir() / "replay-files" / Path(a.file).stem))
    files = DiskFiles(os.getcwd(), scratch=scratch)
    show = sys.stdout.write if a.show else None
    if a.show and a.step and sys.stdin.isatty():
        show = _stepper
    t0 = time.perf_counter()
    try:
        res = replay(a.file, verify=a.verify, show=show, record_to=a.rerecord, files=files)
    except SessionError as e:
        print(f"nitdbg replay: {e}", file=sys.stderr)
        return 1
    except _Quit:
        print("replay stopped", file=sys.stderr)
        return 0
    wall = time.perf_counter() - t0
    for note in res.notes:
        print(f"note: {note}", file=sys.stderr)
    if res.files:
        where = ", ".join(dict.fromkeys(files.where(f) for f in res.files))
        print(f"note: files the session wrote: {where}", file=sys.stderr)
    rate = res.retired / wall if wall > 0 else 0.0
    run = f"{res.retired} instructions in {wall:.2f} s ({rate / 1e6:.2f} M instr/s)"
    if not a.verify:
        print(f"replayed {a.file}: {res.inputs} inputs, {run} (checkpoints not compared; "
              "--verify compares them)")
        return 0
    stats = f"{res.inputs} inputs, {res.checkpoints} checkpoints verified, {run}"
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
