"""A sysctl tree and sysctl(8) over it.

Output and errors follow FreeBSD's sbin/sysctl/sysctl.c: "name: value" on read, the subtree's
leaves for a node, "name: old -> new" on write, and its warnx() texts: "unknown oid '%s'",
"invalid integer '%s'", "oid '%s' is read only", "oid '%s' is a read only tunable" (+ "Tunable
values are set in /boot/loader.conf"), "oid '%s' isn't a leaf node", "empty numeric value".
A handler that refuses a value fails the way sysctl(3) does: "<arg>: Invalid argument".

A failed write changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields

# CTLTYPE names as sysctl -t prints them (ctl_typename[] in sysctl.c).
TYPE_NAMES = {"node": "node", "int": "integer", "uint": "unsigned integer",
              "long": "long integer", "ulong": "unsigned long", "string": "string"}
_INT_RANGES = {"int": (-(1 << 31), (1 << 31) - 1), "uint": (0, (1 << 32) - 1),
               "long": (-(1 << 63), (1 << 63) - 1), "ulong": (0, (1 << 64) - 1)}

ACCESS_MODES = ("rw", "ro", "tunable", "rwtun")

USAGE = ("usage: sysctl [-bdehiNnoqTtWx] [ -B <bufsize> ] [-f filename] name[=value] ...\n"
         "       sysctl [-bdehNnoqTtWx] [ -B <bufsize> ] -a")


class SysctlError(Exception):
    """A sysctl(8) failure. str() is the first stderr line; `lines` are all of them."""

    def __init__(self, *lines: str) -> None:
        super().__init__(lines[0])
        self.lines = list(lines)


class SysctlHandlerError(Exception):
    """Raised by a setter or validator to refuse a value (errno text, e.g. Invalid argument)."""

    def __init__(self, strerror: str = "Invalid argument") -> None:
        super().__init__(strerror)
        self.strerror = strerror


Getter = Callable[[], int | str]
Setter = Callable[[int | str], None]
Validator = Callable[[int | str], object]


@dataclass
class Oid:
    name: str
    kind: str                       # node, int, uint, long, ulong, string
    access: str = "rw"              # rw, ro, tunable (RDTUN), rwtun
    descr: str = ""
    getter: Getter | None = None
    setter: Setter | None = None
    validator: Validator | None = None
    value: int | str = 0            # storage when there is no getter/setter
    children: list[str] = field(default_factory=list)

    @property
    def is_node(self) -> bool:
        return self.kind == "node"

    def read(self) -> int | str:
        return self.getter() if self.getter is not None else self.value

    def write(self, v: int | str) -> None:
        if self.validator is not None:
            verdict = self.validator(v)
            if verdict is False or isinstance(verdict, str):
                raise SysctlHandlerError()
        if self.setter is not None:
            self.setter(v)
        else:
            self.value = v

    def format_value(self) -> str:
        v = self.read()
        return v if isinstance(v, str) else str(int(v))


_DIGITS = {8: frozenset("01234567"), 10: frozenset("0123456789"),
           16: frozenset("0123456789abcdefABCDEF")}


def _strtol(s: str) -> int | None:
    """C strtol(s, &end, 0) that must consume the whole string; None if it does not."""
    t = s.lstrip(" \t\n\v\f\r")
    sign = 1
    if t[:1] in ("+", "-"):
        sign = -1 if t[0] == "-" else 1
        t = t[1:]
    if t[:2] in ("0x", "0X"):
        digits, base = t[2:], 16
    elif t[:1] == "0" and len(t) > 1:
        digits, base = t[1:], 8
    else:
        digits, base = t, 10
    if not digits or not set(digits) <= _DIGITS[base]:
        return None
    return sign * int(digits, base)


@dataclass
class SysctlResult:
    stdout: str
    stderr: str
    status: int


class SysctlTree:
    def __init__(self) -> None:
        self._oids: dict[str, Oid] = {}
        self._roots: list[str] = []
        self.booted = False   # tunables (RDTUN) can be set only before boot

    # -- registration ------------------------------------------------------------------------

    def _register(self, oid: Oid) -> Oid:
        if not oid.name or any(not part for part in oid.name.split(".")):
            raise ValueError(f"sysctl: bad oid name {oid.name!r}")
        if oid.name in self._oids:
            raise ValueError(f"sysctl: oid {oid.name!r} registered twice")
        parent, _, _leaf = oid.name.rpartition(".")
        if parent:
            p = self._oids.get(parent)
            if p is None:
                p = self.add_node(parent)
            if not p.is_node:
                raise ValueError(f"sysctl: {parent!r} is a leaf, cannot hold {oid.name!r}")
            p.children.append(oid.name)
        else:
            self._roots.append(oid.name)
        self._oids[oid.name] = oid
        return oid

    def add_node(self, name: str, descr: str = "") -> Oid:
        """A node (created once; a second call only fills in a missing description)."""
        existing = self._oids.get(name)
        if existing is not None:
            if not existing.is_node:
                raise ValueError(f"sysctl: {name!r} is a leaf, not a node")
            if descr and not existing.descr:
                existing.descr = descr
            return existing
        return self._register(Oid(name, "node", "ro", descr))

    def _add_leaf(self, name: str, kind: str, value: int | str, access: str, descr: str,
                  getter: Getter | None, setter: Setter | None,
                  validator: Validator | None) -> Oid:
        if access not in ACCESS_MODES:
            raise ValueError(f"sysctl: access {access!r} not one of {ACCESS_MODES}")
        if getter is not None and setter is None and access != "ro":
            raise ValueError(f"sysctl: {name!r} has a getter but no setter and is writable")
        return self._register(Oid(name, kind, access, descr, getter, setter, validator, value))

    def add_int(self, name: str, value: int = 0, *, access: str = "rw", descr: str = "",
                getter: Getter | None = None, setter: Setter | None = None,
                validator: Validator | None = None, kind: str = "int") -> Oid:
        if kind not in _INT_RANGES:
            raise ValueError(f"sysctl: {kind!r} is not an integer type")
        return self._add_leaf(name, kind, value, access, descr, getter, setter, validator)

    def add_uint(self, name: str, value: int = 0, **kw) -> Oid:
        return self.add_int(name, value, kind="uint", **kw)

    def add_string(self, name: str, value: str = "", *, access: str = "rw", descr: str = "",
                   getter: Getter | None = None, setter: Setter | None = None,
                   validator: Validator | None = None) -> Oid:
        return self._add_leaf(name, "string", value, access, descr, getter, setter, validator)

    def boot(self) -> None:
        """From now on tunables are read only."""
        self.booted = True

    # -- lookup --------------------------------------------------------------------------------

    def __contains__(self, name: str) -> bool:
        return name in self._oids

    def oid(self, name: str) -> Oid:
        o = self._oids.get(name)
        if o is None:
            raise SysctlError(f"sysctl: unknown oid '{name}'")
        return o

    def names(self, under: str | None = None) -> list[str]:
        """Leaf names in tree order (the order sysctl -a walks)."""
        out: list[str] = []
        roots = self._roots if under is None else [under]
        stack = list(reversed(roots))
        while stack:
            n = stack.pop()
            o = self._oids[n]
            if o.is_node:
                stack.extend(reversed(o.children))
            else:
                out.append(n)
        return out

    def value(self, name: str) -> int | str:
        o = self.oid(name)
        if o.is_node:
            raise SysctlError(f"sysctl: oid '{name}' isn't a leaf node")
        return o.read()

    # -- sysctl(8) -------------------------------------------------------------------------------

    def _show(self, o: Oid, nflag: bool = False, sep: str = ": ", dflag: bool = False,
              tflag: bool = False, Nflag: bool = False) -> str:  # noqa: N803 - sysctl's -N
        if Nflag:
            return o.name
        prefix = "" if nflag else f"{o.name}{sep}"
        if tflag and dflag:
            return f"{prefix}{TYPE_NAMES[o.kind]}{sep}{o.descr}"
        if tflag:
            return prefix + TYPE_NAMES[o.kind]
        if dflag:
            return prefix + o.descr
        return prefix + o.format_value()

    def get(self, name: str, nflag: bool = False, sep: str = ": ", dflag: bool = False,
            tflag: bool = False, Nflag: bool = False) -> str:  # noqa: N803
        """`sysctl name`: one line for a leaf, one line per leaf below a node."""
        o = self.oid(name.rstrip())
        kw = dict(nflag=nflag, sep=sep, dflag=dflag, tflag=tflag, Nflag=Nflag)
        if o.is_node:
            lines = [self._show(o, **kw)] if dflag else []
            lines += [self._show(self._oids[n], **kw) for n in self.names(o.name)]
            return "\n".join(lines)
        return self._show(o, **kw)

    def _new_value(self, name: str, value_str: str, arg: str | None) -> tuple[Oid, int | str]:
        """The oid and the value `sysctl name=value` would store, or SysctlError as set()
        reports it; nothing is written."""
        o = self.oid(name)
        if o.is_node:
            raise SysctlError(f"sysctl: oid '{name}' isn't a leaf node")
        if o.access == "ro" or (o.access == "tunable" and self.booted):
            if o.access == "tunable":
                raise SysctlError(f"sysctl: oid '{name}' is a read only tunable",
                                  "sysctl: Tunable values are set in /boot/loader.conf")
            raise SysctlError(f"sysctl: oid '{name}' is read only")
        if o.kind == "string":
            return o, value_str
        if value_str == "":
            raise SysctlError("sysctl: empty numeric value")
        tokens = [t for t in value_str.replace(",", " ").split(" ") if t]
        values = []
        for t in tokens:
            v = _strtol(t)
            lo, hi = _INT_RANGES[o.kind]
            if v is None or not lo <= v <= hi:
                raise SysctlError(f"sysctl: invalid {TYPE_NAMES[o.kind]} '{t}'")
            values.append(v)
        if len(values) != 1:
            # a scalar handler given more (or fewer) than one value: EINVAL
            raise SysctlError(f"sysctl: {arg or name + '=' + value_str}: Invalid argument")
        return o, values[0]

    def check_set(self, name: str, value_str: str, arg: str | None = None) -> None:
        """Raise the SysctlError `set(name, value_str)` would raise, changing nothing."""
        name = name.rstrip()
        o, new = self._new_value(name, value_str, arg)
        if o.validator is not None:
            verdict = o.validator(new)
            if verdict is False or isinstance(verdict, str):
                raise SysctlError(f"sysctl: {arg or name + '=' + value_str}: "
                                  f"{SysctlHandlerError().strerror}")

    def set(self, name: str, value_str: str, nflag: bool = False, sep: str = ": ",
            arg: str | None = None) -> str:
        """`sysctl name=value`: returns "name: old -> new"; raises SysctlError, changing
        nothing, on any failure. `arg` is the original argument for handler errors."""
        name = name.rstrip()
        o, new = self._new_value(name, value_str, arg)
        old = self._show(o, nflag=nflag, sep=sep)
        try:
            o.write(new)
        except SysctlHandlerError as e:
            raise SysctlError(f"sysctl: {arg or name + '=' + value_str}: {e.strerror}") from None
        return f"{old} -> {o.format_value()}"

    def describe(self, name: str) -> str:
        o = self.oid(name)
        return f"{o.name}: {o.descr}"

    def run(self, argv: list[str]) -> SysctlResult:
        """sysctl(8) with argv excluding the program name."""
        try:
            flags, args = _parse_sysctl_argv(argv)
        except SysctlError as e:
            return SysctlResult("", "\n".join(e.lines) + "\n", 1)
        out: list[str] = []
        err: list[str] = []
        warncount = 0
        sep = "=" if "e" in flags else ": "
        show_kw = dict(nflag="n" in flags, sep=sep, dflag="d" in flags, tflag="t" in flags,
                       Nflag="N" in flags)
        if "a" in flags and not args:
            for n in self.names():
                out.append(self._show(self._oids[n], **show_kw))
        for a in args:
            name, eq, value = _split_arg(a)
            try:
                if eq and "d" not in flags:
                    out.append(self.set(name, value, nflag="n" in flags, sep=sep, arg=a))
                else:
                    out.append(self.get(name, **show_kw))
            except SysctlError as e:
                if name.rstrip() not in self._oids and ("i" in flags or "q" in flags):
                    warncount += 0 if "i" in flags else 1
                    continue
                err.extend(e.lines)
                warncount += 1
        text = "".join(line + "\n" for line in out if line != "")
        return SysctlResult(text, "".join(line + "\n" for line in err), warncount)


    def check_writes(self, argv: list[str]) -> None:
        """Validate a whole sysctl(8) command line before any of it acts: raise the
        SysctlError that run(argv) would report for the first bad option, name or value
        (names -i/-q would skip are skipped). sysctl(8) itself applies its arguments in
        order; a front end that must not act on half a line checks with this first."""
        flags, args = _parse_sysctl_argv(argv)
        for a in args:
            name, eq, value = _split_arg(a)
            if not eq or "d" in flags:
                if name.rstrip() not in self._oids and not ("i" in flags or "q" in flags):
                    raise SysctlError(f"sysctl: unknown oid '{name.rstrip()}'")
                continue
            try:
                self.check_set(name, value, arg=a)
            except SysctlError:
                if name.rstrip() not in self._oids and ("i" in flags or "q" in flags):
                    continue
                raise


def _split_arg(a: str) -> tuple[str, str, str]:
    """name=value (or name:value, sysctl(8)'s alternative), quotes around the value dropped."""
    name, eq, value = a.partition("=")
    if not eq:
        name, eq, value = a.partition(":")
    if eq:
        value = value.lstrip()
        if value[:1] in ("'", '"'):
            q = value[0]
            value = value[1:-1] if len(value) > 1 and value.endswith(q) else value[1:]
    return name, eq, value


_SYSCTL_FLAGS = "adeiNnqt"


def _parse_sysctl_argv(argv: list[str]) -> tuple[set[str], list[str]]:
    flags: set[str] = set()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        for c in arg[1:]:
            if c not in _SYSCTL_FLAGS:
                raise SysctlError(f"sysctl: illegal option -- {c}", *USAGE.split("\n"))
            flags.add(c)
        i += 1
    args = argv[i:]
    if ("N" in flags and "n" in flags) or (not args and "a" not in flags):
        raise SysctlError(*USAGE.split("\n"))
    return flags, args


def sysctl_main(tree: SysctlTree, argv: list[str]) -> SysctlResult:
    return tree.run(argv)


# --- helper constructors and the seed's knobs -------------------------------------------------


class AttrGetter:
    """obj.attr as a callable; an object rather than a closure, so that a deep copy of the
    machine (a checkpoint) gets a getter over its own copy of obj."""

    def __init__(self, obj: object, attr: str) -> None:
        self.obj, self.attr = obj, attr

    def __call__(self) -> int:
        return getattr(self.obj, self.attr)


class AttrSetter(AttrGetter):
    def __call__(self, v: int | str) -> None:  # type: ignore[override]
        setattr(self.obj, self.attr, int(v))


def bind_int(tree: SysctlTree, name: str, obj: object, attr: str, *, access: str = "rw",
             descr: str = "", validator: Validator | None = None, kind: str = "int") -> Oid:
    """An integer oid whose storage is `obj.attr` (like SYSCTL_INT over a C variable)."""
    return tree.add_int(name, access=access, descr=descr, kind=kind, validator=validator,
                        getter=AttrGetter(obj, attr), setter=AttrSetter(obj, attr))


@dataclass
class NitKnobs:
    """The seed's test knobs (nmi_iret_testing.patch) and the vmm tunable next to them."""

    delay_usecs: int = 0
    recursive_nmi: int = 0
    invalidate_nested_mappings: int = 0
    bounce_to_userspace: int = 0
    iret_trigger_gpf: int = 0
    trace_guest_exceptions: int = 0    # hw.vmm.trace_guest_exceptions (boot-time tunable)

    def as_dict(self) -> dict[str, int]:
        """The knobs by name, in field order (every checkpoint asks: the names are kept)."""
        return {name: getattr(self, name) for name in _KNOB_NAMES}


_KNOB_NAMES = tuple(f.name for f in fields(NitKnobs))


_NIT_KNOBS = (
    ("delay_usecs",
     "Busy-wait this many usecs when the guest NMI handler reads port 0x61"),
    ("recursive_nmi",
     "Inject a recursive vNMI when the guest NMI handler reads port 0x61"),
    ("invalidate_nested_mappings",
     "Remove all nested page mappings before resuming the guest with IRET tracing enabled"),
    ("bounce_to_userspace",
     "Return to userspace after removing nested mappings (needs invalidate_nested_mappings)"),
    ("iret_trigger_gpf",
     "Change the NMI trapframe return address to a non-canonical value so IRET raises #GP"),
)


def _non_negative(v: int | str) -> bool:
    return isinstance(v, int) and v >= 0


def register_nit_knobs(tree: SysctlTree, knobs: NitKnobs) -> None:
    """debug.nit.{delay_usecs, recursive_nmi, invalidate_nested_mappings,
    bounce_to_userspace, iret_trigger_gpf}: read-write ints over `knobs`."""
    tree.add_node("debug", "Debugging")
    tree.add_node("debug.nit", "NMI iret tracing test knobs")
    for attr, descr in _NIT_KNOBS:
        bind_int(tree, f"debug.nit.{attr}", knobs, attr, descr=descr,
                 validator=_non_negative if attr == "delay_usecs" else None)


def register_vmm_tunables(tree: SysctlTree, knobs: NitKnobs) -> None:
    """hw.vmm.trace_guest_exceptions: CTLFLAG_RDTUN, as in vmm.c."""
    tree.add_node("hw", "hardware")
    tree.add_node("hw.vmm", "bhyve vmm")
    bind_int(tree, "hw.vmm.trace_guest_exceptions", knobs, "trace_guest_exceptions",
             access="tunable",
             descr="Trap into hypervisor on all guest exceptions and reflect them back")
