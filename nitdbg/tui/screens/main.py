"""The main screen: every pane, laid out for the terminal (small below 100x30: disassembly,
registers, RFLAGS, NMI state and the prompt on the first screen, the rest in tabs; compact
at 100x30; wide from 150x40), wired to the machine worker through Messages. The screen
holds no machine: it posts `RequestMachine` (the app forwards it to the worker) and shows
`MachineUpdate`s."""

from __future__ import annotations

import asyncio
import time

from textual import constants
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.events import Resize
from textual.message import Message
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import TabbedContent, TabPane

from ..messages import ExitHistory, MachineOutput, MachineUpdate, Request
from ..model import Snapshot
from ..widgets.base import Pane, flush_refreshes
from ..widgets.cmdline import CommandLine
from ..widgets.console import ConsolePane
from ..widgets.disasm import DisasmPane
from ..widgets.explain import ExplainPane
from ..widgets.keys import KeysBar
from ..widgets.ktr import KtrPane
from ..widgets.lineview import LineView, plain
from ..widgets.nmi import NmiPane
from ..widgets.registers import RegistersPane
from ..widgets.rflags import RflagsPane
from ..widgets.stats import StatsPane
from ..widgets.timeline import TimelinePane
from ..widgets.transcript import Transcript
from ..widgets.verdict import VerdictBar
from ..widgets.vmcb import VmcbPane

WIDE = (150, 40)       # from this terminal size on, every pane is visible at once
COMPACT = (100, 30)    # below this, the small layout (80x24 and up)
LAYOUTS = ("small", "compact", "wide")
FRAME_S = 1 / constants.MAX_FPS       # (a front end may read the clock)
BOOTING = "booting the guest…"


def layout_for(width: int, height: int) -> str:
    if width >= WIDE[0] and height >= WIDE[1]:
        return "wide"
    return "compact" if width >= COMPACT[0] and height >= COMPACT[1] else "small"


class RequestMachine(Message):
    """Ask the machine worker to do something (handled by the app)."""

    def __init__(self, request: Request) -> None:
        super().__init__()
        self.request = request


class MachineWords(Message):
    """Completion words per surface (sent once by the app)."""

    def __init__(self, words: dict[str, list[str]]) -> None:
        super().__init__()
        self.words = words


class MainScreen(Screen):
    BINDINGS = [
        Binding("s", "step", "step"),
        Binding("c", "continue", "cont"),
        Binding("p", "pause", "pause"),
        Binding("n", "nmi", "NMI"),
        Binding("N", "broadcast", "NMI all"),
        Binding("v", "next_vcpu", "vCPU"),
        Binding("h", "host_step", "host step"),
        Binding("x", "exit_step", "to exit"),
        Binding("a", "evidence", "audit"),
        Binding("e", "scenario", "scenario"),
        Binding("r", "record", "rec"),
        Binding("o", "open_replay", "replay"),
        Binding("left_square_bracket", "replay_step(-1)", "back", show=False),
        Binding("right_square_bracket", "replay_step(1)", "fwd", show=False),
        Binding("l", "layout", "layout"),
        Binding("question_mark,f1", "help", "help"),
        Binding("f2", "surface('host')", "host$", show=False),
        Binding("f3", "surface('guest')", "guest#", show=False),
        Binding("f4", "surface('ddb')", "db>", show=False),
        Binding("colon", "surface('')", "cmd", show=False),
        Binding("slash", "ktr_filter", "filter KTR", show=False),
        Binding("R", "force_reset", "force-reset", show=False),
        Binding("X", "exit_history", "exits", show=False),
        Binding("t", "timeline", "timeline", show=False),
        Binding("C", "compare", "compare", show=False),
    ]
    # keys go to the main view until the user asks for a line (F2/F3/F4, :, /); no widget
    # takes the focus by itself, so a machine key never lands in an input ("": none; None
    # would inherit the app's "*", the first focusable pane)
    AUTO_FOCUS = ""

    layout_mode: reactive[str] = reactive("compact", init=False)

    def __init__(self) -> None:
        super().__init__()
        self.snap: Snapshot | None = None
        self.base: Snapshot | None = None      # the snapshot of the last stop
        self.prev_base: Snapshot | None = None  # the stop before it: what a stop is marked
                                                # against ("changed since the last stop")
        self.transcript: list[tuple[str, str]] = []
        self.forced_layout = False
        self.updates = 0
        self.words: dict[str, list[str]] = {}
        self._surface_user = "host"
        self.selected = 0            # the vCPU on screen: the UI's, the worker follows it
        self._panes: list[Pane] | None = None
        self._machine_started = False
        self._ddb_followed: int | None = None

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        if not self.forced_layout:
            # laid out for the terminal from the start: no second compose on the first resize
            self.set_reactive(MainScreen.layout_mode, layout_for(*self.app.size))
        self._panes = None
        # the layout's class before the children mount: set after, it would restyle them all
        self._set_layout_class(self.layout_mode)
        if self.layout_mode == "wide":
            yield from self._wide()
        elif self.layout_mode == "small":
            yield from self._small()
        else:
            yield from self._compact()
        yield VerdictBar(id="verdict")
        yield CommandLine(id="cmdline")
        yield KeysBar(compact=self.layout_mode == "small", id="keys")

    def _side(self) -> ComposeResult:
        yield RegistersPane(id="registers", classes="pane")
        yield RflagsPane(id="rflags", classes="pane")
        yield NmiPane(id="nmi", classes="pane")

    def _small(self) -> ComposeResult:
        with Horizontal(id="top"):
            yield DisasmPane(id="disasm", classes="pane")
            yield RegistersPane(id="registers", classes="pane")
        yield RflagsPane(id="rflags", classes="pane")
        yield NmiPane(id="nmi", classes="pane")
        yield from self._tabs()

    def _compact(self) -> ComposeResult:
        with Horizontal(id="top"):
            yield DisasmPane(id="disasm", classes="pane")
            with Vertical(id="side"):
                yield from self._side()
        yield from self._tabs()

    def _tabs(self) -> ComposeResult:
        with TabbedContent(id="tabs"):
            with TabPane("ddb/host", id="tab-transcript"):
                yield Transcript(id="transcript", classes="pane")
            with TabPane("explain", id="tab-explain"):
                yield ExplainPane(id="explain", classes="pane")
            with TabPane("VMCB", id="tab-vmcb"):
                yield VmcbPane(id="vmcb", classes="pane")
            with TabPane("console", id="tab-console"):
                yield ConsolePane(id="console", classes="pane")
            with TabPane("KTR", id="tab-ktr"):
                yield KtrPane(id="ktr", classes="pane")
            with TabPane("timeline", id="tab-timeline"):
                yield TimelinePane(id="timeline", classes="pane")
            with TabPane("stats", id="tab-stats"):
                yield StatsPane(id="stats", classes="pane")

    def _wide(self) -> ComposeResult:
        with Horizontal(id="top"):
            with Vertical(id="col1"):
                yield DisasmPane(id="disasm", classes="pane")
                yield TimelinePane(id="timeline", classes="pane")
                yield ConsolePane(id="console", classes="pane")
            with Vertical(id="side"):
                yield from self._side()
                yield VmcbPane(id="vmcb", classes="pane")
            with Vertical(id="col3"):
                yield ExplainPane(id="explain", classes="pane")
                yield Transcript(id="transcript", classes="pane")
                yield KtrPane(id="ktr", classes="pane")
                yield StatsPane(id="stats", classes="pane")

    def _set_layout_class(self, mode: str) -> None:
        for m in LAYOUTS:
            self.set_class(mode == m, f"-{m}")

    # ------------------------------------------------------------------ frames
    # Textual draws a screen on a timer of 1/TEXTUAL_FPS, resumed when something is dirty;
    # after a frame that came late the timer skips to the tick after next (Timer._run
    # counts one period too many), so a repaint asked for soon after a frame waited up to
    # two periods. Here a repaint is drawn one period after the last frame ended (at once
    # if that is past): the same cap on frames per second, without the extra period.
    _frame_end = 0.0
    _draw_at = None            # the asyncio handle of the draw to come

    def _dirty(self) -> bool:
        return (self.is_current and not self.app._batch_count
                and not self._recompose_required
                and bool(self._layout_required or self._scroll_required
                         or self._repaint_required or self._dirty_widgets))

    async def _on_idle(self, event) -> None:  # noqa: ANN001 - events.Idle
        if self._draw_at is None and self._dirty():
            wait = self._frame_end + FRAME_S - time.perf_counter()
            if wait <= 0:
                self._on_timer_update()
            else:
                self._draw_at = asyncio.get_running_loop().call_later(wait, self._draw_due)
        await super()._on_idle(event)

    def _draw_due(self) -> None:
        self._draw_at = None
        if self._dirty():
            self._on_timer_update()

    def _on_timer_update(self) -> None:
        super()._on_timer_update()
        self._frame_end = time.perf_counter()

    def on_mount(self) -> None:
        self._set_layout_class(self.layout_mode)
        if self.snap is None:
            self._show_booting()
        self._probe("first")
        if not self._machine_started:
            # the machine boots after the first paint: its imports and the boot would
            # otherwise compete with drawing the screen
            self._machine_started = True
            self.call_after_refresh(self.app.start_machine)

    def _show_booting(self) -> None:
        for pane in self.panes():
            # every pane a snapshot redraws says so; the transcript keeps what it is told
            if isinstance(pane, LineView) and not isinstance(pane, Transcript):
                pane.set_lines([plain(BOOTING, "#697098")])
        self.query_one(VerdictBar).update(" " + BOOTING)

    def _probe(self, *what: object) -> None:
        """For nitdbg.tui.bench: what the screen has just applied (the bench waits for it
        to be on the terminal). `app.paint_probe` is None except under the benchmark."""
        probe = getattr(self.app, "paint_probe", None)
        if probe is not None:
            probe(self.app, *what)

    def panes(self) -> list[Pane]:
        if self._panes is None:
            self._panes = [p for p in self.query(".pane") if isinstance(p, Pane)]
        return self._panes

    def on_resize(self, event: Resize) -> None:
        if self.forced_layout:
            return
        want = layout_for(*event.size)
        if want != self.layout_mode:
            self.layout_mode = want

    async def watch_layout_mode(self, mode: str) -> None:
        self._set_layout_class(mode)
        await self.recompose()
        self._reshow()

    def _reshow(self) -> None:
        self.query_one(Transcript).add_many(self.transcript[-400:])
        cl = self.query_one(CommandLine)
        cl.words = self.words or cl.words
        cl.set_surface(self._surface_user)
        if self.snap is not None:
            self._show(self.snap)

    # ------------------------------------------------------------------ machine messages
    def on_machine_update(self, msg: MachineUpdate) -> None:
        ddb = msg.snapshot.ddb_vcpu
        if ddb is not None and ddb != self._ddb_followed and ddb != self.selected:
            # a vCPU entered the debugger: the panes follow it (v selects another)
            self.selected = ddb
            self._submit(Request("select", num=ddb))
            msg.outputs += ((f"vCPU {ddb} entered ddb: the panes follow it (v: another "
                             "vCPU)\n", "info"),)
        self._ddb_followed = ddb
        snap = msg.snapshot.select(self.selected % len(msg.snapshot.vcpus))
        self.snap = snap
        if snap.is_stop and snap.new_stop:
            self.prev_base, self.base = self.base, snap
        with self.app.batch_update():
            self._output_many(msg.outputs)
            self._show(snap)
        flush_refreshes(self)
        msg.applied = True
        self.updates += 1
        self._probe("update", snap.seq)

    def _show(self, snap: Snapshot) -> None:
        """Repaint the panes whose data changed, in one batch (one frame)."""
        # a stop (shown again after a read or a vCPU switch too) is marked against the stop
        # before it; an update while the guest runs against the last stop
        base = self.prev_base if snap.is_stop else self.base
        with self.app.batch_update():
            for pane in self.panes():
                pane.refresh_from(snap, base)
            self.query_one(VerdictBar).refresh_from(snap, base)
            self._follow_surface(snap)

    def _follow_surface(self, snap: Snapshot) -> None:
        """As the console: the command line switches to ddb when the guest enters the
        debugger and back when it leaves."""
        cl = self.query_one(CommandLine)
        if snap.surface == "ddb" and cl.surface != "ddb":
            self._surface_user = cl.surface
            cl.set_surface("ddb")
            if self.layout_mode != "wide":
                self.query_one(TabbedContent).active = "tab-transcript"
        elif snap.surface != "ddb" and cl.surface == "ddb":
            cl.set_surface(self._surface_user if self._surface_user != "ddb" else "host")

    def on_machine_output(self, msg: MachineOutput) -> None:
        self._output(msg.text, msg.source)

    def _output(self, text: str, source: str) -> None:
        self._output_many(((text, source),))

    def _output_many(self, outputs: tuple[tuple[str, str], ...]) -> None:
        if not outputs:
            return
        self.transcript.extend(outputs)
        del self.transcript[:-2000]
        self.query_one(Transcript).add_many(list(outputs))
        for text, source in outputs:
            if source == "audit":
                from .evidence import EvidenceScreen
                self.app.push_screen(EvidenceScreen(text))
            elif source == "error" and self.layout_mode != "wide":
                self.query_one(TabbedContent).active = "tab-transcript"

    def on_machine_words(self, msg: MachineWords) -> None:
        self.words = msg.words
        self.query_one(CommandLine).words = msg.words

    # ------------------------------------------------------------------ focus
    def on_descendant_focus(self, event) -> None:  # noqa: ANN001 - events.DescendantFocus
        self._show_mode()

    def on_descendant_blur(self, event) -> None:  # noqa: ANN001 - events.DescendantBlur
        self.call_after_refresh(self._show_mode)

    def _show_mode(self) -> None:
        from ..widgets.lineinput import LineInput
        typing = isinstance(self.focused, LineInput)
        for cl in self.query(CommandLine):
            cl.show_mode(typing)

    # ------------------------------------------------------------------ widgets' messages
    def on_command_line_submitted(self, msg: CommandLine.Submitted) -> None:
        if msg.surface == "guest":
            self._submit(Request("guest", msg.line))
        elif msg.surface == "host":
            if msg.line.strip():
                self.on_machine_output(MachineOutput(f"host$ {msg.line}\n", "host"))
                self._submit(Request("host", msg.line))
        else:
            self._submit(Request("ddb", msg.line))

    def on_verdict_bar_evidence_requested(self, _msg: VerdictBar.EvidenceRequested) -> None:
        self.action_evidence()

    # ------------------------------------------------------------------ actions
    def _submit(self, req: Request) -> None:
        self.post_message(RequestMachine(req))

    def action_step(self) -> None:
        self._submit(Request("step"))

    def action_continue(self) -> None:
        self._submit(Request("continue"))

    def action_pause(self) -> None:
        self._submit(Request("pause"))

    def action_nmi(self) -> None:
        self._submit(Request("nmi"))

    def action_broadcast(self) -> None:
        self._submit(Request("broadcast"))

    def action_next_vcpu(self) -> None:
        """Every vCPU is in the snapshot: repaint at once, and tell the worker (the NMI and
        host-step keys act on the selected vCPU)."""
        n = len(self.snap.vcpus) if self.snap else 1
        self.selected = (self.selected + 1) % n
        if self.snap is not None:
            self.snap = self.snap.select(self.selected)
            self._show(self.snap)
            flush_refreshes(self)
            self._probe("select", self.selected)
        self._submit(Request("select", num=self.selected))

    def action_host_step(self) -> None:
        self._submit(Request("host_step", "insn"))

    def action_exit_step(self) -> None:
        self._submit(Request("host_step", "exit"))

    def action_evidence(self) -> None:
        self._submit(Request("audit"))

    def action_record(self) -> None:
        self._submit(Request("record", ""))   # "": the next file in the user's data directory

    def action_replay_step(self, delta: int) -> None:
        self._submit(Request("replay_step", num=delta))

    def action_scenario(self) -> None:
        from .scenarios import ScenarioScreen

        def chosen(name: str | None) -> None:
            if name:
                self._submit(Request("scenario", name))
        self.app.push_screen(ScenarioScreen(), chosen)

    def action_open_replay(self) -> None:
        from .open_session import OpenSessionScreen

        def chosen(path: str | None) -> None:
            if path:
                self._submit(Request("replay_open", path))
        self.app.push_screen(OpenSessionScreen(), chosen)

    def action_layout(self) -> None:
        self.forced_layout = True
        self.layout_mode = LAYOUTS[(LAYOUTS.index(self.layout_mode) + 1) % len(LAYOUTS)]

    def action_help(self) -> None:
        from .help import HelpScreen
        self.app.push_screen(HelpScreen())

    def action_exit_history(self) -> None:
        """The recent exits of the selected vCPU, each with its VMCB and registers."""
        self._submit(Request("exits"))

    def on_exit_history(self, msg: ExitHistory) -> None:
        from .exits import ExitHistoryScreen
        self.app.push_screen(ExitHistoryScreen(msg.vcpu, msg.exits,
                                               lambda a: msg.names.get(a, f"{a:#x}"), msg.at))

    def on_timeline_pane_picked(self, msg: TimelinePane.Picked) -> None:
        """A moment picked on the timeline: the exit history of that vCPU, opened on the
        exit nearest it."""
        self._submit(Request("exits", str(msg.time), num=msg.vcpu))

    def action_timeline(self) -> None:
        """Keys to the timeline (arrows pick a moment, Enter its exit, Esc back)."""
        if self.layout_mode != "wide":
            self.query_one(TabbedContent).active = "tab-timeline"
        self.query_one(TimelinePane).focus()

    def action_compare(self) -> None:
        """Every scenario under every policy against the hardware reference."""
        from .compare import CompareScreen
        self.app.push_screen(CompareScreen())

    def action_policy(self, name: str) -> None:
        """Rebuild the machine under another NMI policy (on the worker)."""
        self._submit(Request("policy", name))

    def action_force_reset(self) -> None:
        """bhyvectl --force-reset on the host: the way out of a deadlock."""
        self._submit(Request("force_reset"))

    def action_ktr_filter(self) -> None:
        if self.layout_mode != "wide":
            self.query_one(TabbedContent).active = "tab-ktr"
        self.query_one("#ktr-filter").focus()

    def action_surface(self, surface: str) -> None:
        cl = self.query_one(CommandLine)
        if surface:
            if surface != "ddb":
                self._surface_user = surface
            cl.set_surface(surface)
            if surface == "guest" and self.layout_mode != "wide":
                self.query_one(TabbedContent).active = "tab-console"
        cl.input.focus()
