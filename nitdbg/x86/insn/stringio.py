"""String I/O: INS and OUTS with REP (SDM vol 2 "INS/INSB/INSW/INSD", "OUTS/OUTSB/OUTSW/OUTSD";
APM vol 3 "INS", "OUTS").

INS reads port DX into ES:rDI (no segment override), OUTS writes DS:rSI (override allowed) to
port DX; rDI/rSI step by the element size, down when DF=1; REP repeats rCX times (address
size picks rCX/ECX/CX as for the other string instructions). The I/O permission check (IOPL,
TSS bitmap) comes first, then the layer above may intercept the instruction as a whole
(`Hooks.io_string`: under SVM the IOIO #VMEXIT with EXITINFO1.STR/REP, APM vol 2 15.10.2, and
the hypervisor emulates it). Without an intercept each element is one port access through
`Hooks.io_in/io_out`. INS checks that the destination is writable before it reads the port,
so a #PF does not consume a byte of device input. With TF=1 one iteration runs per
single-step trap and RIP stays at the instruction while iterations remain (SDM vol 3
17.3.1.4), as for MOVS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import capstone.x86_const as X

from ..decode import Decoded, translates
from ..hooks import ACC_WRITE
from ..regs import DF, ES, MASK, RCX, RDI, RSI, TF
from .string import _SEG_PREFIX, REP_SLICE, _lin, _setter
from .system import _io_check

if TYPE_CHECKING:
    from ..cpu import Cpu

_FORMS = {X.X86_INS_INSB: (True, 1), X.X86_INS_INSW: (True, 2), X.X86_INS_INSD: (True, 4),
          X.X86_INS_OUTSB: (False, 1), X.X86_INS_OUTSW: (False, 2),
          X.X86_INS_OUTSD: (False, 4)}
ADDR_BITS = {0xFFFF: 16, 0xFFFF_FFFF: 32, 0xFFFF_FFFF_FFFF_FFFF: 64}


@translates(*_FORMS)
def string_io(d: Decoded):
    is_in, size = _FORMS[d.id]
    am = MASK[d.addr_size]
    seg = ES if is_in else (_SEG_PREFIX.get(d.prefix[1], 3) if len(d.prefix) > 1 else 3)
    lin = _lin(d.mode, seg)
    setr = _setter(am)
    index = RDI if is_in else RSI
    rep = d.rep or d.repne           # F2 repeats INS/OUTS as F3 does (no ZF test)
    addr, nxt = d.addr, d.next
    abits = ADDR_BITS[am]

    def one(c: Cpu, port: int, off: int) -> None:
        la = lin(c, off)
        if is_in:
            c.lin_to_hpa(la, ACC_WRITE)          # #PF before the port is read
            c.wr(la, size, c.hooks.io_in(c, port, size, nxt) & MASK[size])
        else:
            c.hooks.io_out(c, port, size, c.rd(la, size), nxt)

    def ins_outs(c: Cpu) -> None:
        port = c.regs[2] & 0xFFFF
        _io_check(c, port, size)
        c.hooks.io_string(c, port, size, is_in, rep, abits, seg, nxt)
        delta = -size if c.rflags & DF else size
        off = c.regs[index] & am
        if not rep:
            one(c, port, off)
            setr(c, index, (off + delta) & am)
            return
        n = c.regs[RCX] & am
        stepping = c.rflags & TF
        rest = n - min(n, REP_SLICE)          # as for MOVS: a slice per execution
        while n > rest:
            one(c, port, off)                 # a fault leaves the completed iterations
            off = (off + delta) & am
            n -= 1
            setr(c, index, off)
            setr(c, RCX, n)
            if stepping or c.pending_db:
                break
        if n:
            c.rip = addr                      # between iterations: resume here
    return ins_outs
