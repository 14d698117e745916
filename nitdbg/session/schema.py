"""The schema of a `.nitrec` record: types, ranges, required keys and nesting, checked on every
record of a file before anything is replayed (validate completely, then act).

A schema is a small tree of checkers. `check(value)` returns None or a `Problem` naming the
field (`args.max_insns`) and what is wrong with it; read_session turns the first problem
into one line with the record number. Types are strict: JSON `true` is not an int and `1`
is not a bool, as Python's `True == 1` would have it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..guest.boot import BOOT_PATHS

U64 = (1 << 64) - 1
MAX_INSNS = 50_000_000          # the largest instruction budget one input may ask for
MAX_NS = 3_600 * 10**9          # an hour of virtual time
MAX_TEXT = 1 << 16              # a typed line, console bytes, a prompt
MAX_VCPUS = 16
MAX_ITEMS = 256                 # entries of a map (knobs, tunables, digests)


@dataclass(frozen=True)
class Problem:
    where: str                  # the field, "args.max_insns"; "" for the record itself
    what: str

    def line(self) -> str:
        # a field name is the file's own text (a map key): escaped, so the line stays one
        where = self.where if self.where.isprintable() else \
            self.where.encode("unicode_escape").decode("ascii")
        return f"{where}: {self.what}" if where else self.what


def _at(where: str, p: Problem | None) -> Problem | None:
    if p is None:
        return None
    if not p.where:
        return Problem(where, p.what)
    return Problem(where + p.where if p.where.startswith("[") else f"{where}.{p.where}",
                   p.what)


def _show(v: Any) -> str:
    s = "true" if v is True else "false" if v is False else "null" if v is None else repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _kind(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "an object", type(None): "null"}.get(type(v), type(v).__name__)


class Schema:
    def check(self, v: Any) -> Problem | None:
        raise NotImplementedError


@dataclass(frozen=True)
class Int(Schema):
    lo: int = 0
    hi: int = U64

    def check(self, v: Any) -> Problem | None:
        if type(v) is not int:
            return Problem("", f"{_show(v)} is {_kind(v)}, not an integer")
        if not self.lo <= v <= self.hi:
            return Problem("", f"{_show(v)} is out of range {self.lo}..{self.hi}")
        return None


@dataclass(frozen=True)
class Bool(Schema):
    def check(self, v: Any) -> Problem | None:
        if type(v) is not bool:
            return Problem("", f"{_show(v)} is {_kind(v)}, not true or false")
        return None


@dataclass(frozen=True)
class Str(Schema):
    max_len: int = MAX_TEXT
    choices: tuple[str, ...] = ()
    hex_len: int = 0            # a hex digest of exactly this many digits
    latin1: bool = False        # bytes stored as latin-1 text (ops.OPS): no char above 0xFF

    def check(self, v: Any) -> Problem | None:
        if type(v) is not str:
            return Problem("", f"{_show(v)} is {_kind(v)}, not a string")
        if len(v) > self.max_len:
            return Problem("", f"string of {len(v)} characters (at most {self.max_len})")
        if self.latin1 and not v.isascii() and max(v) > "\xff":
            return Problem("", "a character above U+00FF in a string of bytes")
        if self.choices and v not in self.choices:
            return Problem("", f"{_show(v)} is not one of {', '.join(self.choices)}")
        if self.hex_len and (len(v) != self.hex_len or v.strip("0123456789abcdef")):
            return Problem("", f"{_show(v)} is not a {self.hex_len}-digit hex digest")
        return None


@dataclass(frozen=True)
class Opt(Schema):
    inner: Schema

    def check(self, v: Any) -> Problem | None:
        return None if v is None else self.inner.check(v)


@dataclass(frozen=True)
class Const(Schema):
    value: object

    def check(self, v: Any) -> Problem | None:
        if type(v) is not type(self.value) or v != self.value:
            return Problem("", f"{_show(v)} is not {_show(self.value)}")
        return None


@dataclass(frozen=True)
class List(Schema):
    item: Schema
    max_len: int = MAX_VCPUS

    def check(self, v: Any) -> Problem | None:
        if type(v) is not list:
            return Problem("", f"{_show(v)} is {_kind(v)}, not a list")
        if len(v) > self.max_len:
            return Problem("", f"a list of {len(v)} items (at most {self.max_len})")
        for i, x in enumerate(v):
            p = self.item.check(x)
            if p is not None:
                return _at(f"[{i}]", p)
        return None


@dataclass(frozen=True)
class Tuple(Schema):
    """A JSON list of fixed length, item i of schema items[i]."""

    items: tuple[Schema, ...]

    def check(self, v: Any) -> Problem | None:
        if type(v) is not list:
            return Problem("", f"{_show(v)} is {_kind(v)}, not a list")
        if len(v) != len(self.items):
            return Problem("", f"a list of {len(v)} items (want {len(self.items)})")
        for i, (x, sch) in enumerate(zip(v, self.items, strict=True)):
            p = sch.check(x)
            if p is not None:
                return _at(f"[{i}]", p)
        return None


@dataclass(frozen=True)
class Map(Schema):
    """An object with free keys (knobs, tunables, digests), every value of one schema."""

    value: Schema
    max_items: int = MAX_ITEMS
    key_len: int = 128

    def check(self, v: Any) -> Problem | None:
        if type(v) is not dict:
            return Problem("", f"{_show(v)} is {_kind(v)}, not an object")
        if len(v) > self.max_items:
            return Problem("", f"{len(v)} entries (at most {self.max_items})")
        for k, x in v.items():
            if len(k) > self.key_len:
                return Problem("", f"a key of {len(k)} characters (at most {self.key_len})")
            p = _at(k, self.value.check(x))
            if p is not None:
                return p
        return None


@dataclass(frozen=True)
class Obj(Schema):
    """An object with named fields: every one required unless listed in `optional`;
    unknown keys are refused (a misspelt field is an error, not a silent default)."""

    fields: dict[str, Schema]
    optional: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        # (name, schema, Int's range or None): an integer in range passes without a call
        # (most fields of a checkpoint are registers)
        object.__setattr__(self, "_plan", tuple(
            (k, s, (s.lo, s.hi) if type(s) is Int else None) for k, s in self.fields.items()))

    def check(self, v: Any) -> Problem | None:
        if type(v) is not dict:
            return Problem("", f"{_show(v)} is {_kind(v)}, not an object")
        for k, s, rng in self._plan:        # type: ignore[attr-defined]
            if k not in v:
                if k in self.optional:
                    continue
                return Problem(k, "missing")
            x = v[k]
            if rng is not None and type(x) is int and rng[0] <= x <= rng[1]:
                continue
            p = s.check(x)
            if p is not None:
                return _at(k, p)
        if not v.keys() <= self.fields.keys():
            return Problem(next(k for k in v if k not in self.fields), "unknown field")
        return None


def obj(optional: tuple[str, ...] = (), **fields: Schema) -> Obj:
    return Obj(fields, frozenset(optional))


# ---------------------------------------------------------------------- the records
VCPU = Int(0, MAX_VCPUS - 1)
BUDGET = Int(1, MAX_INSNS)
TEXT = Str()
COUNT = Int(0, U64)

# The arguments of each recordable Machine call (session/ops.py OPS), defaults filled in.
ARGS: dict[str, Obj] = {
    "host": obj(line=TEXT),
    "type_line": obj(line=TEXT, max_insns=BUDGET, wait_prompt=Bool()),
    "console_input": obj(data=Str(latin1=True)),
    "debugger": obj(line=TEXT, max_insns=BUDGET),
    "enter_debugger": obj(ev=obj(reason=Str(32), vcpu=Opt(VCPU),
                                 info=Map(Int(0, U64), max_items=16, key_len=32)),
                          max_insns=BUDGET),
    "assert_lapic_lvt": obj(vcpu=VCPU, pin=Int(0, 1)),
    "inject_nmi": obj(vcpu=VCPU),
    "run": obj(max_insns=BUDGET, until_ns=Opt(COUNT)),
    "settle": obj(max_insns=BUDGET, ns=Int(0, MAX_NS)),
    "boot_to_prompt": obj(prompt=Str(256, latin1=True), max_insns=BUDGET),
    "run_until_output": obj(text=Str(256, latin1=True), max_insns=BUDGET),
    "step_vcpu": obj(vcpu=VCPU, unit=Str(choices=("insn", "exit")), limit=BUDGET),
    "leave_kdb": obj(vcpu=VCPU),
    "force_reset": obj(),
    "force_poweroff": obj(),
}

REG = Int(0, U64)
REGS = obj(**{name: REG for name in (
    "rip", "rflags", "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9",
    "r10", "r11", "r12", "r13", "r14", "r15", "cr0", "cr2", "cr3", "cr4", "efer", "dr6",
    "dr7", "cs", "ss")}, cpl=Int(0, 3))
VCPU_STATE = obj(icount=COUNT, now=COUNT, nmi_state=Str(32), nmi_pending=Bool(),
                 last_unblock=Str(32), halted=Bool())
KNOBS = Map(Int(0, U64), max_items=64, key_len=64)
DIGESTS = Map(Str(64), max_items=32, key_len=32)

HEADER = obj(
    ("policy", "knobs", "nitdbg"),
    t=Const("header"), format=Const("nitrec"), version=Int(0, 1 << 31),
    nitdbg=Str(64), firmware=obj(path=Str(4096), sha256=Str(hex_len=64)),
    config=obj(("retire_order", "boot"), kernel=Str(4096), vcpus=Int(1, MAX_VCPUS),
               ram_size=Int(1 << 20, 1 << 32), policy=Str(64), name=Str(64),
               tunables=Map(Str(256), max_items=64, key_len=128),
               quantum=Int(1, 1_000_000), retire_order=Int(8, 24),
               boot=Str(16, BOOT_PATHS)),   # absent: auto
    policy=Str(64), knobs=KNOBS)

INPUT = obj(("icount", "now"), t=Const("in"), n=COUNT, op=Str(32, tuple(ARGS)),
            args=Map(Int()), icount=COUNT, now=COUNT)       # args: checked per op below
# The host shell's files an input wrote ([path as typed, sha256, size]) and the scheduling
# step a ^C stopped it at: optional checkpoint fields (the host shell, session/record.py).
FILES_WRITTEN = List(Tuple((Str(4096), Str(hex_len=64), Int(0, 1 << 40))), max_len=MAX_ITEMS)
CHECKPOINT = obj(("error", "files", "interrupted_at"), t=Const("ck"), n=COUNT, input=COUNT,
                 out=Str(hex_len=16), error=Str(4096), icount=COUNT, now=COUNT,
                 regs=List(REGS), vcpus=List(VCPU_STATE), knobs=KNOBS,
                 surface=Str(choices=("guest", "ddb")), digests=DIGESTS, files=FILES_WRITTEN,
                 interrupted_at=COUNT)
END = obj(t=Const("end"), inputs=COUNT, checkpoints=COUNT, icount=COUNT, now=COUNT)

# Record types by their "t": a new record type plugs in here with its schema.
RECORD_SCHEMAS: dict[str, Obj] = {"in": INPUT, "ck": CHECKPOINT, "end": END}


def check_header(h: Any) -> Problem | None:
    return HEADER.check(h)


def check_record(rec: Any, nvcpus: int) -> Problem | None:
    """One record after the header; `nvcpus` from the header bounds vCPU numbers."""
    if type(rec) is not dict:
        return Problem("", f"{_kind(rec)}, not an object")
    t = rec.get("t")
    sch = RECORD_SCHEMAS.get(t) if type(t) is str else None
    if sch is None:
        return Problem("t", f"{_show(t)} is not a record type "
                            f"({', '.join(sorted(RECORD_SCHEMAS))})")
    if t == "in":
        op = rec.get("op")
        if type(op) is str and op in ARGS:
            shallow = {k: v for k, v in rec.items() if k != "args"}
            p = INPUT.check({**shallow, "args": {}})
            if p is None:
                p = _at("args", ARGS[op].check(rec.get("args")))
            if p is None:
                p = _vcpu_range(rec["args"], nvcpus)
            return p
    p = sch.check(rec)
    if p is None and t == "ck":
        for key in ("regs", "vcpus"):
            if len(rec[key]) != nvcpus:
                return Problem(key, f"{len(rec[key])} entries for {nvcpus} vCPUs")
    return p


def _vcpu_range(args: dict, nvcpus: int) -> Problem | None:
    v = args.get("vcpu")
    if type(v) is int and v >= nvcpus:
        return Problem("args.vcpu", f"{v} is out of range 0..{nvcpus - 1}")
    ev = args.get("ev")
    if isinstance(ev, dict) and type(ev.get("vcpu")) is int and ev["vcpu"] >= nvcpus:
        return Problem("args.ev.vcpu", f"{ev['vcpu']} is out of range 0..{nvcpus - 1}")
    return None
