"""The nitdbg Textual app: thin. It owns the machine worker (a thread) and the main screen,
and forwards the screen's requests to the worker; everything else is in screens/ and
widgets/, and what they show is built in model.py."""

from __future__ import annotations

import sys
from collections.abc import Callable

from textual.app import App
from textual.binding import Binding

from .commands import NitdbgCommands
from .screens.main import MachineWords, MainScreen, RequestMachine
from .worker import MachineOutput, MachineUpdate, MachineWorker, OnMachine, Request


def completion_words(symbols: list[str]) -> dict[str, list[str]]:
    from ..console import DDB_WORDS, GUEST_WORDS, HOST_WORDS
    try:
        from ..ddb.commands import COMMANDS, SHOW
        ddb = sorted(set(COMMANDS) | {f"show {s}" for s in SHOW} | set(DDB_WORDS))
    except ImportError:
        ddb = list(DDB_WORDS)
    return {"host": list(HOST_WORDS), "guest": list(GUEST_WORDS), "ddb": ddb + symbols}


SWITCH_INTERVAL_S = 0.001      # sys.setswitchinterval while the app runs (run_app)


class NitdbgApp(App):
    CSS_PATH = "nitdbg.tcss"
    TITLE = "nitdbg"
    COMMANDS = App.COMMANDS | {NitdbgCommands}
    BINDINGS = [Binding("ctrl+q", "quit", "quit", priority=True)]
    # nitdbg.tui.bench sets this to be told (kind, ...) after each paint it measures
    paint_probe: Callable[..., object] | None = None

    def __init__(self, machine_kwargs: dict | None = None, boot: bool = True,
                 kdb_on_nmi: bool = False, record: str | None = None,
                 on_machine: OnMachine | None = None, host_dir: str | None = None) -> None:
        super().__init__()
        self.main_screen = MainScreen()
        self.machine = MachineWorker(machine_kwargs, self._from_worker, boot=boot,
                                     kdb_on_nmi=kdb_on_nmi, record=record,
                                     on_machine=on_machine, host_dir=host_dir)
        self._words_sent = False

    def on_mount(self) -> None:
        self.push_screen(self.main_screen)

    def start_machine(self) -> None:
        """Called by the main screen once it has been painted ("booting…")."""
        self.run_worker(self.machine.loop, thread=True, name="machine", exit_on_error=False)

    def _from_worker(self, msg) -> None:  # noqa: ANN001 - a Message; runs on the worker thread
        if not self._words_sent and isinstance(msg, MachineUpdate) and self.machine.m:
            self._words_sent = True
            words = completion_words(self.machine.m.symbols.names())
            self.main_screen.post_message(MachineWords(words))
        self.main_screen.post_message(msg)

    def on_request_machine(self, msg: RequestMachine) -> None:
        self.machine.submit(msg.request)

    def submit(self, req: Request) -> None:
        self.machine.submit(req)

    def on_unmount(self) -> None:
        # the worker thread blocks on its queue: tell it to end so the process can exit
        self.machine.interrupt.set()
        self.machine.submit(Request("quit"))
        # let it write the session's end record before the process goes
        self.machine.finished.wait(timeout=10)


def run_app(machine_kwargs: dict | None = None, record: str | None = "",
            on_machine: OnMachine | None = None, host_dir: str | None = None) -> int:
    """`nitdbg` with no arguments: the app on the default amd64 firmware, 2 vCPUs, booted
    to the guest shell prompt, recording the session into the user's data directory
    (`record` = a path to record there, None not to record). `on_machine` and `host_dir`:
    see MachineWorker (nitdbg --gdb; the host shell's files)."""
    app = NitdbgApp(machine_kwargs, record=record, on_machine=on_machine, host_dir=host_dir)
    # the machine runs on a thread of its own, in Python: the thread that reads the keys
    # and the one that draws get the interpreter only when it lets go, by default every
    # 5 ms, and a key passes through both (p waited some 70 ms so behind a running guest)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    app.run()
    if app.machine.state.error:
        print(f"nitdbg: {app.machine.state.error}", file=sys.stderr)
        return 1
    return 0


__all__ = ["NitdbgApp", "run_app", "MachineOutput", "MachineUpdate"]

if __name__ == "__main__":
    sys.exit(run_app({}, record=None))
