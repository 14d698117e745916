"""Block translation against the exact per-instruction path: the same guest code gives the same
retirement log, events, registers, flags and memory with translated blocks and without.

The same for the long-mode event-delivery and IRETQ fast paths (x86/fastpath.py): random
programs taking every kind of event in ring 0 and ring 3 while the guest and the host rewrite
the IDT, GDT, IDTR and GDTR, and the firmware and the scenarios with both kinds of fast path
off in the exact run.

Three sources of guest code: random instruction sequences (a fixed seed, thousands of them,
with and without TF and DR0-3 breakpoints, with faults, self-modifying stores and flag-reading
instructions the translator leaves to the slow path), the amd64 firmware's boot to the shell
prompt, and every scenario of the seed.
"""

from __future__ import annotations

import random

import pytest

from nitdbg.x86 import blocks
from nitdbg.x86.cpu import Cpu
from nitdbg.x86.memory import PhysMem
from nitdbg.x86.segments import Segment

PML4, GDT, IDT = 0x1000, 0x8000, 0x9000
CODE, DATA, STACK = 0x10000, 0x40000, 0x60000
HOLE = 0x200000                     # the 2 MiB page at 2 MiB is not present: #PF
DB_H, PF_H, OTHER_H = 0xF000, 0xF100, 0xF200
SEQUENCES = 2000

# data registers the sequences compute with (rbx, rbp: pointers into DATA; r12: into HOLE)
DREGS = [0, 1, 2, 6, 7, 8, 9, 10, 11]


def _cpu(code: bytes, blocks_on: bool) -> Cpu:
    mem = PhysMem(4 << 20)
    mem.write(PML4, 8, (PML4 + 0x1000) | 3)
    mem.write(PML4 + 0x1000, 8, (PML4 + 0x2000) | 3)
    mem.write(PML4 + 0x2000, 8, 0x83)             # 0-2 MiB present; 2-4 MiB not
    mem.write(GDT + 8, 8, 0x00AF9B000000FFFF)
    mem.write(GDT + 16, 8, 0x00CF93000000FFFF)
    for vec in range(32):
        h = {1: DB_H, 14: PF_H}.get(vec, OTHER_H)
        mem.write(IDT + vec * 16, 8, (h & 0xFFFF) | (0x08 << 16) | (0x8E << 40)
                  | ((h >> 16) << 48))
    # #DB: set RF in the frame (an instruction breakpoint would fire again) and return
    mem.write_bytes(DB_H, bytes.fromhex("814c24100000010048cf"))
    mem.write_bytes(PF_H, b"\xf4")                # #PF and the rest: stop
    mem.write_bytes(OTHER_H, b"\xf4")
    mem.write_bytes(CODE, code)
    mem.write_bytes(DATA, bytes(range(256)) * 8)
    c = Cpu(mem)
    c.blocks_enabled = blocks_on
    c.cr0, c.cr4, c.efer, c.cr3 = 0x80050033, 0x20, 0xD01, PML4
    c.gdtr.base, c.gdtr.limit = GDT, 23
    c.idtr.base, c.idtr.limit = IDT, 256 * 16 - 1
    c.seg[1].load(Segment(0x08, 0, 0xFFFFFFFF, 0xA9B))
    for i in (0, 2, 3, 4, 5):
        c.seg[i].load(Segment(0x10, 0, 0xFFFFFFFF, 0xC93))
    c.update_mode()
    c.regs[4] = STACK
    c.regs[3] = DATA
    c.regs[5] = DATA + 0x800
    c.regs[12] = HOLE + 0x100
    c.rip = CODE
    return c


# ------------------------------------------------------------------ a tiny x86-64 encoder
def _rex(w: int, reg: int, rm: int, force: bool = False) -> bytes:
    v = 0x40 | (w << 3) | ((reg >> 3) << 2) | (rm >> 3)
    return bytes([v]) if v != 0x40 or force else b""


def _modrm_reg(reg: int, rm: int) -> bytes:
    return bytes([0xC0 | ((reg & 7) << 3) | (rm & 7)])


def _modrm_mem(reg: int, base: int, disp: int) -> bytes:
    """[base + disp8]; base is rbx, rbp, rsp or r12 (needs SIB)."""
    if base & 7 == 4:
        return bytes([0x44 | ((reg & 7) << 3), 0x24, disp & 0xFF])
    return bytes([0x40 | ((reg & 7) << 3) | (base & 7), disp & 0xFF])


def _mem_operand(r: random.Random) -> tuple[int, int]:
    roll = r.random()
    if roll < 0.03:
        return 12, r.randrange(0, 0x70, 8)          # the hole: #PF
    if roll < 0.07:                                 # wherever a data register points:
        return r.choice(DREGS), r.randrange(-0x80, 0x78, 8)   # often #PF or #GP, later
    if roll < 0.35:
        return 4, r.randrange(-0x40, 0x40, 8)        # the stack
    return r.choice((3, 5)), r.randrange(-0x80, 0x78, r.choice((1, 8)))


def _one(r: random.Random) -> bytes:
    """One random instruction (most of them forms the translator handles)."""
    k = r.random()
    d, s = r.choice(DREGS), r.choice(DREGS)
    w = r.random() < 0.7
    if k < 0.30:                                   # ALU r/m, r and r, r/m
        op = r.choice((0x01, 0x29, 0x39, 0x21, 0x09, 0x31, 0x85, 0x89, 0x03, 0x2B, 0x3B,
                       0x23, 0x0B, 0x33, 0x8B, 0x11, 0x19))
        if r.random() < 0.6:
            return _rex(w, s, d) + bytes([op]) + _modrm_reg(s, d)
        base, disp = _mem_operand(r)
        return _rex(w, s, base) + bytes([op]) + _modrm_mem(s, base, disp)
    if k < 0.40:                                   # 8-bit forms (AH..BH without REX)
        op = r.choice((0x00, 0x28, 0x38, 0x30, 0x88, 0x8A, 0x20))
        if r.random() < 0.5:
            return bytes([op]) + _modrm_reg(r.randrange(8), r.choice((0, 1, 2, 6, 7)))
        base, disp = _mem_operand(r)
        return _rex(0, 0, base) + bytes([op]) + _modrm_mem(r.choice((0, 1, 2)), base, disp)
    if k < 0.52:                                   # ALU r/m, imm
        n = r.choice((0, 1, 4, 5, 6, 7))
        imm8 = r.random() < 0.5
        imm = (r.randrange(-128, 128) & 0xFF).to_bytes(1, "little") if imm8 else \
            r.getrandbits(32).to_bytes(4, "little")
        opc = 0x83 if imm8 else 0x81
        if r.random() < 0.6:
            return _rex(w, 0, d) + bytes([opc]) + _modrm_reg(n, d) + imm
        base, disp = _mem_operand(r)
        return _rex(w, 0, base) + bytes([opc]) + _modrm_mem(n, base, disp) + imm
    if k < 0.58:                                   # inc / dec
        n = r.choice((0, 1))
        if r.random() < 0.6:
            return _rex(w, 0, d) + bytes([0xFF]) + _modrm_reg(n, d)
        base, disp = _mem_operand(r)
        return _rex(w, 0, base) + bytes([0xFF]) + _modrm_mem(n, base, disp)
    if k < 0.64:                                   # push / pop
        if r.random() < 0.5:
            return _rex(0, 0, s) + bytes([0x50 | (s & 7)])
        return _rex(0, 0, d) + bytes([0x58 | (d & 7)])
    if k < 0.70:                                   # mov r, imm
        if r.random() < 0.5:
            return _rex(0, 0, d) + bytes([0xB8 | (d & 7)]) + r.getrandbits(32).to_bytes(4, "little")
        return _rex(1, 0, d) + bytes([0xB8 | (d & 7)]) + r.getrandbits(64).to_bytes(8, "little")
    if k < 0.75:                                   # lea, movzx, movsx, movsxd
        base, disp = _mem_operand(r)
        which = r.randrange(4)
        if which == 0:
            return _rex(w, d, base) + b"\x8d" + _modrm_mem(d, base, disp)
        if which == 3:
            return _rex(1, d, s) + b"\x63" + _modrm_reg(d, s)
        op = r.choice((0xB6, 0xB7, 0xBE, 0xBF))
        if r.random() < 0.5:
            return _rex(w, d, s) + bytes([0x0F, op]) + _modrm_reg(d, s)
        return _rex(w, d, base) + bytes([0x0F, op]) + _modrm_mem(d, base, disp)
    if k < 0.80:                                   # flag readers the translator leaves alone
        cc = r.randrange(16)
        if r.random() < 0.5:
            return _rex(0, 0, d, force=True) + bytes([0x0F, 0x90 | cc]) + _modrm_reg(0, d)
        return _rex(1, d, s) + bytes([0x0F, 0x40 | cc]) + _modrm_reg(d, s)
    if k < 0.83:                                   # shifts, imul: not translated
        return _rex(1, 0, d) + bytes([0xC1]) + _modrm_reg(r.choice((4, 5, 7)), d) + \
            bytes([r.randrange(64)])
    if k < 0.86:
        return b"\x90"
    if k < 0.88:                                   # pushf / popf with TF maybe set
        return b"\x68" + (0x2 | 0x200 | (0x100 if r.random() < 0.3 else 0)
                          | r.getrandbits(1) | (r.getrandbits(1) << 6)).to_bytes(4, "little") \
            + b"\x9d"
    return _rex(w, s, d) + bytes([0x31]) + _modrm_reg(s, d)


def _sequence(r: random.Random) -> bytes:
    """Straight-line pieces, forward conditional jumps, a counted loop, a call and a ret, and
    a store into a later instruction (self-modifying code); ends with HLT."""
    parts: list[bytes] = []
    for _ in range(r.randrange(3, 7)):
        kind = r.random()
        body = [_one(r) for _ in range(r.randrange(1, 8))]
        if kind < 0.3:                             # loop: mov ecx, n; body; dec ecx; jnz
            # the body may change rcx too: the run budgets bound the loop
            n = r.randrange(1, 40)
            inner = b"".join(body) + b"\xff\xc9"
            if len(inner) + 2 > 127:
                inner = b"\xff\xc9"
            back = (-(len(inner) + 2)) & 0xFF
            parts.append(b"\xb9" + n.to_bytes(4, "little") + inner + bytes([0x75, back]))
        elif kind < 0.5:                           # jcc over the body
            inner = b"".join(body)
            if len(inner) < 127:
                parts.append(bytes([0x70 | r.randrange(16), len(inner)]) + inner)
        elif kind < 0.6:                           # call a local function
            inner = b"".join(body) + b"\xc3"
            if len(inner) < 127:
                parts.append(b"\xe8\x02\x00\x00\x00" + bytes([0xEB, len(inner)]) + inner)
        elif kind < 0.68:                          # SMC: patch the imm8 of a later instruction
            later = b"\x83\xc0\x05"                # add eax, 5
            # mov byte [rip + disp32], imm8 ; the target is the imm8 of `later`, after it
            disp = len(body[0]) + 2
            parts.append(b"\xc6\x05" + disp.to_bytes(4, "little") + bytes([r.randrange(256)])
                         + body[0] + later)
        else:
            parts.append(b"".join(body))
    return b"".join(parts) + b"\xf4"


def _state(c: Cpu) -> tuple:
    r = c.retire
    n = min(c.icount, r.capacity)
    ring = [r.rips[(c.icount - 1 - i) & r.mask] for i in range(n)]
    return (list(c.regs), c.rip, c.rflags, c.icount, ring, list(r.events), list(c.dr),
            c.cr2, c.stop_reason, c.halted, c.pending_db,
            c.mem.read_bytes(DATA, 0x1000), c.mem.read_bytes(STACK - 0x1000, 0x1000),
            c.mem.read_bytes(CODE, 0x1000))


def _run(code: bytes, blocks_on: bool, tf: bool, drs: tuple[int, ...], budgets,
         make=_cpu) -> tuple:
    c = make(code, blocks_on)
    if tf:
        c.rflags |= 0x100
    if drs:
        dr7 = 0
        for i, (addr, rw) in enumerate(drs):
            c.dr[i] = addr
            dr7 |= (1 << (2 * i)) | (rw << (16 + 4 * i)) | ((3 if rw else 0) << (18 + 4 * i))
        c.dr[7] = dr7 | 0x400
        c.update_debug()
    c.attention = True
    for b in budgets:
        c.run(b)
        if c.halted or c.shutdown:
            break
    return _state(c)


def _eager(monkeypatch, hot: int = 1) -> None:
    """Translate every start at its `hot`-th visit, whatever it costs (the default policy
    waits until a block has paid for its translation): the comparisons then cover blocks."""
    monkeypatch.setattr(blocks, "HOT", hot)
    monkeypatch.setattr(blocks, "EAGER", True)


def _memo_decoder(monkeypatch) -> None:
    """Decoded instructions hold no CPU state: share them between the runs (speed only)."""
    from nitdbg.x86.decode import Decoder
    orig = Decoder.translate
    memo: dict = {}

    def translate(self, code, addr, mode):
        key = (bytes(code), addr, mode)
        insn = memo.get(key)
        if insn is None:
            insn = memo[key] = orig(self, code, addr, mode)
        return insn
    monkeypatch.setattr(Decoder, "translate", translate)


def test_random_sequences_retire_the_same_with_and_without_blocks(monkeypatch):
    _eager(monkeypatch)        # translate at first sight
    _memo_decoder(monkeypatch)
    r = random.Random(11)
    compared = translated = 0
    for n in range(SEQUENCES):
        code = _sequence(r)
        variant = n % 3
        tf = variant == 1
        drs: tuple = ()
        if variant == 2:
            drs = ((CODE + r.randrange(len(code)), 0), (DATA + r.randrange(0, 0x100, 8), 1))
        budgets = [r.choice((1, 2, 3, 5, 17, 64, 200)) for _ in range(10)] + [300]
        off = _run(code, False, tf, drs, budgets)
        on = _run(code, True, tf, drs, budgets)
        assert on == off, f"sequence {n} ({code.hex()}) tf={tf} drs={drs} budgets={budgets}"
        compared += 1
        translated += on[3]
    assert compared == SEQUENCES and translated > 100_000


# ------------------------------------------------------------------ 32-bit protected mode
HOLE32 = 0x400000                   # the 4 MiB page at 4 MiB is not present: #PF
DREGS32 = [0, 1, 2, 7]              # ebx, ebp: into DATA; esi: into HOLE32


def _cpu32(code: bytes, blocks_on: bool) -> Cpu:
    """32-bit protected mode, flat 4 GiB segments, 32-bit paging with 4 MiB pages."""
    mem = PhysMem(4 << 20)
    mem.write(PML4, 4, 0x83)                      # PDE 0: 0-4 MiB; PDE 1 not present
    mem.write(GDT + 8, 8, 0x00CF9B000000FFFF)
    mem.write(GDT + 16, 8, 0x00CF93000000FFFF)
    for vec in range(32):
        h = {1: DB_H, 14: PF_H}.get(vec, OTHER_H)
        mem.write(IDT + vec * 8, 8, (h & 0xFFFF) | (0x08 << 16) | (0x8E << 40)
                  | ((h >> 16) << 48))
    # #DB: set RF in the frame (or dword [esp+8], 0x10000) and IRETD
    mem.write_bytes(DB_H, bytes.fromhex("814c240800000100cf"))
    mem.write_bytes(PF_H, b"\xf4")
    mem.write_bytes(OTHER_H, b"\xf4")
    mem.write_bytes(CODE, code)
    mem.write_bytes(DATA, bytes(range(256)) * 8)
    c = Cpu(mem)
    c.blocks_enabled = blocks_on
    c.cr0, c.cr4, c.cr3 = 0x80000011, 0x10, PML4
    c.gdtr.base, c.gdtr.limit = GDT, 23
    c.idtr.base, c.idtr.limit = IDT, 256 * 8 - 1
    c.seg[1].load(Segment(0x08, 0, 0xFFFFFFFF, 0xC9B))
    for i in (0, 2, 3, 4, 5):
        c.seg[i].load(Segment(0x10, 0, 0xFFFFFFFF, 0xC93))
    c.update_mode()
    assert c.mode == 32
    c.regs[4] = STACK
    c.regs[3] = DATA
    c.regs[5] = DATA + 0x800
    c.regs[6] = HOLE32 + 0x100
    c.rip = CODE
    return c


def _mem32(r: random.Random) -> tuple[int, int]:
    roll = r.random()
    if roll < 0.03:
        return 6, r.randrange(0, 0x70, 4)           # the hole: #PF
    if roll < 0.07:
        return r.choice(DREGS32), r.randrange(-0x80, 0x78, 4)   # wherever: often #PF
    if roll < 0.35:
        return 4, r.randrange(-0x40, 0x40, 4)        # the stack
    return r.choice((3, 5)), r.randrange(-0x80, 0x78, r.choice((1, 4)))


def _one32(r: random.Random) -> bytes:
    """One random 32-bit instruction (most of them forms the translator handles; 0x66 gives
    16-bit operands)."""
    k = r.random()
    d, s = r.choice(DREGS32), r.choice(DREGS32)
    o16 = b"\x66" if r.random() < 0.15 else b""
    if k < 0.32:                                   # ALU r/m, r and r, r/m; mov
        op = r.choice((0x01, 0x29, 0x39, 0x21, 0x09, 0x31, 0x85, 0x89, 0x03, 0x2B, 0x3B,
                       0x23, 0x0B, 0x33, 0x8B, 0x11, 0x19))
        if r.random() < 0.6:
            return o16 + bytes([op]) + _modrm_reg(s, d)
        base, disp = _mem32(r)
        return o16 + bytes([op]) + _modrm_mem(s, base, disp)
    if k < 0.40:                                   # 8-bit forms
        op = r.choice((0x00, 0x28, 0x38, 0x30, 0x88, 0x8A, 0x20))
        if r.random() < 0.5:
            return bytes([op]) + _modrm_reg(r.randrange(8), r.choice((0, 1, 2, 7)))
        base, disp = _mem32(r)
        return bytes([op]) + _modrm_mem(r.choice((0, 1, 2)), base, disp)
    if k < 0.52:                                   # ALU r/m, imm
        n = r.choice((0, 1, 4, 5, 6, 7))
        imm8 = r.random() < 0.5
        imm = (r.randrange(-128, 128) & 0xFF).to_bytes(1, "little") if imm8 else \
            r.getrandbits(16 if o16 else 32).to_bytes(2 if o16 else 4, "little")
        opc = 0x83 if imm8 else 0x81
        if r.random() < 0.6:
            return o16 + bytes([opc]) + _modrm_reg(n, d) + imm
        base, disp = _mem32(r)
        return o16 + bytes([opc]) + _modrm_mem(n, base, disp) + imm
    if k < 0.60:                                   # inc / dec: r/m and the one-byte forms
        if r.random() < 0.3:
            return bytes([r.choice((0x40, 0x48)) | d])
        n = r.choice((0, 1))
        if r.random() < 0.6:
            return bytes([0xFF]) + _modrm_reg(n, d)
        base, disp = _mem32(r)
        return bytes([0xFF]) + _modrm_mem(n, base, disp)
    if k < 0.67:                                   # push / pop, push imm
        roll = r.random()
        if roll < 0.4:
            return bytes([0x50 | s])
        if roll < 0.5:
            return b"\x6a" + bytes([r.randrange(256)])
        return bytes([0x58 | d])
    if k < 0.72:                                   # mov r, imm
        return bytes([0xB8 | d]) + r.getrandbits(32).to_bytes(4, "little")
    if k < 0.77:                                   # lea, movzx, movsx
        base, disp = _mem32(r)
        if r.random() < 0.3:
            return o16 + b"\x8d" + _modrm_mem(d, base, disp)
        op = r.choice((0xB6, 0xB7, 0xBE, 0xBF))
        if r.random() < 0.5:
            return bytes([0x0F, op]) + _modrm_reg(d, s)
        return bytes([0x0F, op]) + _modrm_mem(d, base, disp)
    if k < 0.82:                                   # flag readers the translator leaves alone
        cc = r.randrange(16)
        if r.random() < 0.5:
            return bytes([0x0F, 0x90 | cc]) + _modrm_reg(0, d)
        return bytes([0x0F, 0x40 | cc]) + _modrm_reg(d, s)
    if k < 0.85:                                   # shifts: not translated
        return bytes([0xC1]) + _modrm_reg(r.choice((4, 5, 7)), d) + bytes([r.randrange(32)])
    if k < 0.88:
        return b"\x90"
    if k < 0.90:                                   # pushf / popf with TF maybe set
        return b"\x68" + (0x2 | 0x200 | (0x100 if r.random() < 0.3 else 0)
                          | r.getrandbits(1) | (r.getrandbits(1) << 6)).to_bytes(4, "little") \
            + b"\x9d"
    return bytes([0x31]) + _modrm_reg(s, d)


def _sequence32(r: random.Random) -> bytes:
    """As _sequence, in 32-bit code (the self-modifying store has an absolute address)."""
    parts: list[bytes] = []
    for _ in range(r.randrange(3, 7)):
        kind = r.random()
        body = [_one32(r) for _ in range(r.randrange(1, 8))]
        if kind < 0.3:                             # loop: mov ecx, n; body; dec ecx; jnz
            n = r.randrange(1, 40)
            inner = b"".join(body) + b"\xff\xc9"
            if len(inner) + 2 > 127:
                inner = b"\xff\xc9"
            back = (-(len(inner) + 2)) & 0xFF
            parts.append(b"\xb9" + n.to_bytes(4, "little") + inner + bytes([0x75, back]))
        elif kind < 0.5:                           # jcc over the body
            inner = b"".join(body)
            if len(inner) < 127:
                parts.append(bytes([0x70 | r.randrange(16), len(inner)]) + inner)
        elif kind < 0.6:                           # call a local function
            inner = b"".join(body) + b"\xc3"
            if len(inner) < 127:
                parts.append(b"\xe8\x02\x00\x00\x00" + bytes([0xEB, len(inner)]) + inner)
        elif kind < 0.68:                          # SMC: patch the imm8 of a later instruction
            at = CODE + sum(len(p) for p in parts)
            target = at + 7 + len(body[0]) + 2     # mov byte [abs32], imm8 ; body[0] ; later
            parts.append(b"\xc6\x05" + target.to_bytes(4, "little") + bytes([r.randrange(256)])
                         + body[0] + b"\x83\xc0\x05")
        else:
            parts.append(b"".join(body))
    return b"".join(parts) + b"\xf4"


def test_random_32bit_sequences_retire_the_same_with_and_without_blocks(monkeypatch):
    """The same in 32-bit protected mode (flat segments, 32-bit paging): random sequences
    with and without TF and DR0-3 breakpoints, with #PF, self-modifying stores, 16-bit
    operands and instructions the translator leaves to the slow path."""
    _eager(monkeypatch)
    _memo_decoder(monkeypatch)
    r = random.Random(32)
    translated = 0
    for n in range(SEQUENCES // 2):
        code = _sequence32(r)
        variant = n % 3
        tf = variant == 1
        drs: tuple = ()
        if variant == 2:
            drs = ((CODE + r.randrange(len(code)), 0), (DATA + r.randrange(0, 0x100, 4), 1))
        budgets = [r.choice((1, 2, 3, 5, 17, 64, 200)) for _ in range(10)] + [300]
        off = _run(code, False, tf, drs, budgets, make=_cpu32)
        on = _run(code, True, tf, drs, budgets, make=_cpu32)
        assert on == off, f"sequence {n} ({code.hex()}) tf={tf} drs={drs} budgets={budgets}"
        translated += on[3]
    assert translated > 30_000


def test_a_translated_32bit_block_is_really_used(monkeypatch):
    """32-bit code runs in translated blocks (the comparison above means something)."""
    _eager(monkeypatch)
    code = bytes.fromhex("b964000000" "31c0" "83c003" "31d0" "ffc9" "75f7" "f4")
    c = _cpu32(code, True)
    c.run(1000)
    assert c.halted and c.regs[1] == 0
    assert any(b is not None and b.loops for b in c.bcache.values())


@pytest.mark.parametrize("seg,base,attrib", [(3, 0x10, 0xC93), (2, 0x10, 0xC93),
                                             (2, 0, 0x893)])
def test_32bit_blocks_run_the_per_insn_path_when_ds_or_ss_is_not_flat(monkeypatch, seg, base,
                                                                      attrib):
    """A 32-bit block is translated for DS.base = SS.base = 0 and SS.B = 1: with a DS or SS
    base, or a 16-bit stack (SS.B = 0), the per-instruction path runs and adds the base or
    uses SP (operands.mem_ea, stack.py)."""
    _eager(monkeypatch)
    # mov ecx, 100; xor eax, eax; 1: mov eax, [ebx+4]; add eax, [esp]; push eax; pop edx;
    # dec ecx; jnz 1b; hlt
    code = bytes.fromhex("b964000000" "31c0" "8b4304" "030424" "50" "5a" "ffc9" "75f4" "f4")
    states = []
    for on in (False, True):
        def make(code, blocks_on, on=on):
            c = _cpu32(code, blocks_on)
            c.seg[seg].base, c.seg[seg].attrib = base, attrib
            return c
        states.append(_run(code, on, False, (), [1000], make=make))
    assert states[0] == states[1]
    assert states[0][9] and states[0][3] == 2 + 6 * 100 + 1   # the loop ran to its HLT


def test_a_translated_block_is_really_used():
    """The differential tests mean something only if blocks run: the ALU loop of the bench
    retires from a translated, self-looping block."""
    from nitdbg import bench
    c = bench.bare_cpu()
    c.rip = bench.BASE + bench.A_OFF
    c.run(5000)
    assert any(c.bcache.values())
    assert c.icount == 5000


def test_a_fault_inside_a_block_leaves_the_state_of_the_faulting_instruction(monkeypatch):
    """mov [rbx], rax; add rax, 1; mov rcx, [r12] (#PF): the #PF frame holds the RIP of the
    load, RAX is incremented once, CR2 is the address, and the two retirements before it are
    in the log; the same as the per-instruction path."""
    _eager(monkeypatch)
    code = bytes.fromhex("488903" "4883c001" "498b0c24" "f4")
    off = _run(code, False, False, (), [100])
    on = _run(code, True, False, (), [100])
    assert on == off
    regs, _rip, _fl, icount, ring = on[:5]
    assert on[7] == HOLE + 0x100 and regs[0] == 1 and ring[-2:] == [CODE + 3, CODE]


def test_a_fault_on_the_first_instruction_of_a_later_pass_of_a_looping_block(monkeypatch):
    """mov rax, [rbx]; mov [rbp], rax; add rbx, 1 MiB; jmp back: the third pass's load hits
    the hole; the #PF is reported at the load with two passes (8 instructions) retired."""
    _eager(monkeypatch)
    code = bytes.fromhex("488b03" "48894500" "4881c300001000" "ebf0")
    off = _run(code, False, False, (), [1000])
    on = _run(code, True, False, (), [1000])
    assert on == off
    assert on[7] == DATA + 0x200000 and on[3] == 9
    assert on[4][:9] == [PF_H] + [CODE + 0xE, CODE + 7, CODE + 3, CODE] * 2


class _Probe:
    """An MMIO device that records what it sees of the vCPU at each access, and on a write
    of 1 raises an NMI (an event that must be taken at the next instruction boundary)."""

    def __init__(self) -> None:
        self.cpu: Cpu | None = None
        self.seen: list = []

    def _look(self, kind: str, off: int, value: int) -> None:
        c = self.cpu
        self.seen.append((kind, off, value, c.icount, c.rip, c.rflags, list(c.regs)))

    def mmio_read(self, off: int, size: int) -> int:
        self._look("r", off, size)
        return 0x1234

    def mmio_write(self, off: int, size: int, value: int) -> None:
        self._look("w", off, value)
        if value == 1:
            self.cpu.raise_nmi()


def test_mmio_inside_a_block_sees_the_vcpu_as_the_per_insn_path_does(monkeypatch):
    """A device reached from inside a block sees the count, RIP, flags and registers of the
    instruction making the access, and an NMI it raises is taken right after it."""
    _eager(monkeypatch)
    mmio = 0x30000
    # rsi = mmio; loop 3x: add rax, 7; mov [rsi], rax; mov rdx, [rsi+8]; cmp eax, 15;
    # sete cl... (not translated) -> keep to: add; store; load; dec ecx; jnz; then
    # mov qword [rsi], 1 (NMI) ; add rax, 1 ; hlt
    code = bytes.fromhex("be00000300" "b903000000" "4883c007" "488906" "488b5608" "ffc9"
                         "75f2" "48c70601000000" "4883c001" "f4")
    outs = []
    for on in (False, True):
        probe = _Probe()
        c = _cpu(code, on)
        c.mem.map_mmio(mmio, 0x1000, probe)
        probe.cpu = c
        mem = c.mem
        h = 0xF300
        mem.write(IDT + 2 * 16, 8, (h & 0xFFFF) | (0x08 << 16) | (0x8E << 40)
                  | ((h >> 16) << 48))
        mem.write_bytes(h, b"\xf4")                # the NMI handler stops
        c.run(1000)
        outs.append((probe.seen, _state(c)))
    assert outs[0] == outs[1]
    seen, st = outs[1]
    assert len(seen) == 7 and st[1] == 0xF301 and st[0][0] == 21


def test_a_store_into_the_running_block_ends_it_at_the_next_instruction(monkeypatch):
    """Self-modifying code: the patched instruction executes with its new bytes."""
    _eager(monkeypatch)
    # mov byte [rip+3], 7 ; nop ; add eax, 5 (imm patched to 7) ; hlt, run twice via a loop
    code = bytes.fromhex("b902000000" "c6050300000007" "90" "83c005" "ffc9" "75f1" "f4")
    off = _run(code, False, False, (), [1000])
    on = _run(code, True, False, (), [1000])
    assert on == off and on[0][0] == 14


def _machine_digest(m) -> list:
    out = []
    for v in m.vcpus:
        c = v.cpu
        r = c.retire
        n = min(c.icount, r.capacity)
        out.append((c.icount, c.rip, c.rflags, list(c.regs),
                    [r.rips[(c.icount - 1 - i) & r.mask] for i in range(n)], list(r.events)))
    out.append((m.vm.mem.digest(), bytes(m.vm.console_out)))
    return out


def test_firmware_boot_is_the_same_with_and_without_blocks(monkeypatch):
    """(and with and without the event-delivery and IRETQ fast paths: the exact run has both
    off)"""
    _eager(monkeypatch, hot=4)       # (the blocks of the old policy)
    from nitdbg.machine import Machine
    digests = []
    for on in ("1", "0"):
        monkeypatch.setenv("NITDBG_BLOCKS", on)
        monkeypatch.setenv("NITDBG_FAST_EVENTS", on)
        m = Machine()
        m.boot_to_prompt()
        m.type_line("while [ 1 ]; do : done", wait_prompt=False)
        m.run(max_insns=300_000)
        digests.append(_machine_digest(m))
    assert digests[0] == digests[1]


def test_i386_firmware_is_the_same_with_and_without_blocks(monkeypatch):
    """The i386 guest (32-bit protected mode): boot to the prompt, load tsnmi and take NMIs
    through its task gate, with 32-bit blocks and without; the blocks must really run."""
    _eager(monkeypatch, hot=4)       # (the blocks of the old policy)
    from nitdbg.machine import I386_KERNEL, Machine
    digests, used = [], []
    for on in ("1", "0"):
        monkeypatch.setenv("NITDBG_BLOCKS", on)
        m = Machine(kernel=I386_KERNEL, vcpus=1)
        m.boot_to_prompt()
        m.type_line("kldload tsnmi")
        for _ in range(2):
            m.host("bhyvectl --vm=vm2 --cpu=0 --assert-lapic-lvt=1")
            m.settle()
        m.type_line("sysctl debug.tsnmi")
        digests.append(_machine_digest(m))
        c = m.vcpus[0].cpu
        used.append(sum(1 for (mode, _u), bc in c._bcaches.items() if mode == 32
                        for b in bc.values() if b is not None))
    assert b"debug.tsnmi: 2" in digests[0][-1][1]
    assert digests[0] == digests[1]
    assert used[0] > 10 and used[1] == 0


@pytest.mark.parametrize("scenario", [s.name for s in __import__(
    "nitdbg.scenarios.runner", fromlist=["ALL"]).ALL])
def test_scenario_is_the_same_with_and_without_blocks(monkeypatch, scenario):
    _eager(monkeypatch, hot=4)       # (the blocks of the old policy)
    from nitdbg.scenarios import base
    from nitdbg.scenarios.runner import run_scenario
    runs = []
    for on in ("1", "0"):
        monkeypatch.setenv("NITDBG_BLOCKS", on)
        monkeypatch.setenv("NITDBG_FAST_EVENTS", on)   # the exact run has both off
        seen: list = []
        orig = base.Ctx.release

        # every machine as its part ends (the scenario lets it go then)
        def release(self, seen=seen, orig=orig):
            if self.current is not None:
                seen.append(_machine_digest(self.current))
            return orig(self)
        monkeypatch.setattr(base.Ctx, "release", release)
        lines: list[str] = []
        res = run_scenario(scenario, "iret-tracing", lines.append, None, False)
        runs.append((lines, [(c.text, c.passed) for c in res.checks], res.error, seen))
        monkeypatch.setattr(base.Ctx, "release", orig)
    assert runs[0] == runs[1]


# ------------------------------------------------------------------ event delivery and IRETQ
# The long-mode delivery and IRETQ fast paths (x86/fastpath.py) against the exact paths, on
# guests that take every kind of event from ring 0 and ring 3 and rewrite their IDT, GDT, IDTR
# and GDTR between deliveries (from their own handlers, from the program and from the host).
EV_SEQUENCES = 1200
IDT2, TSS, DESC, CNT, HND = 0xA000, 0xB000, 0xC000, 0xC100, 0xE000
KSTACK, ISTACK, USTACK = 0x70000, 0x78000, 0x60000
GDTD, IDTD = DESC, DESC + 0x10          # lgdt / lidt operands (limit16, base64)
GDT_LIMIT_FULL, GDT_LIMIT_SHORT = 0x47, 0x37  # the short one excludes 0x38 and 0x40
ALT_CS = 0x38                          # a second 64-bit ring-0 code segment


def _abs32(op: bytes, addr: int, imm: bytes = b"") -> bytes:
    """op [disp32] (ModRM with SIB base none) followed by an immediate."""
    return op + b"\x25" + addr.to_bytes(4, "little") + imm


def _handlers() -> dict[str, bytes]:
    """Handler bodies; each returns with IRETQ unless it stops the run (HLT)."""
    iretq = b"\x48\xcf"
    pop_err = b"\x48\x83\xc4\x08"
    set_rf = b"\x81\x4c\x24\x10\x00\x00\x01\x00"             # or dword [rsp+16], RF
    return {
        # #DB: RF in the frame (an instruction breakpoint would fire again), count, return
        "db": set_rf + _abs32(b"\x48\xff\x04", CNT) + iretq,
        "db2": set_rf + _abs32(b"\x48\xff\x04", CNT + 8) + iretq,     # #DB of the 2nd IDT
        "bp": _abs32(b"\x48\xff\x04", CNT + 16) + iretq,
        "nmi": _abs32(b"\x48\xff\x04", CNT + 24) + iretq,
        "intr": _abs32(b"\x48\xff\x04", CNT + 32) + iretq,
        # int 0x80: gate 0x81 interrupt <-> trap gate, segment 0x38 present <-> not
        "h80": _abs32(b"\x81\x34", IDT + 0x81 * 16 + 4, (0x100).to_bytes(4, "little"))
        + _abs32(b"\x81\x34", GDT + ALT_CS + 4, (0x8000).to_bytes(4, "little")) + iretq,
        # int 0x81: LIDT switches between the two IDTs
        "h81": _abs32(b"\x81\x34", IDTD + 2, (IDT ^ IDT2).to_bytes(4, "little"))
        + _abs32(b"\x0f\x01\x1c", IDTD) + iretq,
        # int 0x82 (through segment 0x38): LGDT with the short and the full limit in turn
        "h82": _abs32(b"\x81\x34", GDTD, (GDT_LIMIT_FULL ^ GDT_LIMIT_SHORT).to_bytes(4, "little"))
        + _abs32(b"\x0f\x01\x14", GDTD) + iretq,
        # #NP (segment 0x38 not present): make it present, return to retry the INT
        "np": _abs32(b"\x81\x0c", GDT + ALT_CS + 4, (0x8000).to_bytes(4, "little"))
        + pop_err + iretq,
        # #GP (0x38 beyond the GDT limit): the full limit again, return to retry
        "gp": _abs32(b"\x66\xc7\x04", GDTD, GDT_LIMIT_FULL.to_bytes(2, "little"))
        + _abs32(b"\x0f\x01\x14", GDTD) + pop_err + iretq,
        "stop": b"\xf4",
    }


def _gate(handler: int, sel: int = 0x08, gtype: int = 0xE, dpl: int = 0, ist: int = 0
          ) -> tuple[int, int]:
    lo = ((handler & 0xFFFF) | (sel << 16) | (ist << 32) | ((0x80 | dpl << 5 | gtype) << 40)
          | (((handler >> 16) & 0xFFFF) << 48))
    return lo, handler >> 32


def _ev_cpu(code: bytes, r: random.Random, user: bool, fast: bool, blocks_on: bool) -> Cpu:
    mem = PhysMem(4 << 20)
    mem.write(PML4, 8, (PML4 + 0x1000) | 7)
    mem.write(PML4 + 0x1000, 8, (PML4 + 0x2000) | 7)
    mem.write(PML4 + 0x2000, 8, 0x87)             # 0-2 MiB present, user; 2-4 MiB not
    gdt = {0x08: 0x00AF9B000000FFFF, 0x10: 0x00CF93000000FFFF, 0x18: 0x00AFFB000000FFFF,
           0x20: 0x00CFF3000000FFFF, ALT_CS: 0x00AF9B000000FFFF, 0x40: 0x00CF93000000FFFF}
    for sel, d in gdt.items():
        mem.write(GDT + sel, 8, d)
    mem.write(GDT + 0x28, 8, 0x0000_8900_0000_0067 | ((TSS & 0xFFFFFF) << 16))   # 64-bit TSS
    # RSP0 and IST1, sometimes where the 40- or 48-byte frame crosses a page end
    mem.write(TSS + 4, 8, KSTACK + r.choice((0, 0, 0, 0x10)))
    mem.write(TSS + 0x24, 8, ISTACK + r.choice((0, 0, 0, 0x20)))
    addr = HND
    where = {}
    for name, body in _handlers().items():
        where[name] = addr
        mem.write_bytes(addr, body)
        addr += 0x40
    for base, db in ((IDT, "db"), (IDT2, "db2")):
        gates = {vec: _gate(where["stop"]) for vec in range(32)}
        gates[1] = _gate(where[db], ist=r.choice((0, 0, 1)), gtype=r.choice((0xE, 0xF)))
        gates[2] = _gate(where["nmi"], ist=1)
        gates[3] = _gate(where["bp"], dpl=3, gtype=r.choice((0xE, 0xF)))
        gates[11] = _gate(where["np"])
        gates[13] = _gate(where["gp"])
        gates[0x40] = _gate(where["intr"])
        gates[0x80] = _gate(where["h80"], dpl=3)
        gates[0x81] = _gate(where["h81"], dpl=3, ist=r.choice((0, 1)))
        gates[0x82] = _gate(where["h82"], sel=ALT_CS, dpl=3)
        for vec, (lo, hi) in gates.items():
            mem.write(base + vec * 16, 8, lo)
            mem.write(base + vec * 16 + 8, 8, hi)
    mem.write(GDTD, 2, GDT_LIMIT_FULL)
    mem.write(GDTD + 2, 8, GDT)
    mem.write(IDTD, 2, 256 * 16 - 1)
    mem.write(IDTD + 2, 8, IDT)
    mem.write_bytes(CODE, code)
    mem.write_bytes(DATA, bytes(range(256)) * 8)
    c = Cpu(mem)
    c.blocks_enabled = blocks_on
    c.fast_events = fast
    c.cr0, c.cr4, c.efer, c.cr3 = 0x80050033, 0x20, 0xD01, PML4
    c.gdtr.base, c.gdtr.limit = GDT, GDT_LIMIT_FULL
    c.idtr.base, c.idtr.limit = IDT, 256 * 16 - 1
    c.tr.sel, c.tr.base, c.tr.limit, c.tr.attrib = 0x28, TSS, 0x67, 0x8B
    cs, ss, cpl = (0x1B, 0x23, 3) if user else (0x08, 0x10, 0)
    c.seg[1].load(Segment(cs, 0, 0xFFFFFFFF, 0xAFB if user else 0xA9B))
    c.seg[2].load(Segment(ss, 0, 0xFFFFFFFF, 0xCF3 if user else 0xC93))
    for i in (0, 3, 4, 5):      # ring 3 starts with ring-0 data segments: IRETQ nulls them
        c.seg[i].load(Segment(0x10, 0, 0xFFFFFFFF, 0xC93))
    c.cpl = cpl
    c.update_mode()
    c.regs[4] = USTACK + r.choice((0, 0, 0x18)) if user else KSTACK - 0x800
    c.regs[3] = DATA
    c.regs[5] = DATA + 0x800
    c.regs[12] = HOLE + 0x100
    c.rflags = 0x202
    c.rip = CODE
    return c


def _ev_one(r: random.Random) -> bytes:
    k = r.random()
    if k < 0.10:
        return bytes([0xCD, r.choice((0x80, 0x80, 0x81, 0x82))])        # int n
    if k < 0.14:
        return b"\xcc"                                                  # int3
    if k < 0.16:                                    # the program rewrites a gate or a segment
        which = r.choice(((IDT + 3 * 16 + 4, 0x100), (IDT + 1 * 16 + 4, 1),
                          (GDT + ALT_CS + 4, 0x8000), (IDT + 0x80 * 16, 0x10)))
        return _abs32(b"\x81\x34", which[0], which[1].to_bytes(4, "little"))
    return _one(r)


def _ev_sequence(r: random.Random) -> bytes:
    body = b"".join(_ev_one(r) for _ in range(r.randrange(8, 40)))
    n = r.randrange(2, 12)
    back = -(len(body) + 4)
    if back < -128:
        return b"\xb9" + n.to_bytes(4, "little") + body + b"\xff\xc9\x90\x90" + b"\xf4"
    return b"\xb9" + n.to_bytes(4, "little") + body + b"\xff\xc9" + bytes([0x75, back & 0xFF]) \
        + b"\xf4"


def _ev_state(c: Cpu) -> tuple:
    segs = [(s.sel, s.base, s.limit, s.attrib) for s in c.seg]
    return (_state(c), segs, c.cpl, c.mode, bool(c.nmi_blocked), c.nmi_pending,
            (c.gdtr.base, c.gdtr.limit), (c.idtr.base, c.idtr.limit),
            c.mem.read_bytes(GDT, 0x100), c.mem.read_bytes(IDT, 0x1000),
            c.mem.read_bytes(IDT2, 0x1000), c.mem.read_bytes(DESC, 0x200),
            c.mem.read_bytes(KSTACK - 0x1000, 0x1100), c.mem.read_bytes(ISTACK - 0x1000, 0x1100),
            c.mem.read_bytes(USTACK - 0x1000, 0x1100))


def _ev_run(code: bytes, seed: int, fast: bool, blocks_on: bool) -> tuple:
    r = random.Random(seed)
    user = r.random() < 0.5
    c = _ev_cpu(code, r, user, fast, blocks_on)
    if r.random() < 0.4:
        c.rflags |= 0x100
    if r.random() < 0.3:
        addr = CODE + r.randrange(len(code))
        c.dr[0], c.dr[1] = addr, (USTACK if user else KSTACK) - 0x28
        c.dr[7] = 0x400 | 1 | (1 << 2) | (3 << 20) | (3 << 22)   # DR0 exec, DR1 write 8 bytes
        c.update_debug()

    def ack() -> int:
        c.set_intr_line(False)
        return 0x40
    c.attention = True
    for _ in range(12):
        c.run(r.choice((1, 2, 3, 7, 20, 64, 150)))
        roll = r.random()
        if roll < 0.15:
            c.raise_nmi()
        elif roll < 0.25:
            c.set_intr_line(True, ack)
        elif roll < 0.35:                       # the host rewrites the IDT or the GDT
            lo = c.mem.read(IDT + 16, 8)
            c.mem.write(IDT + 16, 8, lo ^ (1 << 32))                 # #DB gate: IST 0 <-> 1
        elif roll < 0.40:
            c.mem.write(GDT + ALT_CS + 4, 4, c.mem.read(GDT + ALT_CS + 4, 4) ^ 0x8000)
        if c.shutdown or (c.halted and not c.nmi_pending and not c.intr_pending):
            break
    return _ev_state(c) + (c.icount,)


def test_random_event_sequences_are_the_same_with_and_without_the_fast_paths(monkeypatch):
    """Random programs in ring 0 and ring 3 taking #DB (TF, DR0-3), #BP, INT n, #NP, #GP with
    an error code, #PF, NMI (IST) and INTR, with guest and host rewriting IDT, GDT, IDTR and
    GDTR between deliveries, frames across page ends: the delivery and IRETQ fast paths give
    the same retirement log, events, registers, segments and memory as the exact paths (with
    blocks on and off)."""
    from nitdbg.x86 import fastpath
    _eager(monkeypatch)
    _memo_decoder(monkeypatch)
    fast_taken = [0, 0]
    d64, iq = fastpath.deliver64, fastpath.iretq

    def deliver64(*a):
        ok = d64(*a)
        fast_taken[0] += ok
        return ok

    def iretq(c):
        ok = iq(c)
        fast_taken[1] += ok
        return ok
    monkeypatch.setattr(fastpath, "deliver64", deliver64)
    monkeypatch.setattr(fastpath, "iretq", iretq)
    r = random.Random(1117)
    events = 0
    for n in range(EV_SEQUENCES):
        code = _ev_sequence(r)
        seed = r.getrandbits(32)
        blocks_on = n % 2 == 0
        exact = _ev_run(code, seed, False, blocks_on)
        fast = _ev_run(code, seed, True, blocks_on)
        assert fast == exact, f"sequence {n} ({code.hex()}) seed={seed} blocks={blocks_on}"
        events += len(fast[0][5])
    # the comparison means something only if both kinds of path ran often
    assert events > 20 * EV_SEQUENCES
    assert fast_taken[0] > 5 * EV_SEQUENCES and fast_taken[1] > 5 * EV_SEQUENCES
