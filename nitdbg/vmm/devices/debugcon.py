"""QEMU's debug console (``-debugcon``, isa-debugcon) at port 0xE9.

A byte written to the port goes to the sink; a read returns 0xE9, QEMU's
default ``readback`` value, which is how a guest detects the port (Bochs'
"port E9 hack" does the same).  A 16/32-bit OUT sends only its low byte: the
device has an 8-bit data path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nitdbg.vmm.devices.iobus import checked_state

DEBUGCON_PORT = 0xE9
DEBUGCON_READBACK = 0xE9


class DebugCon:
    def __init__(
        self,
        name: str = "debugcon",
        on_output: Callable[[bytes], None] | None = None,
        readback: int = DEBUGCON_READBACK,
    ) -> None:
        self.name = name
        self.on_output = on_output
        self.readback = readback & 0xFF
        self.output_count = 0

    def io_read(self, port: int, size: int, vcpu: int) -> int:
        return self.readback

    def io_write(self, port: int, size: int, value: int, vcpu: int) -> None:
        self.output_count += 1
        if self.on_output is not None:
            self.on_output(bytes([value & 0xFF]))

    def state(self) -> dict[str, Any]:
        return {"output_count": self.output_count}

    def load_state(self, state: dict[str, Any]) -> None:
        st = checked_state(state, {"output_count": int}, self.name)
        self.output_count = st["output_count"]
