"""XLAT/XLATB: AL = the byte at seg:[rBX + zero-extended AL] (SDM vol 2 "XLAT/XLATB", APM vol 3
"XLAT"). DS unless a segment prefix overrides it; the address size (67h) picks rBX/EBX/BX and
the sum wraps in it; REX.W changes nothing."""

from __future__ import annotations

import capstone.x86_const as X

from ..decode import Decoded, translates
from ..regs import MASK, RBX
from .string import _SEG_PREFIX, _lin


@translates(X.X86_INS_XLATB)
def xlat(d: Decoded):
    am = MASK[d.addr_size]
    seg = _SEG_PREFIX.get(d.prefix[1], 3) if len(d.prefix) > 1 else 3
    lin = _lin(d.mode, seg)

    def xlat_(c):
        al = c.regs[0] & 0xFF
        v = c.rd(lin(c, (c.regs[RBX] + al) & am), 1)
        c.regs[0] = (c.regs[0] & ~0xFF) | v
    return xlat_
