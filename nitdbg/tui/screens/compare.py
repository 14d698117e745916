"""Compare: the scenario x policy table of `nitdbg compare`, each cell the policy's run judged
against the hardware reference; choose a cell to see both runs side by side at the first
difference. The runs build their own machines on a thread worker (the one on the main
screen is left as it is); the screen only renders the plain data they return."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

PENDING = "·"
RUNNING = "running…"
CELL_WIDTH = 26      # a cell's words: "lost_db sstest_loop+0x2 +1"


class CellsDone(Message):
    """One scenario row computed (Cells of nitdbg.compare), from the thread worker."""

    def __init__(self, scenario: str, cells: list, done: int, total: int) -> None:
        super().__init__()
        self.scenario, self.cells, self.done, self.total = scenario, cells, done, total


class SideBySideDone(Message):
    def __init__(self, view) -> None:  # noqa: ANN001 - nitdbg.compare.sidebyside.SideBySide
        super().__init__()
        self.view = view


def side_text(side) -> str:  # noqa: ANN001 - a sidebyside.Side
    lines = [side.label.upper(), f"RFLAGS {side.rflags}", "", "retired instructions:"]
    for r in side.insns:
        mark = "▶" if r.here else " "
        lines.append(f"{mark} #{r.seq:<8} {r.where:<20} {r.text.expandtabs(8)}")
    lines += ["", "events (delivered, IRETs):"]
    for e in side.events or []:
        lines.append(f"  #{e.seq:<8} {e.what:<6} {e.where:<20} RFLAGS {e.rflags} {e.extra}")
    if not side.events:
        lines.append("  none near the divergence")
    return "\n".join(lines)


class SideBySideScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q", "dismiss", "close")]
    DEFAULT_CSS = """
    SideBySideScreen #sbs-head { height: auto; padding: 0 1; }
    SideBySideScreen .sbs-side { width: 1fr; height: 1fr; padding: 0 1; }
    """

    def __init__(self, scenario: str, policy: str) -> None:
        super().__init__()
        self.scenario, self.policy = scenario, policy

    def compose(self) -> ComposeResult:
        with Vertical(id="sbs", classes="dialog"):
            yield Static(f"running {self.scenario} under {self.policy} and on hardware…",
                         id="sbs-head", markup=False)
            with Horizontal():
                yield Static(id="sbs-policy", classes="sbs-side", markup=False)
                yield Static(id="sbs-hardware", classes="sbs-side", markup=False)

    def on_mount(self) -> None:
        self.query_one("#sbs").border_title = (f"{self.scenario} under {self.policy} vs "
                                               "hardware (Esc closes)")
        self.run_worker(self._compute, thread=True, name="side-by-side")

    def _compute(self) -> None:
        from ...compare.sidebyside import side_by_side
        self.post_message(SideBySideDone(side_by_side(self.scenario, self.policy)))

    def on_side_by_side_done(self, msg: SideBySideDone) -> None:
        v = msg.view
        head = self.query_one("#sbs-head", Static)
        if v.error and not v.sides:
            head.update(f"error: {v.error}")
            return
        if v.same:
            head.update("same as hardware: no difference to show")
            return
        part = f" [{v.part}]" if v.part else ""
        head.update(f"{v.kind} on vCPU {v.vcpu} at {v.at}{part}: {v.detail}")
        self.query_one("#sbs-policy", Static).update(side_text(v.sides[0]))
        self.query_one("#sbs-hardware", Static).update(side_text(v.sides[1]))


class CompareScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q", "dismiss", "close"),
                Binding("A", "all", "compute every row")]
    DEFAULT_CSS = """
    CompareScreen #cmp-table { height: 1fr; }
    CompareScreen #cmp-status { height: auto; padding: 0 1; }
    """

    def __init__(self, scenarios: list[str] | None = None,
                 policies: list[str] | None = None) -> None:
        super().__init__()
        from ...compare.matrix import scenario_names
        from ...vmm.nmi_policy import MAIN_POLICIES
        self.scenarios = scenarios or scenario_names()
        self.policies = policies or list(MAIN_POLICIES)
        self.cells: dict[tuple[str, str], object] = {}
        self.busy = False

    def compose(self) -> ComposeResult:
        with Vertical(id="compare", classes="dialog"):
            yield Static("Enter on a row: compute that row (a few seconds); A: every row "
                         "(about 20 s on 2 cores); Enter on a computed cell: both runs side "
                         "by side", id="cmp-status")
            yield DataTable(id="cmp-table", cursor_type="cell", zebra_stripes=True)

    def on_mount(self) -> None:
        self.query_one("#compare").border_title = ("compare: policies against hardware "
                                                   "(Esc closes)")
        t = self.query_one(DataTable)
        t.add_column("scenario", key="scenario",
                     width=max(len("scenario"), *(len(s) for s in self.scenarios)))
        for p in self.policies:
            t.add_column(p, key=p, width=CELL_WIDTH)
        for s in self.scenarios:
            t.add_row(s, *(PENDING for _ in self.policies), key=s)
        t.focus()

    def _status(self, text: str) -> None:
        self.query_one("#cmp-status", Static).update(text)

    def compute(self, rows: list[str]) -> None:
        """Compute these scenario rows on a thread worker, one row at a time."""
        if self.busy:
            self._status("still computing: wait for it (or Esc)")
            return
        self.busy = True
        t = self.query_one(DataTable)
        for s in rows:
            for p in self.policies:
                t.update_cell(s, p, RUNNING)
        self._status(f"computing {len(rows)} row(s): 0/{len(rows)}")
        self.run_worker(lambda: self._rows(rows), thread=True, name="compare")

    def _rows(self, rows: list[str]) -> None:
        from ...compare.matrix import run_cell, run_matrix
        for i, s in enumerate(rows):
            if len(rows) > 1:
                cells = run_matrix([s], self.policies, 2)       # 2 processes, one row
            else:
                cells = [run_cell(s, p) for p in self.policies]
            self.post_message(CellsDone(s, cells, i + 1, len(rows)))

    def on_cells_done(self, msg: CellsDone) -> None:
        t = self.query_one(DataTable)
        for c in msg.cells:
            self.cells[(c.scenario, c.policy)] = c
            t.update_cell(c.scenario, c.policy, c.words())
        if msg.done == msg.total:
            self.busy = False
            self._status(f"done: {msg.total} row(s); Enter on a cell: both runs side by side")
        else:
            self._status(f"computing: {msg.done}/{msg.total} rows")

    def action_all(self) -> None:
        rows = [s for s in self.scenarios if (s, self.policies[0]) not in self.cells]
        if rows:
            self.compute(rows)

    def on_data_table_cell_selected(self, event: DataTable.CellSelected) -> None:
        scenario = str(event.cell_key.row_key.value)
        policy = str(event.cell_key.column_key.value)
        if policy == "scenario" or (scenario, self.policies[0]) not in self.cells:
            self.compute([scenario])
            return
        cell = self.cells.get((scenario, policy))
        if cell is None:
            return
        self.app.push_screen(SideBySideScreen(scenario, policy))
