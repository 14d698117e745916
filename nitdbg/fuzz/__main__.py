"""`python3 -m nitdbg.fuzz [--minutes M] [--targets host,ddb,...]`: a long fuzzing campaign over
host, ddb and console commands, session files, ELF files and random guest code; prints the
counts at the end (cases, escapes, hangs, state changes by rejected commands, internal
errors) and exits non-zero if any bad outcome was seen."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

TARGETS = ("host", "ddb", "console", "session", "elf", "guest", "gdb", "gdbsock", "argv",
           "multiboot", "pcdev", "timeline", "tui")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m nitdbg.fuzz", description=__doc__)
    p.add_argument("--minutes", type=float, default=1.0, help="length of the campaign")
    p.add_argument("--targets", default=",".join(TARGETS),
                   help="comma-separated: " + ", ".join(TARGETS))
    p.add_argument("--round", type=int, default=50, help="cases per target per round")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="CPU seconds one case may take before it counts as a hang")
    p.add_argument("--progress", action="store_true", help="print the counts after each round")
    a = p.parse_args(argv)
    try:
        from .campaign import campaign
        from .targets import all_targets
    except ImportError as e:
        print(f"nitdbg fuzz: needs hypothesis ({e}); pip install -e '.[test]'", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="nitdbg-fuzz-") as tmp:
        return _run(a, all_targets(tmp), campaign)


def _run(a: argparse.Namespace, known: dict, campaign) -> int:  # noqa: ANN001
    names = [n.strip() for n in a.targets.split(",") if n.strip()]
    bad = [n for n in names if n not in known]
    if bad or not names:
        print(f"nitdbg fuzz: unknown target {', '.join(bad) or '(none)'} "
              f"(known: {', '.join(known)})", file=sys.stderr)
        return 2
    if not 0 < a.minutes <= 24 * 60 or a.round < 1 or a.timeout <= 0:
        print("nitdbg fuzz: --minutes must be in (0, 1440], --round >= 1, --timeout > 0",
              file=sys.stderr)
        return 2
    t0 = time.monotonic()
    progress = (lambda s: print(s, end="", flush=True)) if a.progress else None
    counts = campaign({n: known[n] for n in names}, a.minutes * 60, a.round, a.timeout,
                      progress)
    print(counts.report(time.monotonic() - t0), end="")
    return 1 if counts.bad() else 0


if __name__ == "__main__":
    sys.exit(main())
