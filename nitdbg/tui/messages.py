"""What the UI and the machine worker say to each other: requests one way, updates and
output text the other (Textual Messages; no machine here)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from .model import Snapshot


@dataclass(frozen=True)
class Request:
    """What the UI asks the machine to do. kind: ddb, host, guest, step, continue, pause,
    nmi, broadcast, host_step, select, audit, scenario, record, replay_open, replay_step,
    refresh, exits (arg "": the selected vCPU's; arg a virtual time: vCPU `num`'s, around
    that moment), quit."""

    kind: str
    arg: str = ""
    num: int = 0


class MachineUpdate(Message):
    """A new picture of the machine, with what was said since the previous one (text,
    source): one message, so the screen paints a request's echo, output and result in one
    frame."""

    def __init__(self, snapshot: Snapshot, outputs: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__()
        self.snapshot = snapshot
        self.outputs = outputs
        # set by the screen once it has applied this update (read by the worker, which
        # builds the next progress snapshot of a run only then: see MachineWorker)
        self.applied = False


class ExitHistory(Message):
    """The recent exits of one vCPU, as they were (nitdbg.view.ExitSnapshot), on request."""

    def __init__(self, vcpu: int, exits: tuple, names: dict[int, str],
                 at: int | None = None) -> None:
        super().__init__()
        self.vcpu = vcpu
        self.exits = exits
        self.names = names          # sym+off of every RIP in them (the UI has no symbols)
        self.at = at                # a moment picked on the timeline (virtual ns), or None


class MachineOutput(Message):
    """Text for the transcript: what ddb, the host shell or the worker said."""

    def __init__(self, text: str, source: str) -> None:
        super().__init__()
        self.text = text
        self.source = source      # ddb, host, guest, info, error, audit
