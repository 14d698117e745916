"""ktrdump(8) over the live ring: its command line (BSD getopt over "cflqrtHe:i:m:M:N:o:") and
its column layout, from usr.bin/ktrdump/ktrdump.c: header "%-6s " index, "%-3s " cpu,
"%-16s " timestamp, "%-40s " file and line, "%-18s " tid, "trace", a dashed row; entries
"%6d ", "%3d ", "%16ju ", then the message; newest to oldest unless -l. Writing -o's file
is the caller's business (the host shell's), so this module touches no disk."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .ktr import Ktr

_U64 = 0xFFFF_FFFF_FFFF_FFFF


def format_dump(ktr: Ktr, cpu_col: bool = False, time_col: bool = False,
                quiet: bool = False, newest_first: bool = True, file_col: bool = False,
                thread_col: bool = False, relative: bool = False) -> str:
    """ktrdump's text (every line ends with a newline, as fprintf writes it)."""
    lines: list[str] = []
    if not quiet:
        head = f"{'index':<6} "                # %-6s
        dash = "------ "
        if cpu_col:
            head += f"{'cpu':<3} "              # %-3s
            dash += "--- "
        if time_col:
            head += f"{'timestamp':<16} "       # %-16s
            dash += "---------------- "
        if file_col:
            head += f"{'file and line':<40} "   # %-40s
            dash += "-" * 40 + " "
        if thread_col:
            head += f"{'tid':<18} "              # %-18s
            dash += "-" * 18 + " "
        lines.append(head + "trace")
        lines.append(dash + "----- ")
    head = "".join(line + "\n" for line in lines)
    rows = ktr.rows(newest_first, sites=file_col)
    if cpu_col and time_col and not (file_col or thread_col or relative):
        # -ct, the test plan's columns: ktrdump.c's "%6d " "%3d " "%16ju " and the message,
        # one printf-style format per row (the cheapest way Python has to build it)
        return head + "".join(["%6d %3d %16d %s\n" % (i, cpu, ts & _U64, text)  # noqa: UP031
                               for i, cpu, ts, text, _where, _at, _tid in rows])
    out: list[str] = [head]
    tlast: int | None = None
    for i, cpu, tnow, text, where, at, tid in rows:
        row = f"{i:6d} "                          # %6d
        if cpu_col:
            row += f"{cpu:3d} "                    # %3d
        if time_col:
            if relative:
                if tlast is None:
                    tlast = tnow
                # ktrdump computes tlast - tnow in uintmax_t for a live ring, whichever
                # direction it walks.
                row += f"{(tlast - tnow) & _U64:16d} "  # %16ju
                tlast = tnow
            else:
                row += f"{tnow & _U64:16d} "        # %16ju
        if file_col:
            row += f"{str(where) + ':' + str(at):<40} "  # %-40s: file and line
        if thread_col:
            row += f"{tid:#x} "                     # %p
        out.append(row + text + "\n")
    return "".join(out)


def dump(ktr: Ktr, opts: KtrdumpOptions) -> str:
    return format_dump(ktr, cpu_col=opts.cpu, time_col=opts.timestamp, quiet=opts.quiet,
                       newest_first=not opts.live, file_col=opts.file_and_line,
                       thread_col=opts.thread, relative=opts.relative)


KTRDUMP_USAGE = "usage: ktrdump [-cflqrtH] [-i ktrfile] [-M core] [-N system] [-o outfile]"
_KTRDUMP_FLAGS = "cflqrtH"
_KTRDUMP_ARGS = "eimMNo"


class KtrdumpUsage(Exception):  # noqa: N818 - mirrors usage() in ktrdump.c
    """Bad ktrdump command line: str() is what ktrdump writes to stderr (exit status 1)."""


@dataclass(slots=True)
class KtrdumpOptions:
    cpu: bool = False             # -c
    file_and_line: bool = False   # -f
    live: bool = False            # -l: oldest to newest
    quiet: bool = False           # -q: no header
    relative: bool = False        # -r: timestamps relative to the previous line
    timestamp: bool = False       # -t
    thread: bool = False          # -H
    infile: str | None = None     # -i
    outfile: str | None = None    # -o
    core: str | None = None       # -M / -m
    system: str | None = None     # -N / -e


def parse_ktrdump_args(argv: list[str]) -> KtrdumpOptions:
    """BSD getopt over "cflqrtHe:i:m:M:N:o:"; argv excludes the program name."""
    opts = KtrdumpOptions()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        j = 1
        while j < len(arg):
            c = arg[j]
            if c in _KTRDUMP_FLAGS:
                setattr(opts, {"c": "cpu", "f": "file_and_line", "l": "live", "q": "quiet",
                               "r": "relative", "t": "timestamp", "H": "thread"}[c], True)
                j += 1
                continue
            if c in _KTRDUMP_ARGS:
                if j + 1 < len(arg):
                    value = arg[j + 1:]
                else:
                    i += 1
                    if i >= len(argv):
                        raise KtrdumpUsage(f"ktrdump: option requires an argument -- {c}\n"
                                           + KTRDUMP_USAGE)
                    value = argv[i]
                field = {"i": "infile", "o": "outfile", "m": "core", "M": "core",
                         "e": "system", "N": "system"}[c]
                setattr(opts, field, value)
                break
            raise KtrdumpUsage(f"ktrdump: illegal option -- {c}\n" + KTRDUMP_USAGE)
        i += 1
    if i < len(argv):
        raise KtrdumpUsage(KTRDUMP_USAGE)
    return opts


@dataclass(frozen=True, slots=True)
class KtrdumpResult:
    stdout: str           # the dump, when no -o was given
    stderr: str
    status: int
    outfile: str | None   # -o: the caller writes `text` there (file I/O stays with the caller)
    text: str             # the dump itself, wherever it goes


def run_ktrdump(ktr: Ktr, argv: list[str]) -> KtrdumpResult:
    """ktrdump(8) over the live ring; argv excludes the program name."""
    try:
        opts = parse_ktrdump_args(argv)
    except KtrdumpUsage as e:
        return KtrdumpResult("", f"{e}\n", 1, None, "")
    if opts.infile is not None:
        return KtrdumpResult("", f"ktrdump: {opts.infile}: reading a saved KTR buffer is not "
                                 "supported\n", 1, None, "")
    text = dump(ktr, opts)
    if opts.outfile is not None:
        return KtrdumpResult("", "", 0, opts.outfile, text)
    return KtrdumpResult(text, "", 0, None, text)
