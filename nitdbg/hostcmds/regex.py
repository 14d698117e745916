"""The host grep's regular expressions: POSIX basic and extended syntax compiled to a
Thompson NFA and run as a lazily built DFA, so matching is linear in the text whatever the
pattern (no backtracking: `(a*)*b` costs what `a*b` costs). Back-references, which no
linear-time matcher can offer, are refused with one line.

Supported: literals, `.`, bracket expressions with ranges and [:classes:], `^` `$`, `*`,
and in ERE (or as `\\+ \\? \\| \\( \\) \\{ \\}` in BRE, as GNU grep does) `+ ? | ( ) {m,n}`;
`\\w \\W \\s \\S`. Bounds: RE_DUP_MAX (255) per interval, MAX_STATES NFA states.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

RE_DUP_MAX = 255          # POSIX <limits.h>
MAX_DEPTH = 64            # nested groups (the parser and the compiler recurse per group)
MAX_STATES = 20_000       # a pattern that needs more is refused
_DFA_CACHE = 4096         # transitions kept before the cache is dropped and rebuilt


class RegexError(ValueError):
    """A pattern the matcher refuses; str() is grep's one-line message."""


# ---------------------------------------------------------------------- character sets
_CLASSES = {
    "alpha": string.ascii_letters, "digit": string.digits, "alnum": string.ascii_letters
    + string.digits, "upper": string.ascii_uppercase, "lower": string.ascii_lowercase,
    "space": " \t\n\r\f\v", "blank": " \t", "punct": string.punctuation,
    "xdigit": string.hexdigits, "cntrl": "".join(map(chr, range(32))) + "\x7f",
    "print": "".join(map(chr, range(32, 127))), "graph": "".join(map(chr, range(33, 127))),
}
_WORD = frozenset(string.ascii_letters + string.digits + "_")
_SPACE = frozenset(_CLASSES["space"])


@dataclass(frozen=True)
class CharSet:
    chars: frozenset[str]
    ranges: tuple[tuple[str, str], ...] = ()
    negate: bool = False
    icase: bool = False

    def _base(self, c: str) -> bool:
        return c in self.chars or any(lo <= c <= hi for lo, hi in self.ranges)

    def test(self, c: str) -> bool:
        hit = self._base(c) or (self.icase and self._base(c.swapcase()))
        return hit != self.negate


ANY = CharSet(frozenset("\n"), negate=True)


# ---------------------------------------------------------------------- the parser (AST)
# nodes: ("set", CharSet) ("cat", [n]) ("alt", [n]) ("rep", n, lo, hi|None) ("bol",) ("eol",)
# ("empty",)

class _Parser:
    def __init__(self, pattern: str, extended: bool, icase: bool):
        self.toks = _tokens(pattern, extended)
        self.i = 0
        self.icase = icase
        depth = 0
        for t in self.toks:
            depth += (t == ("op", "(")) - (t == ("op", ")"))
            if depth > MAX_DEPTH:
                raise RegexError(f"groups nested deeper than {MAX_DEPTH}")

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        t = self.toks[self.i]
        self.i += 1
        return t

    def parse(self) -> tuple:
        node = self.alt()
        if self.peek() is not None:
            raise RegexError("Unmatched ) or \\)")
        return node

    def alt(self) -> tuple:
        branches = [self.cat()]
        while self.peek() == ("op", "|"):
            self.take()
            branches.append(self.cat())
        return branches[0] if len(branches) == 1 else ("alt", branches)

    def cat(self) -> tuple:
        items: list[tuple] = []
        while True:
            t = self.peek()
            if t is None or t in (("op", "|"), ("op", ")")):
                break
            items.append(self.rep())
        if not items:
            return ("empty",)
        return items[0] if len(items) == 1 else ("cat", items)

    def rep(self) -> tuple:
        node = self.atom()
        while True:
            t = self.peek()
            if t == ("op", "*"):
                lo, hi = 0, None
            elif t == ("op", "+"):
                lo, hi = 1, None
            elif t == ("op", "?"):
                lo, hi = 0, 1
            elif t is not None and t[0] == "interval":
                lo, hi = _interval(t[1])
            else:
                return node
            self.take()
            if node[0] in ("bol", "eol"):
                raise RegexError("Invalid preceding regular expression")
            node = ("rep", node, lo, hi)

    def atom(self) -> tuple:
        kind, text = self.take()
        if kind == "op":
            if text == "(":
                node = self.alt()
                if self.peek() != ("op", ")"):
                    raise RegexError("Unmatched ( or \\(")
                self.take()
                return node
            if text == "^":
                return ("bol",)
            if text == "$":
                return ("eol",)
            if text == ".":
                return ("set", ANY)
            raise RegexError("Invalid preceding regular expression")
        if kind == "set":
            return ("set", _bracket(text, self.icase))
        if kind == "class":
            return ("set", _escape_class(text))
        return ("set", CharSet(frozenset(text), icase=self.icase))


def _interval(text: str) -> tuple[int, int | None]:
    lo_s, comma, hi_s = text.partition(",")
    try:
        lo = int(lo_s) if lo_s else 0
        hi = (int(hi_s) if hi_s else None) if comma else lo
    except ValueError:
        raise RegexError("Invalid content of \\{\\}") from None
    if lo > RE_DUP_MAX or (hi is not None and (hi > RE_DUP_MAX or hi < lo)):
        raise RegexError(f"Invalid content of \\{{\\}} (counts up to {RE_DUP_MAX})")
    return lo, hi


def _escape_class(c: str) -> CharSet:
    if c in "wW":
        return CharSet(_WORD, negate=c == "W")
    return CharSet(_SPACE, negate=c == "S")


def _tokens(p: str, ere: bool) -> list[tuple[str, str]]:
    """(kind, text): op, lit, set (bracket body), class (\\w...), interval ("m,n")."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(p)

    def at_start() -> bool:       # BRE: '*' is literal here, '^' an anchor
        return not out or out[-1] in (("op", "("), ("op", "|")) or out[-1] == ("op", "^")

    while i < n:
        c = p[i]
        if c == "\\":
            if i + 1 >= n:
                raise RegexError("Trailing backslash")
            e = p[i + 1]
            i += 2
            if e.isdigit() and e != "0":
                raise RegexError("back-references are not supported (this grep matches in "
                                 "linear time)")
            if e in "wWsS":
                out.append(("class", e))
            elif e in "bB<>`'":
                raise RegexError(f"\\{e} is not supported")
            elif not ere and e in "(){}|+?":
                if e == "{":
                    j = p.find("\\}", i)
                    if j < 0:
                        raise RegexError("Unmatched \\{")
                    out.append(("interval", p[i:j]))
                    i = j + 2
                else:
                    out.append(("op", e))
            else:
                out.append(("lit", e))
            continue
        if c == "[":
            j = _bracket_end(p, i)
            out.append(("set", p[i + 1:j]))
            i = j + 1
            continue
        i += 1
        if c == ".":
            out.append(("op", "."))
        elif c == "*":
            out.append(("lit", "*") if (not ere and at_start()) else ("op", "*"))
        elif c == "^":
            out.append(("op", "^") if ere or at_start() else ("lit", "^"))
        elif c == "$":
            end = i >= n or (not ere and p.startswith(("\\)", "\\|"), i)) or \
                (ere and p[i] in ")|")
            out.append(("op", "$") if ere or end else ("lit", "$"))
        elif ere and c in "()|+?":
            out.append(("op", c))
        elif ere and c == "{":
            j = p.find("}", i)
            if j < 0:
                raise RegexError("Unmatched {")
            out.append(("interval", p[i:j]))
            i = j + 1
        else:
            out.append(("lit", c))
    return out


def _bracket_end(p: str, i: int) -> int:
    j = i + 1
    if j < len(p) and p[j] == "^":
        j += 1
    if j < len(p) and p[j] == "]":
        j += 1
    while j < len(p):
        if p.startswith("[:", j):
            k = p.find(":]", j + 2)
            if k < 0:
                raise RegexError("Unmatched [, [^, [:, [., or [=")
            j = k + 2
            continue
        if p[j] == "]":
            return j
        j += 1
    raise RegexError("Unmatched [, [^, [:, [., or [=")


def _bracket(body: str, icase: bool) -> CharSet:
    negate = body.startswith("^")
    if negate:
        body = body[1:]
    chars: set[str] = set()
    ranges: list[tuple[str, str]] = []
    i = 0
    while i < len(body):
        if body.startswith("[:", i):
            k = body.index(":]", i + 2)
            name = body[i + 2:k]
            if name not in _CLASSES:
                raise RegexError(f"Invalid character class name '{name}'")
            chars.update(_CLASSES[name])
            i = k + 2
            continue
        c = body[i]
        if i + 2 < len(body) and body[i + 1] == "-":
            hi = body[i + 2]
            if hi < c:
                raise RegexError("Invalid range end")
            ranges.append((c, hi))
            i += 3
            continue
        chars.add(c)
        i += 1
    if negate:
        chars.add("\n")
    return CharSet(frozenset(chars), tuple(ranges), negate, icase)


# ---------------------------------------------------------------------- the NFA
# state: [kind, arg, out1, out2]; kind: "set" (arg CharSet), "split", "bol", "eol", "match"

class _Nfa:
    def __init__(self) -> None:
        self.states: list[list] = []

    def new(self, kind: str, arg: object = None) -> int:
        if len(self.states) >= MAX_STATES:
            raise RegexError(f"pattern too large (more than {MAX_STATES} states)")
        self.states.append([kind, arg, None, None])
        return len(self.states) - 1

    def build(self, node: tuple) -> tuple[int, list[tuple[int, int]]]:
        """A fragment: (start state, dangling (state, slot) outs)."""
        k = node[0]
        if k == "set":
            s = self.new("set", node[1])
            return s, [(s, 2)]
        if k in ("bol", "eol"):
            s = self.new(k)
            return s, [(s, 2)]
        if k == "empty":
            s = self.new("split")
            return s, [(s, 2)]
        if k == "cat":
            start, outs = self.build(node[1][0])
            for sub in node[1][1:]:
                s2, o2 = self.build(sub)
                self.patch(outs, s2)
                outs = o2
            return start, outs
        if k == "alt":
            start, outs = self.build(node[1][0])
            for sub in node[1][1:]:
                s2, o2 = self.build(sub)
                sp = self.new("split")
                self.states[sp][2], self.states[sp][3] = start, s2
                start, outs = sp, outs + o2
            return start, outs
        _, sub, lo, hi = node
        pieces: list[tuple[int, list[tuple[int, int]]]] = []
        for _ in range(lo):
            pieces.append(self.build(sub))
        if hi is None:                        # sub*
            s, o = self.build(sub)
            sp = self.new("split")
            self.states[sp][2] = s
            self.patch(o, sp)
            pieces.append((sp, [(sp, 3)]))
        else:
            for _ in range(hi - lo):          # sub? sub? ... (the same language as nesting)
                s, o = self.build(sub)
                sp = self.new("split")
                self.states[sp][2] = s
                pieces.append((sp, [(sp, 3), *o]))
        if not pieces:
            s = self.new("split")
            return s, [(s, 2)]
        start, outs = pieces[0]
        for s2, o2 in pieces[1:]:
            self.patch(outs, s2)
            outs = o2
        return start, outs

    def patch(self, outs: list[tuple[int, int]], target: int) -> None:
        for s, slot in outs:
            self.states[s][slot] = target


@dataclass
class Regex:
    """A compiled pattern; `search(line)` says whether it matches anywhere in the line."""

    nfa: list[list]
    start: int

    def __post_init__(self) -> None:
        self._start_bol = self._closure((self.start,), bol=True, eol=False)
        self._start_mid = self._closure((self.start,), bol=False, eol=False)
        self._next: dict[tuple[frozenset[int], str], frozenset[int]] = {}
        self._match = len(self.nfa) - 1

    def _closure(self, seeds: tuple[int, ...] | frozenset[int], bol: bool,
                 eol: bool) -> frozenset[int]:
        seen: set[int] = set()
        stack = list(seeds)
        nfa = self.nfa
        while stack:
            s = stack.pop()
            if s is None or s in seen:
                continue
            seen.add(s)
            kind, _, o1, o2 = nfa[s]
            if kind == "split":
                stack.append(o1)
                stack.append(o2)
            elif (kind == "bol" and bol) or (kind == "eol" and eol):
                stack.append(o1 if o1 is not None else o2)
        return frozenset(seen)

    def search(self, line: str) -> bool:
        m = self._match
        cur = self._start_bol
        nfa = self.nfa
        cache = self._next
        for c in line:
            if m in cur:
                return True
            key = (cur, c)
            nxt = cache.get(key)
            if nxt is None:
                targets = [nfa[s][2] for s in cur if nfa[s][0] == "set" and nfa[s][1].test(c)]
                nxt = self._closure(targets, bol=False, eol=False) | self._start_mid
                if len(cache) >= _DFA_CACHE:
                    cache.clear()
                cache[key] = nxt
            cur = nxt
        if m in cur:
            return True
        return m in self._closure(cur, bol=not line, eol=True)


def is_literal(pattern: str, extended: bool) -> bool:
    """True when the pattern is plain text (grep can then use a substring search)."""
    try:
        return all(k == "lit" for k, _ in _tokens(pattern, extended))
    except RegexError:
        return False


def literal_text(pattern: str, extended: bool) -> str:
    return "".join(t for _, t in _tokens(pattern, extended))


def compile_regex(pattern: str, extended: bool = False, icase: bool = False,
                  whole_line: bool = False) -> Regex:
    node = _Parser(pattern, extended, icase).parse()
    if whole_line:
        node = ("cat", [("bol",), node, ("eol",)])
    nfa = _Nfa()
    start, outs = nfa.build(node)
    match = nfa.new("match")
    nfa.patch(outs, match)
    return Regex(nfa.states, start)
