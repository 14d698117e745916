"""`nitdbg console`: the machine on a line prompt (prompt_toolkit).

Three surfaces share one prompt: the host shell (`host$ `: bhyvectl, sysctl, ktrdump, sleep,
cat, | grep), the guest serial console (`guest# `) and the guest debugger (`db> `). The prompt
switches to ddb by itself when the guest enters the debugger and back when it leaves.
`@host`, `@guest`, `@db` switch by hand; `@guest LINE` sends one line without switching;
`^C` on the guest surface (or Ctrl-C at the prompt) sends the interrupt character.
When stdin is not a terminal, lines are read one by one and echoed after their prompt, so a
section of the seed runs as a script and its transcript can be diffed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterable
from typing import TextIO

from .hostcmds import HOST_COMMANDS, DiskFiles
from .machine import Machine, MachineError, StopEvent, describe_stop

SURFACES = ("host", "guest", "ddb")
PROMPTS = {"host": "host$ ", "guest": "guest# ", "ddb": "db> "}
HOST_WORDS = ["bhyvectl", "sysctl", "ktrdump", "sleep", "cat", "grep", "head", "tail", "wc",
              "help", "sudo",
              "--vm=vm2", "--force-reset", "--force-poweroff",
              "--cpu=0", "--cpu=-1", "--assert-lapic-lvt=1", "--inject-nmi", "--get-stats",
              "--get-rip", "--get-rflags", "--get-dr6", "--get-intinfo",
              "--get-vmcb-intercepts", "--get-vmcb-exit-details", "--get-vmcb-virq",
              "--capname=pause_exit", "--setcap=0", "--setcap=1", "--getcap",
              "debug.nit.delay_usecs=", "debug.nit.recursive_nmi=",
              "debug.nit.invalidate_nested_mappings=", "debug.nit.bounce_to_userspace=",
              "debug.nit.iret_trigger_gpf=", "debug.ktr.clear=1", "-cto", "/tmp/ktrdump.out"]
GUEST_WORDS = ["sysctl", "machdep.kdb_on_nmi=", "kern.ticks", "hw.ncpu", "help", "while",
               "[ 1 ]; do : done"]
DDB_WORDS = ["step", "continue", "x/i", "x/gx", "x/wx", "x/bx", "x/s", "break", "delete",
             "show breaks", "show registers", "show idt", "show sysregs", "bt", "trace",
             "where", "hwatch", "dhwatch", "until", "next", "help"]


class Console:
    """The line-oriented front end; `feed(line)` is the whole behaviour, so scripts, the
    interactive prompt and tests drive it the same way."""

    def __init__(self, machine: Machine, out: Callable[[str], None]):
        self.m = machine
        self.at_line_start = True

        def write(text: str) -> None:
            if text:
                out(text)
                self.at_line_start = text.endswith("\n")
        self.out = write
        self.surface = "host"
        self._before_ddb = "host"
        self._printed = 0
        self._boots = machine.boots     # a reset starts a new serial transcript
        self._off_said = False
        self._last_stop = ""
        self.busy = False               # a line is running (for ^C)

    @property
    def prompt(self) -> str:
        return PROMPTS[self.surface]

    def flush_console(self) -> None:
        """Print what the guest wrote on its serial line since last time."""
        data = self.m.console_output()
        if self.m.boots != self._boots:
            self._boots, self._printed = self.m.boots, 0
        if len(data) > self._printed:
            text = data[self._printed:].decode(errors="replace").replace("\r\n", "\n")
            self._printed = len(data)
            self.out(text.replace("\r", ""))

    def boot(self) -> None:
        self.m.boot_to_prompt()
        self.flush_console()
        if not self._console_ends_with_newline():
            self.out("\n")

    def _console_ends_with_newline(self) -> bool:
        data = self.m.console_output()
        return not data or data.endswith(b"\n")

    def feed(self, line: str) -> None:
        line = line.rstrip("\n")
        stripped = line.strip()
        if stripped.startswith("@"):
            word, _, rest = stripped[1:].partition(" ")
            target = {"host": "host", "guest": "guest", "db": "ddb", "ddb": "ddb"}.get(word)
            if target is None:
                self.out(f"console: unknown surface '@{word}' (use @host, @guest, @db)\n")
                return
            if target == "ddb" and self.m.surface != "ddb":
                self.out("console: the guest is not in the debugger\n")
                return
            if rest:
                self._dispatch(target, rest)
            else:
                self.surface = target
            return
        self._dispatch(self.surface, line)

    def _dispatch(self, surface: str, line: str) -> None:
        try:
            if surface == "host":
                text = self.m.host(line)
                if text:
                    self.out(text)
                self._settle()
            elif surface == "guest":
                # "^C" alone is the interrupt character, as a terminal sends it
                data = b"\x03" if line.strip() == "^C" else line.encode() + b"\r"
                self.m.console_input(data)
                self._settle()
            elif is_host_line(line):
                # the plan's host lines, typed while the guest sits in ddb
                self.out(f"({host_word(line)} runs on the host; you stay at db>)\n")
                self._dispatch("host", line)
            else:
                self.out(self.m.debugger(line))
                self.flush_console()
                self._follow_surface()
        except MachineError as e:
            self.out(f"{e}\n")

    def _settle(self) -> None:
        if self.m.powered_off:          # say it once, not after every host command
            if not self._off_said:
                self.out(describe_stop(self.m, StopEvent("poweroff")))
            self._off_said = True
            return
        self._off_said = False
        if self.m.surface == "ddb":
            self.flush_console()
            return
        ev = self.m.settle()
        self.flush_console()
        self._after_stop(ev)

    def _after_stop(self, ev: StopEvent) -> None:
        msg = ""
        if ev.reason == "kdb":
            self.out(self.m.enter_debugger(ev))
            self.flush_console()
        else:
            msg = describe_stop(self.m, ev)
            if msg and msg != self._last_stop:     # a deadlock is said once, not per command
                self.out(msg)
        self._last_stop = msg
        self._follow_surface()

    def _follow_surface(self) -> None:
        if self.m.surface == "ddb" and self.surface != "ddb":
            self._before_ddb = self.surface
            self.surface = "ddb"
        elif self.m.surface != "ddb" and self.surface == "ddb":
            self.surface = self._before_ddb

    def words(self) -> list[str]:
        if self.surface == "host":
            return HOST_WORDS
        if self.surface == "guest":
            return GUEST_WORDS
        return DDB_WORDS + self.m.symbols.names()


# host commands that are not ddb commands (ddb's own `help` stays ddb's)
_HOST_AT_DB = frozenset(HOST_COMMANDS) - {"help"} | {"sudo"}


def is_host_line(line: str) -> bool:
    words = line.split()
    return bool(words) and words[0] in _HOST_AT_DB


def host_word(line: str) -> str:
    words = line.split()
    return words[1] if words[0] == "sudo" and len(words) > 1 else words[0]


def feed_interruptible(console: Console, line: str) -> None:
    """Feed one line; ^C while it runs stops the machine cleanly at its next scheduling
    step (see install_ctrl_c) instead of killing the console."""
    console.busy = True
    try:
        console.feed(line)
    finally:
        console.busy = False
        console.m.clear_interrupt()


def install_ctrl_c(console: Console) -> None:
    """SIGINT while a line runs asks the machine to stop (the handler only sets a flag);
    between lines it is the ordinary KeyboardInterrupt."""
    def handler(signum: int, frame: object) -> None:
        if console.busy:
            console.m.request_interrupt()
        else:
            raise KeyboardInterrupt
    with contextlib.suppress(ValueError):      # not the main thread: leave SIGINT alone
        signal.signal(signal.SIGINT, handler)


def run_script(console: Console, lines: Iterable[str], echo: TextIO) -> None:
    for line in lines:
        if not console.at_line_start:
            echo.write("\n")
        echo.write(console.prompt + line.rstrip("\n") + "\n")
        echo.flush()
        console.at_line_start = True
        feed_interruptible(console, line)


def run_interactive(console: Console) -> None:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.completion import Completer, Completion
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    class SurfaceCompleter(Completer):
        def get_completions(self, document, complete_event):  # noqa: ANN001
            word = document.get_word_before_cursor(WORD=True)
            for w in console.words():
                if w.startswith(word) and word:
                    yield Completion(w, start_position=-len(word))

    history = InMemoryHistory()
    try:
        d = data_dir()
        os.makedirs(d, exist_ok=True)
        history = FileHistory(os.path.join(d, "console_history"))
    except OSError:
        pass
    session: PromptSession = PromptSession(history=history, completer=SurfaceCompleter())
    while True:
        try:
            line = session.prompt(console.prompt)
        except KeyboardInterrupt:
            if console.surface == "guest":
                console.feed("^C")
            continue
        except EOFError:
            return
        if line.strip() in ("quit", "exit") and console.surface == "host":
            return
        feed_interruptible(console, line)


def data_dir() -> str:
    try:
        from platformdirs import user_data_dir
        return user_data_dir("nitdbg")
    except ImportError:   # pragma: no cover - textual depends on platformdirs
        return os.path.join(os.path.expanduser("~"), ".local", "share", "nitdbg")


def colour_out(text: str) -> None:
    """Print with pygments colours for disassembly lines on a terminal."""
    from prompt_toolkit import print_formatted_text
    from prompt_toolkit.formatted_text import PygmentsTokens
    from pygments.lexers.asm import GasLexer

    lexer = GasLexer()
    for line in text.splitlines(keepends=True):
        if "\t" in line and (line.startswith(("Stopped at", "Breakpoint at", "Watchpoint at"))
                             or line.startswith("0x") or "+0x" in line.split("\t")[0]):
            head, _, insn = line.rpartition("\t")
            print_formatted_text(head + "\t", end="")
            print_formatted_text(PygmentsTokens(list(lexer.get_tokens(insn))), end="")
            if not insn.endswith("\n"):
                print_formatted_text("", end="")
        else:
            print_formatted_text(line, end="")


def main(machine: Machine, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout,
         cwd: str | None = None) -> int:
    interactive = stdin.isatty() and stdout.isatty()
    # the host shell's files are real files, relative paths against our working directory
    machine.shell.fs = DiskFiles(cwd if cwd is not None else os.getcwd())
    if interactive:
        console = Console(machine, colour_out)
    else:
        def write(s: str) -> None:
            stdout.write(s)
            stdout.flush()
        console = Console(machine, write)
    try:
        console.boot()
    except MachineError as e:
        print(f"nitdbg: {e}", file=sys.stderr)
        return 1
    install_ctrl_c(console)
    if interactive:
        run_interactive(console)
    else:
        run_script(console, stdin, stdout)
    return 0
