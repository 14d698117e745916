"""`nitdbg ARGV` run in this process for the fuzzers, and how its answer is judged: a
traceback or an exception out of `cli.main` is an escape, exit 70 an internal error, and a
refusal (non-zero exit) of a bad command line is one line (argparse's usage lines plus its
one error line count as one refusal)."""

from __future__ import annotations

import contextlib
import io
import sys

from .targets import Outcome, _escape


def run_cli(argv: list[str]) -> tuple[int | None, str, BaseException | None]:
    """`nitdbg ARGV` in this process: (exit code, what it said, the exception that
    escaped). What it said: stderr, or stdout when stderr is empty (`nitdbg diff` reports
    its refusals there)."""
    from .. import cli
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    err = io.StringIO()
    code: int | None = None
    escaped: BaseException | None = None
    old_argv = sys.argv
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(argv)
            except SystemExit as e:
                # argparse, or a front end's SystemExit("nitdbg: ...") printed as it exits
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
                    code = 1
                else:
                    code = 0 if e.code is None else int(e.code)
            except Exception as e:  # noqa: BLE001 - the fuzzer's outermost layer counts escapes
                escaped = e
    finally:
        sys.argv = old_argv
    said = err.getvalue()
    if not said.strip():
        out.flush()
        said = out.buffer.getvalue().decode(errors="replace")[-2000:]
    return code, said, escaped


def judge_cli(code: int | None, err: str, escaped: BaseException | None,
              must_fail: bool = False) -> Outcome:
    if escaped is not None:
        return _escape(escaped)
    if "Traceback" in err:
        return Outcome("escape", err.strip().splitlines()[-1][:300])
    if code == 70 or "internal error" in err:
        return Outcome("internal", err.strip()[:300])
    if code == 0:
        return Outcome("escape", "accepted (exit 0)") if must_fail else Outcome()
    lines = err.strip("\n").splitlines()
    if must_fail and len(lines) != 1 and not _usage(lines):
        return Outcome("multiline", err[:300])
    return Outcome("rejected")


def _usage(lines: list[str]) -> bool:
    """argparse's refusal: the usage lines, then one 'prog: error: ...' line."""
    return bool(lines) and lines[0].startswith("usage:") and ": error: " in lines[-1] and \
        sum(": error: " in x for x in lines) == 1
