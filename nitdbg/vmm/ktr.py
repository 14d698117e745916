"""KTR: the kernel trace ring.

Like FreeBSD's ktr_tracepoint(), a log call stores the format and its parameters in the next
slot of a fixed ring (at most KTR_PARMS = 6 parameters); the text is produced when someone
reads the ring (ktr_printf.c_format). The index ktrdump prints is the slot number, as
FreeBSD's does; `debug.ktr.clear=1` empties the ring and restarts at slot 0. ktrdump(8)
itself is in ktrdump.py.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from types import CodeType

from .ktr_printf import KtrError, c_format, parse_format
from .ktrdump import (
    KTRDUMP_USAGE,
    KtrdumpOptions,
    KtrdumpResult,
    KtrdumpUsage,
    dump,
    format_dump,
    parse_ktrdump_args,
    run_ktrdump,
)

KTR_PARMS = 6
# FreeBSD wants KTR_ENTRIES to be a power of two; 16384 keeps the ring in the same order of
# magnitude as the 10,000 lines a test run produces.
DEFAULT_ENTRIES = 16384

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


# slot layout: (seq, cpu, timestamp, fmt, args, file, line, thread); file and line are the
# logging frame's code object and f_lasti until read (site())
_Slot = tuple[int, int, int, str, tuple, CodeType | str, int, int]


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


def _caller_site() -> tuple[CodeType | str, int]:
    """Where the code that logged is (KTR records __FILE__/__LINE__ for ktrdump -f): its
    frame's code object and instruction offset (f_lasti), which site() turns into the file
    and line when the ring is read (cheaper than f_lineno on every log call)."""
    f = sys._getframe(2)
    here = __file__
    while f is not None and f.f_code.co_filename == here:
        f = f.f_back
    if f is None:  # pragma: no cover - there is always a caller
        return ("(null)", 0)
    return (f.f_code, f.f_lasti)


_lines: dict[tuple[CodeType, int], int] = {}


def site(where: CodeType | str, at: int) -> tuple[str, int]:
    """The file column's name and line of a recorded site: a (code object, f_lasti) pair
    gives the line f_lineno would have given at that instruction (the code's line table,
    as PyCode_Addr2Line reads it); a (name, line) pair is already one."""
    if not isinstance(where, CodeType):
        return where, at
    line = _lines.get((where, at))
    if line is None:
        line = 0
        for start, end, ln in where.co_lines():
            if start <= at < end:
                line = ln if ln is not None else 0
                break
        if len(_lines) < 65536:
            _lines[(where, at)] = line
    return source_name(where.co_filename), line


# Formats already checked by _put: format -> its parameter count (parse_format raises for a
# format KTR would not take, so only good ones get here).
_nargs_of: dict[str, int] = {}
# VCPU_CTRn formats: the message's format -> ("vm %s[%d]: " + format, its parameter count)
_vcpu_fmts: dict[str, tuple[str, int]] = {}


# the digest's repr of each format seen (a few dozen formats make every record)
_fmt_reprs: dict[str, str] = {}


def _nargs(fmt: str) -> int:
    n = _nargs_of.get(fmt)
    if n is None:
        n = parse_format(fmt)[1]
        if len(_nargs_of) < 4096:
            _nargs_of[fmt] = n
    return n


class Ktr:
    """A bounded trace ring of (index, cpu, timestamp, message)."""

    def __init__(self, entries: int = DEFAULT_ENTRIES) -> None:
        if entries <= 0:
            raise KtrError(f"ktr: ring size {entries} must be positive")
        self.entries = entries
        self._buf: list[_Slot | None] = [None] * entries
        self._idx = 0       # next slot to write (ktr_idx); always _seq % entries
        self._seq = 0       # entries logged since the last clear
        self._read_caches_reset()

    def _read_caches_reset(self) -> None:
        # What reading costs, kept across reads: the digest's repr of each filled slot (up
        # to date for the entries logged before _dseq) and each slot's formatted message
        # (slot -> (the slot's record, its text); the record's identity says it is current).
        self._reprs: list[str] = []
        self._dseq = 0
        self._texts: dict[int, tuple[_Slot, str]] = {}
        # the last digest, for the ring as it was at _dseq: every write to _buf either
        # advances _seq (_put, vcpu_log_at) or comes through here (clear, take_over), so
        # while _seq == _dseq the ring is the one that digest hashed
        self._dhex: str | None = None

    # -- writing ---------------------------------------------------------------------------------

    def _put(self, cpu: int, timestamp: int, fmt: str, args: tuple, thread: int,
             where: tuple[CodeType | str, int] | None = None) -> None:
        if len(args) > KTR_PARMS:
            raise KtrError(f"ktr: {len(args)} parameters, KTR takes at most {KTR_PARMS}")
        if args or "%" in fmt:
            nargs = _nargs(fmt)
            if nargs != len(args):
                raise KtrError(f"ktr: format {fmt!r} takes {nargs} parameters, "
                               f"got {len(args)}")
        if timestamp < 0:
            raise KtrError(f"ktr: negative timestamp {timestamp}")
        file, line = where or _caller_site()
        idx = self._idx
        self._buf[idx] = (self._seq, cpu, timestamp, fmt, args, file, line, thread)
        self._idx = (idx + 1) % self.entries
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

    def vcpu_log_at(self, vmname: str, vcpu: int, timestamp: int, fmt: str, args: tuple,
                    code: CodeType, lasti: int) -> None:
        """vcpu_log() from a caller that names the logging site itself (the logging frame's
        f_code and f_lasti, see site()): the vmm's per-exit trace calls, without
        vcpu_log's walk up the stack. The same checks, the same record."""
        if len(args) > KTR_PARMS - 2:
            raise KtrError(f"ktr: VCPU_CTR takes at most {KTR_PARMS - 2} parameters, "
                           f"got {len(args)}")
        known = _vcpu_fmts.get(fmt)
        if known is None:
            full = "vm %s[%d]: " + fmt
            known = (full, _nargs(full))
            if len(_vcpu_fmts) < 4096:
                _vcpu_fmts[fmt] = known
        full, nargs = known
        if nargs != len(args) + 2 or timestamp < 0:
            # a call KTR refuses: _put says why, in its words
            self._put(vcpu, timestamp, full, (vmname, vcpu, *args), 0, (code, lasti))
            return
        idx = self._idx
        self._buf[idx] = (self._seq, vcpu, timestamp, full, (vmname, vcpu, *args), code,
                          lasti, 0)
        self._idx = (idx + 1) % self.entries
        self._seq += 1

    def take_over(self, other: Ktr) -> None:
        """Continue another ring (the host's trace survives a VM reset)."""
        self.entries = other.entries
        self._buf = list(other._buf)
        self._idx = other._idx
        self._seq = other._seq
        self._read_caches_reset()

    def clear(self) -> None:
        """debug.ktr.clear=1: ktr_idx = 0 and every slot zeroed."""
        self._buf = [None] * self.entries
        self._idx = 0
        self._seq = 0
        self._read_caches_reset()

    # -- reading ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return min(self._seq, self.entries)

    @property
    def total_logged(self) -> int:
        return self._seq

    def _entry(self, slot: int) -> KtrEntry:
        s = self._buf[slot]
        assert s is not None
        seq, cpu, ts, _fmt, _args, file, line, thread = s
        file, line = site(file, line)
        return KtrEntry(slot, seq, cpu, ts, self._text(slot, s), file, line, thread)

    def _text(self, slot: int, s: _Slot) -> str:
        """The message of record `s` in `slot`, formatted once while the slot holds it."""
        cached = self._texts.get(slot)
        if cached is not None and cached[0] is s:
            return cached[1]
        text = c_format(s[3], s[4])      # type: ignore[index]
        self._texts[slot] = (s, text)
        return text

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

    def rows(self, newest_first: bool = True, sites: bool = False
             ) -> list[tuple[int, int, int, str, CodeType | str, int, int]]:
        """(slot, cpu, timestamp, message, where, at, thread) of every entry, oldest or
        newest first, for ktrdump: what iter_entries() gives without a KtrEntry per entry;
        with `sites` (ktrdump -f) where and at are the file and line (site()), else the
        recorded code object and offset."""
        buf, text_of = self._buf, self._text
        slots = list(self._slots_newest_first())
        if not newest_first:
            slots.reverse()
        out = []
        for i in slots:
            s = buf[i]
            text = text_of(i, s)    # type: ignore[arg-type]
            if sites:
                out.append((i, s[1], s[2], text, *site(s[5], s[6]), s[7]))  # type: ignore
            else:
                out.append((i, s[1], s[2], text, s[5], s[6], s[7]))   # type: ignore[index]
        return out

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
        """ktrdump's text with the given columns (ktrdump.format_dump)."""
        return format_dump(self, cpu_col, time_col, quiet, newest_first, file_col, thread_col,
                           relative)

    def dump(self, opts: KtrdumpOptions) -> str:
        return dump(self, opts)

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
        # one update of the records' reprs joined, in slot order: the same bytes as one
        # update per record. The filled slots are the first min(seq, entries); each one's
        # repr is kept from the last digest until the slot is written again.
        n, seq, buf, reprs = self.entries, self._seq, self._buf, self._reprs
        filled = min(seq, n)
        if (self._idx != seq % n or len(reprs) != min(self._dseq, n)
                or (filled and buf[filled - 1] is None)
                or (filled < n and buf[filled] is not None)):
            reprs[:] = []       # not the ring's usual shape: recompute every record
            self._dseq = 0
            self._dhex = None
            h.update("".join([repr(rec[:5]) for rec in buf if rec is not None]).encode())
            return h.hexdigest()
        if seq == self._dseq and self._dhex is not None:
            return self._dhex                  # nothing logged since the last digest
        if len(reprs) < filled:
            reprs.extend([""] * (filled - len(reprs)))    # every one is set below
        fmt_repr = _fmt_reprs.get
        for s in range(max(self._dseq, seq - n), seq):
            i = s % n
            rseq, cpu, ts, fmt, args, _where, _at, _tid = buf[i]    # type: ignore[misc]
            if type(fmt) is str and type(cpu) is int and type(ts) is int:
                # repr(record[:5]) put together: a plain int's str is its repr (seq is
                # always one), the format's repr is kept
                r = fmt_repr(fmt)
                if r is None:
                    r = repr(fmt)
                    if len(_fmt_reprs) < 4096:
                        _fmt_reprs[fmt] = r
                reprs[i] = f"({rseq}, {cpu}, {ts}, {r}, {args!r})"
            else:
                reprs[i] = repr(buf[i][:5])       # type: ignore[index]
        self._dseq = seq
        h.update("".join(reprs).encode())
        self._dhex = h.hexdigest()
        return self._dhex


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


__all__ = ["DEFAULT_ENTRIES", "KTRDUMP_USAGE", "KTR_PARMS", "Ktr", "KtrEntry", "KtrError",
           "KtrdumpOptions", "KtrdumpResult", "KtrdumpUsage", "c_format", "parse_ktrdump_args",
           "register_ktr_sysctls", "run_ktrdump", "source_name"]
