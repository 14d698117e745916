"""The stub over TCP: acks, bad checksums, oversized packets, a packet out of order while the
machine runs, ^C; and the stub beside the console."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nitdbg.console import Console
from nitdbg.gdb import GdbServer, serve_in_thread
from nitdbg.gdb.protocol import MAX_PACKET, frame
from nitdbg.machine import Machine
from nitdbg.session.checkpoint import take
from nitdbg.timeline import Timeline

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def booted() -> Machine:
    m = Machine()
    m.boot_to_prompt()
    return m


class Raw:
    def __init__(self, port: int):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.s.sendall(data)

    def read_until(self, n: int = 1) -> bytes:
        while len(self.buf) < n:
            self.buf += self.s.recv(65536)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def reply(self) -> bytes:
        """The next packet's data (acks before it skipped)."""
        while b"#" not in self.buf or len(self.buf) < self.buf.index(b"#") + 3:
            self.buf += self.s.recv(65536)
        start = self.buf.index(b"$")
        end = self.buf.index(b"#", start)
        data, self.buf = self.buf[start + 1:end], self.buf[end + 3:]
        return data


def _server(m: Machine) -> GdbServer:
    srv = GdbServer(m, "127.0.0.1", 0, log=lambda s: None)
    threading.Thread(target=srv.serve, daemon=True).start()
    return srv


def test_acks_a_bad_checksum_with_minus_and_an_oversized_packet_with_one_error(booted):
    m = booted.clone()
    Timeline(m)
    c = Raw(_server(m).address[1])
    c.send(b"$g#00")
    assert c.read_until(1) == b"-"
    before = take(m)
    c.send(b"$M0," + b"1" * (MAX_PACKET + 100) + b"#00")
    assert c.read_until(1) == b"+"
    assert c.reply() == b"E03"
    c.send(frame(b"m0,0"))          # still in sync afterwards
    assert c.read_until(1) == b"+" and c.reply() == b""
    assert take(m) == before
    c.send(frame(b"D"))


def test_a_packet_while_running_gets_e16_and_ctrl_c_stops_the_run(booted):
    m = booted.clone()
    Timeline(m)
    c = Raw(_server(m).address[1])
    c.send(frame(b"QStartNoAckMode"))
    assert c.reply() == b"OK"
    c.send(frame(b"vCont;c"))
    time.sleep(0.3)
    c.send(frame(b"g"))
    assert c.reply() == b"E16"         # out of order: the target is running
    c.send(b"\x03")
    assert c.reply().startswith(b"T05thread:")
    c.send(frame(b"qC"))
    assert c.reply().startswith(b"QC")
    c.send(frame(b"D"))


def test_the_console_says_when_gdb_holds_the_machine(booted):
    m = booted.clone()
    srv = serve_in_thread(m, "127.0.0.1:0", log=lambda s: None)
    out: list[str] = []
    con = Console(m, out.append)
    c = Raw(srv.address[1])
    c.send(frame(b"?"))
    assert c.reply().startswith(b"T05")
    con.feed("sleep 1")
    assert "gdb holds every vCPU" in "".join(out)
    c.send(frame(b"D"))
    assert c.reply() == b"OK"
    time.sleep(0.2)
    out.clear()
    con.feed("sleep 1")
    assert "holds" not in "".join(out)


def test_run_gdb_with_a_bad_endpoint_says_so_in_one_line():
    p = subprocess.run([sys.executable, "-m", "nitdbg", "run", "--gdb", "nohost:port"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == ["nitdbg: --gdb needs [HOST:]PORT, not 'nohost:port'"]


def test_the_tui_serves_gdb_with_its_machine():
    pytest.importorskip("textual")
    import argparse
    import asyncio

    from nitdbg import cli
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hook = cli._tui_gdb_hook(argparse.Namespace(gdb=f"127.0.0.1:{port}", timeline=False))
    from nitdbg.tui.app import NitdbgApp
    replies: list[bytes] = []

    async def drive() -> None:
        app = NitdbgApp({}, record=None, on_machine=hook)
        async with app.run_test() as pilot:
            for _ in range(300):
                await pilot.pause(0.1)
                if app.machine.state.booted:
                    break
            for _ in range(50):
                try:
                    c = Raw(port)
                    break
                except OSError:
                    await pilot.pause(0.1)
            for p in (b"?", b"qfThreadInfo", b"D"):
                c.send(frame(p))
                replies.append(c.reply())

    asyncio.run(drive())
    assert replies[0].startswith(b"T05thread:") and replies[1] == b"m1,2"
    assert replies[2] == b"OK"
