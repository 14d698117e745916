"""The x87 family as far as nitdbg goes: WAIT/FWAIT. This vCPU has no x87 unit to model (no
FPU state, no unmasked x87 exceptions can be pending), so WAIT only makes its device-not-
available check: #NM when CR0.MP and CR0.TS are both 1 (SDM vol 2 "WAIT/FWAIT", vol 3 table
2-2; APM vol 3 "FWAIT"). Every other x87 instruction, and SSE, remain #UD (README)."""

from __future__ import annotations

import capstone.x86_const as X

from ..decode import Decoded, translates
from ..faults import Fault
from ..regs import CR0_MP, CR0_TS

_MP_TS = CR0_MP | CR0_TS


@translates(X.X86_INS_WAIT)
def wait(d: Decoded):
    def wait_(c):
        if c.cr0 & _MP_TS == _MP_TS:
            raise Fault(7)
    return wait_
