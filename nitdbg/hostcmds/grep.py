"""grep(1) for the host shell: -E -F -G -i -v -x -n -c -l -q -h -H -s, -A/-B/-C NUM (and
-NUM), -e PATTERN, several files, `-` for the piped input. Options may follow operands (GNU
getopt permutes) until `--`. The whole command line is parsed and the pattern compiled
before any file is read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .regex import RegexError, compile_regex, is_literal, literal_text

GREP_USAGE = ("usage: grep [-EFGHchilnqsvx] [-A num] [-B num] [-C num] [-e pattern] "
              "[pattern] [file ...]")
_FLAGS = {"E": "extended", "F": "fixed", "G": "basic", "c": "count", "h": "no_names",
          "H": "names", "i": "icase", "l": "files_only", "n": "numbers", "q": "quiet",
          "s": "no_messages", "v": "invert", "x": "whole_line", "y": "icase"}
_LONG = {"extended-regexp": "E", "fixed-strings": "F", "basic-regexp": "G", "count": "c",
         "no-filename": "h", "with-filename": "H", "ignore-case": "i",
         "files-with-matches": "l", "line-number": "n", "quiet": "q", "silent": "q",
         "no-messages": "s", "invert-match": "v", "line-regexp": "x"}
_LONG_VALUED = {"after-context": "A", "before-context": "B", "context": "C", "regexp": "e"}
MAX_CONTEXT = 1_000_000


class GrepUsage(ValueError):
    """A bad grep command line; str() is the message (one line, or a line and the usage)."""


@dataclass
class GrepOptions:
    patterns: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    extended: bool = False
    fixed: bool = False
    basic: bool = False
    count: bool = False
    no_names: bool = False
    names: bool = False
    icase: bool = False
    files_only: bool = False
    numbers: bool = False
    quiet: bool = False
    no_messages: bool = False
    invert: bool = False
    whole_line: bool = False
    after: int = 0
    before: int = 0


def _number(opt: str, value: str) -> int:
    if not value.isdigit() or int(value) > MAX_CONTEXT:
        raise GrepUsage(f"grep: {value}: invalid context length argument (-{opt})")
    return int(value)


def parse_grep_args(argv: list[str]) -> GrepOptions:
    o = GrepOptions()
    operands: list[str] = []
    have_e = False
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if a == "--":
            operands.extend(argv[i:])
            break
        if a.startswith("--"):
            name, eq, val = a[2:].partition("=")
            if name in _LONG and not eq:
                setattr(o, _FLAGS[_LONG[name]], True)
                continue
            if name in _LONG_VALUED:
                if not eq:
                    if i >= len(argv):
                        raise GrepUsage(f"grep: option '--{name}' requires an argument\n"
                                        + GREP_USAGE)
                    val = argv[i]
                    i += 1
                short = _LONG_VALUED[name]
                if short == "e":
                    o.patterns.append(val)
                    have_e = True
                else:
                    _set_context(o, short, val)
                continue
            raise GrepUsage(f"grep: unrecognized option '{a}'\n{GREP_USAGE}")
        if not a.startswith("-") or a == "-":
            operands.append(a)
            continue
        j = 1
        while j < len(a):
            c = a[j]
            if c.isdigit():                       # -NUM is -C NUM
                k = j
                while k < len(a) and a[k].isdigit():
                    k += 1
                _set_context(o, "C", a[j:k])
                j = k
                continue
            if c in _FLAGS:
                setattr(o, _FLAGS[c], True)
                j += 1
                continue
            if c in "ABCe":
                val = a[j + 1:]
                if not val:
                    if i >= len(argv):
                        raise GrepUsage(f"grep: option requires an argument -- '{c}'\n"
                                        + GREP_USAGE)
                    val = argv[i]
                    i += 1
                if c == "e":
                    o.patterns.append(val)
                    have_e = True
                else:
                    _set_context(o, c, val)
                break
            raise GrepUsage(f"grep: invalid option -- '{c}'\n{GREP_USAGE}")
    if not have_e:
        if not operands:
            raise GrepUsage(GREP_USAGE)
        o.patterns.append(operands.pop(0))
    o.files = operands
    if sum((o.extended, o.fixed, o.basic)) > 1:
        raise GrepUsage("grep: conflicting matchers specified")
    # a pattern with newlines is several patterns, as grep takes it
    o.patterns = [p for pat in o.patterns for p in pat.split("\n")]
    return o


def _set_context(o: GrepOptions, c: str, val: str) -> None:
    n = _number(c, val)
    if c in "AC":
        o.after = n
    if c in "BC":
        o.before = n


def make_matcher(o: GrepOptions) -> Callable[[str], bool]:
    """The line predicate (before -v). Raises GrepUsage for a bad pattern."""
    tests: list[Callable[[str], bool]] = []
    for p in o.patterns:
        if o.fixed or is_literal(p, o.extended):
            text = p if o.fixed else literal_text(p, o.extended)
            tests.append(_fixed(text, o.icase, o.whole_line))
            continue
        try:
            rx = compile_regex(p, extended=o.extended, icase=o.icase, whole_line=o.whole_line)
        except RegexError as e:
            raise GrepUsage(f"grep: {e}") from None
        tests.append(rx.search)
    if len(tests) == 1:
        return tests[0]
    return lambda line: any(t(line) for t in tests)


def _fixed(text: str, icase: bool, whole: bool) -> Callable[[str], bool]:
    if icase:
        low = text.lower()
        return (lambda s: s.lower() == low) if whole else (lambda s: low in s.lower())
    return (lambda s: s == text) if whole else (lambda s: text in s)


@dataclass
class GrepSource:
    name: str            # what grep prints before a line ("(standard input)" for the pipe)
    text: str | None     # None: the file could not be read (error holds the message)
    error: str = ""


def grep(o: GrepOptions, match: Callable[[str], bool], sources: list[GrepSource]) -> str:
    out: list[str] = []
    show_names = (len(sources) > 1 or o.names) and not o.no_names
    for src in sources:
        if src.text is None:
            if not o.no_messages:
                out.append(src.error)
            continue
        lines = src.text.splitlines()
        hits = [i for i, ln in enumerate(lines) if match(ln) != o.invert]
        if o.quiet:
            continue
        if o.files_only:
            if hits:
                out.append(src.name + "\n")
            continue
        if o.count:
            out.append(f"{src.name}:{len(hits)}\n" if show_names else f"{len(hits)}\n")
            continue
        out.extend(_lines(o, src.name if show_names else None, lines, hits))
    return "".join(out)


def _lines(o: GrepOptions, name: str | None, lines: list[str], hits: list[int]) -> list[str]:
    """Matching lines with their context; ':' after the name/number of a matching line,
    '-' of a context line, '--' between groups that do not touch (GNU grep's layout)."""
    out: list[str] = []
    context = o.before or o.after
    hit_set = set(hits)
    last = -1                 # last line printed
    for h in hits:
        lo = max(h - o.before, last + 1)
        if context and last >= 0 and lo > last + 1:
            out.append("--\n")
        for i in range(lo, min(h + o.after, len(lines) - 1) + 1):
            if i <= last:
                continue
            if i > h and i in hit_set:
                break         # the next hit prints itself (and its own context)
            sep = ":" if i in hit_set else "-"
            head = (name + sep if name is not None else "") + \
                (f"{i + 1}{sep}" if o.numbers else "")
            out.append(head + lines[i] + "\n")
            last = i
    return out
