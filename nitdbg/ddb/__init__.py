"""nitdbg.ddb: a FreeBSD-ddb-like debugger for the guest, and the step audit.

Split like FreeBSD's sys/ddb: lex.py / expr.py (expressions), commands.py (the command
table with its `show` sub-table), breakpoints.py, watch.py (DR0-3 watchpoints), examine.py
(`x`, `print`), disasm.py, regs.py, trace.py (`bt`), audit.py (the step audit), main.py
(entry, banner, run modes).

The API the machine layer uses:

    ddb = Ddb(vm, symbols)
    res = ddb.enter(vcpu, info)   # the guest made the KDB_ENTER hypercall; info = the
                                  # hypercall's {trapframe, type, cpu}
    res = ddb.command(line)       # one line typed at ddb.prompt ("db> ")
    res.output                    # text to print: the stop banner
                                  #   "[ thread pid N tid N ]\\nStopped at\\tsym+off:\\tinsn\\n"
                                  #   (or "Breakpoint at", "Watchpoint at"), command output,
                                  #   or one error line in ddb's words
    res.resume                    # True: the machine leaves kdb for this vCPU
                                  #   (Machine.leave_kdb), runs the guest, and calls
                                  #   enter() at the next kdb stop; for `s,N`, `until`, and
                                  #   `c` over a breakpoint, enter() itself returns
                                  #   resume=True with no output until the run mode is done
    ddb.active, ddb.vcpu          # in the debugger, and on which vCPU
    ddb.audit                     # StepAudit: .checks (StepCheck dataclasses), .ok,
                                  #   .summary() (one line), .report() (evidence)

Registers shown and written are those of the trapframe in guest memory; a step sets PSL_T
in its tf_rflags and lets the guest return through its own trap exit path.
"""

from .audit import ExitRecord, InsnRecord, StepAudit, StepCheck
from .errors import DdbError
from .main import Ddb, DdbResult

__all__ = ["Ddb", "DdbResult", "DdbError", "StepAudit", "StepCheck", "InsnRecord",
           "ExitRecord"]
