"""C printf(3) for KTR: the conversions kernel trace formats use (d i o u x X c s p %), with
C semantics ("%#x" of 0 prints "0", "%lx" of -1 prints 16 f's). Formats are parsed once and
cached; the text is produced only when someone reads the ring."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass


class KtrError(ValueError):
    """A trace call that FreeBSD's KTR would not accept (format/parameter mismatch)."""


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


def parse_format(fmt: str) -> _Parsed:
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
    render = _renderers.get(fmt)
    if render is None:
        render = _compile(fmt)
    parts, nargs = parse_format(fmt)
    if nargs != len(args):
        raise KtrError(f"ktr: format {fmt!r} takes {nargs} parameters, got {len(args)}")
    return render(args)


# format -> a function of the arguments giving the same text as _c_format_generic
_renderers: dict[str, Callable[[tuple], str]] = {}


def _as_s(arg: object) -> str:
    return arg if isinstance(arg, str) else ("(null)" if arg is None else str(arg))


def _compile(fmt: str) -> Callable[[tuple], str]:
    """One expression per conversion, joined: the common conversions (%s, %d, %u, %x, %#x
    without width or precision) inline for arguments of type int or str, everything else
    (and any other argument type) through the generic conversion of that one spec. A format
    with a '*' width or precision takes its numbers from the arguments: generic."""
    parts, nargs = parse_format(fmt)
    if any(isinstance(p, _Spec) and -1 in (p.width, p.prec) for p in parts):
        def render(args: tuple) -> str:
            return _c_format_generic(fmt, args)
    else:
        env: dict[str, object] = {"_as_s": _as_s}
        exprs: list[str] = []
        ai = 0
        for part in parts:
            if isinstance(part, str):
                exprs.append(repr(part))
                continue
            a = f"a[{ai}]"
            slow = f"_one{ai}"
            env[slow] = _one_conversion(fmt, part)
            ai += 1
            plain = part.width is None and part.prec is None
            bits = _INT_BITS[part.length]
            mask, sign = (1 << bits) - 1, 1 << (bits - 1)
            if part.conv == "s" and plain and not part.flags:
                exprs.append(f"({a} if {a}.__class__ is str else _as_s({a}))")
            elif part.conv in "di" and plain and not part.flags:
                exprs.append(f"(str((({a} & {mask}) ^ {sign}) - {sign}) "
                             f"if {a}.__class__ is int else {slow}({a}))")
            elif part.conv == "u" and plain and not part.flags:
                exprs.append(f"(str({a} & {mask}) if {a}.__class__ is int else {slow}({a}))")
            elif part.conv == "x" and plain and part.flags in ("", "#"):
                hexa = f"'%x' % ({a} & {mask})"
                if part.flags == "#":       # C: no 0x prefix for zero
                    hexa = f"('0x%x' % ({a} & {mask}) if {a} & {mask} else '0')"
                exprs.append(f"({hexa} if {a}.__class__ is int else {slow}({a}))")
            else:
                exprs.append(f"{slow}({a})")
        src = f"lambda a: ''.join(({', '.join(exprs)},))" if exprs else "lambda a: ''"
        render = eval(compile(src, f"<ktr format {fmt!r}>", "eval"), env)  # noqa: S307
    if len(_renderers) < 4096:
        _renderers[fmt] = render
    return render


def _one_conversion(fmt: str, spec: _Spec) -> Callable[[object], str]:
    """The generic conversion of one spec (no '*'), for one argument."""
    def conv(arg: object) -> str:
        return _convert(fmt, spec, spec.flags, spec.width, spec.prec, arg)
    return conv


def _convert(fmt: str, part: _Spec, flags: str, width: int | None, prec: int | None,
             arg: object) -> str:
    conv = part.conv
    if conv == "s":
        s = arg if isinstance(arg, str) else ("(null)" if arg is None else str(arg))
        if prec is not None and prec >= 0:
            s = s[:prec]
    elif conv == "c":
        s = arg[:1] if isinstance(arg, str) else chr(int(arg) & 0xFF)  # type: ignore[arg-type]
    elif conv == "p":
        s = f"{int(arg or 0) & 0xFFFF_FFFF_FFFF_FFFF:#x}"  # type: ignore[call-overload]
    else:
        if isinstance(arg, str) or arg is None:
            raise KtrError(f"ktr: %{conv} given {arg!r} in format {fmt!r}")
        return _fmt_int(part, int(arg), width, prec)  # type: ignore[call-overload]
    if width is not None and len(s) < width:
        s = s.ljust(width) if "-" in flags else s.rjust(width)
    return s


def _c_format_generic(fmt: str, args: tuple) -> str:
    """c_format the long way: every conversion interpreted from its spec."""
    parts, nargs = parse_format(fmt)
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
        out.append(_convert(fmt, part, flags, width, prec, arg))
    return "".join(out)
