"""Evidence from machine output: the ktrdump file read back in time order, and checks."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# a ktrdump -c -t line: index, cpu, timestamp, then "vm vm2[0]: message"
_LINE = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(.*)$")
_VM_PREFIX = re.compile(r"^vm \S+\[\d+\]: ")

PRECISE = r"^vNMIs unblocked precisely$"
SPECULATIVE = r"^vNMIs unblocked speculatively$"
UPSTREAM_CLEARED = r"^vNMI blocking cleared$"
# the end of an NMI's blocking, whichever policy ended it
ANY_UNBLOCK = r"^(vNMIs unblocked (precisely|speculatively)|vNMI blocking cleared)$"


@dataclass(frozen=True)
class TraceLine:
    pos: int          # position in time order (0 = oldest)
    raw: str          # the line exactly as ktrdump wrote it
    message: str      # the trace text after "vm vm2[N]: "
    match: re.Match | None = None

    def group(self, i: int) -> str:
        assert self.match is not None
        return self.match.group(i)


class Trace:
    """A ktrdump output file (newest first, as ktrdump writes it) in time order."""

    def __init__(self, text: str):
        rows = []
        for ln in text.splitlines():
            mo = _LINE.match(ln)
            if mo:
                rows.append((int(mo.group(1)), ln, _VM_PREFIX.sub("", mo.group(4))))
        rows.reverse()
        self.lines = [TraceLine(i, raw, msg) for i, (_, raw, msg) in enumerate(rows)]

    def find(self, pattern: str, after: TraceLine | None = None,
             before: TraceLine | None = None) -> TraceLine | None:
        rx = re.compile(pattern)
        start = after.pos + 1 if after is not None else 0
        end = before.pos if before is not None else len(self.lines)
        for ln in self.lines[start:end]:
            mo = rx.search(ln.message)
            if mo:
                return TraceLine(ln.pos, ln.raw, ln.message, mo)
        return None

    def all(self, pattern: str, after: TraceLine | None = None,
            before: TraceLine | None = None) -> list[TraceLine]:
        rx = re.compile(pattern)
        start = after.pos + 1 if after is not None else 0
        end = before.pos if before is not None else len(self.lines)
        return [TraceLine(ln.pos, ln.raw, ln.message, mo) for ln in self.lines[start:end]
                if (mo := rx.search(ln.message))]

    def windows(self, open_pat: str, close_pat: str) -> list[tuple[TraceLine, TraceLine | None]]:
        """Each line matching open_pat with the first close_pat line after it."""
        return [(o, self.find(close_pat, after=o)) for o in self.all(open_pat)]


@dataclass
class Check:
    text: str                        # the expected piece of evidence, in the plan's words
    passed: bool
    evidence: list[str] = field(default_factory=list)   # the lines that prove it (or not)
    detail: str = ""                 # what was found instead, when it failed
    why: str = ""                    # explanation (e.g. what upstream bhyve does instead)
    demo: bool = False               # part of a documented demonstration
    judged: bool = True              # False: the policy does not write the lines it reads
    only: tuple[str, ...] = ()       # the policies it is judged for (empty: all)


def lines(*xs: TraceLine | str | None) -> list[str]:
    return [x.raw if isinstance(x, TraceLine) else x for x in xs if x is not None]
