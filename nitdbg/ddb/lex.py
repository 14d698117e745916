"""The ddb lexer (after sys/ddb/db_lex.c): numbers in radix 16 unless prefixed, identifiers,
`$register` variables and the punctuation of the command grammar."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import DdbError

DB_RADIX = 16
IDENT_START = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_.\\:"
IDENT_CHARS = IDENT_START + "0123456789"
PUNCT = "+-*/%(),=!#&|<>~"


@dataclass(frozen=True)
class Token:
    kind: str        # "num", "ident", "var" ($name), "punct", "eol"
    text: str
    value: int = 0


def parse_number(text: str) -> int:
    """ddb numbers: radix 16 by default; 0x hex, 0t decimal, 0o octal."""
    low = text.lower()
    radix, digits = DB_RADIX, low
    if low.startswith("0x"):
        digits = low[2:]
    elif low.startswith("0t"):
        radix, digits = 10, low[2:]
    elif low.startswith("0o"):
        radix, digits = 8, low[2:]
    try:
        if not digits:
            raise ValueError
        return int(digits, radix)
    except ValueError:
        raise DdbError("Bad number") from None


def is_hex_word(text: str) -> bool:
    return bool(text) and all(c in "0123456789abcdefABCDEF" for c in text)


def tokenize(line: str) -> list[Token]:
    out: list[Token] = []
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c in " \t":
            i += 1
            continue
        if c.isdigit():
            j = i
            while j < n and (line[j].isalnum()):
                j += 1
            text = line[i:j]
            out.append(Token("num", text, parse_number(text)))
            i = j
            continue
        if c in IDENT_START:
            j = i
            while j < n and line[j] in IDENT_CHARS:
                j += 1
            out.append(Token("ident", line[i:j]))
            i = j
            continue
        if c == "$":
            j = i + 1
            while j < n and line[j] in IDENT_CHARS:
                j += 1
            if j == i + 1:
                raise DdbError("Bad character '$'")
            out.append(Token("var", line[i + 1:j]))
            i = j
            continue
        if c in PUNCT:
            out.append(Token("punct", c))
            i += 1
            continue
        shown = c if c.isprintable() else ascii(c)[1:-1]     # one line, whatever was typed
        raise DdbError(f"Bad character '{shown}'")
    out.append(Token("eol", ""))
    return out


class Lexer:
    """A token stream with one-token lookahead, as db_read_token / db_unread_token."""

    def __init__(self, line: str):
        self.toks = tokenize(line)
        self.pos = 0

    def peek(self) -> Token:
        return self.toks[self.pos]

    def next(self) -> Token:
        t = self.toks[self.pos]
        if t.kind != "eol":
            self.pos += 1
        return t

    def accept(self, punct: str) -> bool:
        t = self.peek()
        if t.kind == "punct" and t.text == punct:
            self.pos += 1
            return True
        return False

    def at_eol(self) -> bool:
        return self.peek().kind == "eol"

    def rest(self) -> list[Token]:
        return self.toks[self.pos:-1]
