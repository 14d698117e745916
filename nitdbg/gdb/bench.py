"""Figures of the gdb stub and the timeline for `nitdbg bench` (also `python3 -m
nitdbg.gdb.bench`). A front end: it reads the wall clock.

  gdb_stepi_ms, gdb_reverse_stepi_ms   median round trip of `vCont;s:1` / `bs` as gdb sees
                                       it: packet out over TCP to the stop reply back
  gdb_reverse_continue_ms              `bc` back to the previous breakpoint hit (Xtimerint)
  timeline_marks_after_10M             marks kept after a 10 M-instruction continue
  timeline_mark_mb_after_10M           guest pages + retirement logs they hold (MiB)
  timeline_clone_mb                    one mark as tracemalloc counts it (all of a clone)
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
import tracemalloc

from ..machine import Machine
from ..timeline import Timeline
from .protocol import Reader, frame
from .server import GdbServer

RUN_INSNS = 10_000_000


class _Client:
    """Just enough of gdb's side of the protocol to time round trips."""

    def __init__(self, port: int):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.r = Reader()
        self.pending: list[tuple] = []
        self.ask(b"QStartNoAckMode")

    def ask(self, packet: bytes) -> bytes:
        self.s.sendall(frame(packet))
        while True:
            for ev in self.pending:
                if ev[0] == "packet":
                    self.pending.remove(ev)
                    return ev[1]
            self.pending += self.r.feed(self.s.recv(65536))

    def close(self) -> None:
        self.s.sendall(frame(b"D"))
        self.s.close()


def _timed(c: _Client, packet: bytes, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        reply = c.ask(packet)
        times.append(time.perf_counter() - t)
        if not reply.startswith(b"T05"):
            raise RuntimeError(f"{packet!r} -> {reply!r}")
    return statistics.median(times) * 1000


def bench_figures(steps: int = 20, run_insns: int = RUN_INSNS) -> dict[str, float]:
    m = Machine()
    m.boot_to_prompt()
    m.console_input(b"while [ 1 ]; do : done\r")
    m.run(max_insns=50_000)
    tl = Timeline(m)
    server = GdbServer(m, "127.0.0.1", 0, log=lambda s: None)
    threading.Thread(target=server.serve, kwargs={"once": False}, daemon=True).start()
    c = _Client(server.address[1])
    figs: dict[str, float] = {}
    figs["gdb_stepi_ms"] = round(_timed(c, b"vCont;s:1", steps), 2)
    figs["gdb_reverse_stepi_ms"] = round(_timed(c, b"bs", steps), 2)
    c.close()
    # a long continue, driven as the stub drives one (20 k-instruction slices with a
    # breakpoint armed), without waiting for a ^C
    time.sleep(0.2)
    never = {i: {"bps": frozenset({0x1})} for i in range(len(m.vcpus))}
    start = m.total_retired
    while m.total_retired - start < run_insns:
        m.run_stops(tuple(range(len(m.vcpus))), never, 20_000)
    figs["timeline_marks_after_10M"] = float(len(tl.marks))
    figs["timeline_mark_mb_after_10M"] = round(tl.memory_bytes() / 2**20, 1)
    tracemalloc.start()
    snap = m.clone()
    figs["timeline_clone_mb"] = round(tracemalloc.get_traced_memory()[0] / 2**20, 1)
    tracemalloc.stop()
    del snap
    # reverse-continue to the last timer interrupt, as gdb sees it (the busy vCPU takes the
    # 100 Hz tick; the idle one sleeps tickless and passes no idle loop in 10 M instructions)
    c = _Client(server.address[1])
    c.ask(b"Z0,%x,1" % m.symbols.address("Xtimerint"))
    t0 = time.perf_counter()
    reply = c.ask(b"bc")
    figs["gdb_reverse_continue_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    figs["gdb_reverse_continue_found"] = 1.0 if b"swbreak" in reply else 0.0
    c.close()
    return figs


if __name__ == "__main__":
    import json
    print(json.dumps(bench_figures(), indent=2))
