"""Keys, surfaces, and a short primer on TF and RF."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# nitdbg keys

| key | action |
|---|---|
| `s` | ddb step (`s` at db>); outside ddb a host-level step of one instruction |
| `c` / `p` | continue / pause a running guest |
| `n` / `N` | NMI into the selected vCPU (`bhyvectl --assert-lapic-lvt=1 --cpu=N`) / all |
| `v` | next vCPU |
| `h` | host-level step of the vCPU: one instruction (a delivery is a step of its own) |
| `x` | host-level run of the vCPU to its next VM exit, stopped before the next VMRUN |
| `R` | `bhyvectl --force-reset`: the way out of a deadlock (the recording goes on) |
| `/` | type a filter for the KTR log |
| `C` | compare: every scenario under every NMI policy against hardware; a cell side by side |
| `X` | exit history: the recent VM exits of the vCPU, the VMCB and registers of each |
| `t` | the timeline: arrows pick a moment (or click a cell), Enter opens the exit nearest it |
| `Esc` | leave an input: the keys go to the view again |
| `a` | the step audit's evidence |
| `e` | run a scenario;  `r` start/stop recording;  `o` open a session for replay |
| `[` `]` | replay: step back / forward |
| `l` | switch layout (small / compact / wide) |
| `F2` `F3` `F4` | type at host$ / guest# / db>  (`tab` completes, `up`/`down` history) |
| `ctrl+p` | command palette (every action as "domain: action") |

# TF and RF in one minute

* **TF=1 at the start of an instruction** makes the processor take a single-step #DB *after*
  it, with DR6.BS=1 (Intel SDM vol 3 17.3.1.4). The instruction that sets TF is not stepped.
* The #DB handler runs with TF=0; the pushed RFLAGS keep TF=1, so its IRET resumes stepping.
* **RF=1** suppresses instruction breakpoints for one instruction (Intel SDM vol 3 17.3.1.1).
* **NMI blocking** lasts until the next IRET (Intel SDM vol 3 6.7.1). SVM does not report the
  IRET, so the hypervisor intercepts it — the intercept is taken *before* the IRET executes
  (APM vol 2 15.9). IRET tracing then sets TF|RF: the #DB after the IRET is the precise end of
  blocking.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark,f1", "dismiss", "close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help", classes="dialog"):
            yield Markdown(HELP)
