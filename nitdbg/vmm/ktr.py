"""KTR: the kernel trace ring, and ktrdump(8) over it.

Like FreeBSD's ktr_tracepoint(), a log call stores the format and its parameters in the next
slot of a fixed ring (at most KTR_PARMS = 6 parameters); the text is produced when someone
reads the ring, with C printf semantics (so "%#x" of 0 prints "0", "%lx" of -1 prints 16 f's).
The index ktrdump prints is the slot number, as FreeBSD's does; `debug.ktr.clear=1` empties the
ring and restarts at slot 0.

ktrdump columns and ordering follow usr.bin/ktrdump/ktrdump.c: header "%-6s " index,
"%-3s " cpu, "%-16s " timestamp, "%-40s " file and line, "%-18s " tid, "trace", a dashed row;
entries "%6d ", "%3d ", "%16ju ", then the message; newest to oldest unless -l.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass

KTR_PARMS = 6
# FreeBSD wants KTR_ENTRIES to be a power of two; 16384 keeps the ring in the same order of
# magnitude as the 10,000 lines a test run produces.
DEFAULT_ENTRIES = 16384


class KtrError(ValueError):
    """A trace call that FreeBSD's KTR would not accept (format/parameter mismatch)."""


# --- C printf --------------------------------------------------------------------------------

_CONV_RE = re.compile(
    r"%(?P<flags>[-+ #0']*)(?P<width>\*|\d+)?(?:\.(?P<prec>\*|\d*))?"
    r"(?P<len>hh|h|ll|l|j|z|t|q|L)?(?P<conv>[diouxXcsp%])")
_INT_BITS = {None: 32, "hh": 8, "h": 16, "l": 64, "ll": 64, "q": 64, "j": 64, "z": 64, "t": 64,
             "L": 64}


@dataclass(frozen=True, slots=True)
class _Spec:
    flags: str
    width: int | None     # -1: taken from the arguments ('*')
    prec: int | None      # -1: taken from the arguments ('*')
    length: str | None
    conv: str


# A parsed format: literal text and conversion specs, alternating; plus the argument count.
_Parsed = tuple[tuple[str | _Spec, ...], int]
_parse_cache: dict[str, _Parsed] = {}


def _parse(fmt: str) -> _Parsed:
    cached = _parse_cache.get(fmt)
    if cached is not None:
        return cached
    parts: list[str | _Spec] = []
    nargs = 0
    pos = 0
    for m in _CONV_RE.finditer(fmt):
        if m.start() > pos:
            parts.append(fmt[pos:m.start()])
        pos = m.end()
        conv = m["conv"]
        if conv == "%":
            parts.append("%")
            continue
        width = m["width"]
        prec = m["prec"]
        spec = _Spec(m["flags"],
                     -1 if width == "*" else (int(width) if width else None),
                     -1 if prec == "*" else (int(prec) if prec else (0 if prec == "" else None)),
                     m["len"], conv)
        nargs += 1 + (spec.width == -1) + (spec.prec == -1)
        parts.append(spec)
    if "%" in fmt[pos:]:
        raise KtrError(f"ktr: unsupported conversion in format {fmt!r}")
    parts.append(fmt[pos:])
    result = (tuple(p for p in parts if p != ""), nargs)
    if len(_parse_cache) < 4096:
        _parse_cache[fmt] = result
    return result


def _fmt_int(spec: _Spec, value: int, width: int | None, prec: int | None) -> str:
    bits = _INT_BITS[spec.length]
    mask = (1 << bits) - 1
    conv = spec.conv
    flags = spec.flags
    sign = ""
    if conv in "di":
        v = value & mask
        if v >> (bits - 1):
            v -= 1 << bits
        if v < 0:
            sign, v = "-", -v
        elif "+" in flags:
            sign = "+"
        elif " " in flags:
            sign = " "
        digits = str(v)
    else:
        v = value & mask
        digits = {"u": str, "x": lambda n: f"{n:x}", "X": lambda n: f"{n:X}",
                  "o": lambda n: f"{n:o}"}[conv](v)
    if prec is not None:
        digits = "" if prec == 0 and v == 0 else digits.rjust(prec, "0")
    prefix = ""
    if "#" in flags:
        if conv in "xX" and v != 0:
            prefix = "0x" if conv == "x" else "0X"
        elif conv == "o" and not digits.startswith("0"):
            digits = "0" + digits
    body = sign + prefix + digits
    if width is not None and len(body) < width:
        if "-" in flags:
            return body.ljust(width)
        if "0" in flags and prec is None:
            return sign + prefix + digits.rjust(width - len(sign) - len(prefix), "0")
        return body.rjust(width)
    return body


def c_format(fmt: str, args: tuple) -> str:
    """printf(3) for the conversions kernel trace formats use (d i o u x X c s p %)."""
    parts, nargs = _parse(fmt)
    if nargs != len(args):
        raise KtrError(f"ktr: format {fmt!r} takes {nargs} parameters, got {len(args)}")
    out: list[str] = []
    ai = 0
    for part in parts:
        if isinstance(part, str):
            out.append(part)
            continue
        width = part.width
        if width == -1:
            width = int(args[ai])
            ai += 1
        prec = part.prec
        if prec == -1:
            prec = int(args[ai])
            ai += 1
            if prec < 0:                          # C: a negative '*' precision is omitted
                prec = None
        flags = part.flags
        if width is not None and width < 0:      # C: a negative '*' width means '-' flag
            flags, width = flags + "-", -width
            part = _Spec(flags, width, part.prec, part.length, part.conv)
        arg = args[ai]
        ai += 1
        conv = part.conv
        if conv == "s":
            s = arg if isinstance(arg, str) else ("(null)" if arg is None else str(arg))
            if prec is not None and prec >= 0:
                s = s[:prec]
        elif conv == "c":
            s = arg[:1] if isinstance(arg, str) else chr(int(arg) & 0xFF)
        elif conv == "p":
            s = f"{int(arg or 0) & 0xFFFF_FFFF_FFFF_FFFF:#x}"
        else:
            if isinstance(arg, str) or arg is None:
                raise KtrError(f"ktr: %{conv} given {arg!r} in format {fmt!r}")
            out.append(_fmt_int(part, int(arg), width, prec))
            continue
        if width is not None and len(s) < width:
            s = s.ljust(width) if "-" in flags else s.rjust(width)
        out.append(s)
    return "".join(out)


# --- the ring -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KtrEntry:
    index: int          # ring slot, as ktrdump prints it
    seq: int            # entries logged since the last clear (0-based), never wraps
    cpu: int
    timestamp: int      # virtual ns
    message: str
    file: str
    line: int
    thread: int


# slot layout: (seq, cpu, timestamp, fmt, args, file, line, thread)
_Slot = tuple[int, int, int, str, tuple, str, int, int]


# The repository root (the folder holding the nitdbg package), whatever the clone is named.
_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ROOT_DIR = os.path.dirname(_PKG_DIR)
_site_names: dict[str, str] = {}


def source_name(path: str) -> str:
    """The file column's name for a source file: 'nitdbg/vmm/vcpu.py' for the package's own
    files (relative to the repository root, so a clone in a folder named 'nitdbg' prints the
    same), the bare file name for anything else (tests, scripts)."""
    name = _site_names.get(path)
    if name is None:
        full = os.path.abspath(path)
        if full.startswith(_PKG_DIR + os.sep):
            name = os.path.relpath(full, _ROOT_DIR).replace(os.sep, "/")
        else:
            name = os.path.basename(full)
        if len(_site_names) < 4096:
            _site_names[path] = name
    return name


def _caller_site() -> tuple[str, int]:
    """File and line of the code that logged (KTR records __FILE__/__LINE__ for ktrdump -f)."""
    f = sys._getframe(2)
    here = __file__
    while f is not None and f.f_code.co_filename == here:
        f = f.f_back
    if f is None:  # pragma: no cover - there is always a caller
        return ("(null)", 0)
    return (source_name(f.f_code.co_filename), f.f_lineno)


class Ktr:
    """A bounded trace ring of (index, cpu, timestamp, message)."""

    def __init__(self, entries: int = DEFAULT_ENTRIES) -> None:
        if entries <= 0:
            raise KtrError(f"ktr: ring size {entries} must be positive")
        self.entries = entries
        self._buf: list[_Slot | None] = [None] * entries
        self._idx = 0       # next slot to write (ktr_idx)
        self._seq = 0       # entries logged since the last clear

    # -- writing ---------------------------------------------------------------------------------

    def _put(self, cpu: int, timestamp: int, fmt: str, args: tuple, thread: int) -> None:
        if len(args) > KTR_PARMS:
            raise KtrError(f"ktr: {len(args)} parameters, KTR takes at most {KTR_PARMS}")
        if args or "%" in fmt:
            nargs = _parse(fmt)[1]
            if nargs != len(args):
                raise KtrError(f"ktr: format {fmt!r} takes {nargs} parameters, "
                               f"got {len(args)}")
        if timestamp < 0:
            raise KtrError(f"ktr: negative timestamp {timestamp}")
        file, line = _caller_site()
        self._buf[self._idx] = (self._seq, cpu, timestamp, fmt, args, file, line, thread)
        self._idx = (self._idx + 1) % self.entries
        self._seq += 1

    def log(self, cpu: int, timestamp: int, message: str, thread: int = 0) -> None:
        """Record a finished message (no formatting is applied to it)."""
        self._put(cpu, timestamp, "%s", (message,), thread)

    def logf(self, cpu: int, timestamp: int, fmt: str, *args: object, thread: int = 0) -> None:
        """CTRn(): record a C format and up to six parameters."""
        self._put(cpu, timestamp, fmt, args, thread)

    def vcpu_log(self, vmname: str, vcpu: int, timestamp: int, fmt: str, *args: object,
                 cpu: int | None = None) -> None:
        """VCPU_CTRn(): "vm <name>[<vcpu>]: <message>"; the prefix takes two of the six
        parameters, so at most four remain for the message. cpu defaults to the vcpu id
        (each vcpu thread runs on its own host cpu here)."""
        if len(args) > KTR_PARMS - 2:
            raise KtrError(f"ktr: VCPU_CTR takes at most {KTR_PARMS - 2} parameters, "
                           f"got {len(args)}")
        self._put(vcpu if cpu is None else cpu, timestamp, "vm %s[%d]: " + fmt,
                  (vmname, vcpu, *args), 0)

    def take_over(self, other: Ktr) -> None:
        """Continue another ring (the host's trace survives a VM reset)."""
        self.entries = other.entries
        self._buf = list(other._buf)
        self._idx = other._idx
        self._seq = other._seq

    def clear(self) -> None:
        """debug.ktr.clear=1: ktr_idx = 0 and every slot zeroed."""
        self._buf = [None] * self.entries
        self._idx = 0
        self._seq = 0

    # -- reading ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return min(self._seq, self.entries)

    @property
    def total_logged(self) -> int:
        return self._seq

    def _entry(self, slot: int) -> KtrEntry:
        s = self._buf[slot]
        assert s is not None
        seq, cpu, ts, fmt, args, file, line, thread = s
        return KtrEntry(slot, seq, cpu, ts, c_format(fmt, args), file, line, thread)

    def _slots_newest_first(self) -> Iterator[int]:
        n = self.entries
        i = (self._idx - 1) % n
        for _ in range(n):
            if self._buf[i] is None:
                return
            yield i
            i = (i - 1) % n

    def iter_entries(self, newest_first: bool = False) -> Iterator[KtrEntry]:
        slots = list(self._slots_newest_first())
        if not newest_first:
            slots.reverse()
        for i in slots:
            yield self._entry(i)

    def messages(self) -> list[str]:
        """Messages oldest to newest (for scenario checks)."""
        return [e.message for e in self.iter_entries()]

    def tail(self, n: int) -> list[KtrEntry]:
        out: list[KtrEntry] = []
        for i in self._slots_newest_first():
            if len(out) >= n:
                break
            out.append(self._entry(i))
        out.reverse()
        return out

    def ktrdump(self, cpu_col: bool = False, time_col: bool = False, quiet: bool = False,
                newest_first: bool = True, file_col: bool = False, thread_col: bool = False,
                relative: bool = False) -> str:
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
        slots = list(self._slots_newest_first())
        if not newest_first:
            slots.reverse()
        tlast: int | None = None
        for i in slots:
            e = self._entry(i)
            row = f"{e.index:6d} "                    # %6d
            if cpu_col:
                row += f"{e.cpu:3d} "                  # %3d
            if time_col:
                tnow = e.timestamp
                if relative:
                    if tlast is None:
                        tlast = tnow
                    # ktrdump computes tlast - tnow in uintmax_t for a live ring, whichever
                    # direction it walks.
                    row += f"{(tlast - tnow) & 0xFFFF_FFFF_FFFF_FFFF:16d} "  # %16ju
                    tlast = tnow
                else:
                    row += f"{tnow & 0xFFFF_FFFF_FFFF_FFFF:16d} "  # %16ju
            if file_col:
                row += f"{e.file + ':' + str(e.line):<40} "  # %-40s
            if thread_col:
                row += f"{e.thread:#x} "                   # %p
            lines.append(row + e.message)
        return "".join(line + "\n" for line in lines)

    def dump(self, opts: KtrdumpOptions) -> str:
        return self.ktrdump(cpu_col=opts.cpu, time_col=opts.timestamp, quiet=opts.quiet,
                            newest_first=not opts.live, file_col=opts.file_and_line,
                            thread_col=opts.thread, relative=opts.relative)

    # -- checkpoints -----------------------------------------------------------------------------

    def snapshot(self) -> dict:
        """Entries oldest to newest plus the ring position (file/line left out: they are
        source positions, not machine state)."""
        return {"idx": self._idx, "seq": self._seq, "entries": [
            (e.index, e.seq, e.cpu, e.timestamp, e.message) for e in self.iter_entries()]}

    def digest(self) -> str:
        """A hash of the ring's contents: the raw records (format and parameters, not the
        formatted text), which identify the messages just as well and cost far less."""
        h = hashlib.sha256(f"{self._idx}:{self._seq}".encode())
        for rec in self._buf:
            if rec is not None:
                h.update(repr(rec[:5]).encode())
        return h.hexdigest()


# --- ktrdump(8) command line ----------------------------------------------------------------------

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
    text = ktr.dump(opts)
    if opts.outfile is not None:
        return KtrdumpResult("", "", 0, opts.outfile, text)
    return KtrdumpResult(text, "", 0, None, text)


# --- sysctls the ring owns ------------------------------------------------------------------


class _KtrClear:
    """The debug.ktr.clear handler; an object (not a closure) so copies of a machine clear
    their own ring."""

    def __init__(self, ktr: Ktr) -> None:
        self.ktr = ktr

    def __call__(self, value: int) -> None:
        if value:
            self.ktr.clear()


def _zero() -> int:
    return 0


def register_ktr_sysctls(tree, ktr: Ktr) -> None:  # noqa: ANN001 - SysctlTree, same layer
    """debug.ktr.clear (reads 0; writing non-zero clears) and debug.ktr.entries (read only)."""
    from .sysctl import AttrGetter
    tree.add_node("debug", "Debugging")
    tree.add_node("debug.ktr", "KTR options")
    tree.add_int("debug.ktr.clear", access="rw", descr="Clear KTR Buffer",
                 getter=_zero, setter=_KtrClear(ktr))
    tree.add_int("debug.ktr.entries", access="ro",
                 descr="Number of entries in the KTR buffer", getter=AttrGetter(ktr, "entries"))
