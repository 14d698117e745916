"""Drive a kernel under QEMU over its serial line and its monitor, for tests.

The reference runs that nitdbg's own console output is compared with: boot a
multiboot kernel with `qemu-system-* -kernel`, type lines at COM1, issue monitor
commands (`nmi`, `info registers`, ...) and collect the serial transcript.
Every wait is bounded; QEMU is always killed at the end.

    with QemuSerial("firmware/i386/kernel.elf") as q:
        q.expect("# ")
        q.send_line("kldload tsnmi")
        q.monitor("nmi")
        print(q.send_line("sysctl debug.tsnmi"))

or in one call: ``run_script(kernel, [("serial", "help"), ("monitor", "nmi")])``.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

QEMU_BINARIES = ("qemu-system-i386", "qemu-system-x86_64")
PROMPT = "# "
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]")


class QemuError(RuntimeError):
    """QEMU could not be started, died, or did not answer in time."""


def find_qemu() -> str | None:
    """Path of the first QEMU system emulator for x86 found on PATH, or None."""
    for name in QEMU_BINARIES:
        path = shutil.which(name)
        if path:
            return path
    return None


class QemuSerial:
    """One QEMU process: COM1 on pipes, the human monitor on a unix socket."""

    def __init__(
        self,
        kernel: str | os.PathLike[str],
        *,
        qemu: str | None = None,
        memory_mib: int = 64,
        cmdline: str = "",
        extra_args: Sequence[str] = (),
        timeout: float = 60.0,   # generous: QEMU TCG is slow on a loaded 2-core machine
    ) -> None:
        self.kernel = Path(kernel)
        self.qemu = qemu or find_qemu()
        if self.qemu is None:
            raise QemuError("no qemu-system-i386 or qemu-system-x86_64 on PATH")
        self.memory_mib = memory_mib
        self.cmdline = cmdline
        self.extra_args = tuple(extra_args)
        self.timeout = timeout
        self._raw = bytearray()
        self._mark = 0  # transcript offset where the last send_line started
        self._proc: subprocess.Popen[bytes] | None = None
        self._mon: socket.socket | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.monitor_log: list[tuple[str, str]] = []

    # -- life cycle --------------------------------------------------------

    def start(self) -> QemuSerial:
        self._tmp = tempfile.TemporaryDirectory(prefix="nitq")
        sock_path = os.path.join(self._tmp.name, "mon.sock")
        argv = [
            self.qemu,
            "-nodefaults",
            "-display", "none",
            "-no-reboot",
            "-m", str(self.memory_mib),
            "-kernel", str(self.kernel),
            "-serial", "stdio",
            "-monitor", f"unix:{sock_path},server=on,wait=off",
            *self.extra_args,
        ]  # fmt: skip
        if self.cmdline:
            argv += ["-append", self.cmdline]
        try:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        except OSError as e:
            raise QemuError(f"cannot start {self.qemu}: {e}") from e
        os.set_blocking(self._proc.stdout.fileno(), False)
        self._mon = self._connect_monitor(sock_path)
        self._monitor_read_prompt()
        return self

    def close(self) -> None:
        if self._mon is not None:
            self._mon.close()
            self._mon = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            try:
                self._proc.wait(timeout=5)
            finally:
                for f in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
                    if f is not None:
                        f.close()
            self._proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> QemuSerial:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- serial line -------------------------------------------------------

    @property
    def transcript(self) -> str:
        """Everything the guest wrote on COM1 so far, CR LF folded to LF."""
        return self._raw.decode("latin-1").replace("\r\n", "\n")

    def _pump(self, wait: float) -> None:
        """Read what QEMU wrote to COM1, waiting up to `wait` seconds for data."""
        assert self._proc is not None and self._proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self._proc.stdout, selectors.EVENT_READ)
        try:
            if sel.select(timeout=wait):
                while True:
                    try:
                        chunk = os.read(self._proc.stdout.fileno(), 65536)
                    except BlockingIOError:
                        break
                    if not chunk:
                        break
                    self._raw += chunk
        finally:
            sel.close()

    def expect(self, text: str, *, since: int = 0, timeout: float | None = None) -> str:
        """Wait until `text` appears in the transcript after offset `since`.

        Returns the transcript from `since` to the end of the match.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            out = self.transcript
            i = out.find(text, since)
            if i >= 0:
                return out[since : i + len(text)]
            if self._proc is None or self._proc.poll() is not None:
                raise QemuError(self._died_message(text))
            left = deadline - time.monotonic()
            if left <= 0:
                raise QemuError(f"timed out waiting for {text!r}; serial so far:\n{out}")
            self._pump(min(left, 0.1))

    def send(self, data: str) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(data.encode("latin-1"))
        self._proc.stdin.flush()

    def send_line(self, line: str, *, prompt: str = PROMPT, timeout: float | None = None) -> str:
        """Type `line` and Enter; wait for the next prompt; return the command's output.

        The returned text starts after the echoed line and ends before the prompt.
        """
        self._pump(0)
        start = len(self.transcript)
        self.send(line + "\r")
        echoed = self.expect(line + "\n", since=start, timeout=timeout)
        after = start + len(echoed)
        out = self.expect("\n" + prompt, since=after - 1, timeout=timeout)
        return out[1 : -len(prompt)] if len(out) > len(prompt) else ""

    def _died_message(self, waiting_for: str) -> str:
        err = b""
        if self._proc is not None and self._proc.stderr is not None:
            with contextlib.suppress(OSError, ValueError):
                err = self._proc.stderr.read() or b""
        rc = self._proc.returncode if self._proc is not None else None
        return (
            f"qemu exited (status {rc}) while waiting for {waiting_for!r}: "
            f"{err.decode(errors='replace').strip()}\nserial so far:\n{self.transcript}"
        )

    # -- monitor -----------------------------------------------------------

    def _connect_monitor(self, path: str) -> socket.socket:
        deadline = time.monotonic() + self.timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                s.settimeout(0.1)
                return s
            except OSError:
                s.close()
                if self._proc is not None and self._proc.poll() is not None:
                    raise QemuError(self._died_message("the monitor socket")) from None
                if time.monotonic() > deadline:
                    raise QemuError("timed out connecting to the QEMU monitor") from None
                time.sleep(0.02)

    def _monitor_read_prompt(self) -> str:
        assert self._mon is not None
        buf = b""
        deadline = time.monotonic() + self.timeout
        while not buf.endswith(b"(qemu) "):
            if time.monotonic() > deadline:
                raise QemuError(f"timed out waiting for the monitor prompt: {buf!r}")
            try:
                chunk = self._mon.recv(4096)
            except TimeoutError:
                self._pump(0)  # keep COM1 drained so the guest never stalls on output
                continue
            if not chunk:
                raise QemuError(self._died_message("the monitor prompt"))
            buf += chunk
        return _ANSI.sub("", buf.decode("latin-1")).replace("\r", "")

    def monitor(self, command: str) -> str:
        """Run one human-monitor command and return its output (without echo and prompt)."""
        assert self._mon is not None
        self._mon.sendall(command.encode() + b"\n")
        text = self._monitor_read_prompt()
        text = text.removesuffix("(qemu) ")
        # The monitor echoes the command line first.
        lines = text.split("\n")
        if lines and lines[0].strip().endswith(command):
            lines = lines[1:]
        out = "\n".join(lines).strip("\n")
        self.monitor_log.append((command, out))
        return out


def run_script(
    kernel: str | os.PathLike[str],
    steps: Iterable[tuple[str, str]],
    *,
    boot_text: str = PROMPT,
    **kwargs: object,
) -> str:
    """Boot `kernel`, wait for `boot_text`, then run `steps` in order.

    Each step is ("serial", line) — typed at COM1, waiting for the next prompt — or
    ("monitor", command). Returns the whole serial transcript (CR LF folded to LF).
    """
    with QemuSerial(kernel, **kwargs) as q:  # type: ignore[arg-type]
        q.expect(boot_text)
        for kind, text in steps:
            if kind == "serial":
                q.send_line(text)
            elif kind == "monitor":
                q.monitor(text)
            else:
                raise ValueError(f"unknown step kind {kind!r}: want 'serial' or 'monitor'")
        q._pump(0)
        return q.transcript
