"""The stub's TCP side: one gdb connection at a time, packets in, replies out, and the
run loop that looks at the socket between slices for ^C. A front end: it uses sockets and
the wall clock (select timeouts); the machine below it never does."""

from __future__ import annotations

import select
import socket
import sys
import threading
from contextlib import nullcontext

from ..machine import Machine
from .protocol import Reader, frame
from .stub import E_STATE, Resume, Stub


def parse_endpoint(text: str) -> tuple[str, int]:
    """[HOST:]PORT -> (host, port); loopback unless a host is given."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--gdb needs [HOST:]PORT, not '{text}'")
    return host or "127.0.0.1", int(port)


class GdbServer:
    def __init__(self, m: Machine, host: str = "127.0.0.1", port: int = 1234,
                 lock: threading.Lock | None = None, log=None):  # noqa: ANN001
        self.m = m
        self.lock = lock
        self.log = log or (lambda s: print(s, file=sys.stderr, flush=True))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(1)
        self.address = self.sock.getsockname()

    def _guard(self):  # noqa: ANN202
        return self.lock if self.lock is not None else nullcontext()

    def serve(self, once: bool = True, hold_first: bool = True) -> str:
        """Take gdb connections; returns "detach", "kill" or "eof" after the last one.
        `hold_first`: hold the machine from now on (run --gdb, like qemu -S), else only
        while a gdb is connected (the console's --gdb)."""
        self.log(f"gdb: waiting for a connection on {self.address[0]}:{self.address[1]}")
        if hold_first:
            with self._guard():
                self.m.hold("gdb")
        while True:
            conn, peer = self.sock.accept()
            with self._guard():
                self.m.hold("gdb")
            self.log(f"gdb: connected from {peer[0]}:{peer[1]}")
            how = Session(self, conn).run()
            self.log(f"gdb: {how}")
            with self._guard():
                self.m.hold(None)
            if once or how == "kill":
                self.sock.close()
                return how


class Session:
    def __init__(self, server: GdbServer, conn: socket.socket):
        self.server = server
        self.conn = conn
        self.reader = Reader()
        with server._guard():
            self.stub = Stub(server.m)
        self.pending: list[tuple] = []
        self.interrupt = False

    def send(self, reply: bytes) -> None:
        self.conn.sendall(frame(reply))

    def _events(self, timeout: float | None) -> bool:
        """Read what gdb sent within `timeout`; False at end of file."""
        r, _, _ = select.select([self.conn], [], [], timeout)
        if not r:
            return True
        try:
            data = self.conn.recv(65536)
        except OSError:
            return False
        if not data:
            return False
        # ^C keeps its place among the packets: one that came after a resume packet stops
        # that run (read in the same recv, it used to be cleared by the resume: the fuzzer)
        self.pending.extend(self.reader.feed(data))
        return True

    def run(self) -> str:
        try:
            while True:
                while not self.pending:
                    if not self._events(None):
                        return "eof"
                ev = self.pending.pop(0)
                if ev[0] == "ack":
                    continue
                if ev[0] == "interrupt":        # ^C while stopped: report where we are
                    self.send(self.stub.last_stop)
                    continue
                if ev[0] == "bad":
                    if self.stub.ack:
                        self.conn.sendall(b"-" if ev[1] == "checksum" else b"+")
                    if ev[1] == "oversized":
                        self.send(b"E03")
                    continue
                if self.stub.ack:
                    self.conn.sendall(b"+")
                with self.server._guard():
                    reply = self.stub.handle(ev[1])
                    if isinstance(reply, Resume):
                        self.interrupt = False
                        reply = self.stub.resume(reply, self._interrupted)
                        self.interrupt = False       # the ^C is answered by this stop
                        for note in self.stub.notes:
                            if note:
                                self.send(b"O" + note.encode().hex().encode())
                        self.stub.notes.clear()
                self.send(reply)
                if self.stub.killed:
                    return "kill"
                if self.stub.detached:
                    return "detach"
        except (BrokenPipeError, ConnectionResetError):
            return "eof"
        finally:
            self.conn.close()

    def _interrupted(self, wait: bool = False) -> bool:
        """Between run slices: did gdb send ^C? A packet now is out of order: it gets
        E16 and the run goes on."""
        if not self._events(0.05 if wait else 0):
            self.interrupt = True              # gdb went away: stop running for it
        while self.pending:
            ev = self.pending.pop(0)
            if ev[0] == "interrupt":
                self.interrupt = True
            elif ev[0] == "packet":
                if self.stub.ack:
                    self.conn.sendall(b"+")
                self.send(E_STATE)
            elif ev[0] == "bad" and self.stub.ack:
                self.conn.sendall(b"-" if ev[1] == "checksum" else b"+")
        return self.interrupt


def serve_in_thread(m: Machine, endpoint: str, log=None) -> GdbServer:  # noqa: ANN001
    """The stub beside another front end (the console, the TUI): gdb is served on a thread
    and every input to the machine takes `m.lock`, so the two never run it at once. A
    timeline is attached if there is none, for reverse execution. Raises ValueError or
    OSError for a bad or busy endpoint."""
    from ..timeline import Timeline
    host, port = parse_endpoint(endpoint)
    server = GdbServer(m, host, port, log=log)
    m.lock = server.lock = threading.RLock()
    if m.timeline is None:
        Timeline(m)
    threading.Thread(target=server.serve, kwargs={"once": False, "hold_first": False},
                     name="nitdbg-gdb", daemon=True).start()
    return server
