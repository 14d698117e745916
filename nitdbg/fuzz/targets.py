"""What the fuzzers feed nitdbg, and how each case is judged.

A target has a hypothesis strategy of cases and `run(case)`, which feeds one case to a fresh
copy of a prepared machine (or to a loader) and returns an `Outcome`:

- escape: a Python exception left the layer a front end calls (never allowed);
- changed: a command was refused, yet the machine, the debugger or the session changed;
- internal: the vCPU hit an internal error (a bug in nitdbg, not in the guest);
- multiline: a refusal took more than one line.

Hangs are detected by the campaign (a wall-clock bound per case, nitdbg/fuzz/campaign.py).
"""

from __future__ import annotations

import json
import re
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from ..machine import DEFAULT_KERNEL, I386_KERNEL, Machine, MachineError
from ..session.format import SessionError, read_session
from ..session.replay import replay
from . import digest

SESSIONS = Path(__file__).resolve().parent.parent.parent / "sessions"
HOST_ERROR = re.compile(r"^(sh|sudo|bhyvectl|sysctl|ktrdump|sleep|cat|grep): |"
                        r"^\S+: command not found")
RESUME_BUDGET = 200_000          # guest instructions a resuming ddb command may run


@dataclass
class Outcome:
    kind: str = "ok"             # ok, rejected, escape, changed, internal, multiline
    detail: str = ""


@dataclass
class Target:
    name: str
    strategy: st.SearchStrategy
    run: Callable[[Any], Outcome]
    prepared: dict = field(default_factory=dict)


def _escape(e: BaseException) -> Outcome:
    tb = traceback.extract_tb(e.__traceback__)
    where = f"{tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else "?"
    return Outcome("escape", f"{type(e).__name__}: {e} ({where})"[:300])


def internal_errors(m: Machine) -> list[str]:
    """Internal errors the vCPUs recorded (x86 step loop: `internal_error`)."""
    out = []
    for v in m.vm.vcpus:
        err = getattr(v.cpu, "internal_error", None)
        if err:
            out.append(str(err))
        lu = v.cpu.last_unsupported
        if lu and ("internal error" in lu[2] or "translator error" in lu[2]):
            out.append(lu[2])
    return out


def run_verdict(m: Machine, ev) -> Outcome:  # noqa: ANN001 - a StopEvent
    """A guest-code run that returned: an internal error is the finding, anything else is
    what the guest did."""
    errs = internal_errors(m)
    if errs or ev.reason == "internal":
        return Outcome("internal", (errs or [str(ev.info)])[0])
    return Outcome()


# ---------------------------------------------------------------------- word lists
HOST_WORDS = ["bhyvectl", "sysctl", "ktrdump", "sleep", "cat", "grep", "sudo", "|", "--vm=vm2",
              "--vm=vm9", "--cpu=", "--cpu=0", "--cpu=-1", "--cpu=99", "0", "1", "-1", "nan",
              "inf", "1e9", "0.5", "--assert-lapic-lvt=1", "--assert-lapic-lvt=", "--inject-nmi",
              "--get-stats", "--get-rip", "--get-rflags", "--get-intinfo", "--capname=foo",
              "debug.nit.delay_usecs=", "debug.nit.recursive_nmi=1", "debug.ktr.clear=1",
              "machdep.kdb_on_nmi=1", "-cto", "-c", "-q", "/tmp/ktrdump.out", "/tmp/x", "'",
              '"', "-", "=", "-c", "vNMI", "(a+)+$", "[", "\\", "*", "aaaaaaaaaaaaaaaaaaaaaaa!"]
DDB_WORDS = ["x/i", "x/gx", "x/s", "x/q", "x/bx", "x", "s", "s,", "s,3", "c", "b", "d", "show",
             "registers", "breaks", "watches", "idt", "sysregs", "audit", "$rip", "$rsp",
             "$dr6", "$nosuch", "cpu_idle_acpi", "nmi_iret", "+0x10", "set", "write/b",
             "write/g", "(", ")", "*", "/", "%", ",", "-", "hwatch", "dhwatch", "until", "next",
             "bt", "trace", "0xffffffffffffffff", "7fffffffffffffff", "0t10", "-0t1", "0",
             "7f0000000000", "ffff800000000000", "garbage", ".", "print", "p/x", "p/q", "help"]
CONSOLE_WORDS = ["@host", "@guest", "@db", "@ddb", "@nope", "sysctl machdep.kdb_on_nmi=1",
                 "bhyvectl --vm=vm2 --assert-lapic-lvt=1 --cpu=0", "s", "c", "x/i $rip",
                 "^C", "while [ 1 ]; do : done", "sysctl debug.nit.recursive_nmi=1", "", "ls",
                 "show registers", "sleep 1", "ktrdump -cto /tmp/k", "cat /tmp/k | grep vNMI"]


def _line(words: list[str]) -> st.SearchStrategy:
    return st.lists(st.sampled_from(words) | st.text(max_size=6), max_size=7).map(" ".join)


# Per-command vocabularies: lines that get past the first word, so the parsers are reached.
HOST_ARGS = {
    "bhyvectl": ["--vm=vm2", "--vm=vm9", "--vm=", "--cpu=0", "--cpu=-1", "--cpu=1", "--cpu=x",
                 "--inject-nmi", "--assert-lapic-lvt=1", "--assert-lapic-lvt=0",
                 "--assert-lapic-lvt=9", "--get-stats", "--get-rip", "--get-rflags",
                 "--get-dr6", "--get-intinfo", "--get-vmcb-intercepts", "--capname=foo",
                 "--get-vmcb-exit-details", "--get-vmcb-virq", "--bogus", "-h"],
    "sysctl": ["debug.nit.delay_usecs=800000", "debug.nit.delay_usecs=-1",
               "debug.nit.recursive_nmi=1", "debug.nit.invalidate_nested_mappings=1",
               "debug.nit.bounce_to_userspace=1", "debug.ktr.clear=1", "debug.nit",
               "debug.nit.nosuch=1", "hw.vmm.trace_guest_exceptions=1", "-a", "-n", "=",
               "debug.nit.delay_usecs=1e99", "debug.nit.delay_usecs=0x10"],
    "ktrdump": ["-c", "-t", "-q", "-l", "-r", "-f", "-H", "-cto", "/tmp/k", "-o", "-i", "-z",
                "-cto/tmp/k", "/tmp/a\0b", "/", "../../k"],
    "sleep": ["1", "0", "0.5", "-1", "nan", "inf", "1e9", "3600", "x", "0.000001"],
    "cat": ["/tmp/k", "/tmp/nope", "/etc/passwd", "-n", "/tmp/a\0b", "/", "~", ".."],
    "grep": ["-c", "vNMI", "(a+)+$", "[", "-v", "-e", "a*a*a*a*a*a*b", "x{1,99999}"],
}


@st.composite
def host_line(draw: Callable) -> str:
    cmd = draw(st.sampled_from(sorted(HOST_ARGS)))
    args = draw(st.lists(st.sampled_from(HOST_ARGS[cmd]) | st.text(max_size=5), max_size=4))
    line = " ".join([cmd, *args])
    if draw(st.booleans()):
        line = "sudo " + line
    tail = draw(st.sampled_from(["", "", " | grep vNMI", " | grep -c x", " |", " | cat",
                                 " | grep '(a+)+$'", " ||", " | grep"]))
    return line + tail


# ---------------------------------------------------------------------- host shell
def _booted() -> Machine:
    m = Machine(vcpus=1)
    m.boot_to_prompt()
    return m


def host_target(tmpdir: Path | None = None) -> Target:
    """Host lines on two machines: files in memory (as the tests and scenarios) and on disk
    (as the console and the TUI: DiskFiles, writes kept in a scratch folder)."""
    from ..hostcmds import DiskFiles
    bases = {False: _booted()}
    if tmpdir is not None:
        tmpdir.mkdir(parents=True, exist_ok=True)
        disk = Machine(vcpus=1, host_files=DiskFiles(tmpdir, scratch=tmpdir / "scratch"))
        disk.boot_to_prompt()
        bases[True] = disk

    def run(case: tuple[bool, str]) -> Outcome:
        on_disk, line = case
        m = bases[on_disk and len(bases) > 1].clone()
        before = digest.parts(m)
        try:
            out = m.host(line)
        except MachineError:
            return Outcome("rejected")
        except Exception as e:  # noqa: BLE001 - the fuzzer's outermost layer counts escapes
            return _escape(e)
        errs = internal_errors(m)
        if errs:
            return Outcome("internal", errs[0])
        if HOST_ERROR.match(out) and "\n" not in out.rstrip("\n"):
            changed = digest.changed(before, digest.parts(m))
            if changed:
                return Outcome("changed", f"{line!r} -> {out.strip()!r} changed {changed}")
            return Outcome("rejected")
        return Outcome()

    return Target("host", st.tuples(st.booleans(), host_line() | _line(HOST_WORDS)), run)


# ---------------------------------------------------------------------- the debugger
def in_ddb() -> Machine:
    m = _booted()
    m.type_line("sysctl machdep.kdb_on_nmi=1")
    m.assert_lapic_lvt(0)
    m.enter_debugger(m.settle())
    return m


def ddb_target() -> Target:
    base = in_ddb()

    def run(lines: list[str]) -> Outcome:
        m = base.clone()
        try:
            for line in lines:
                if m.surface != "ddb":
                    break
                before = digest.parts(m)
                res = m.ddb.command(line)
                if res.rejected:
                    changed = digest.changed(before, digest.parts(m))
                    if changed:
                        return Outcome("changed", f"{line!r} -> {res.output.strip()!r} "
                                                  f"changed {changed}")
                    if res.output.count("\n") != 1:
                        return Outcome("multiline", f"{line!r} -> {res.output!r}")
                    continue
                if res.resume:
                    m._resume(m.ddb.vcpu, RESUME_BUDGET)
        except MachineError:
            return Outcome("rejected")
        except Exception as e:  # noqa: BLE001 - the fuzzer's outermost layer counts escapes
            return _escape(e)
        errs = internal_errors(m)
        return Outcome("internal", errs[0]) if errs else Outcome()

    return Target("ddb", st.lists(_line(DDB_WORDS), min_size=1, max_size=3), run)


# ---------------------------------------------------------------------- the console
def console_target() -> Target:
    from ..console import Console
    base = _booted()

    def run(lines: list[str]) -> Outcome:
        m = base.clone()
        out: list[str] = []
        c = Console(m, out.append)
        try:
            for line in lines:
                c.feed(line)
        except Exception as e:  # noqa: BLE001 - the fuzzer's outermost layer counts escapes
            return _escape(e)
        errs = internal_errors(m)
        return Outcome("internal", errs[0]) if errs else Outcome()

    lines = st.lists(st.sampled_from(CONSOLE_WORDS) | _line(HOST_WORDS + DDB_WORDS),
                     min_size=1, max_size=4)
    return Target("console", lines, run)


# ---------------------------------------------------------------------- session files
JSONV = st.recursive(st.none() | st.booleans() | st.integers() | st.integers(-1, 1 << 70)
                     | st.floats() | st.text(max_size=8),
                     lambda c: st.lists(c, max_size=3)
                     | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=8)


def _short_sessions() -> list[list[dict]]:
    files = sorted(SESSIONS.glob("*.nitrec"), key=lambda p: p.stat().st_size)[:3]
    return [[json.loads(x) for x in f.read_text().splitlines()] for f in files]


def _mutate_records(data: st.DataObject, recs: list[dict]) -> bytes:  # noqa: C901
    recs = json.loads(json.dumps(recs))
    how = data.draw(st.sampled_from(["field", "field", "drop", "dup", "bytes", "swap"]))
    if how == "drop" and len(recs) > 1:
        del recs[data.draw(st.integers(1, len(recs) - 1))]
    elif how == "dup":
        i = data.draw(st.integers(0, len(recs) - 1))
        recs.insert(data.draw(st.integers(0, len(recs))), recs[i])
    elif how == "swap" and len(recs) > 2:
        i = data.draw(st.integers(1, len(recs) - 2))
        recs[i], recs[i + 1] = recs[i + 1], recs[i]
    elif how == "field":
        target: Any = recs[data.draw(st.integers(0, len(recs) - 1))]
        while isinstance(target, dict | list) and target and data.draw(st.booleans()):
            keys = list(target) if isinstance(target, dict) else list(range(len(target)))
            k = data.draw(st.sampled_from(keys))
            if not isinstance(target[k], dict | list) or not target[k]:
                break
            target = target[k]
        if isinstance(target, dict) and target:
            target[data.draw(st.sampled_from(list(target)))] = data.draw(JSONV)
        elif isinstance(target, list) and target:
            target[data.draw(st.integers(0, len(target) - 1))] = data.draw(JSONV)
    raw = bytearray("".join(json.dumps(r) + "\n" for r in recs).encode())
    if how == "bytes":
        for _ in range(data.draw(st.integers(1, 4))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        if data.draw(st.booleans()):
            raw = raw[:data.draw(st.integers(0, len(raw)))]
    return bytes(raw)


def session_target(tmpdir: Path) -> Target:
    samples = _short_sessions()

    @st.composite
    def cases(draw: Callable) -> bytes:
        data = draw(st.data())
        return _mutate_records(data, draw(st.sampled_from(samples)))

    def run(raw: bytes) -> Outcome:
        p = tmpdir / "case.nitrec"
        p.write_bytes(raw)
        try:
            read_session(p)
        except SessionError as e:
            return Outcome("multiline", str(e)) if "\n" in str(e) else Outcome("rejected")
        except Exception as e:  # noqa: BLE001 - the fuzzer's outermost layer counts escapes
            return _escape(e)
        try:
            res = replay(p, verify=True)
        except SessionError:
            return Outcome("rejected")
        except Exception as e:  # noqa: BLE001
            return _escape(e)
        if res.machine is not None:
            errs = internal_errors(res.machine)
            if errs:
                return Outcome("internal", errs[0])
        return Outcome()

    return Target("session", cases(), run)


# ---------------------------------------------------------------------- ELF files
def elf_target(tmpdir: Path) -> Target:
    kernels = [DEFAULT_KERNEL.read_bytes(), I386_KERNEL.read_bytes()]

    @st.composite
    def cases(draw: Callable) -> bytes:
        b = bytearray(draw(st.sampled_from(kernels)))
        for _ in range(draw(st.integers(1, 8))):
            where = draw(st.integers(0, 255) | st.integers(0, len(b) - 1))
            b[where] = draw(st.integers(0, 255))
        if draw(st.booleans()):
            b = b[:draw(st.integers(0, len(b)))]
        return bytes(b)

    def run(raw: bytes) -> Outcome:
        p = tmpdir / "case.elf"
        p.write_bytes(raw)
        try:
            m = Machine(kernel=p, vcpus=1)
        except MachineError as e:
            return Outcome("multiline", str(e)) if "\n" in str(e) else Outcome("rejected")
        except Exception as e:  # noqa: BLE001 - the fuzzer's outermost layer counts escapes
            return _escape(e)
        try:
            m.run(max_insns=20_000)
        except Exception as e:  # noqa: BLE001
            return _escape(e)
        errs = internal_errors(m)
        return Outcome("internal", errs[0]) if errs else Outcome()

    return Target("elf", cases(), run)


# ---------------------------------------------------------------------- guest code
PREFIXES = [0x66, 0x67, 0xF2, 0xF3, 0xF0, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, *range(0x40, 0x50)]
SNIPPETS = [
    b"\x66\xba\xfd\xff", b"\xba\xff\xff\x00\x00", b"\xec", b"\xed", b"\xee", b"\xef", b"\x66\xed",
    b"\x6c", b"\x6d", b"\x6e", b"\x6f", b"\xf3\x6c", b"\xf3\x6d", b"\xf3\x6e", b"\xf3\x6f",
    b"\xe4\xff", b"\xe5\xfe", b"\xe6\x61", b"\xe7\xfd", b"\xd7", b"\x9b", b"\x0f\x06",
    b"\x8b\x04\x24", b"\x8b\x04\x25\x00\x10\x00\x00", b"\x8b\x04\x20", b"\xf2\x74\x00",
    b"\xf2\x0f\x84\x00\x00\x00\x00", b"\x64\x8c\x18", b"\x66\x48\x50", b"\x66\x48\x58",
    b"\x0f\x21\xc0", b"\x44\x0f\x21\xc0", b"\x44\x0f\x23\xc0", b"\x48\xc7\xc1\x03\x00\x00\x00",
    b"\x48\x8d\x35\x00\x00\x00\x00", b"\x48\x8d\x3d\x00\x10\x00\x00", b"\xfc", b"\xfd",
    b"\x90", b"\xcc", b"\xcf", b"\xf4", b"\x0f\x0b", b"\x0f\x01\xd9",
]


@st.composite
def guest_code(draw: Callable) -> tuple[str, bytes]:
    parts = []
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.integers(0, 3))
        if kind == 0:
            parts.append(draw(st.sampled_from(SNIPPETS)))
        elif kind == 1:
            parts.append(bytes(draw(st.lists(st.sampled_from(PREFIXES), max_size=3)))
                         + draw(st.sampled_from(SNIPPETS)))
        elif kind == 2:
            parts.append(draw(st.binary(min_size=1, max_size=8)))
        else:
            parts.append(b"\x0f" + draw(st.binary(min_size=1, max_size=5)))
    return draw(st.sampled_from(["amd64", "i386", "amd64-kdb"])), b"".join(parts)


def guestcode_target() -> Target:
    """Random code three ways: at the entry of the amd64 and the i386 kernels (no IDT yet:
    the first fault shuts down), and in the booted amd64 kernel where ddb stopped it (its
    IDT, handlers, kdb and the hypervisor's exits all take part)."""
    bases = {"amd64": Machine(vcpus=1), "i386": Machine(kernel=I386_KERNEL, vcpus=1)}
    for m in bases.values():
        m.step_vcpu(0)
    bases["amd64-kdb"] = in_ddb()

    def run(case: tuple[str, bytes]) -> Outcome:
        kind, code = case
        m = bases[kind].clone()
        v = m.vcpus[0]
        try:
            if kind == "amd64-kdb":
                # the code replaces the instructions where the guest resumes from ddb
                m.vm.write_guest(v, m.ddb.frame()["tf_rip"], code)
                m.debugger("c", max_insns=5_000)
                ev = m.run(max_insns=5_000)
            else:
                # the code replaces the firmware at the vCPU's RIP once its first instruction
                # ran (from then on the vCPU's paging state is the guest's)
                m.vm.write_guest(v, v.cpu.rip, code)
                ev = m.run(max_insns=5_000)
        except Exception as e:  # noqa: BLE001 - the fuzzer's outermost layer counts escapes
            return _escape(e)
        return run_verdict(m, ev)

    return Target("guest", guest_code(), run)


def all_targets(tmpdir: Path | None = None) -> dict[str, Callable[[], Target]]:
    d = Path(tmpdir) if tmpdir is not None else Path(tempfile.mkdtemp(prefix="nitdbg-fuzz-"))
    from .argvfuzz import argv_target
    from .bootfuzz import multiboot_target
    from .devfuzz import pcdev_target
    from .gdbfuzz import gdb_target, gdbsock_target
    from .timelinefuzz import timeline_target
    from .tuifuzz import tui_target
    return {"host": lambda: host_target(d / "host"), "ddb": ddb_target,
            "console": console_target,
            "session": lambda: session_target(d), "elf": lambda: elf_target(d),
            "guest": guestcode_target, "gdb": gdb_target, "gdbsock": gdbsock_target,
            "argv": lambda: argv_target(d),
            "multiboot": lambda: multiboot_target(d), "pcdev": lambda: pcdev_target(d),
            "timeline": timeline_target, "tui": lambda: tui_target(d / "tui")}
