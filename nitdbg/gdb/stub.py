"""The gdb stub's packets, dispatched from one table (protocol.py). Threads are vCPUs
(thread id = vCPU + 1, as QEMU numbers them). All-stop mode: while gdb has the machine,
every vCPU is held (Machine.hold), and a resume runs them until one stops.

Breakpoints (Z0, Z1) and watchpoints (Z2-Z4) are host stop conditions checked by the vCPU
(x86/hoststop.py): nothing is written into guest memory, so the guest never sees them and
gdb's memory reads show the guest's own bytes. Reverse execution (bs, bc) goes through the
machine's timeline.

A handler returns the reply, or a Resume for the server's run loop. A packet that breaks
its schema, names a missing thread or register, or comes out of order gets one `Enn` reply
and changes nothing: every check happens before the first change.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from ..machine import Machine, MachineError, StopEvent
from ..x86.hoststop import WATCH_ACCESS, WATCH_READ, WATCH_WRITE
from . import target
from .protocol import MAX_PACKET, Row, SchemaError, Table

E_ARGS, E_THREAD, E_STATE, E_FAULT, E_SIZE = b"E01", b"E02", b"E16", b"E14", b"E22"
CHUNK = 20_000            # instructions per run slice between looks at the socket
STEP_LIMIT = 2_000_000    # a step that has not ended after this many instructions stops

ROWS = [
    Row("qSupported", "supported", "b"),
    Row("qXfer:features:read:", "xfer_features", "s:h,h"),
    Row("qXfer:threads:read::", "xfer_threads", "h,h"),
    Row("QStartNoAckMode", "no_ack"),
    Row("qAttached", "attached", "b"),
    Row("qC", "current_thread"),
    Row("qfThreadInfo", "thread_info_first"),
    Row("qsThreadInfo", "thread_info_next"),
    Row("qThreadExtraInfo,", "thread_extra_info", "t"),
    Row("qRcmd,", "monitor", "x"),
    Row("qSymbol::", "symbol"),
    Row("qOffsets", "offsets"),
    Row("vCont?", "vcont_query"),
    Row("vCont", "vcont", "b"),
    Row("vKill;", "kill", "s"),
    Row("?", "halt_reason"),
    Row("g", "read_registers"),
    Row("G", "write_registers", "x"),
    Row("p", "read_register", "h"),
    Row("P", "write_register", "h=x"),
    Row("m", "read_memory", "h,h"),
    Row("M", "write_memory", "h,h:x"),
    Row("X", "write_memory_binary", "h,h:b"),
    Row("c", "cont", "h?"),
    Row("s", "step", "h?"),
    Row("C", "cont_signal", "b"),
    Row("S", "step_signal", "b"),
    Row("H", "set_thread", "ot"),
    Row("T", "thread_alive", "t"),
    Row("Z", "insert", "h,h,h"),
    Row("z", "remove", "h,h,h"),
    Row("D", "detach", "b"),
    Row("k", "kill"),
    Row("bs", "reverse_step"),
    Row("bc", "reverse_cont"),
]
TABLE = Table(ROWS)


@dataclass
class Resume:
    """What the run loop is to do: step `thread` (or none) and let `others` run."""

    step: int | None                # vCPU to step, or None to continue
    run: tuple[int, ...]            # vCPUs that may run
    reverse: str | None = None      # "step" or "cont": go back instead


@dataclass
class Stub:
    m: Machine
    ack: bool = True
    detached: bool = False
    killed: bool = False
    g_thread: int = 0               # vCPU for g/p/m (Hg)
    c_thread: int = 0               # vCPU for s/c (Hc)
    sw: set[int] = field(default_factory=set)
    hw: set[int] = field(default_factory=set)
    watches: dict[tuple[int, int, int], None] = field(default_factory=dict)
    threads_listed: bool | None = None
    last_stop: bytes = b"S05"
    notes: list[str] = field(default_factory=list)   # text for gdb's console (O packets)
    layout: target.Layout = None    # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.layout is None:
            self.layout = target.layout(_is_elf64(self.m))
        self.last_stop = self.stop_reply(StopEvent("gdb", 0, {"hit": ("initial",)}))
        if self.m.timeline is not None:
            self.m.timeline.points_provider = lambda: (tuple(self.sw | self.hw),
                                                       tuple(self.watches))

    @property
    def nvcpu(self) -> int:
        return len(self.m.vcpus)

    # ------------------------------------------------------------------ dispatch
    def handle(self, packet: bytes) -> bytes | Resume:
        found = TABLE.lookup(packet)
        if found is None:
            return b""                              # not supported: the empty reply
        row, rest = found
        try:
            args = row.parse(rest)
        except SchemaError:
            return E_ARGS
        try:
            return getattr(self, "h_" + row.handler)(*args)
        except MachineError:
            return E_FAULT
        except Exception as e:  # noqa: BLE001 - a stub bug must not end the session
            print(f"gdb: internal error on {packet[:40]!r}: {type(e).__name__}: {e}",
                  file=sys.stderr)
            return E_STATE

    # ------------------------------------------------------------------ helpers
    def _tid(self, t: int | None, allow_all: bool = True) -> int | None:
        """gdb thread id -> vCPU; -1/0 mean any (None), a missing thread raises."""
        if t is None or t in (-1, 0):
            if not allow_all:
                raise _Bad(E_THREAD)
            return None
        if not 1 <= t <= self.nvcpu:
            raise _Bad(E_THREAD)
        return t - 1

    def regs(self, vcpu: int) -> dict[str, int]:
        return self.m.live_regs(vcpu)

    def _stops(self) -> dict:
        spec = {"bps": frozenset(self.sw | self.hw),
                "watches": tuple(self.watches)}
        return {i: dict(spec) for i in range(self.nvcpu)}

    def stop_reply(self, ev: StopEvent) -> bytes:
        m = self.m
        if ev.reason == "shutdown":
            return b"X0b"                           # SIGSEGV: the VM shut down
        if ev.reason == "debug_exit":
            return f"W{(m.exit_status or 0) & 0xFF:02x}".encode()
        vcpu = ev.vcpu if ev.vcpu is not None else self.c_thread
        hit = ev.info.get("hit") or ()
        parts = [f"T05thread:{vcpu + 1:x};"]
        if hit[:1] == ("swbreak",):
            parts.append("hwbreak:;" if hit[1] in self.hw and hit[1] not in self.sw
                         else "swbreak:;")
        elif hit[:1] == ("watch",):
            name = {WATCH_WRITE: "watch", WATCH_READ: "rwatch", WATCH_ACCESS: "awatch"}
            parts.append(f"{name[hit[1]]}:{hit[2]:x};")
        elif hit[:1] == ("begin",):
            parts.append("replaylog:begin;")
        self.g_thread = self.c_thread = vcpu
        return "".join(parts).encode()

    # ------------------------------------------------------------------ query packets
    def h_supported(self, features: bytes) -> bytes:
        return (f"PacketSize={MAX_PACKET:x};qXfer:features:read+;qXfer:threads:read+;"
                "swbreak+;hwbreak+;ReverseStep+;ReverseContinue+;QStartNoAckMode+;"
                "vContSupported+").encode()

    def h_xfer_features(self, annex: str, off: int, length: int) -> bytes:
        if annex != "target.xml":
            return E_ARGS
        return _xfer(self.layout.xml.encode(), off, length)

    def h_xfer_threads(self, off: int, length: int) -> bytes:
        body = "".join(f'<thread id="{i + 1:x}" core="{i}" name="vcpu{i}">'
                       f"{self._extra(i)}</thread>" for i in range(self.nvcpu))
        return _xfer(f'<?xml version="1.0"?>\n<threads>{body}</threads>'.encode(), off, length)

    def h_no_ack(self) -> bytes:
        self.ack = False
        return b"OK"

    def h_attached(self, pid: bytes) -> bytes:
        return b"1"            # gdb detaches (not kills) when it quits

    def h_current_thread(self) -> bytes:
        return f"QC{self.c_thread + 1:x}".encode()

    def h_thread_info_first(self) -> bytes:
        self.threads_listed = True
        return ("m" + ",".join(f"{i + 1:x}" for i in range(self.nvcpu))).encode()

    def h_thread_info_next(self) -> bytes:
        if not self.threads_listed:
            return E_STATE                         # qsThreadInfo before qfThreadInfo
        return b"l"

    def _extra(self, vcpu: int) -> str:
        v = self.m.vcpus[vcpu]
        rip = self.regs(vcpu)["rip"]
        state = ("in ddb" if vcpu in self.m.in_kdb else "halted" if v.halted else "running")
        return f"vCPU {vcpu} {state} at {self.m.symbols.format(rip)}"

    def h_thread_extra_info(self, t: int) -> bytes:
        try:
            vcpu = self._tid(t, allow_all=False)
        except _Bad as b:
            return b.reply
        return self._extra(vcpu).encode().hex().encode()

    def h_monitor(self, cmd: bytes) -> bytes:
        """`monitor LINE`: a host command (bhyvectl, sysctl, ktrdump, ...); `monitor db
        LINE`: a line at the db> prompt when the guest is in its debugger."""
        line = cmd.decode(errors="replace").strip()
        if not line:
            return E_ARGS
        if line == "db" or line.startswith("db "):
            out = self.m.debugger(line[2:].strip())
        elif line in ("back", "step-back"):
            out = self.stop_reply(self.m.step_back(self.c_thread)).decode() + "\n"
        else:
            out = self.m.host(line)
        return (out or "\n").encode().hex().encode()

    def h_symbol(self) -> bytes:
        return b"OK"

    def h_offsets(self) -> bytes:
        return b"Text=0;Data=0;Bss=0"

    def h_halt_reason(self) -> bytes:
        return self.last_stop

    def h_thread_alive(self, t: int) -> bytes:
        try:
            self._tid(t, allow_all=False)
        except _Bad as b:
            return b.reply
        return b"OK"

    def h_set_thread(self, op: str, t: int) -> bytes:
        if op not in ("g", "c"):
            return E_ARGS
        try:
            vcpu = self._tid(t)
        except _Bad as b:
            return b.reply
        if op == "g":
            self.g_thread = vcpu if vcpu is not None else self.g_thread
        else:
            self.c_thread = vcpu if vcpu is not None else self.c_thread
        return b"OK"

    # ------------------------------------------------------------------ registers
    def h_read_registers(self) -> bytes:
        regs = self.regs(self.g_thread)
        return b"".join(target.encode(r, regs) for r in self.layout.regs).hex().encode()

    def h_read_register(self, n: int) -> bytes:
        if n >= len(self.layout.regs):
            return E_ARGS
        return target.encode(self.layout.regs[n], self.regs(self.g_thread)).hex().encode()

    def _changes(self, pairs: list[tuple[target.Reg, bytes]]) -> list[tuple[str, int]] | None:
        """The register writes `pairs` ask for, or None if one is not allowed."""
        regs = self.regs(self.g_thread)
        out = []
        for r, raw in pairs:
            new = int.from_bytes(raw, "little")
            if new == int.from_bytes(target.encode(r, regs), "little"):
                continue
            if r.source is None or r.source in ("cs", "ss", "ds", "es", "fs", "gs"):
                return None                 # x87 (not modelled) and selectors: read-only
            if r.bits == 32 and r.source != "rflags" and self.layout.arch != "i386":
                return None
            if r.source == "rflags":
                new = (regs["rflags"] & ~0xFFFF_FFFF) | new
            out.append((r.source, new))
        return out

    def _write(self, changes: list[tuple[str, int]]) -> bytes:
        for name, value in changes:
            self.m.write_reg(self.g_thread, name, value)
        return b"OK"

    def h_write_registers(self, data: bytes) -> bytes:
        size = sum(r.size for r in self.layout.regs)
        if len(data) != size:
            return E_ARGS
        pairs, off = [], 0
        for r in self.layout.regs:
            pairs.append((r, data[off:off + r.size]))
            off += r.size
        changes = self._changes(pairs)
        return E_ARGS if changes is None else self._write(changes)

    def h_write_register(self, n: int, data: bytes) -> bytes:
        if n >= len(self.layout.regs) or len(data) != self.layout.regs[n].size:
            return E_ARGS
        changes = self._changes([(self.layout.regs[n], data)])
        return E_ARGS if changes is None else self._write(changes)

    # ------------------------------------------------------------------ memory
    def h_read_memory(self, addr: int, length: int) -> bytes:
        if length * 2 > MAX_PACKET:
            return E_SIZE
        if addr + length > 1 << 64:
            return E_ARGS
        data = self._read(addr, length)
        return E_FAULT if not data and length else data.hex().encode()

    def _read(self, addr: int, length: int) -> bytes:
        """Guest bytes, up to the first unreachable page; ddb's int3 bytes (planted while
        the guest runs under `c`) show as the bytes they replace."""
        m, vcpu = self.m, self.g_thread
        try:
            data = bytearray(m.read_mem(vcpu, addr, length))
        except MachineError:
            data = bytearray()
            while len(data) < length:
                n = min(length - len(data), 4096 - ((addr + len(data)) & 0xFFF))
                try:
                    data += m.read_mem(vcpu, addr + len(data), n)
                except MachineError:
                    break
        ddb = m._ddb
        if ddb is not None:
            for b in ddb.breaks.list:
                if b.saved is not None and addr <= b.address < addr + len(data):
                    data[b.address - addr] = b.saved
        return bytes(data)

    def _write_mem(self, addr: int, length: int, data: bytes) -> bytes:
        if len(data) != length or addr + length > 1 << 64:
            return E_ARGS
        if length:
            self.m.write_mem(self.g_thread, addr, data)
        return b"OK"

    def h_write_memory(self, addr: int, length: int, data: bytes) -> bytes:
        return self._write_mem(addr, length, data)

    def h_write_memory_binary(self, addr: int, length: int, data: bytes) -> bytes:
        return self._write_mem(addr, length, data)

    # ------------------------------------------------------------------ break/watchpoints
    def h_insert(self, kind: int, addr: int, size: int) -> bytes:
        return self._zpoint(kind, addr, size, True)

    def h_remove(self, kind: int, addr: int, size: int) -> bytes:
        return self._zpoint(kind, addr, size, False)

    def _zpoint(self, kind: int, addr: int, size: int, insert: bool) -> bytes:
        if kind > 4 or addr >= 1 << 64:
            return E_ARGS
        if kind in (0, 1):
            if not 1 <= size <= 15:
                return E_ARGS
            s = self.sw if kind == 0 else self.hw
            (s.add if insert else s.discard)(addr)
            return b"OK"
        if not 1 <= size <= 4096:
            return E_ARGS
        key = (addr, addr + size, {2: WATCH_WRITE, 3: WATCH_READ, 4: WATCH_ACCESS}[kind])
        if insert:
            self.watches[key] = None
        else:
            self.watches.pop(key, None)
        return b"OK"

    # ------------------------------------------------------------------ resuming
    def _resume_at(self, addr: int | None) -> bytes | None:
        if addr is not None:
            self.m.write_reg(self.c_thread, "rip", addr)
        return None

    def h_cont(self, addr: int | None) -> bytes | Resume:
        self._resume_at(addr)
        return Resume(None, tuple(range(self.nvcpu)))

    def h_step(self, addr: int | None) -> bytes | Resume:
        self._resume_at(addr)
        return Resume(self.c_thread, (self.c_thread,))

    def _signal_args(self, rest: bytes) -> tuple[bool, int | None]:
        """Csig[;addr] / Ssig[;addr]: the signal is not delivered (there is no process)."""
        sig, _, addr = rest.partition(b";")
        if not _is_hex(sig) or len(sig) > 2 or (addr and not _is_hex(addr)) \
                or len(addr) > 16:
            return False, None
        return True, int(addr, 16) if addr else None

    def h_cont_signal(self, rest: bytes) -> bytes | Resume:
        ok, addr = self._signal_args(rest)
        return self.h_cont(addr) if ok else E_ARGS

    def h_step_signal(self, rest: bytes) -> bytes | Resume:
        ok, addr = self._signal_args(rest)
        return self.h_step(addr) if ok else E_ARGS

    def h_vcont_query(self) -> bytes:
        return b"vCont;c;C;s;S"

    def h_vcont(self, rest: bytes) -> bytes | Resume:
        """vCont;ACTION[:TID];...: the first action that names a thread wins for it, an
        action without a thread applies to the rest (GDB manual, "vCont")."""
        if not rest.startswith(b";") or len(rest) < 2:
            return E_ARGS
        step, run, default = None, set(), None
        seen: set[int] = set()
        for item in rest[1:].split(b";"):
            act, _, tid = item.partition(b":")
            if act[:1] not in (b"c", b"s", b"C", b"S") or \
                    (act[:1] in (b"C", b"S") and not _is_hex(act[1:])) or \
                    (act[:1] in (b"c", b"s") and len(act) != 1):
                return E_ARGS
            a = act[:1].lower()
            if not tid:
                if default is None:
                    default = a
                continue
            if not _is_hex(tid) and tid != b"-1":
                return E_ARGS
            try:
                vcpu = self._tid(-1 if tid == b"-1" else int(tid, 16))
            except _Bad as b:
                return b.reply
            targets = range(self.nvcpu) if vcpu is None else (vcpu,)
            for v in targets:
                if v in seen:
                    continue
                seen.add(v)
                if a == b"s":
                    if step is not None:
                        return E_ARGS              # one stepping thread at a time
                    step = v
                run.add(v)
        if default is not None:
            for v in range(self.nvcpu):
                if v not in seen:
                    if default == b"s":
                        if step is not None:
                            return E_ARGS
                        step = v
                    run.add(v)
        if not run:
            return E_ARGS
        return Resume(step, tuple(sorted(run)))

    def h_reverse_step(self) -> bytes | Resume:
        return Resume(self.c_thread, (self.c_thread,), reverse="step")

    def h_reverse_cont(self) -> bytes | Resume:
        return Resume(None, tuple(range(self.nvcpu)), reverse="cont")

    def h_detach(self, pid: bytes) -> bytes:
        self.detached = True
        return b"OK"

    def h_kill(self, pid: str | None = None) -> bytes:
        self.killed = True
        return b"OK"

    # ------------------------------------------------------------------ the run loop
    def resume(self, r: Resume, interrupted: Callable[..., bool]) -> bytes:
        """Run (or go back) until a stop, and return the stop reply."""
        m = self.m
        try:
            if r.reverse == "step":
                ev = m.step_back(r.step if r.step is not None else self.c_thread)
            elif r.reverse == "cont":
                ev = m.back_to_stop(tuple(self.sw | self.hw), tuple(self.watches))
            else:
                ev = self._forward(r, interrupted)
        except MachineError:
            return E_STATE
        if ev.reason == "kdb" and ev.vcpu is not None:
            # the guest entered its debugger: ddb takes the stop as it would at the console
            # (its banner goes to gdb's console; `monitor db LINE` talks to it)
            self.notes.append(m.enter_debugger(ev))
        self.last_stop = self.stop_reply(ev)
        return self.last_stop

    def _forward(self, r: Resume, interrupted: Callable[..., bool]) -> StopEvent:
        m = self.m
        stops = self._stops()
        if r.step is not None:
            stops[r.step]["step"] = True
        spent = 0
        if True:
            while True:
                ev = m.run_stops(r.run, stops, CHUNK)
                spent += CHUNK
                if ev.reason == "idle":
                    # everything waits for an input only the host can give
                    if interrupted(wait=True):
                        return StopEvent("gdb", self.c_thread, {"hit": ("interrupt",)})
                    continue
                if ev.reason not in ("budget",):
                    return ev
                if interrupted() or (r.step is not None and spent >= STEP_LIMIT):
                    return StopEvent("gdb", r.step if r.step is not None else self.c_thread,
                                     {"hit": ("interrupt",)})


class _Bad(Exception):  # noqa: N818 - carries the error reply
    def __init__(self, reply: bytes):
        self.reply = reply


def _xfer(doc: bytes, off: int, length: int) -> bytes:
    if off > len(doc):
        return E_ARGS
    chunk = doc[off:off + min(length, MAX_PACKET - 1)]
    from .protocol import escape_binary
    return (b"l" if off + len(chunk) >= len(doc) else b"m") + escape_binary(chunk)


def _is_hex(b: bytes) -> bool:
    return bool(b) and all(c in b"0123456789abcdefABCDEF" for c in b)


def _is_elf64(m: Machine) -> bool:
    try:
        with open(m.kernel_path, "rb") as f:
            return f.read(5)[4:5] == b"\x02"
    except OSError:
        return True
