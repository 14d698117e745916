"""String instructions: movs, stos, lods, cmps, scas with rep/repe/repne (SDM vol 2 "REP/REPE/
REPZ/REPNE/REPNZ", APM vol 3 3.x "MOVSx", vol 1 3.10 "String instructions").

Operands: the source is seg:rSI (DS unless overridden), the destination ES:rDI (never
overridden). The address size (0x67) picks rSI/rDI/rCX as RSI/RDI/RCX, ESI/EDI/ECX or
SI/DI/CX. In 64-bit mode only an FS/GS override adds a base; ES's base is ignored.

A repeated instruction runs to completion as one retired instruction, except that
- a fault in iteration k leaves RCX/RSI/RDI (and the flags of cmps/scas) as they were after
  iteration k-1 and RIP at the instruction, so the handler can restart it (SDM vol 2 REP:
  "the registers ... reflect the iterations completed");
- with TF=1 one iteration runs per single-step trap and RIP stays at the instruction while
  iterations remain (SDM vol 3 17.3.1.4: the trap is taken between iterations);
- a data breakpoint hit ends the instruction after that iteration the same way (SDM vol 3
  17.3.1.2: reported "after the iteration", then the instruction resumes).
- one execution runs at most REP_SLICE iterations and then leaves RIP at the instruction, as
  an interrupt between iterations would (SDM vol 1 7.3.9.3 / vol 2 REP: the instruction is
  resumed with the registers as the completed iterations left them), so rCX = 2**64-1 does
  not hold the host in one instruction; each slice is one entry of the retirement log.
`rep movs`/`rep stos` copy a page-sized chunk at a time through the TLB's host pages when both
pages are already translated for the access (so no page walk, watched page, MMIO or cached
code page is involved); anything else takes the per-element path that checks everything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import capstone.x86_const as X

from .. import flags as F
from ..decode import Decoded, Translator, translates
from ..faults import Fault
from ..operands import reg_writer
from ..regs import DF, ES, FS, GS, MASK, RCX, RDI, RSI, SS, TF, ZF, canonical

if TYPE_CHECKING:
    from ..cpu import Cpu

M64 = 0xFFFF_FFFF_FFFF_FFFF
NA = F.NOT_ARITH
REP_SLICE = 1 << 20       # iterations of one REP string instruction per execution
_SEG_PREFIX = {0x26: ES, 0x2E: 1, 0x36: SS, 0x3E: 3, 0x64: FS, 0x65: GS}
_ACC = {1: X.X86_REG_AL, 2: X.X86_REG_AX, 4: X.X86_REG_EAX, 8: X.X86_REG_RAX}

# SSE forms that share capstone ids with string instructions (movsd/cmpsd xmm): a module that
# implements them registers its translator here.
SSE_FORMS: dict[int, Translator] = {}



def _lin(mode: int, seg: int):
    """Offset -> linear address through segment `seg` in `mode`."""
    if mode == 64:
        if seg in (FS, GS):
            return lambda c, off: (c.seg[seg].base + off) & M64
        if seg == SS:
            def lin_ss(c, off):
                # a non-canonical stack-segment reference is #SS(0) (SDM vol 3 6.15)
                if not canonical(off):
                    raise Fault(12, 0)
                return off
            return lin_ss
        return lambda c, off: off
    return lambda c, off: (c.seg[seg].base + off) & 0xFFFF_FFFF


def _setter(am: int):
    """Write rCX/rSI/rDI in the address size: 16-bit merges, 32-bit zero-extends."""
    if am == 0xFFFF:
        def set16(c, i, v):
            c.regs[i] = (c.regs[i] & ~0xFFFF) | v
        return set16

    def setn(c, i, v):
        c.regs[i] = v
    return setn


class _Str:
    """What every string translator needs, worked out once at translate time."""

    def __init__(self, d: Decoded, size: int):
        self.size = size
        self.am = MASK[d.addr_size]
        src_seg = _SEG_PREFIX.get(d.prefix[1], 3) if len(d.prefix) > 1 else 3
        self.src = _lin(d.mode, src_seg)
        self.dst = _lin(d.mode, ES)
        self.setr = _setter(self.am)
        self.rep = d.rep or d.repne
        self.repne = d.repne
        self.addr = d.addr
        self.acc_w = reg_writer(_ACC[size])


def _progress(c: Cpu, s: _Str, n: int, si: int | None, di: int | None) -> None:
    setr = s.setr
    setr(c, RCX, n)
    if si is not None:
        setr(c, RSI, si)
    if di is not None:
        setr(c, RDI, di)


def _chunk(off_s: int, off_d: int, n: int, size: int, down: bool) -> int:
    """How many elements fit inside the current page of both addresses (-1: no source)."""
    if down:
        k = n
        if off_s >= 0:
            k = min(k, off_s // size + 1 if off_s + size <= 4096 else 0)
        return min(k, off_d // size + 1 if off_d + size <= 4096 else 0)
    k = n
    if off_s >= 0:
        k = min(k, (4096 - off_s) // size)
    return min(k, (4096 - off_d) // size)


def _no_wrap(off: int, k: int, size: int, down: bool, am: int) -> bool:
    return off - (k - 1) * size >= 0 if down else off + k * size - 1 <= am


# ------------------------------------------------------------------ MOVS
def _movs(d: Decoded, size: int):
    s = _Str(d, size)
    src, dst, am, setr = s.src, s.dst, s.am, s.setr
    if not s.rep:
        def movs(c):
            delta = -size if c.rflags & DF else size
            si, di = c.regs[RSI] & am, c.regs[RDI] & am
            c.wr(dst(c, di), size, c.rd(src(c, si), size))
            setr(c, RSI, (si + delta) & am)
            setr(c, RDI, (di + delta) & am)
        return movs
    addr = s.addr

    def rep_movs(c):
        n = c.regs[RCX] & am
        if not n:
            return
        down = bool(c.rflags & DF)
        delta = -size if down else size
        si, di = c.regs[RSI] & am, c.regs[RDI] & am
        stepping = c.rflags & TF
        watch = bool(c.data_bps)
        n0 = n
        rest = n - min(n, REP_SLICE)          # iterations left for the next slice
        try:
            while n > rest:
                sl, dl = src(c, si), dst(c, di)
                if n - rest > 1 and not stepping:
                    k = _chunk(sl & 0xFFF, dl & 0xFFF, n - rest, size, down)
                    if k > 1:
                        sp = c.tlb_r.get(sl >> 12)
                        dp = c.tlb_w.get(dl >> 12)
                        if (sp is not None and dp is not None and _no_wrap(si, k, size, down, am)
                                and _no_wrap(di, k, size, down, am)):
                            nb = k * size
                            s0 = (sl & 0xFFF) - (k - 1) * size if down else sl & 0xFFF
                            d0 = (dl & 0xFFF) - (k - 1) * size if down else dl & 0xFFF
                            # Overlap where an element would read bytes an earlier element
                            # of this chunk wrote: keep the per-element semantics.
                            hazard = sp is dp and (d0 < s0 < d0 + nb if down
                                                   else s0 < d0 < s0 + nb)
                            if not hazard:
                                dp[d0:d0 + nb] = sp[s0:s0 + nb]
                                n -= k
                                si = (si + k * delta) & am
                                di = (di + k * delta) & am
                                continue
                c.wr(dl, size, c.rd(sl, size))
                n -= 1
                si = (si + delta) & am
                di = (di + delta) & am
                if stepping or (watch and c.pending_db):
                    break
        finally:
            if n != n0:
                _progress(c, s, n, si, di)
        if n:
            c.rip = addr   # interrupted between iterations: resume here
    return rep_movs


# ------------------------------------------------------------------ STOS
def _stos(d: Decoded, size: int):
    s = _Str(d, size)
    dst, am, setr = s.dst, s.am, s.setr
    vm = MASK[size]
    if not s.rep:
        def stos(c):
            di = c.regs[RDI] & am
            c.wr(dst(c, di), size, c.regs[0] & vm)
            setr(c, RDI, (di + (-size if c.rflags & DF else size)) & am)
        return stos
    addr = s.addr

    def rep_stos(c):
        n = c.regs[RCX] & am
        if not n:
            return
        down = bool(c.rflags & DF)
        delta = -size if down else size
        di = c.regs[RDI] & am
        v = c.regs[0] & vm
        stepping = c.rflags & TF
        watch = bool(c.data_bps)
        pattern = v.to_bytes(size, "little")
        n0 = n
        rest = n - min(n, REP_SLICE)
        try:
            while n > rest:
                dl = dst(c, di)
                if n - rest > 1 and not stepping:
                    k = _chunk(-1, dl & 0xFFF, n - rest, size, down)
                    if k > 1:
                        dp = c.tlb_w.get(dl >> 12)
                        if dp is not None and _no_wrap(di, k, size, down, am):
                            d0 = (dl & 0xFFF) - (k - 1) * size if down else dl & 0xFFF
                            dp[d0:d0 + k * size] = pattern * k
                            n -= k
                            di = (di + k * delta) & am
                            continue
                c.wr(dl, size, v)
                n -= 1
                di = (di + delta) & am
                if stepping or (watch and c.pending_db):
                    break
        finally:
            if n != n0:
                _progress(c, s, n, None, di)
        if n:
            c.rip = addr
    return rep_stos


# ------------------------------------------------------------------ LODS
def _lods(d: Decoded, size: int):
    s = _Str(d, size)
    src, am, setr, acc_w = s.src, s.am, s.setr, s.acc_w
    if not s.rep:
        def lods(c):
            si = c.regs[RSI] & am
            acc_w(c, c.rd(src(c, si), size))
            setr(c, RSI, (si + (-size if c.rflags & DF else size)) & am)
        return lods
    addr = s.addr

    def rep_lods(c):
        n = c.regs[RCX] & am
        if not n:
            return
        delta = -size if c.rflags & DF else size
        si = c.regs[RSI] & am
        stepping = c.rflags & TF
        watch = bool(c.data_bps)
        n0 = n
        rest = n - min(n, REP_SLICE)
        try:
            while n > rest:
                acc_w(c, c.rd(src(c, si), size))
                n -= 1
                si = (si + delta) & am
                if stepping or (watch and c.pending_db):
                    break
        finally:
            if n != n0:
                _progress(c, s, n, si, None)
        if n:
            c.rip = addr
    return rep_lods


# ------------------------------------------------------------------ CMPS / SCAS
def _compare(d: Decoded, size: int, scas: bool):
    """CMPS compares [rSI] - [rDI], SCAS rAX - [rDI]; flags as SUB (SDM vol 2 CMPS, SCAS).
    REPE repeats while ZF=1, REPNE while ZF=0; the count is checked first, so rCX=0 leaves
    the flags alone."""
    s = _Str(d, size)
    src, dst, am, setr = s.src, s.dst, s.am, s.setr
    m = MASK[size]
    sub = F.sub
    if not s.rep:
        def cmp1(c):
            delta = -size if c.rflags & DF else size
            di = c.regs[RDI] & am
            if scas:
                a = c.regs[0] & m
                b = c.rd(dst(c, di), size)
            else:
                si = c.regs[RSI] & am
                a = c.rd(src(c, si), size)
                b = c.rd(dst(c, di), size)
                setr(c, RSI, (si + delta) & am)
            setr(c, RDI, (di + delta) & am)
            c.rflags = (c.rflags & NA) | sub(a, b, (a - b) & m, size)
        return cmp1
    addr = s.addr
    stop_on_zf = s.repne    # REPNE ends when ZF=1, REPE when ZF=0
    # Bulk scanning (forward only): REPE runs of equal elements for both, REPNE SCAS up to
    # the first equal element; REPNE CMPS has no cheap bulk form.
    bulk_ok = scas or not s.repne

    def rep_cmp(c):
        n = c.regs[RCX] & am
        if not n:
            return
        delta = -size if c.rflags & DF else size
        si = c.regs[RSI] & am
        di = c.regs[RDI] & am
        stepping = c.rflags & TF
        watch = bool(c.data_bps)
        fl = -1
        n0 = n
        acc = c.regs[0] & m
        acc_bytes = acc.to_bytes(size, "little")
        rest = n - min(n, REP_SLICE)
        try:
            while n > rest:
                if n - rest > 1 and not (stepping or delta < 0) and bulk_ok:
                    j = _cmp_skip(c, s, src(c, si) if not scas else -1, dst(c, di),
                                  n - rest - 1, si, di, acc_bytes if scas else None)
                    if j:
                        fl = _cmp_last_flags(c, s, si, di, j, acc if scas else None)
                        n -= j
                        if not scas:
                            si = (si + j * size) & am
                        di = (di + j * size) & am
                        continue
                a = acc if scas else c.rd(src(c, si), size)
                b = c.rd(dst(c, di), size)
                fl = sub(a, b, (a - b) & m, size)
                n -= 1
                if not scas:
                    si = (si + delta) & am
                di = (di + delta) & am
                if bool(fl & ZF) == stop_on_zf:
                    break
                if stepping or (watch and c.pending_db):
                    if n:
                        c.rip = addr
                    break
        finally:
            if n != n0:
                _progress(c, s, n, None if scas else si, di)
                c.rflags = (c.rflags & NA) | fl
        if n and n == rest and bool(fl & ZF) != stop_on_zf:
            c.rip = addr              # the slice ended between iterations: resume here
    return rep_cmp


def _first_diff(x: bytes, y: bytes) -> int:
    """Index of the first byte where x and y differ (len if none), by halving with C-level
    slice compares."""
    if x == y:
        return len(x)
    lo, hi = 0, len(x)
    while hi - lo > 32:
        mid = (lo + hi) // 2
        if x[lo:mid] == y[lo:mid]:
            lo = mid
        else:
            hi = mid
    while x[lo] == y[lo]:
        lo += 1
    return lo


def _cmp_skip(c, s: _Str, sl: int, dl: int, limit: int, si: int, di: int,
              pattern: bytes | None) -> int:
    """How many leading elements (at most `limit`, within the current pages, all already in
    the TLB) continue a forward REPE CMPS / REPE SCAS / REPNE SCAS. 0: use the slow path."""
    size, am = s.size, s.am
    k = _chunk(sl & 0xFFF if sl >= 0 else -1, dl & 0xFFF, limit, size, False)
    if k < 2 or not _no_wrap(di, k, size, False, am):
        return 0
    dp = c.tlb_r.get(dl >> 12)
    if dp is None:
        return 0
    d0 = dl & 0xFFF
    b = bytes(dp[d0:d0 + k * size])
    if pattern is None:
        sp = c.tlb_r.get(sl >> 12)
        if sp is None or not _no_wrap(si, k, size, False, am):
            return 0
        s0 = sl & 0xFFF
        return _first_diff(bytes(sp[s0:s0 + k * size]), b) // size
    if not s.repne:
        return _first_diff(b, pattern * k) // size
    i = b.find(pattern)
    while i >= 0 and i % size:
        i = b.find(pattern, i + 1)
    return k if i < 0 else i // size


def _cmp_last_flags(c, s: _Str, si: int, di: int, j: int, acc: int | None) -> int:
    """SUB flags of the last of `j` skipped elements (what RFLAGS holds after them)."""
    size, am = s.size, s.am
    b = c.rd(s.dst(c, (di + (j - 1) * size) & am), size)
    a = acc if acc is not None else c.rd(s.src(c, (si + (j - 1) * size) & am), size)
    return F.sub(a, b, (a - b) & MASK[size], size)


# ------------------------------------------------------------------ registration
_FORMS = {
    X.X86_INS_MOVSB: ("movs", 1), X.X86_INS_MOVSW: ("movs", 2), X.X86_INS_MOVSD: ("movs", 4),
    X.X86_INS_MOVSQ: ("movs", 8),
    X.X86_INS_STOSB: ("stos", 1), X.X86_INS_STOSW: ("stos", 2), X.X86_INS_STOSD: ("stos", 4),
    X.X86_INS_STOSQ: ("stos", 8),
    X.X86_INS_LODSB: ("lods", 1), X.X86_INS_LODSW: ("lods", 2), X.X86_INS_LODSD: ("lods", 4),
    X.X86_INS_LODSQ: ("lods", 8),
    X.X86_INS_CMPSB: ("cmps", 1), X.X86_INS_CMPSW: ("cmps", 2), X.X86_INS_CMPSD: ("cmps", 4),
    X.X86_INS_CMPSQ: ("cmps", 8),
    X.X86_INS_SCASB: ("scas", 1), X.X86_INS_SCASW: ("scas", 2), X.X86_INS_SCASD: ("scas", 4),
    X.X86_INS_SCASQ: ("scas", 8),
}


@translates(*_FORMS)
def string_insn(d: Decoded):
    kind, size = _FORMS[d.id]
    if kind in ("movs", "cmps") and not (d.is_mem(0) and d.is_mem(1)):
        sse = SSE_FORMS.get(d.id)   # movsd/cmpsd on xmm registers share the id
        return sse(d) if sse is not None else None
    if kind == "movs":
        return _movs(d, size)
    if kind == "stos":
        return _stos(d, size)
    if kind == "lods":
        return _lods(d, size)
    return _compare(d, size, kind == "scas")
