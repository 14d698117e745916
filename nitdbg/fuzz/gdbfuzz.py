"""The gdb stub's fuzzer: byte streams as gdb would send them (frames with good and bad
checksums, oversized packets, noise, ^C) cut into random reads and fed through the stub's
packet reader and dispatch (nitdbg/gdb/protocol.py, stub.py), with a timeline attached so
bs/bc go back for real.

A packet answered with an error (`Enn`) or the empty reply (not supported) must change
nothing: the machine (digest.parts) and the stub's own state (breakpoints, watchpoints,
selected threads, ack mode). No packet may raise out of the stub or reach its "internal
error" catch-all; a resume runs a bounded number of slices."""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
from collections.abc import Callable

from hypothesis import strategies as st

from ..gdb.protocol import MAX_PACKET, Reader, checksum, escape_binary, frame
from ..gdb.stub import Resume, Stub
from ..machine import I386_KERNEL, Machine
from ..timeline import Timeline
from . import digest
from .targets import Outcome, Target, _booted, _escape, internal_errors

SLICES = 3                 # run slices (stub.CHUNK instructions each) a resume may take
ERROR_REPLY = re.compile(rb"E[0-9a-fA-F]{2}")

ADDRS = [0, 1, 0xFFF, 0x1000, 0x9000, 0x100000, 0xFEC00000, 0xFEE00000, 0xFEE00FFF,
         0x7FFF_FFFF_FFFF, 0x8000_0000_0000, 0xFFFF_8000_0000_0000, 0xFFFF_FFFF_8000_0000,
         0xFFFF_FFFF_FFFF_F000, 0xFFFF_FFFF_FFFF_FFFF, 0xFFFF_FFFF_FFFF_FFF0]
LENGTHS = [0, 1, 2, 8, 0xFFF, 0x1000, 0x1001, MAX_PACKET // 2 - 1, MAX_PACKET // 2,
           MAX_PACKET, 0xFFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF]
TIDS = ["-1", "0", "1", "2", "3", "ff", "-2", "", "x", "10000000000000000"]
WORDS = ["sysctl debug.nit", "bhyvectl --vm=vm2 --get-rip --cpu=0", "db", "db show registers",
         "back", "step-back", "ktrdump -c", "nosuch", "db x/i $rip", ""]


def _hexnum(draw: Callable, pool: list[int]) -> str:
    v = draw(st.sampled_from(pool) | st.integers(0, 1 << 64) | st.integers(0, 64))
    s = f"{v:x}"
    return draw(st.sampled_from([s, s, s.upper(), "0" * 17 + s, "-" + s, s + "g", ""]))


@st.composite
def packet(draw: Callable) -> bytes:
    """One packet's data: mostly the stub's own commands with odd arguments."""
    a, n = _hexnum(draw, ADDRS), _hexnum(draw, LENGTHS)
    reg = _hexnum(draw, [0, 16, 17, 23, 24, 39, 40, 57, 58, 59, 100])
    data = draw(st.binary(max_size=24))
    hexdata = draw(st.sampled_from([data.hex(), data.hex()[:-1], "zz", ""]))
    tid = draw(st.sampled_from(TIDS))
    act = draw(st.sampled_from(["c", "s", "C05", "S05", "C", "Sxx", "t", "r0,1", "cc", "s1",
                                ""]))
    kind = draw(st.sampled_from("0123459"))
    choices = [
        f"m{a},{n}", f"M{a},{n}:{hexdata}", f"m{a}", f"M{a},{n}", f"p{reg}",
        f"P{reg}={hexdata}", f"Z{kind},{a},{n}", f"z{kind},{a},{n}", f"Z{kind},{a}",
        f"vCont;{act}", f"vCont;{act}:{tid}", f"vCont;{act}:{tid};{act}", "vCont", "vCont;",
        "vCont?", f"qXfer:features:read:target.xml:{a},{n}",
        f"qXfer:features:read:{draw(st.sampled_from(['', 'x.xml', '../x']))}:0,{n}",
        f"qXfer:threads:read::{a},{n}", "qXfer:threads:read:", f"qSupported:{hexdata}",
        "qSupported", f"H{draw(st.sampled_from('gcxG'))}{tid}", f"T{tid}",
        f"qThreadExtraInfo,{tid}", "qsThreadInfo", "qfThreadInfo", "qC", "qAttached",
        "qOffsets", "qSymbol::", "?", "g", f"G{hexdata}", f"G{'00' * 1000}",
        "bs", "bc", "bs1", "bc;", "s", "c", f"s{a}", f"c{a}", f"C{act}", f"S{act};{a}",
        f"qRcmd,{draw(st.sampled_from(WORDS)).encode().hex()}", "qRcmd,", "qRcmd,zz",
        "QStartNoAckMode", "vKill;1", "D", "D;1", "k", "vMustReplyEmpty", "qTStatus",
        f"{draw(st.sampled_from('mMXZzpPHTqQvbs'))}{draw(st.text(max_size=10))}",
    ]
    pkt = draw(st.sampled_from(choices)).encode()
    if draw(st.integers(0, 9)) == 0:                     # binary write with raw/escaped data
        raw = draw(st.binary(max_size=16))
        body = draw(st.sampled_from([escape_binary(raw), raw, escape_binary(raw) + b"}"]))
        return f"X{a},{draw(st.sampled_from([n, str(len(raw))]))}:".encode() + body
    return pkt


@st.composite
def stream(draw: Callable) -> list[bytes]:
    """What gdb sends, cut into the reads the stub would get."""
    out = bytearray()
    for _ in range(draw(st.integers(1, 6))):
        how = draw(st.sampled_from(["good"] * 6 + ["csum", "noise", "intr", "big", "cut"]))
        p = draw(packet())
        if how == "good":
            out += frame(p)
        elif how == "csum":
            out += b"$" + p + b"#" + draw(st.sampled_from(
                [f"{(checksum(p) + 1) & 0xFF:02x}".encode(), b"zz", b"0", b"", b"#$"]))
        elif how == "noise":
            out += draw(st.binary(max_size=12))
        elif how == "intr":
            out += b"\x03"
        elif how == "big":
            out += frame(b"m" + b"0" * (MAX_PACKET + draw(st.integers(-2, 40))))
        else:
            out += frame(p)[:draw(st.integers(0, len(p)))]
    data = bytes(out)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    return [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def stub_state(s: Stub) -> str:
    """What a refused packet must not change in the stub itself."""
    return hashlib.sha256(repr((sorted(s.sw), sorted(s.hw), sorted(s.watches), s.g_thread,
                                s.c_thread, s.ack, s.detached, s.killed, s.threads_listed,
                                s.last_stop)).encode()).hexdigest()


def _is_refusal(reply: bytes) -> bool:
    return reply == b"" or ERROR_REPLY.fullmatch(reply) is not None


def gdb_target() -> Target:
    """Three machines gdb may meet: the booted amd64 guest at its shell prompt, and the amd64
    and i386 guests before their first instruction (as `nitdbg run --gdb` holds them)."""
    bases = {"booted": _booted(), "amd64": Machine(vcpus=2),
             "i386": Machine(kernel=I386_KERNEL, vcpus=1)}

    def run(case: tuple[str, list[bytes]]) -> Outcome:
        kind, reads = case
        m = bases[kind].clone()
        Timeline(m)
        m.hold("gdb")
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                stub = Stub(m)
                reader = Reader()
                for chunk in reads:
                    for ev in reader.feed(chunk):
                        if ev[0] != "packet":
                            continue
                        out = _packet(stub, ev[1])
                        if out is not None:
                            return out
                        if stub.killed or stub.detached:
                            break
        except Exception as e:  # noqa: BLE001 - the fuzzer's outermost layer counts escapes
            return _escape(e)
        if "internal error" in err.getvalue():
            return Outcome("escape", err.getvalue().strip().splitlines()[0][:300])
        errs = internal_errors(m)
        return Outcome("internal", errs[0]) if errs else Outcome()

    return Target("gdb", st.tuples(st.sampled_from(sorted(bases)), stream()), run)


def _packet(stub: Stub, pkt: bytes) -> Outcome | None:
    m = stub.m
    before, sbefore = digest.parts(m), stub_state(stub)
    reply = stub.handle(pkt)
    if isinstance(reply, Resume):
        left = [SLICES]

        def interrupted(wait: bool = False) -> bool:
            left[0] -= 1
            return left[0] <= 0

        reply = stub.resume(reply, interrupted)
        if not isinstance(reply, bytes):
            return Outcome("escape", f"{pkt[:40]!r}: resume gave {type(reply).__name__}")
        return None
    if not isinstance(reply, bytes):
        return Outcome("escape", f"{pkt[:40]!r}: reply {type(reply).__name__}")
    if len(reply) > MAX_PACKET:
        return Outcome("escape", f"{pkt[:40]!r}: reply of {len(reply)} bytes > PacketSize")
    if _is_refusal(reply):
        changed = digest.changed(before, digest.parts(m))
        if stub_state(stub) != sbefore:
            changed.append("stub")
        if changed:
            return Outcome("changed", f"{pkt[:60]!r} -> {reply!r} changed {changed}")
    elif pkt.startswith(READS) and not pkt.startswith(b"qRcmd"):
        changed = digest.changed(before, digest.parts(m))
        if changed:     # a read, answered or not, leaves the machine as it was
            return Outcome("changed", f"read {pkt[:60]!r} -> {reply[:20]!r} changed {changed}")
    return None


# packets that only read the machine (the stub's own state may change: qfThreadInfo)
READS = (b"m", b"g", b"p", b"?", b"T", b"qXfer", b"qC", b"qf", b"qs", b"qThreadExtraInfo",
         b"qAttached", b"qOffsets", b"qSupported", b"vCont?")


# ---------------------------------------------------------------------- over a real socket
SOCKET_WAIT = 30.0          # seconds for the stub to answer the closing qC


def gdbsock_target() -> Target:
    """The same streams over TCP to a real GdbServer (acks, ^C, packets while running, the
    reads cut where they fall): afterwards the stub still answers (^C, then qC), unless
    the stream itself detached or killed; its thread raises nothing."""
    import socket
    import threading

    from ..gdb.server import GdbServer
    base = _booted()

    def run(case: tuple[str, list[bytes]]) -> Outcome:
        _, reads = case
        m = base.clone()
        Timeline(m)
        err = io.StringIO()
        died: list[BaseException] = []
        srv = GdbServer(m, "127.0.0.1", 0, log=lambda s: None)

        def serve() -> None:
            try:
                srv.serve()
            except BaseException as e:  # noqa: BLE001 - reported as an escape
                died.append(e)

        with contextlib.redirect_stderr(err):
            th = threading.Thread(target=serve, daemon=True)
            th.start()
            c = socket.create_connection(srv.address, timeout=SOCKET_WAIT)
            try:
                for chunk in reads:
                    c.sendall(chunk)
                got = _still_answers(c)
            except OSError:
                got = "eof"                 # the stream ended the session (D, k, vKill)
            finally:
                c.close()
            th.join(SOCKET_WAIT)
        if died:
            return _escape(died[0])
        if "internal error" in err.getvalue():
            return Outcome("escape", err.getvalue().strip().splitlines()[0][:300])
        if got == "timeout" or th.is_alive():
            return Outcome("hang", f"no answer to qC within {SOCKET_WAIT:.0f} s")
        return Outcome()

    return Target("gdbsock", st.tuples(st.just("booted"), stream()), run)


def _still_answers(c) -> str:  # noqa: ANN001 - a socket
    """^C, then qC, as gdb would: wait for the stop reply to the ^C before asking (a packet
    while the target runs is answered E16, so ask again then). "ok" when QC comes back,
    "eof" when the session has ended, "timeout" when the stub stops answering."""
    buf = bytearray()
    c.sendall(b"#00")       # ends a packet the stream left open (noise between packets)
    for _ in range(3):
        c.sendall(b"\x03")
        got = _next_packet(c, buf, (b"T", b"S", b"W", b"X"))
        if got != "ok":
            return got
        c.sendall(frame(b"qC"))
        got = _next_packet(c, buf, (b"QC", b"E16"))
        if got != "ok" or bytes(buf[:1]) != b"E":
            return got
        del buf[:]
    return "ok"


def _next_packet(c, buf: bytearray, starts: tuple[bytes, ...]) -> str:  # noqa: ANN001
    """Read until a packet whose data starts with one of `starts`; it is left in `buf`."""
    while True:
        while b"$" in buf:
            start = buf.index(b"$")
            end = buf.find(b"#", start)
            if end < 0 or len(buf) < end + 3:
                break
            data = bytes(buf[start + 1:end])
            del buf[:end + 3]
            if data.startswith(starts):
                buf[:0] = data
                return "ok"
        try:
            more = c.recv(65536)
        except TimeoutError:
            return "timeout"
        if not more:
            return "eof"
        buf += more
