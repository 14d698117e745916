"""The host shell of the seed: bhyvectl, sysctl, ktrdump, sleep, cat, grep and `|`, typed
exactly as the test plan types them (a leading `sudo` is accepted and ignored).

A line is parsed whole — every stage of a pipe, every option, every pattern — before any
stage runs, so a line that is rejected changes nothing. Files go through a HostFiles backend:
a memory table by default (deterministic, for scenarios and tests), the real disk when the
console installs DiskFiles (see files.py).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..guest.abi import GUEST_SYSCTLS
from ..vmm.ktr import KtrdumpUsage, parse_ktrdump_args, run_ktrdump
from ..vmm.sysctl import SysctlError
from .bhyvectl import prepare_bhyvectl
from .errors import HostError
from .files import HostFileError, HostFiles, MemoryFiles, Written, written
from .grep import GrepSource, GrepUsage, grep, make_matcher, parse_grep_args
from .help import HOST_COMMANDS, PIPE_FILTERS, host_help
from .textutils import prepare_head_tail, prepare_wc

if TYPE_CHECKING:
    from ..machine import Machine

NS_PER_SEC = 1_000_000_000
# Seconds of virtual time one `sleep` may ask for. An idle guest does not tick: each idle
# vCPU wakes twice a second (FreeBSD's tickless idle, firmware/amd64/clock.c), about 200
# instructions and 3 exits each, so an hour costs a few seconds of host time per vCPU;
# ^C stops it sooner.
MAX_SLEEP = 3600
# FreeBSD sleep(1): a non-negative decimal number of seconds
_SLEEP_RE = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)\Z")
# guest sysctls of the i386 firmware (the amd64 ones are in guest/abi.py)
_GUEST_ONLY = frozenset(GUEST_SYSCTLS) | {"debug.tsnmi", "kern.hz"}

# a prepared stage: given the text piped into it, returns what it prints
Stage = Callable[[str], str]


class HostShell:
    """Runs host command lines against a Machine and returns what a terminal would show."""

    def __init__(self, machine: Machine, fs: HostFiles | None = None):
        self.m = machine
        self.fs: HostFiles = fs if fs is not None else MemoryFiles()
        self.files: dict[str, str] = {}        # every file written, by the path as typed
        self._written: list[Written] = []      # since the last take_written()

    def take_written(self) -> list[Written]:
        """The files written since the last call (for the session's records)."""
        w, self._written = self._written, []
        return w

    # ------------------------------------------------------------------ the line
    def run(self, line: str) -> str:
        line = line.strip()
        if not line:
            return ""
        try:
            stages = self.parse(line)
        except HostError as e:
            return str(e)
        out = ""
        for stage in stages:
            out = stage(out)
        return out

    def parse(self, line: str) -> list[Stage]:
        """Every stage of a line, validated; raises HostError for the first problem."""
        try:
            argvs = [words(s) for s in split_pipes(line)]
        except ValueError as e:
            raise HostError(f"sh: syntax error: {e}\n") from None
        stages: list[Stage] = []
        for i, argv in enumerate(argvs):
            if argv and argv[0] == "sudo":
                argv = argv[1:]
            if not argv:
                raise HostError("sh: syntax error near unexpected token `|'\n")
            if i > 0 and argv[0] not in PIPE_FILTERS:
                raise HostError(f"sh: only {', '.join(PIPE_FILTERS)} may follow a pipe here, "
                                f"not '{argv[0]}'\n")
            stages.append(self._prepare(argv, piped=i > 0))
        return stages

    def _prepare(self, argv: list[str], piped: bool) -> Stage:
        name, args = argv[0], argv[1:]
        prep = {"bhyvectl": self._bhyvectl, "sysctl": self._sysctl, "ktrdump": self._ktrdump,
                "sleep": self._sleep, "cat": self._cat, "grep": self._grep,
                "help": self._help}.get(name)
        if name in ("head", "tail", "wc"):
            return self._text(name, args)
        if prep is None:
            raise HostError(f"{name}: command not found (host commands: "
                            f"{', '.join(HOST_COMMANDS)}; `help` lists their options)\n")
        return prep(args, piped)

    # ------------------------------------------------------------------ the commands
    def _bhyvectl(self, args: list[str], piped: bool) -> Stage:
        act = prepare_bhyvectl(self.m, args)
        return lambda _in: act()

    def _sysctl(self, args: list[str], piped: bool) -> Stage:
        if not args:
            raise HostError("usage: sysctl [-bdehiNnoqTtWx] [ -B <bufsize> ] [-f filename] "
                            "name[=value] ...\n")
        tree = self.m.vm.sysctl
        if any("=" in a or ":" in a for a in args if not a.startswith("-")):
            # a line that writes: every option, name and value is checked before any is set,
            # so `sysctl a=1 b=bad` refuses the whole line and a stays as it was
            try:
                tree.check_writes(args)
            except SysctlError as e:
                raise HostError(_guest_hints("".join(ln + "\n" for ln in e.lines), args)) \
                    from None

        def act(_in: str) -> str:
            res = self.m.vm.sysctl.run(args)
            return res.stdout + _guest_hints(res.stderr, args)
        return act

    def _ktrdump(self, args: list[str], piped: bool) -> Stage:
        try:
            opts = parse_ktrdump_args(args)
        except KtrdumpUsage as e:
            raise HostError(f"{e}\n") from None
        if opts.infile is not None:
            raise HostError(f"ktrdump: {opts.infile}: reading a saved KTR buffer is not "
                            "supported\n")

        def act(_in: str) -> str:
            res = run_ktrdump(self.m.vm.ktr, args)
            if res.outfile is None:
                return res.stdout + res.stderr
            try:
                self.fs.write(res.outfile, res.text)
            except HostFileError as e:
                return f"ktrdump: {e}\n"
            self.files[res.outfile] = res.text
            self._written.append(written(res.outfile, res.text))
            return ""
        return act

    def _sleep(self, args: list[str], piped: bool) -> Stage:
        if len(args) != 1:
            raise HostError("usage: sleep seconds\n")
        if not _SLEEP_RE.match(args[0]) or float(args[0]) > MAX_SLEEP:
            raise HostError(f"sleep: invalid time interval: {args[0]} (seconds of virtual "
                            f"time, 0 to {MAX_SLEEP})\n")
        ns = _seconds_to_ns(args[0])

        def act(_in: str) -> str:
            if self.m.powered_off:
                return ""
            start = self.m.now()
            ev = self.m.run(until_ns=start + ns)
            if ev.reason == "interrupted":
                return f"sleep: interrupted (^C) after {(self.m.now() - start) / NS_PER_SEC:.3f}" \
                       " s of virtual time\n"
            return ""
        return act

    def _cat(self, args: list[str], piped: bool) -> Stage:
        files = [a for a in args if a != "-u"]
        bad = [a for a in files if a.startswith("-") and a != "-"]
        if bad:
            raise HostError(f"cat: illegal option -- {bad[0][1:2]}\nusage: cat [-u] [file ...]\n")

        def act(_in: str) -> str:
            out = []
            for a in files:
                try:
                    out.append(_in if a == "-" else self.fs.read(a))
                except HostFileError as e:
                    out.append(f"cat: {e}\n")
            return "".join(out)
        return act

    def _grep(self, args: list[str], piped: bool) -> Stage:
        try:
            o = parse_grep_args(args)
            match = make_matcher(o)
        except GrepUsage as e:
            raise HostError(f"{e}\n") from None

        def act(_in: str) -> str:
            names = o.files or ["-"]
            sources = []
            for n in names:
                if n == "-":
                    sources.append(GrepSource("(standard input)", _in))
                    continue
                try:
                    sources.append(GrepSource(n, self.fs.read(n)))
                except HostFileError as e:
                    sources.append(GrepSource(n, None, f"grep: {e}\n"))
            return grep(o, match, sources)
        return act

    def _text(self, name: str, args: list[str]) -> Stage:
        run = prepare_wc(args) if name == "wc" else prepare_head_tail(name, args)

        return lambda _in: run(_in, self.fs.read)

    def _help(self, args: list[str], piped: bool) -> Stage:
        text = host_help(args[0] if args else None)
        if text is None:
            raise HostError(f"help: no host command '{args[0]}' (host commands: "
                            f"{', '.join(HOST_COMMANDS)})\n")
        return lambda _in: text


def _seconds_to_ns(text: str) -> int:
    whole, _, frac = text.partition(".")
    return int(whole or 0) * NS_PER_SEC + int((frac + "0" * 9)[:9])


def _guest_hints(stderr: str, args: list[str]) -> str:
    """sysctl's 'unknown oid' for a name the guest has becomes a hint to type it there."""
    typed = {re.split("[=:]", a, maxsplit=1)[0]: a for a in args}
    out = []
    for line in stderr.splitlines(keepends=True):
        m = re.match(r"sysctl: unknown oid '([^']+)'", line)
        if m and m.group(1) in _GUEST_ONLY:
            name = m.group(1)
            out.append(f"{name} is a guest sysctl: type it at guest# "
                       f"(@guest sysctl {typed.get(name, name)})\n")
        else:
            out.append(line)
    return "".join(out)


def words(stage: str) -> list[str]:
    """shlex.split(stage): sh's words. A stage of printable ASCII without quotes or
    backslashes has nothing for shlex to interpret, and spaces for its only whitespace:
    its words are str.split()'s."""
    if stage.isascii() and stage.isprintable() and '"' not in stage and "'" not in stage \
            and "\\" not in stage:
        return stage.split()
    return shlex.split(stage)


def split_pipes(line: str) -> list[str]:
    """Split on | outside quotes."""
    if '"' not in line and "'" not in line:
        return line.split("|")
    parts, cur, quote = [], [], ""
    for ch in line:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
            cur.append(ch)
        elif ch == "|":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts
