"""System instructions: flags control, HLT/PAUSE, software interrupts, I/O, MSRs, control and
debug registers, descriptor tables, segment loads, SVM instructions as intercept points."""

from __future__ import annotations

import capstone.x86_const as X

from ..decode import F_NO_SSTEP, Decoded, translates
from ..faults import Fault
from ..regs import (
    AC,
    CF,
    CR0_PE,
    CR0_PG,
    CR0_TS,
    CR4_DE,
    CRMAP,
    CS,
    DF,
    DR6_BD,
    DR6_BS,
    DR7_GD,
    DRMAP,
    EFER_LMA,
    EFER_LME,
    EFER_SCE,
    EFER_SVME,
    FS,
    GS,
    ID,
    IF,
    IOPL,
    MASK,
    MSR_APIC_BASE,
    MSR_CSTAR,
    MSR_EFER,
    MSR_FS_BASE,
    MSR_GS_BASE,
    MSR_KERNEL_GS_BASE,
    MSR_LSTAR,
    MSR_SFMASK,
    MSR_STAR,
    MSR_TSC,
    MSR_TSC_AUX,
    NT,
    REGMAP,
    RF,
    RFLAGS_WRITABLE,
    SEGMAP,
    SHADOW_MOVSS,
    SHADOW_STI,
    SS,
    TF,
    VM,
    canonical,
)
from ..segments import Segment, decode_descriptor
from ..stack import pop, push
from . import ctlregs
from .iret import _load_seg  # noqa: F401  (shared descriptor loading)

M64 = 0xFFFF_FFFF_FFFF_FFFF


def _cpl0(c) -> None:
    if c.cpl != 0:
        raise Fault(13, 0)


def _iopl_ok(c) -> bool:
    return c.cpl <= (c.rflags & IOPL) >> 12


@translates(X.X86_INS_HLT)
def hlt(d: Decoded):
    nxt = d.next

    def hlt_(c):
        _cpl0(c)   # HLT's own #GP comes before the intercept check (APM 15.9)
        c.hooks.insn(c, "hlt", nxt)
        c.halted = True
        c.attention = True
    return hlt_


@translates(X.X86_INS_PAUSE)
def pause(d: Decoded):
    nxt = d.next
    return lambda c: c.hooks.insn(c, "pause", nxt)


@translates(X.X86_INS_CLI)
def cli(d: Decoded):
    def cli_(c):
        if not _iopl_ok(c):
            raise Fault(13, 0)
        c.rflags &= ~IF
    return cli_


@translates(X.X86_INS_STI)
def sti(d: Decoded):
    def sti_(c):
        if not _iopl_ok(c):
            raise Fault(13, 0)
        # STI opens a one-instruction interrupt shadow only when IF was 0 (SDM vol 2 STI).
        if not c.rflags & IF:
            c.shadow = SHADOW_STI
        c.rflags |= IF
        c.attention = True
    return sti_


# CLC/STC/CMC/CLD/STD: one flag cleared, set or complemented: (keep mask, set bits, flip bits)
_FLAG_OPS = {X.X86_INS_CLC: (~CF, 0, 0), X.X86_INS_STC: (-1, CF, 0), X.X86_INS_CMC: (-1, 0, CF),
             X.X86_INS_CLD: (~DF, 0, 0), X.X86_INS_STD: (-1, DF, 0)}


@translates(*_FLAG_OPS)
def flag_op(d: Decoded):
    keep, set_, flip = _FLAG_OPS[d.id]

    def flag_op_(c):
        c.rflags = ((c.rflags & keep) | set_) ^ flip
    return flag_op_


@translates(X.X86_INS_LAHF)
def lahf(d: Decoded):
    def lahf_(c):
        c.regs[0] = (c.regs[0] & ~0xFF00) | ((c.rflags & 0xD5 | 2) << 8)
    return lahf_


@translates(X.X86_INS_SAHF)
def sahf(d: Decoded):
    def sahf_(c):
        c.rflags = (c.rflags & ~0xD5) | ((c.regs[0] >> 8) & 0xD5)
    return sahf_


@translates(X.X86_INS_PUSHF, X.X86_INS_PUSHFD, X.X86_INS_PUSHFQ)
def pushf(d: Decoded):
    size = d.stack_size()
    nxt = d.next

    def pushf_(c):
        c.hooks.insn(c, "pushf", nxt)
        # The image pushed has RF and VM cleared (SDM vol 2 PUSHF).
        push(c, c.rflags & ~(RF | VM) & MASK[size], size)
    return pushf_


@translates(X.X86_INS_POPF, X.X86_INS_POPFD, X.X86_INS_POPFQ)
def popf(d: Decoded):
    size = d.stack_size()
    nxt = d.next

    def popf_(c):
        c.hooks.insn(c, "popf", nxt)
        v = pop(c, size)
        # POPF never sets RF and clears it (SDM vol 2 POPF); IOPL only at CPL 0, IF only at
        # CPL <= IOPL; the instruction's own TF decides its single step (loop, SDM 17.3.1.4).
        writable = RFLAGS_WRITABLE & ~RF
        if c.cpl > 0:
            writable &= ~IOPL
        if not _iopl_ok(c):
            writable &= ~IF
        if size == 2:
            writable &= 0xFFFF
        c.rflags = (c.rflags & ~writable & ~RF) | (v & writable) | 0x2
        c.attention = True
    return popf_


# ---------------------------------------------------------------- software interrupts
def _softint(vector: int, kind: str, name: str, nxt: int, check):
    def softint(c):
        if check is not None:
            check(c)
        if name:
            c.hooks.insn(c, name, nxt)
        if kind in ("exc", "icebp"):
            # INT3/INTO/INT1 are reported to the layer above as the #BP/#OF/#DB exception
            # (the SVM exception intercepts), after the ICEBP intercept for INT1.
            c.hooks.exception(c, vector, None)
        if kind == "icebp" and c.pending_db:
            # Traps held by MOV SS / POP SS merge into INT1's own #DB: one #DB is taken,
            # its DR6 reporting them (at a boundary nothing else is pending: SDM 6.8.3).
            c.dr[6] |= c.pending_db
            c.pending_db = 0
        from ..interrupts import deliver
        deliver(c, vector, "soft" if kind in ("int", "exc") else "icebp", None)
    return softint


@translates(X.X86_INS_INT)
def int_n(d: Decoded):
    d.flags |= F_NO_SSTEP
    return _softint(d.ops[0].imm & 0xFF, "int", "intn", d.next, None)


@translates(X.X86_INS_INT3)
def int3(d: Decoded):
    d.flags |= F_NO_SSTEP
    return _softint(3, "exc", "", d.next, None)


@translates(X.X86_INS_INTO)
def into(d: Decoded):
    d.flags |= F_NO_SSTEP
    if d.mode == 64:
        def ud(c):
            raise Fault(6)
        return ud
    inner = _softint(4, "exc", "", d.next, None)

    def into_(c):
        if c.rflags & 0x800:
            inner(c)
        elif c.rflags & TF:
            # Not taken, INTO is an ordinary instruction and is single-stepped (F_NO_SSTEP
            # covers only the taken case, where the handler starts with TF=0).
            c.pending_db |= DR6_BS
            c.attention = True
    return into_


@translates(X.X86_INS_INT1)
def int1(d: Decoded):
    # ICEBP: a #DB without DR6.BS, delivered as a privileged software event (no DPL check).
    d.flags |= F_NO_SSTEP
    return _softint(1, "icebp", "icebp", d.next, None)


@translates(X.X86_INS_UD2, X.X86_INS_UD0, X.X86_INS_UD1)
def ud2(d: Decoded):
    def ud2_(c):
        raise Fault(6)
    return ud2_


# ---------------------------------------------------------------- I/O
def _io_check(c, port: int, size: int) -> None:
    """Protected mode with CPL > IOPL: every bit of the port range in the TSS I/O permission
    bitmap must be 0, else #GP(0) (SDM vol 1 19.5.2, APM vol 2 13.3.2)."""
    if not c.cr0 & CR0_PE or _iopl_ok(c):
        return
    tr = c.tr
    if tr.type not in (0x9, 0xB) or tr.limit < 0x67:
        raise Fault(13, 0)
    iomap = c.rd_sys(tr.base + 0x66, 2)
    first, last = iomap + (port >> 3), iomap + ((port + size - 1) >> 3)
    if last + 1 > tr.limit:
        raise Fault(13, 0)
    bits = c.rd_sys(tr.base + first, 2 if last > first else 1)
    if (bits >> (port & 7)) & ((1 << size) - 1):
        raise Fault(13, 0)


@translates(X.X86_INS_IN)
def in_(d: Decoded):
    size = d.size(0)
    nxt = d.next
    fixed = d.ops[1].imm & 0xFF if d.is_imm(1) else None
    wr = d.writer(0)

    def in__(c):
        port = fixed if fixed is not None else c.regs[2] & 0xFFFF
        _io_check(c, port, size)
        wr(c, c.hooks.io_in(c, port, size, nxt) & MASK[size])
    return in__


@translates(X.X86_INS_OUT)
def out(d: Decoded):
    size = d.size(1)
    nxt = d.next
    fixed = d.ops[0].imm & 0xFF if d.is_imm(0) else None
    rd = d.reader(1)

    def out_(c):
        port = fixed if fixed is not None else c.regs[2] & 0xFFFF
        _io_check(c, port, size)
        c.hooks.io_out(c, port, size, rd(c), nxt)
    return out_


# ---------------------------------------------------------------- CPUID, TSC, MSRs
CPUID_VENDOR = b"AuthenticAMD"


def cpuid_values(c, leaf: int, sub: int) -> tuple[int, int, int, int]:
    v = CPUID_VENDOR
    b_, d_, c_ = (int.from_bytes(v[i:i + 4], "little") for i in (0, 4, 8))
    if leaf == 0:
        return 0xD, b_, c_, d_
    if leaf == 1:
        # family 0x17-like; EDX: FPU DE TSC MSR PAE APIC SEP PGE CMOV; ECX: x2APIC (21)
        apic_id = c.vcpu_id & 0xFF
        return 0x00800F12, (apic_id << 24) | 0x00020800, 1 << 21, 0x0789A3FD & ~(1 << 23)
    if leaf == 0x8000_0000:
        return 0x8000_000A, b_, c_, d_
    if leaf == 0x8000_0001:
        # EDX: NX (20), LM (29), SYSCALL (11); ECX: SVM (2)
        return 0, 0, 1 << 2, (1 << 29) | (1 << 20) | (1 << 11)
    if leaf == 0x8000_0008:
        return 0x3030, 0, 0, 0
    if leaf == 0x8000_000A:
        # SVM revision 1, 8 ASIDs; EDX: NP (0), NRIPS (3), DecodeAssists (7): the CR
        # intercepts report the GPR in EXITINFO1 (APM vol 2 15.8.1).
        return 1, 8, 0, (1 << 0) | (1 << 3) | (1 << 7)
    return 0, 0, 0, 0


@translates(X.X86_INS_CPUID)
def cpuid(d: Decoded):
    nxt = d.next

    def cpuid_(c):
        c.hooks.insn(c, "cpuid", nxt)
        a, b, cc, dd = cpuid_values(c, c.regs[0] & 0xFFFF_FFFF, c.regs[1] & 0xFFFF_FFFF)
        c.regs[0], c.regs[3], c.regs[1], c.regs[2] = a, b, cc, dd
    return cpuid_


@translates(X.X86_INS_RDTSC)
def rdtsc(d: Decoded):
    nxt = d.next

    def rdtsc_(c):
        c.hooks.insn(c, "rdtsc", nxt)
        t = c.now()
        c.regs[0], c.regs[2] = t & 0xFFFF_FFFF, (t >> 32) & 0xFFFF_FFFF
    return rdtsc_


def _msr_read(c, msr: int, nxt: int) -> int:
    if msr == MSR_EFER:
        return c.efer
    own = {MSR_STAR: "star", MSR_LSTAR: "lstar", MSR_CSTAR: "cstar", MSR_SFMASK: "sfmask",
           MSR_KERNEL_GS_BASE: "kernel_gs_base", MSR_TSC_AUX: "tsc_aux"}
    if msr in own:
        return getattr(c, own[msr])
    if msr == MSR_FS_BASE:
        return c.seg[FS].base
    if msr == MSR_GS_BASE:
        return c.seg[GS].base
    if msr == MSR_TSC:
        return c.now()
    v = c.hooks.rdmsr(c, msr, nxt)
    if v is None:
        raise Fault(13, 0)
    return v


_CANONICAL_MSRS = frozenset({MSR_LSTAR, MSR_CSTAR, MSR_FS_BASE, MSR_GS_BASE,
                             MSR_KERNEL_GS_BASE})


def _msr_write(c, msr: int, v: int, nxt: int) -> None:
    if msr in _CANONICAL_MSRS and not canonical(v):
        raise Fault(13, 0)     # address MSRs must hold canonical addresses (APM vol 2 4.8)
    if msr == MSR_EFER:
        c.efer = ctlregs.check_efer(v, c.efer, _efer_allowed(c), bool(c.cr0 & CR0_PG))
        c.flush_tlb()
        c.update_mode()
        return
    own = {MSR_STAR: "star", MSR_LSTAR: "lstar", MSR_CSTAR: "cstar", MSR_SFMASK: "sfmask",
           MSR_KERNEL_GS_BASE: "kernel_gs_base", MSR_TSC_AUX: "tsc_aux"}
    if msr == MSR_SFMASK and v >> 32:
        raise Fault(13, 0)     # SFMASK bits 63:32 are reserved, MBZ (APM vol 2 6.1.1)
    if msr == MSR_TSC_AUX:
        # AMD ignores TSC_AUX bits 63:32, which read as zero; Intel reserves them (#GP).
        # AMD where the vendors differ (as KVM does for AMD guests, x86.c MSR_TSC_AUX).
        v &= 0xFFFF_FFFF
    if msr in own:
        setattr(c, own[msr], v)
        return
    if msr == MSR_FS_BASE:
        c.seg[FS].base = v
        return
    if msr == MSR_GS_BASE:
        c.seg[GS].base = v
        return
    if not c.hooks.wrmsr(c, msr, v, nxt):
        raise Fault(13, 0)


@translates(X.X86_INS_RDMSR)
def rdmsr(d: Decoded):
    nxt = d.next

    def rdmsr_(c):
        _cpl0(c)
        v = _msr_read(c, c.regs[1] & 0xFFFF_FFFF, nxt)
        c.regs[0], c.regs[2] = v & 0xFFFF_FFFF, (v >> 32) & 0xFFFF_FFFF
    return rdmsr_


@translates(X.X86_INS_WRMSR)
def wrmsr(d: Decoded):
    nxt = d.next

    def wrmsr_(c):
        _cpl0(c)
        v = ((c.regs[2] & 0xFFFF_FFFF) << 32) | (c.regs[0] & 0xFFFF_FFFF)
        _msr_write(c, c.regs[1] & 0xFFFF_FFFF, v, nxt)
    return wrmsr_


MSR_APIC = MSR_APIC_BASE


# ---------------------------------------------------------------- control/debug registers
def write_cr(c, n: int, v: int) -> None:
    """MOV to CRn after the CPL check and the intercept: operand checks (ctlregs.py), then
    the write."""
    if n == 0:
        old = c.cr0
        c.cr0 = ctlregs.check_cr0(c, v, old)
        if (old ^ c.cr0) & CR0_PG:
            # Long mode activates when paging turns on with EFER.LME=1 (SDM 9.8.5).
            if c.cr0 & CR0_PG and c.efer & EFER_LME:
                c.efer |= EFER_LMA
            elif not c.cr0 & CR0_PG:
                c.efer &= ~EFER_LMA
        c.flush_tlb()
        c.update_mode()
    elif n == 2:
        c.cr2 = v
    elif n == 3:
        c.cr3 = ctlregs.check_cr3(c, v, _maxphyaddr(c))
        c.flush_tlb()
    elif n == 4:
        c.cr4 = ctlregs.check_cr4(c, v, ctlregs.cr4_allowed(cpuid_values(c, 1, 0)[3]))
        c.flush_tlb()
    elif n == 8:
        c.cr8 = ctlregs.check_cr8(v)
    else:
        raise Fault(6)


def _maxphyaddr(c) -> int:
    return cpuid_values(c, 0x8000_0008, 0)[0] & 0xFF


def _efer_allowed(c) -> int:
    _, _, ecx, edx = cpuid_values(c, 0x8000_0001, 0)
    return ctlregs.efer_allowed(ecx, edx)


def read_cr(c, n: int) -> int:
    if n in (0, 2, 3, 4):
        return (c.cr0, 0, c.cr2, c.cr3, c.cr4)[n]
    if n == 8:
        return c.cr8
    raise Fault(6)


def mov_cr_dr(d: Decoded):
    """MOV to/from CRn/DRn: capstone reports them as MOV with a CR/DR register operand."""
    r0, r1 = d.ops[0].reg, d.ops[1].reg
    m = 0xFFFF_FFFF if d.mode != 64 else M64
    # control registers need CPL 0; debug registers also honour DR7.GD
    if r0 in CRMAP or r1 in CRMAP:
        regmap, check, read, write = CRMAP, _cpl0, read_cr, write_cr
    else:
        regmap, check, read, write = DRMAP, _dr_access, read_dr, write_dr
        if max(DRMAP.get(r0, -1), DRMAP.get(r1, -1)) >= 8:
            # DR8-DR15 do not exist: #UD, before the CPL and DR7.GD checks (APM vol 3 MOV
            # DRn "an illegal debug register was referenced"; SDM vol 2 MOV DR, 64-bit mode)
            return _ud
    if r0 in regmap:
        n, rd = regmap[r0], d.reader(1)

        if regmap is CRMAP:
            gpr = REGMAP[r1][0]
            nxt = d.next

            def to_cr(c):
                check(c)
                v = rd(c) & m
                # APM 15.7: the intercept comes after the CPL check, before operand checks.
                c.hooks.cr_write(c, n, v, gpr, nxt)
                write(c, n, v)
            return to_cr

        def to_reg(c):
            check(c)
            write(c, n, rd(c) & m)
        return to_reg
    n, wr = regmap[r1], d.writer(0)

    def from_reg(c):
        check(c)
        wr(c, read(c, n) & m)
    return from_reg


def _ud(c) -> None:
    raise Fault(6)


def _dr_access(c) -> None:
    _cpl0(c)
    if c.dr[7] & DR7_GD:
        # General detect: a #DB fault before the MOV DR executes; GD is cleared so the
        # handler can use the debug registers (SDM 17.2.4).
        c.dr[7] &= ~DR7_GD
        c.dr[6] |= DR6_BD
        raise Fault(1)


def _dr_alias(c, n: int) -> int:
    # DR4/DR5 alias DR6/DR7 unless CR4.DE=1, which makes them #UD (SDM vol 2 MOV DR, 17.2.2;
    # APM vol 2 13.1.1.1). Checked after CPL and DR7.GD, as Bochs orders them.
    if n in (4, 5):
        if c.cr4 & CR4_DE:
            raise Fault(6)
        n += 2
    return n


def write_dr(c, n: int, v: int) -> None:
    n = _dr_alias(c, n)
    if n in (6, 7) and v >> 32:
        # bits 63:32 of DR6 and DR7 are reserved, must be zero (SDM vol 2 MOV DR, APM 13.1.1)
        raise Fault(13, 0)
    if n == 6:
        c.dr[6] = (v & 0xE00F) | 0xFFFF0FF0
    elif n == 7:
        c.dr[7] = (v & 0xFFFF_2BFF) | 0x400
        c.update_debug()
    else:
        c.dr[n] = v
        c.update_debug()


def read_dr(c, n: int) -> int:
    return c.dr[_dr_alias(c, n)]


# ---------------------------------------------------------------- segments and tables
def load_data_seg(c, idx: int, sel: int) -> None:
    """MOV/POP to a data segment register (SDM vol 2 MOV, 3.4.3)."""
    if not c.cr0 & CR0_PE:
        # Real mode: the base is selector * 16; limit and attributes stay as they are
        # (SDM vol 3 20.1.1, the "unreal mode" of a cached descriptor).
        s = c.seg[idx]
        s.sel, s.base = sel, sel << 4
        return
    if sel & 0xFFFC == 0:
        if idx == SS and not (c.mode == 64 and c.cpl < 3):
            raise Fault(13, 0)
        c.seg[idx].load(Segment(sel, 0, 0, 0))
        return
    table = c.ldtr if sel & 4 else c.gdtr
    if (sel & 0xFFF8) + 7 > table.limit:
        raise Fault(13, sel & 0xFFFC)
    seg = decode_descriptor(c.rd_sys(table.base + (sel & 0xFFF8), 8))
    if not seg.present:
        raise Fault(12 if idx == SS else 11, sel & 0xFFFC)
    seg.sel = sel
    c.seg[idx].load(seg)


def mov_sreg(d: Decoded):
    # operand 0 may be memory: its .reg would be the union's segment field (an override)
    if d.is_reg(0) and d.ops[0].reg in SEGMAP:
        idx, rd = SEGMAP[d.ops[0].reg], d.reader(1)
        if idx == CS:
            def bad(c):
                raise Fault(6)
            return bad

        def to_sreg(c):
            load_data_seg(c, idx, rd(c) & 0xFFFF)
            if idx == SS:
                # MOV SS inhibits interrupts and debug traps until the next instruction
                # completes (SDM 6.8.3).
                c.shadow = SHADOW_MOVSS
                c.attention = True
        return to_sreg
    idx, wr = SEGMAP[d.ops[1].reg], d.writer(0)
    size = d.size(0)
    return lambda c: wr(c, c.seg[idx].sel & MASK[size])


@translates(X.X86_INS_LGDT, X.X86_INS_LIDT)
def lgdt(d: Decoded):
    ea = d.ea(0)
    is_gdt = d.id == X.X86_INS_LGDT
    bsize = 8 if d.mode == 64 else 4

    def lgdt_(c):
        _cpl0(c)
        a = ea(c)
        limit = c.rd(a, 2)
        base = c.rd(a + 2, bsize)
        if bsize == 4 and d.opsz == (d.mode != 16):
            base &= 0xFFFFFF    # 16-bit operand size: a 24-bit base (SDM vol 2 LGDT)
        t = c.gdtr if is_gdt else c.idtr
        t.base, t.limit = base, limit
    return lgdt_


@translates(X.X86_INS_SGDT, X.X86_INS_SIDT)
def sgdt(d: Decoded):
    ea = d.ea(0)
    is_gdt = d.id == X.X86_INS_SGDT
    bsize = 8 if d.mode == 64 else 4

    def sgdt_(c):
        a = ea(c)
        t = c.gdtr if is_gdt else c.idtr
        c.wr(a, 2, t.limit)
        c.wr(a + 2, bsize, t.base & MASK[bsize])
    return sgdt_


def _system_descriptor(c, sel: int) -> Segment:
    if sel & 4 or sel & 0xFFFC == 0:
        raise Fault(13, sel & 0xFFFC)
    if (sel & 0xFFF8) + 7 > c.gdtr.limit:
        raise Fault(13, sel & 0xFFFC)
    lo = c.rd_sys(c.gdtr.base + (sel & 0xFFF8), 8)
    hi = c.rd_sys(c.gdtr.base + (sel & 0xFFF8) + 8, 8) if c.efer & EFER_LMA else 0
    seg = decode_descriptor(lo, hi)
    seg.sel = sel
    return seg


@translates(X.X86_INS_LTR)
def ltr(d: Decoded):
    rd = d.reader(0, 2)

    def ltr_(c):
        _cpl0(c)
        sel = rd(c) & 0xFFFF
        seg = _system_descriptor(c, sel)
        if seg.type not in (0x1, 0x9):   # available TSS (16- or 32/64-bit)
            raise Fault(13, sel & 0xFFFC)
        if not seg.present:
            raise Fault(11, sel & 0xFFFC)
        # mark it busy in the GDT (SDM 7.2.2)
        a = c.gdtr.base + (sel & 0xFFF8) + 5
        c.wr_sys(a, 1, c.rd_sys(a, 1) | 0x2)
        seg.attrib |= 0x2
        c.tr.load(seg)
    return ltr_


@translates(X.X86_INS_LLDT)
def lldt(d: Decoded):
    rd = d.reader(0, 2)

    def lldt_(c):
        _cpl0(c)
        sel = rd(c) & 0xFFFF
        if sel & 0xFFFC == 0:
            c.ldtr.load(Segment(sel, 0, 0, 0))
            return
        seg = _system_descriptor(c, sel)
        if seg.type != 0x2:
            raise Fault(13, sel & 0xFFFC)
        c.ldtr.load(seg)
    return lldt_


@translates(X.X86_INS_SWAPGS)
def swapgs(d: Decoded):
    def swapgs_(c):
        if c.mode != 64:
            raise Fault(6)
        _cpl0(c)
        c.seg[GS].base, c.kernel_gs_base = c.kernel_gs_base, c.seg[GS].base
    return swapgs_


@translates(X.X86_INS_INVLPG)
def invlpg(d: Decoded):
    nxt = d.next

    def invlpg_(c):
        _cpl0(c)
        c.hooks.insn(c, "invlpg", nxt)
        c.flush_tlb()
    return invlpg_


@translates(X.X86_INS_CLTS)
def clts(d: Decoded):
    nxt = d.next

    def clts_(c):
        _cpl0(c)
        c.hooks.cr_write(c, 0, c.cr0 & ~CR0_TS, 0, nxt, False)
        c.cr0 &= ~CR0_TS
    return clts_


@translates(X.X86_INS_VMMCALL)
def vmmcall(d: Decoded):
    nxt = d.next

    def vmmcall_(c):
        c.hooks.insn(c, "vmmcall", nxt)
        raise Fault(6)   # not intercepted: #UD (APM vol 3 VMMCALL)
    return vmmcall_


@translates(X.X86_INS_VMRUN)
def vmrun(d: Decoded):
    nxt = d.next

    def vmrun_(c):
        # #UD without EFER.SVME or outside protected mode, #GP at CPL > 0, then the
        # intercept (APM vol 3 VMRUN, 15.5).
        if not c.efer & EFER_SVME or not c.cr0 & CR0_PE:
            raise Fault(6)
        _cpl0(c)
        c.hooks.insn(c, "vmrun", nxt)
        raise Fault(6)   # nested SVM is not modelled: without an intercept, #UD
    return vmrun_


# ---------------------------------------------------------------- SYSCALL / SYSRET
@translates(X.X86_INS_SYSCALL)
def syscall(d: Decoded):
    """SYSCALL in 64-bit mode (APM vol 3 SYSCALL): RCX = next RIP, R11 = RFLAGS, CS/SS from
    STAR[47:32], RIP = LSTAR, RFLAGS &= ~SFMASK (and RF cleared)."""
    nxt = d.next

    def syscall_(c):
        if not c.efer & EFER_SCE or c.mode != 64:
            raise Fault(6)
        sel = (c.star >> 32) & 0xFFFC
        c.regs[1] = nxt
        c.regs[11] = c.rflags & ~RF
        c.seg[CS].load(Segment(sel, 0, 0xFFFF_FFFF, 0xA9B))
        c.seg[SS].load(Segment(sel + 8, 0, 0xFFFF_FFFF, 0xC93))
        c.rflags = (c.rflags & ~c.sfmask & ~RF & ~VM) | 0x2
        c.rip = c.lstar
        c.set_cpl(0)
        c.update_mode()
    return syscall_


@translates(X.X86_INS_SYSRET, X.X86_INS_SYSRETQ)
def sysret(d: Decoded):
    """SYSRET to 64-bit (REX.W) or compatibility mode (APM vol 3 SYSRET): CS from
    STAR[63:48] (+16 for 64-bit), SS = STAR[63:48] + 8, RFLAGS = R11, RIP = RCX."""
    to64 = d.rex_w or d.id == X.X86_INS_SYSRETQ

    def sysret_(c):
        if not c.efer & EFER_SCE or c.mode != 64:
            raise Fault(6)
        _cpl0(c)
        base = (c.star >> 48) & 0xFFFF
        rip = c.regs[1] if to64 else c.regs[1] & 0xFFFF_FFFF
        if to64 and not canonical(rip):
            raise Fault(13, 0)
        cs_sel = ((base + 16) if to64 else base) | 3
        c.seg[CS].load(Segment(cs_sel, 0, 0xFFFF_FFFF, 0xAFB if to64 else 0xCFB))
        c.seg[SS].load(Segment((base + 8) | 3, 0, 0xFFFF_FFFF, 0xCF3))
        c.rflags = (c.regs[11] & (RFLAGS_WRITABLE | 0x3F_0000) & ~(RF | VM)) | 0x2
        c.rip = rip
        c.set_cpl(3)
        c.update_mode()
    return sysret_


# ---------------------------------------------------------------- small system instructions
@translates(X.X86_INS_SMSW)
def smsw(d: Decoded):
    wr = d.writer(0)
    size = d.size(0) if d.is_reg(0) else 2
    return lambda c: wr(c, c.cr0 & MASK[size])


@translates(X.X86_INS_LMSW)
def lmsw(d: Decoded):
    rd = d.reader(0, 2)
    nxt = d.next

    def lmsw_(c):
        # LMSW loads PE, MP, EM, TS and can set but never clear PE (SDM vol 2 LMSW).
        _cpl0(c)
        v = rd(c) & 0xF
        new = (c.cr0 & ~0xE) | v | (c.cr0 & CR0_PE)
        c.hooks.cr_write(c, 0, new, 0, nxt, False)
        write_cr(c, 0, new)
    return lmsw_


@translates(X.X86_INS_STR, X.X86_INS_SLDT)
def str_sldt(d: Decoded):
    wr = d.writer(0)
    size = d.size(0) if d.is_reg(0) else 2
    is_tr = d.id == X.X86_INS_STR

    def str_(c):
        if not c.cr0 & CR0_PE:
            raise Fault(6)
        wr(c, (c.tr.sel if is_tr else c.ldtr.sel) & MASK[size])
    return str_


@translates(X.X86_INS_WBINVD, X.X86_INS_INVD)
def wbinvd(d: Decoded):
    def wbinvd_(c):
        _cpl0(c)     # caches are not modelled
    return wbinvd_


@translates(X.X86_INS_RDTSCP)
def rdtscp(d: Decoded):
    nxt = d.next

    def rdtscp_(c):
        c.hooks.insn(c, "rdtscp", nxt)
        t = c.now()
        c.regs[0], c.regs[2] = t & 0xFFFF_FFFF, (t >> 32) & 0xFFFF_FFFF
        c.regs[1] = c.tsc_aux & 0xFFFF_FFFF
    return rdtscp_


__all__ = ["mov_cr_dr", "mov_sreg", "write_cr", "read_cr", "write_dr", "read_dr",
           "load_data_seg", "cpuid_values", "AC", "ID", "NT"]
