"""QEMU's isa-debug-exit device, placed at port 0xF4 (``iobase=0xf4,iosize=4``).

A write of value ``v`` (any size 1/2/4, to any of its ports) asks the machine
to stop with exit status ``(v << 1) | 1`` -- QEMU's debug_exit_write -- so a
guest can never produce status 0 and a test runner can tell a guest verdict
from a clean QEMU exit.  The first request wins; the machine layer polls
``exit_status`` (or gets ``on_exit(status)``) and stops the VM.  Reads return 0
as QEMU's debug_exit_read does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nitdbg.vmm.devices.iobus import IoBusError, checked_state

DEBUGEXIT_PORT = 0xF4
DEBUGEXIT_PORTS = 4


class DebugExit:
    def __init__(
        self, name: str = "debugexit", on_exit: Callable[[int], None] | None = None
    ) -> None:
        self.name = name
        self.on_exit = on_exit
        self.exit_status: int | None = None

    def io_read(self, port: int, size: int, vcpu: int) -> int:
        return 0

    def io_write(self, port: int, size: int, value: int, vcpu: int) -> None:
        if self.exit_status is not None:
            return  # the machine is already stopping; QEMU would have exited
        self.exit_status = (value << 1) | 1
        if self.on_exit is not None:
            self.on_exit(self.exit_status)

    def state(self) -> dict[str, Any]:
        return {"exit_status": self.exit_status}

    def load_state(self, state: dict[str, Any]) -> None:
        st = checked_state(state, {}, self.name)
        if "exit_status" not in st:
            raise IoBusError(f"{self.name}: state lacks 'exit_status'")
        status = st["exit_status"]
        if status is not None and (isinstance(status, bool) or not isinstance(status, int)):
            raise IoBusError(f"{self.name}: state 'exit_status' must be an int or None")
        self.exit_status = status
