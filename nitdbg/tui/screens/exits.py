"""Exit history for hypervisor developers: the recent #VMEXITs of one vCPU; pick one and
see the VMCB and the guest registers as that exit left them (before its handling)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from ...x86.regs import GPR_NAMES


def exit_label(x, sym) -> str:  # noqa: ANN001 - ExitSnapshot, sym+off
    e = x.exit
    t = f"{e.time / 1e6:.6f} ms" if e.time is not None else "?"
    return f"#{e.number:<6} {t:>14}  {e.name:<20} {sym(e.rip)}"


def exit_detail(x, sym) -> str:  # noqa: ANN001
    e, b, r = x.exit, x.vmcb, x.regs
    lines = [e.where(), f"guest RIP {sym(e.rip)}", "",
             f"exitcode    {b.exitcode:#x} {b.exitname}",
             f"exitinfo1   {b.exitinfo1:#x}", f"exitinfo2   {b.exitinfo2:#x}",
             f"exitintinfo {b.exitintinfo}", f"eventinj    {b.eventinj}",
             f"v_irq       {b.v_irq} vector {b.v_intr_vector:#x}",
             f"int_shadow  {b.interrupt_shadow}",
             f"rflags      {b.rflags:#x}" + (" TF" if b.rflags & 0x100 else "")
             + (" RF" if b.rflags & 0x10000 else ""),
             f"dr6/dr7     {b.dr6:#x} / {b.dr7:#x}",
             "intercepts  " + " ".join(b.intercepts), ""]
    half = len(GPR_NAMES) // 2
    for i in range(half):
        a, c = GPR_NAMES[i], GPR_NAMES[i + half]
        lines.append(f"{a:>3} {r[a]:016x}  {c:>3} {r[c]:016x}")
    lines.append(f"rip {r['rip']:016x}  rflags {r['rflags']:#x}")
    return "\n".join(lines)


class ExitHistoryScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q", "dismiss", "close")]
    DEFAULT_CSS = """
    ExitHistoryScreen #exit-list { width: 1fr; height: 1fr; }
    ExitHistoryScreen #exit-detail { width: 1fr; height: 1fr; padding: 0 1; }
    """

    def __init__(self, vcpu: int, exits: tuple, sym, at: int | None = None) -> None:  # noqa: ANN001
        super().__init__()
        self.vcpu = vcpu
        self.exits = tuple(reversed(exits))          # newest first
        self.sym = sym
        self.at = at          # picked on the timeline: open on the exit nearest this time

    def compose(self) -> ComposeResult:
        with Horizontal(id="exits", classes="dialog"):
            yield OptionList(*[Option(exit_label(x, self.sym), id=str(i))
                               for i, x in enumerate(self.exits)], id="exit-list")
            yield Static(id="exit-detail")

    def on_mount(self) -> None:
        box = self.query_one("#exits")
        box.border_title = f"recent exits of vCPU {self.vcpu} (newest first; Esc closes)"
        detail = self.query_one("#exit-detail", Static)
        if not self.exits:
            detail.update("no exit recorded yet")
            return
        first = 0
        if self.at is not None:
            timed = [i for i, x in enumerate(self.exits) if x.exit.time is not None]
            if timed:
                first = min(timed, key=lambda i: abs(self.exits[i].exit.time - self.at))
        options = self.query_one(OptionList)
        options.highlighted = first
        self.call_after_refresh(options.scroll_to_highlight)    # once it has its size
        detail.update(exit_detail(self.exits[first], self.sym))

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        i = int(event.option.id or 0)
        self.query_one("#exit-detail", Static).update(exit_detail(self.exits[i], self.sym))
