"""The command line of `nitdbg run`, `diff`, `replay` and `compare`, fuzzed: options from
each subcommand's vocabulary with good and bad values, in any order, run in-process
(bootfuzz.run_cli). Each piece of a case is known good or bad; a case with a bad piece
must exit non-zero with one line (argparse's usage + error counts as one refusal), and no
case may print a traceback. The runs a good case starts are bounded (instructions, QEMU's
timeout, the shortest recorded session)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from hypothesis import strategies as st

from ..machine import I386_KERNEL
from .clirun import judge_cli, run_cli
from .targets import SESSIONS, Outcome, Target


def _session_copy(tmp: Path) -> Path:
    """The shortest recorded session, copied afresh into the scratch folder."""
    small = min(SESSIONS.glob("*.nitrec"), key=lambda p: p.stat().st_size)
    shutil.copyfile(small, tmp / small.name)
    return tmp / small.name


def _vocab(tmp: Path) -> dict[str, list[tuple[list[str], bool]]]:
    """Per subcommand: (argv piece, is it bad?)."""
    junk, d = str(tmp / "junk.bin"), str(tmp)
    nope = str(tmp / "missing")                 # never created (a recording would create
    #                                             its folder: --rerecord is given another)
    out = str(tmp / "out.txt")
    # a copy in the scratch folder: `--rerecord SESSION` writes over it, never over the
    # repository's own sessions
    session = str(_session_copy(tmp))
    i386 = str(I386_KERNEL)
    good, bad = False, True
    return {
        "run": [
            (["--max-instructions", "3000"], good), (["--max-instructions", "0"], bad),
            (["--max-instructions", "-5"], bad), (["--max-instructions", "x"], bad),
            (["--max-instructions", ""], bad), (["--max-seconds", "0.01"], good),
            (["--max-seconds", "nan"], bad), (["--max-seconds", "inf"], bad),
            (["--max-seconds", "-1"], bad), (["--max-seconds", "0"], bad),
            (["--max-seconds", "1e308"], bad), (["--max-seconds", "-inf"], bad),
            (["--kernel", i386], good), (["--kernel", nope], bad), (["--kernel", d], bad),
            (["--kernel", junk], bad), (["--kernel", "/dev/zero"], bad), (["--kernel", ""], bad),
            (["--guest", "i386"], good), (["--guest", "x"], bad), (["--vcpus", "1"], good),
            (["--vcpus", "0"], bad), (["--vcpus", "-1"], bad), (["--vcpus", "99"], bad),
            (["--vcpus", "1e3"], bad), (["--ram", "16"], good), (["--ram", "0"], bad),
            (["--ram", "-64"], bad), (["--ram", "1099511627776"], bad),
            (["--policy", "kvm"], good), (["--policy", "nope"], bad),
            (["--tunable", "hw.vmm.trace_guest_exceptions=1"], good),
            (["--tunable", "nope"], bad), (["--tunable", "x.y=1"], bad),
            (["--tunable", "hw.vmm.trace_guest_exceptions=zz"], bad),
            (["--sysctl", "debug.nit.recursive_nmi=1"], good), (["--sysctl", "=1"], bad),
            (["--sysctl", "debug.nit.nosuch=1"], bad), (["--sysctl", "debug.nit"], bad),
            (["--serial-out", out], good), (["--serial-out", d], bad),
            (["--serial-out", junk + "/x"], bad), (["--events-out", out], good),
            (["--events-out", d], bad), (["--events-out", junk + "/x"], bad),
            (["--trace-instructions"], good), (["--boot", "multiboot"], good),
            (["--boot", "nope"], bad), (["--gdb", "99999"], bad), (["--gdb", "x"], bad),
            (["--gdb", ":"], bad), (["--bogus"], bad), (["--vm", "vm7"], good),
            (["extra"], bad),
        ],
        "diff": [
            (["--qemu", i386], good), (["--qemu", nope], bad), (["--qemu", d], bad),
            (["--qemu", junk], bad), (["--qemu", ""], bad), (["--vcpus", "1"], good),
            (["--vcpus", "0"], bad), (["--vcpus", "-3"], bad), (["--vcpus", "99"], bad),
            (["--max-instructions", "50"], good), (["--max-instructions", "0"], bad),
            (["--max-instructions", "-1"], bad), (["--timeout", "5"], good),
            (["--timeout", "0"], bad), (["--timeout", "-1"], bad), (["--timeout", "nan"], bad),
            (["--timeout", "inf"], bad), (["--bogus"], bad), (["extra"], bad),
        ],
        "replay": [
            ([session], good), ([nope], bad), ([d], bad), ([junk], bad), (["/dev/null"], bad),
            ([""], bad), (["--verify"], good), (["--show"], good),
            (["--rerecord", out], good), (["--rerecord", d], bad),
            (["--rerecord", junk + "/x"], bad), (["--rerecord", session], good),
            (["--files-dir", str(tmp / "files")], good), (["--files-dir", junk], bad),
            (["--bogus"], bad),
        ],
        "compare": [
            (["--scenario", "nosuch"], bad), (["--scenario", ""], bad),
            (["--policy", "kvm"], good), (["--policy", "nope"], bad), (["--jobs", "0"], bad),
            (["--jobs", "-1"], bad), (["--jobs", "x"], bad), (["--json"], good),
            (["--bogus"], bad), (["extra"], bad),
        ],
    }


APPEND = {"--tunable", "--sysctl", "--scenario"}      # options that add up when repeated


def _any_bad(cmd: str, pieces: list[tuple[list[str], bool]]) -> bool:
    """Is an effective piece bad? A repeated option's last value is the one that counts
    (argparse), unless the option adds up (compare's --policy too)."""
    last: dict[str, bool] = {}
    bad = False
    for words, b in pieces:
        opt = words[0]
        if opt.startswith("--") and len(words) == 2 and opt not in APPEND \
                and not (cmd == "compare" and opt == "--policy"):
            last[opt] = b
        else:
            bad |= b
    return bad or any(last.values())


DEFAULTS = {"run": ["--max-instructions", "3000"],
            "diff": ["--qemu", str(I386_KERNEL), "--timeout", "5", "--max-instructions", "50"],
            "replay": [], "compare": []}


def argv_target(tmpdir: Path) -> Target:
    tmpdir.mkdir(parents=True, exist_ok=True)
    (tmpdir / "junk.bin").write_bytes(b"\x7fELF" + b"\xff" * 60)
    vocab = _vocab(tmpdir)

    @st.composite
    def cases(draw: Callable) -> tuple[list[str], bool]:
        cmd = draw(st.sampled_from(sorted(vocab)))
        pieces = draw(st.lists(st.sampled_from(vocab[cmd]), min_size=1, max_size=4))
        if cmd == "compare" and not any(b for _, b in pieces):
            pieces.append(draw(st.sampled_from([p for p in vocab[cmd] if p[1]])))
        if cmd == "replay" and draw(st.booleans()) and not any(
                p[0][0].startswith("/") or not p[0][0] for p in pieces):
            pieces.insert(0, vocab[cmd][0])                  # the session file
        argv = [cmd, *DEFAULTS[cmd]]
        for words, _ in pieces:
            argv += words
        if cmd == "replay" and sum(not w[0].startswith("-") for w, _ in pieces) != 1:
            return argv, True                               # no file, or two
        return argv, _any_bad(cmd, pieces)

    def run(case: tuple[list[str], bool]) -> Outcome:
        argv, must_fail = case
        _session_copy(tmpdir)            # as recorded: an earlier --rerecord wrote over it
        code, err, escaped = run_cli(argv)
        return judge_cli(code, err, escaped, must_fail=must_fail)

    return Target("argv", cases(), run)
