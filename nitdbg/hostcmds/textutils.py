"""head, tail and wc for the host shell's pipes (`ktrdump -ct | head -20`, `... | wc -l`):
options parsed before anything runs; the text comes from the pipe or from files."""

from __future__ import annotations

from collections.abc import Callable

from .errors import HostError
from .files import HostFileError

MAX_LINES = 10_000_000
# (text of the pipe, file reader) -> output
Filter = Callable[[str, Callable[[str], str]], str]


def _count(cmd: str, value: str) -> int:
    if not value.isdigit() or int(value) > MAX_LINES:
        raise HostError(f"{cmd}: illegal line count -- {value}\n")
    return int(value)


def prepare_head_tail(cmd: str, args: list[str]) -> Filter:
    """head/tail [-n N | -N] [file ...]"""
    n, files, i = 10, [], 0
    while i < len(args):
        a = args[i]
        i += 1
        if a == "-n" or (a.startswith("-n") and len(a) > 2):
            if a == "-n":
                if i >= len(args):
                    raise HostError(f"{cmd}: option requires an argument -- n\n"
                                    f"usage: {cmd} [-n lines] [file ...]\n")
                a, i = "-n" + args[i], i + 1
            n = _count(cmd, a[2:])
        elif a.startswith("-") and a[1:].isdigit():
            n = _count(cmd, a[1:])
        elif a.startswith("-") and a != "-":
            raise HostError(f"{cmd}: illegal option -- {a[1:2]}\nusage: {cmd} [-n lines] "
                            "[file ...]\n")
        else:
            files.append(a)

    def pick(text: str) -> str:
        lines = text.splitlines(keepends=True)
        return "".join(lines[:n] if cmd == "head" else (lines[-n:] if n else []))

    def run(stdin: str, read: Callable[[str], str]) -> str:
        if not files:
            return pick(stdin)
        out = []
        for k, f in enumerate(files):
            try:
                text = stdin if f == "-" else read(f)
            except HostFileError as e:
                out.append(f"{cmd}: {e}\n")
                continue
            if len(files) > 1:
                out.append(("\n" if k else "") + f"==> {f} <==\n")
            out.append(pick(text))
        return "".join(out)
    return run


def prepare_wc(args: list[str]) -> Filter:
    """wc [-lwc] [file ...]"""
    flags, files = "", []
    for a in args:
        if a.startswith("-") and a != "-":
            bad = [c for c in a[1:] if c not in "lwc"]
            if bad:
                raise HostError(f"wc: illegal option -- {bad[0]}\nusage: wc [-clw] [file ...]\n")
            flags += a[1:]
        else:
            files.append(a)
    cols = [c for c in "lwc" if c in flags] or ["l", "w", "c"]

    def counts(text: str) -> list[int]:
        got = {"l": text.count("\n"), "w": len(text.split()), "c": len(text.encode())}
        return [got[c] for c in cols]

    def row(nums: list[int], name: str = "") -> str:
        return "".join(f" {v:7d}" for v in nums) + (f" {name}" if name else "") + "\n"

    def run(stdin: str, read: Callable[[str], str]) -> str:
        if not files:
            return row(counts(stdin))
        out, total = [], [0] * len(cols)
        for f in files:
            try:
                nums = counts(stdin if f == "-" else read(f))
            except HostFileError as e:
                out.append(f"wc: {e}\n")
                continue
            total = [a + b for a, b in zip(total, nums, strict=True)]
            out.append(row(nums, f))
        if len(files) > 1:
            out.append(row(total, "total"))
        return "".join(out)
    return run
