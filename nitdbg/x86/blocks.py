"""The block translator: straight-line runs of 64-bit and 32-bit protected-mode guest code
compiled to Python functions.

A block is the run of instructions from one address up to a branch (included), the end of the
page, or the first instruction it does not translate (left to the per-instruction path). It is
generated as Python source and compiled once: registers live in locals, the arithmetic flags
are kept lazily (the operands of the last flag-writing instruction) and computed only where a
branch, an exit, a fault or the end of the block reads them, and RIP, the retirement count and
the retirement ring are written once when the block ends. A block that branches back to its
own start loops inside the function, up to the instruction budget.

The step loop runs a block only when nothing needs the exact path (`attention` is clear: no
TF, RF, pending event, interrupt window, shadow or halt; no enabled DR0-3 breakpoints) and the
whole block fits the budget. Inside it, an instruction that leaves the TLB fast path (a page
walk, MMIO, a write to a page holding decoded code) is followed by a check of `attention`, so
an event it raised, or the self-modifying write it made, ends the block at the next boundary.
A fault, a #VMEXIT (`Intercepted`) or any other exception leaves the state exactly as at the
start of the instruction that raised it (registers, flags, RIP, icount, retirement ring) and
propagates to the step loop, which handles it as it does for the per-instruction path.

32-bit code (the i386 firmware, multiboot kernels) is translated for flat segments: addresses
are the 32-bit offsets, the stack is ESP. A 32-bit block checks on entry that the segments it
uses have base 0 (DS, SS) and that SS.B = 1; otherwise it returns without running and the
per-instruction path adds the bases (operands.mem_ea) and uses SP (stack.py).
"""

from __future__ import annotations

import os
import struct
from array import array
from collections.abc import Callable
from typing import TYPE_CHECKING

import capstone.x86_const as X

from .decode import Decoded
from .faults import Fault
from .flags import ADD, SUB, SZP
from .insn.data import cc_from_mnemonic
from .operands import mem_segment
from .regs import ARITH, CF, MASK, REGMAP, RSP, SIGN, SS
from .segments import ATTR_DB

if TYPE_CHECKING:
    from .cpu import Cpu

Block = Callable[["Cpu", int], bool]

MAX_INSNS = 64
HOT = 4          # a start address is first considered once the fast path has reached it this often

# When to translate ("ski rental"): a block is translated once the work the per-instruction
# path has spent on it (visits of its start x its length, in instructions) reaches what its
# translation costs, so code that runs a few dozen times is never translated and the total
# translation time stays within a small factor of the interpreted time it replaces.
# Measured costs, in interpreted-instruction equivalents (one fast-path instruction ~0.35 us):
# decode, code generation and compile() ~0.35 ms + 0.13 ms per instruction.
XLATE_BASE = 900
XLATE_PER_INSN = 380
CACHED_COST = 48     # looking a block up in the process-wide cache (the run and its key)
# A token bucket filled by retired instructions caps the translation work of any stretch
# (a debugger step runs ~340 instructions: it never pays for a burst of translations).
XLATE_BURST = 12_000
EAGER = False        # translate at the HOT-th visit whatever it costs (the differential tests)
M64 = MASK[8]
M32 = MASK[4]
NA = ~ARITH
NCF = ARITH & ~CF


def enabled_by_default() -> bool:
    """NITDBG_BLOCKS=0 turns block translation off (the exact per-instruction path only)."""
    return os.environ.get("NITDBG_BLOCKS", "1") != "0"


class _Unsupported(Exception):  # noqa: N818 - internal signal: the block ends before this one
    pass


_GLOBALS_BASE: dict = {"Fault": Fault, "CF": CF, "NA": NA, "ARITH": ARITH}
for _s, _fmt in ((1, "<B"), (2, "<H"), (4, "<I"), (8, "<Q")):
    _GLOBALS_BASE[f"LD{_s}"] = struct.Struct(_fmt).unpack_from   # little-endian page access
    _GLOBALS_BASE[f"ST{_s}"] = struct.Struct(_fmt).pack_into
    _GLOBALS_BASE[f"ADD{_s}"] = ADD[_s]
    _GLOBALS_BASE[f"SUB{_s}"] = SUB[_s]
    _GLOBALS_BASE[f"SZP{_s}"] = SZP[_s]

_BINOPS = {X.X86_INS_ADD: "add", X.X86_INS_SUB: "sub", X.X86_INS_CMP: "cmp",
           X.X86_INS_AND: "and", X.X86_INS_OR: "or", X.X86_INS_XOR: "xor",
           X.X86_INS_TEST: "test"}
_JCC_IDS = {getattr(X, f"X86_INS_J{s}") for s in
            ("A", "AE", "B", "BE", "E", "G", "GE", "L", "LE", "NE", "NO", "NP", "NS", "O", "P",
             "S")}
# generic conditions on an arithmetic-flags value f (flags.py _COND order)
_COND_F = {0: "f & 0x800", 2: "f & 1", 4: "f & 0x40", 6: "f & 0x41", 8: "f & 0x80",
           10: "f & 4", 12: "(f >> 7 ^ f >> 11) & 1",
           14: "f & 0x40 or (f >> 7 ^ f >> 11) & 1"}


class _State:
    """The arithmetic flags as an expression over locals; `@B@` stands for the flags the
    block (or this iteration of a looping block) started with."""

    __slots__ = ("expr", "kind", "size", "a", "b", "r")

    def __init__(self, expr: str, kind: str | None = None, size: int = 0, a: str = "",
                 b: str = "", r: str = ""):
        self.expr, self.kind, self.size, self.a, self.b, self.r = expr, kind, size, a, b, r


BASE = _State("@B@")


class _Gen:
    def __init__(self, start: int, mode: int = 64):
        self.start = start
        # 64-bit code, or 32-bit protected-mode code run with flat data and stack segments
        # (the block checks DS.base = SS.base = 0 and SS.B = 1 on entry: `segs`, `stack`)
        self.mode = mode
        self.am = M64 if mode == 64 else M32     # address (and stack pointer) mask
        self.segs: set[int] = set()
        self.stack = False
        self.body: list[str] = []
        self.loaded: set[int] = set()
        self.written: set[int] = set()
        self.state = BASE
        self.sites: dict[int, _State] = {}     # x -> flags state before instruction x
        self.flags_written = False
        self.k = 0
        self.cur: list[str] = []
        self.faults = False
        self.slow = False

    # -------------------------------------------------------------- operands
    def reg(self, reg: int) -> tuple[int, int]:
        ent = REGMAP.get(reg)
        if ent is None or ent[2]:
            raise _Unsupported
        idx, size, _high = ent
        self.loaded.add(idx)
        return idx, size

    def rd_reg(self, reg: int, size: int | None = None) -> str:
        idx, rsize = self.reg(reg)
        size = size or rsize
        return f"r{idx}" if size == 8 else f"(r{idx} & {MASK[size]:#x})"

    def wr_reg(self, reg: int, value: str) -> None:
        """`value` is already masked to the register's size."""
        idx, size = self.reg(reg)
        self.written.add(idx)
        if size in (4, 8):
            self.cur.append(f"r{idx} = {value}")
        else:
            self.cur.append(f"r{idx} = (r{idx} & {M64 & ~MASK[size]:#x}) | {value}")

    def push_size(self) -> int:
        """A stack access of the stack width (8 in 64-bit mode, 4 with SS.B=1); it may
        fault."""
        self.loaded.add(RSP)
        self.written.add(RSP)
        self.faults = True
        if self.mode == 64:
            return 8
        self.segs.add(SS)
        self.stack = True
        return 4

    def canon(self, var: str, vector: int) -> None:
        """64-bit mode: a non-canonical `var` raises #GP(0) or #SS(0) (vector 13 or 12)."""
        if self.mode == 64:
            self.cur.append(f"if 0x7FFFFFFFFFFF < {var} < 0xFFFF800000000000: "
                            f"raise Fault({vector}, 0)")

    def ea(self, op, next_rip: int, addr_size: int) -> str:
        """Emit the linear address of a memory operand into local `a`; returns 'a'."""
        mem = op.mem
        if mem.segment not in (0, X.X86_REG_DS, X.X86_REG_SS, X.X86_REG_ES, X.X86_REG_CS):
            raise _Unsupported                 # FS/GS add a base: the slow path has it
        if addr_size != (8 if self.mode == 64 else 4):
            raise _Unsupported
        am = self.am
        if self.mode != 64:
            # the offset plus a flat segment's base 0 (operands.mem_ea's ea_seg)
            self.segs.add(mem_segment(mem))
        self.faults = True
        if mem.base == X.X86_REG_RIP:
            if mem.index:
                raise _Unsupported
            self.cur.append(f"a = {(next_rip + mem.disp) & M64:#x}")
            return "a"
        parts = []
        b = ix = None
        if mem.base:
            b, _ = self.reg(mem.base)
            parts.append(f"r{b}")
        if mem.index:
            ix, _ = self.reg(mem.index)
            parts.append(f"r{ix} * {mem.scale}" if mem.scale != 1 else f"r{ix}")
        if mem.disp:
            parts.append(str(mem.disp))
        if not parts:
            self.cur.append(f"a = {mem.disp & am:#x}")
            return "a"
        if len(parts) == 1 and b is not None and am == M64:
            self.cur.append(f"a = r{b}")
        else:
            self.cur.append(f"a = ({' + '.join(parts)}) & {am:#x}")
        if mem_segment(mem) == SS:
            # SS-relative: a non-canonical address is #SS(0) (SDM vol 3 6.15, APM 8.4.2)
            self.canon("a", 12)
        return "a"

    def load(self, addr: str, size: int, dst: str) -> None:
        self.slow = True
        self.cur.append(f"p = tr({addr} >> 12)")
        self.cur.append(f"o = {addr} & 4095")
        if size == 1:
            self.cur.append(f"if p is not None: {dst} = p[o]")
        else:
            self.cur.append(f"if p is not None and o <= {4096 - size}: "
                            f"{dst} = LD{size}(p, o)[0]")
        # the slow path may have raised an event (MMIO): `s` ends the block after this one
        self.cur += ["else:", "    @SYNC@", f"    {dst} = rds({addr}, {size}, 0)",
                     "    s = c.attention"]

    def store(self, addr: str, size: int, value: str) -> None:
        self.slow = True
        self.cur.append(f"p = tw({addr} >> 12)")
        self.cur.append(f"o = {addr} & 4095")
        if size == 1:
            self.cur.append(f"if p is not None: p[o] = {value}")
        else:
            self.cur.append(f"if p is not None and o <= {4096 - size}: ST{size}(p, o, {value})")
        # ... or written to decoded code (self-modifying code sets attention)
        self.cur += ["else:", "    @SYNC@", f"    wrs({addr}, {size}, {value}, 0)",
                     "    s = c.attention"]

    def src(self, d, i: int, size: int) -> str:
        """Operand i as a value of `size` (register, immediate or memory)."""
        op = d.ops[i]
        if op.type == X.X86_OP_REG:
            return self.rd_reg(op.reg, size)
        if op.type == X.X86_OP_IMM:
            return f"{op.imm & MASK[size]:#x}"
        self.ea(op, d.next, d.addr_size)
        v = f"v{self.k}"
        self.load("a", size, v)
        return v

    # -------------------------------------------------------------- flags
    def set_flags(self, st: _State) -> None:
        self.state = st
        self.flags_written = True

    def cond(self, cc: int) -> str:
        """A Python condition for condition code cc in the current flags state; may emit
        a line computing `f`."""
        st = self.state
        neg = cc & 1
        base = cc & ~1
        fast = None
        if st.kind == "sub":
            a, b, s = st.a, st.b, SIGN[st.size]
            fast = {4: f"{a} == {b}", 2: f"{a} < {b}", 6: f"{a} <= {b}",
                    12: f"({a} ^ {s:#x}) < ({b} ^ {s:#x})",
                    14: f"({a} ^ {s:#x}) <= ({b} ^ {s:#x})", 8: f"{st.r} & {s:#x}"}.get(base)
        elif st.kind == "logic":
            r, s = st.r, SIGN[st.size]
            fast = {4: f"{r} == 0", 2: "False", 6: f"{r} == 0", 8: f"{r} & {s:#x}",
                    12: f"{r} & {s:#x}", 14: f"{r} == 0 or {r} & {s:#x}",
                    0: "False"}.get(base)
        elif st.kind in ("add", "inc", "dec"):
            r, s = st.r, SIGN[st.size]
            fast = {4: f"{r} == 0", 8: f"{r} & {s:#x}"}.get(base)
        if fast is None:
            self.cur.append(f"f = {st.expr}")
            fast = _COND_F[base]
        return f"not ({fast})" if neg else f"({fast})"

    # -------------------------------------------------------------- instructions
    def insn(self, d) -> str | None:
        """Emit one instruction into self.cur. Returns None for a straight-line instruction,
        or the kind of terminal branch: 'jmp', 'jcc', 'call', 'ret'. (An instruction id
        handled here must be in _HANDLED_IDS, or build never offers it.)"""
        if d.prefix != b"\x00\x00\x00\x00" and any(p in (0xF0, 0xF2, 0xF3, 0x2E, 0x3E, 0x26,
                                                         0x36, 0x64, 0x65, 0x67)
                                                    for p in d.prefix):
            raise _Unsupported
        i, k = d.id, self.k
        ops = d.ops
        if i in (X.X86_INS_MOV, X.X86_INS_MOVABS):
            if len(ops) != 2:
                raise _Unsupported
            size = ops[0].size
            if ops[0].type == X.X86_OP_REG:
                v = self.src(d, 1, size)
                self.wr_reg(ops[0].reg, v)
            elif ops[0].type == X.X86_OP_MEM:
                if ops[1].type == X.X86_OP_MEM:
                    raise _Unsupported
                v = self.src(d, 1, size)
                self.ea(ops[0], d.next, d.addr_size)
                self.store("a", size, v)
            else:
                raise _Unsupported
            return None
        if i in (X.X86_INS_MOVZX, X.X86_INS_MOVSX, X.X86_INS_MOVSXD):
            if ops[0].type != X.X86_OP_REG:
                raise _Unsupported
            ss, ds = ops[1].size, ops[0].size
            v = self.src(d, 1, ss)
            if i == X.X86_INS_MOVZX:
                self.wr_reg(ops[0].reg, v)
            else:
                self.cur.append(f"t = {v}")
                self.wr_reg(ops[0].reg,
                            f"((t - {1 << (8 * ss):#x} if t & {SIGN[ss]:#x} else t) "
                            f"& {MASK[ds]:#x})")
            return None
        if i == X.X86_INS_LEA:
            if ops[0].type != X.X86_OP_REG or d.addr_size != (8 if self.mode == 64 else 4):
                raise _Unsupported
            mem = ops[1].mem
            if mem.base == X.X86_REG_RIP:
                if mem.index:
                    raise _Unsupported
                v = f"{(d.next + mem.disp) & M64 & MASK[ops[0].size]:#x}"
            else:
                parts = []
                if mem.base:
                    parts.append(f"r{self.reg(mem.base)[0]}")
                if mem.index:
                    parts.append(f"r{self.reg(mem.index)[0]} * {mem.scale}")
                if mem.disp or not parts:
                    parts.append(str(mem.disp))
                v = f"(({' + '.join(parts)}) & {MASK[ops[0].size]:#x})"
            self.wr_reg(ops[0].reg, v)
            return None
        if i in _BINOPS:
            op = _BINOPS[i]
            if len(ops) != 2:
                raise _Unsupported
            size = ops[0].size
            m = MASK[size]
            if ops[0].type == X.X86_OP_IMM or (ops[0].type == X.X86_OP_MEM
                                               and ops[1].type == X.X86_OP_MEM):
                raise _Unsupported
            if (op == "xor" and ops[0].type == X.X86_OP_REG and ops[1].type == X.X86_OP_REG
                    and ops[0].reg == ops[1].reg):
                self.reg(ops[0].reg)
                self.wr_reg(ops[0].reg, "0")
                self.set_flags(_State(f"{SZP[size](0):#x}", "logic", size, r="0"))
                return None
            if ops[0].type == X.X86_OP_REG:
                a = self.rd_reg(ops[0].reg, size)
                dst_mem = False
            else:
                self.ea(ops[0], d.next, d.addr_size)
                a = f"v{k}d"
                self.load("a", size, a)
                dst_mem = True
            self.cur.append(f"a{k} = {a}")
            b = self.src(d, 1, size)
            if ops[1].type != X.X86_OP_IMM:
                self.cur.append(f"b{k} = {b}")
                b = f"b{k}"
            r = f"r{k}_"
            expr = {"add": f"(a{k} + {b}) & {m:#x}", "sub": f"(a{k} - {b}) & {m:#x}",
                    "cmp": f"(a{k} - {b}) & {m:#x}", "and": f"a{k} & {b}",
                    "or": f"a{k} | {b}", "xor": f"a{k} ^ {b}", "test": f"a{k} & {b}"}[op]
            self.cur.append(f"{r} = {expr}")
            if op not in ("cmp", "test"):
                if dst_mem:
                    self.ea(ops[0], d.next, d.addr_size)
                    self.store("a", size, r)
                else:
                    self.wr_reg(ops[0].reg, r)
            if op == "add":
                st = _State(f"ADD{size}(a{k}, {b}, {r}, 0)", "add", size, f"a{k}", b, r)
            elif op in ("sub", "cmp"):
                st = _State(f"SUB{size}(a{k}, {b}, {r}, 0)", "sub", size, f"a{k}", b, r)
            else:
                st = _State(f"SZP{size}({r})", "logic", size, f"a{k}", b, r)
            self.set_flags(st)
            return None
        if i in (X.X86_INS_INC, X.X86_INS_DEC):
            size = ops[0].size
            m = MASK[size]
            if ops[0].type == X.X86_OP_REG:
                self.cur.append(f"a{k} = {self.rd_reg(ops[0].reg, size)}")
                dst_mem = False
            elif ops[0].type == X.X86_OP_MEM:
                self.ea(ops[0], d.next, d.addr_size)
                self.load("a", size, f"a{k}")
                dst_mem = True
            else:
                raise _Unsupported
            inc = i == X.X86_INS_INC
            r = f"r{k}_"
            self.cur.append(f"{r} = (a{k} {'+' if inc else '-'} 1) & {m:#x}")
            if dst_mem:
                self.ea(ops[0], d.next, d.addr_size)
                self.store("a", size, r)
            else:
                self.wr_reg(ops[0].reg, r)
            fn = "ADD" if inc else "SUB"
            # INC/DEC leave CF as it was (SDM vol 2 INC/DEC)
            prev = self.state.expr
            st = _State(f"(({prev}) & 1) | ({fn}{size}(a{k}, 1, {r}, 0) & {NCF:#x})",
                        "inc" if inc else "dec", size, f"a{k}", "1", r)
            self.set_flags(st)
            return None
        if i == X.X86_INS_PUSH:
            if d.prefix[2] == 0x66 or len(ops) != 1:
                raise _Unsupported
            op = ops[0]
            w = self.push_size()
            if op.type == X.X86_OP_REG:
                if self.reg(op.reg)[1] != w:
                    raise _Unsupported
                v = self.rd_reg(op.reg)
            elif op.type == X.X86_OP_IMM:
                v = f"{op.imm & MASK[w]:#x}"
            else:
                raise _Unsupported
            self.cur.append(f"a = (r{RSP} - {w}) & {self.am:#x}")
            self.canon("a", 12)
            self.store("a", w, v)
            self.cur.append(f"r{RSP} = a")
            return None
        if i == X.X86_INS_POP:
            if d.prefix[2] == 0x66 or len(ops) != 1 or ops[0].type != X.X86_OP_REG:
                raise _Unsupported
            w = self.push_size()
            if self.reg(ops[0].reg)[1] != w:
                raise _Unsupported
            self.cur.append(f"a = r{RSP}" if w == 8 else f"a = r{RSP} & {M32:#x}")
            self.canon("a", 12)
            self.load("a", w, "t")
            self.cur.append(f"r{RSP} = (a + {w}) & {self.am:#x}")
            self.wr_reg(ops[0].reg, "t")     # after the pop: POP RSP keeps the popped value
            return None
        if i in (X.X86_INS_NOP, X.X86_INS_ENDBR64):
            return None
        if i == X.X86_INS_JMP:
            if len(ops) != 1 or ops[0].type != X.X86_OP_IMM or d.prefix[2] == 0x66:
                raise _Unsupported
            t = ops[0].imm & self.am
            if not _canonical(t):
                raise _Unsupported
            self.cur.append(f"nrip = {t:#x}")
            return "jmp"
        if i in _JCC_IDS:
            if d.prefix[2] == 0x66:
                raise _Unsupported
            t = ops[0].imm & self.am
            if not _canonical(t):
                raise _Unsupported
            cc = cc_from_mnemonic(d.mnemonic)
            self.cur.append(f"taken = {self.cond(cc)}")
            return "jcc"
        if i == X.X86_INS_CALL:
            if len(ops) != 1 or ops[0].type != X.X86_OP_IMM or d.prefix[2] == 0x66:
                raise _Unsupported
            t = ops[0].imm & self.am
            if not _canonical(t) or d.ci.opcode[0] == 0xFF:
                raise _Unsupported
            w = self.push_size()
            self.cur.append(f"a = (r{RSP} - {w}) & {self.am:#x}")
            self.canon("a", 12)
            self.store("a", w, f"{d.next & MASK[w]:#x}")
            self.cur.append(f"r{RSP} = a")
            self.cur.append(f"nrip = {t:#x}")
            return "call"
        if i == X.X86_INS_RET:
            if ops or d.prefix[2] == 0x66:
                raise _Unsupported
            w = self.push_size()
            self.cur.append(f"a = r{RSP}" if w == 8 else f"a = r{RSP} & {M32:#x}")
            self.canon("a", 12)
            self.load("a", w, "t")
            self.canon("t", 13)
            self.cur.append(f"r{RSP} = (a + {w}) & {self.am:#x}")
            self.cur.append("nrip = t")
            return "ret"
        raise _Unsupported


# capstone ids _Gen.insn may translate; the ones that end a block
_JUMP_IDS = frozenset({X.X86_INS_JMP, *_JCC_IDS})
_BRANCH_IDS = frozenset({*_JUMP_IDS, X.X86_INS_CALL, X.X86_INS_RET})
_HANDLED_IDS = frozenset({X.X86_INS_MOV, X.X86_INS_MOVABS, X.X86_INS_MOVZX, X.X86_INS_MOVSX,
                          X.X86_INS_MOVSXD, X.X86_INS_LEA, *_BINOPS, X.X86_INS_INC,
                          X.X86_INS_DEC, X.X86_INS_PUSH, X.X86_INS_POP, X.X86_INS_NOP,
                          X.X86_INS_ENDBR64, *_BRANCH_IDS})
# the ones a block may run through (the step loop does not look for a block after them)
STRAIGHT_IDS = _HANDLED_IDS - _BRANCH_IDS


def _canonical(a: int) -> bool:
    return a <= 0x7FFF_FFFF_FFFF or a >= 0xFFFF_8000_0000_0000


def retire_run(ring: array, mask: int, n: int, pat: array, length: int, count: int) -> None:
    """Store `count` retirements starting at sequence n, the block's RIPs repeating."""
    cap = mask + 1
    plen = len(pat)
    off = 0
    while count:
        p = n & mask
        k = min(count, cap - p)
        if off == 0 and k >= length:
            k = min(k, plen)
            if k < count:
                k -= k % length
            ring[p:p + k] = pat if k == plen else pat[:k]
        else:
            k = 1
            ring[p] = pat[off]
        off = (off + k) % length
        n += k
        count -= k


def _decoded_run(cpu: Cpu, rip: int) -> list:
    """The instructions from `rip` a block could hold. Only instructions already fetched and
    decoded: building a block must not walk page tables, fetch or report an unsupported
    instruction the guest has not reached."""
    page_end = (rip | 0xFFF) + 1
    icache = cpu.icache
    run: list = []
    cur = rip
    while len(run) < MAX_INSNS:
        insn = icache.get(cur)
        if insn is None or insn.fn is None or insn.flags or cur + insn.length > page_end:
            break
        run.append(insn)
        cur = insn.next
        if cur >= page_end:
            break
    return run


def _usable(fn: Block | None) -> Block | None:
    if fn is not None and fn.length == 1 and not fn.loops:
        # One instruction that does not branch back to itself: the block's entry and exit
        # cost more than the per-instruction path (e.g. a #DB handler's first instruction
        # before its IRETQ).
        return None
    return fn


def _translatable_prefix(run: list) -> int:
    """How many instructions of `run` the translator could take, judged by capstone id alone
    (operands may still stop it earlier): an upper bound, to price a translation and to give
    up early on a start it would turn down."""
    n = 0
    for insn in run:
        if insn.id not in _HANDLED_IDS:
            break
        n += 1
        if insn.id in _BRANCH_IDS:
            break
    return n


def build(cpu: Cpu, rip: int, hot: int | None = None) -> Block | None | int:
    """The block starting at `rip` in the current mode, translated or from the process-wide
    cache: None if there is none to have (its first instruction is not one the translator
    handles, the block would be a single instruction that does not loop, or the mode is
    neither 64-bit nor 32-bit protected mode); or, while the start has been reached only `hot`
    times, the visit count at which to ask again (an int) when the block is not worth
    translating yet (XLATE_BASE..., ski rental) or the translation budget is spent
    (XLATE_BURST). `hot=None` translates now."""
    mode = cpu.mode
    if mode != 64 and mode != 32:
        return None
    run = _decoded_run(cpu, rip)
    if not run:
        return None
    key = (mode, *((i.addr, i.code) for i in run))
    fn = _COMPILED.get(key, False)
    if fn is False:
        n = _translatable_prefix(run)
        if n == 0 or (n == 1 and run[0].id not in _JUMP_IDS):
            fn = None           # (_translate would give None or a one-instruction block)
        else:
            if hot is not None and not EAGER:
                cost = XLATE_BASE + XLATE_PER_INSN * n
                if hot * n < cost:
                    return -(-cost // n)
                tokens = min(XLATE_BURST, cpu.xlate_tokens + max(0, cpu.icount - cpu.xlate_at))
                cpu.xlate_at = cpu.icount
                if tokens < cost:
                    cpu.xlate_tokens = tokens
                    return hot + max(HOT, hot >> 2)
                cpu.xlate_tokens = tokens - cost
            fn = _translate(cpu, rip, run)
        if len(_COMPILED) >= _COMPILED_MAX:
            _COMPILED.clear()
        _COMPILED[key] = fn
    elif hot is not None and not EAGER and hot * len(run) < CACHED_COST:
        return -(-CACHED_COST // len(run))
    return _usable(fn)


# Compiled blocks by their instructions (address and bytes), shared by every vCPU of the
# process: a block function holds no CPU state, and every new machine runs the same firmware.
_COMPILED: dict[tuple, Block | None] = {}
_COMPILED_MAX = 1 << 14


def _translate(cpu: Cpu, rip: int, run: list) -> Block | None:
    mode = cpu.mode
    g = _Gen(rip, mode)
    addrs: list[int] = []
    bodies: list[list[str]] = []
    markers: list[tuple[bool, bool]] = []   # (can fault, may take a slow path)
    terminal = None
    page_end = (rip | 0xFFF) + 1
    cur = rip
    for insn in run:
        ci = cpu.decoder.decode(insn.code, cur, mode)
        if ci is None:
            break
        d = Decoded(ci, mode)
        g.k = len(addrs)
        g.cur, g.faults, g.slow = [], False, False
        saved = (set(g.loaded), set(g.written), g.state, g.flags_written, set(g.segs),
                 g.stack)
        try:
            kind = g.insn(d)
        except _Unsupported:
            g.loaded, g.written, g.state, g.flags_written, g.segs, g.stack = saved
            break
        addrs.append(cur)
        bodies.append(g.cur)
        markers.append((g.faults, g.slow))
        cur = insn.next
        if kind is not None:
            terminal = (kind, d)
            break
        if cur >= page_end:
            break
        g.sites[len(addrs)] = g.state
    if not addrs:
        return None
    return _compile(g, rip, addrs, bodies, markers, terminal, cur)


def _compile(g: _Gen, rip: int, addrs: list[int], bodies: list[list[str]],
             markers: list[tuple[bool, bool]], terminal: tuple | None,
             fallthrough: int) -> Block:
    n = len(addrs)
    end = g.state
    loops = False
    target = None
    if terminal is not None:
        kind, d = terminal
        if kind in ("jmp", "jcc", "call"):
            target = d.ops[0].imm & g.am
            loops = target == rip
    # END refers to the flags at entry (no full flag write, or INC/DEC on top of them):
    # compute them at the end of each pass; otherwise keep them lazy across passes too.
    refs_base = "@B@" in end.expr
    materialize = refs_base and end.expr != "@B@"
    if refs_base:
        base = "(fl & ARITH)"
    else:
        base = f"(({end.expr}) if it else (fl & ARITH))"

    def sub(e: str) -> str:
        return e.replace("@B@", base)

    L: list[str] = []
    w = L.append
    w("def block(c, left):")
    w(f"    if left < {n}: return False")
    if g.segs or g.stack:
        # 32-bit code: translated for flat segments (operands.mem_ea adds the base, stack.py
        # uses ESP when SS.B=1); anything else runs on the per-instruction path
        conds = [f"c.seg[{k}].base" for k in sorted(g.segs)]
        if g.stack:
            conds.append(f"not c.seg[{SS}].attrib & {ATTR_DB:#x}")
        w(f"    if {' or '.join(conds)}: return False")
    w("    regs = c.regs")
    for r in sorted(g.loaded | g.written):
        w(f"    r{r} = regs[{r}]")
    w("    fl = c.rflags; i0 = c.icount")
    w("    tr = c.tlb_r.get; tw = c.tlb_w.get; rds = c._rd_slow; wrs = c._wr_slow")
    w("    it = 0; x = 0; nrip = 0; s = False")
    if loops:
        w(f"    maxit = left // {n}")
    w("    try:")
    w("        while True:")
    ind = " " * 12
    exit_sites = {0}
    for j, (body, (faults, slow)) in enumerate(zip(bodies, markers, strict=True)):
        if faults:
            if j or loops:          # a later pass must not keep the previous pass's x
                w(f"{ind}x = {j}")
            exit_sites.add(j)
        for line in body:
            if line.endswith("@SYNC@"):
                # Leaving the fast path (a page walk, MMIO, a code page) may run device or
                # hypervisor code: let it see the vCPU as the per-instruction path shows it
                # during this instruction (RIP already at the next one, the count before it).
                st = g.sites.get(j, BASE) if j else BASE
                e = sub(st.expr)
                nxt = (addrs + [fallthrough])[j + 1]
                parts = [f"c.icount = i0 + it * {n} + {j}", f"c.rip = {nxt:#x}"]
                parts += [f"regs[{r}] = r{r}" for r in sorted(g.written)]
                parts.append("c.rflags = fl" if e == "(fl & ARITH)"
                             else f"c.rflags = (fl & NA) | ({e})")
                line = line.replace("@SYNC@", "; ".join(parts))
            w(ind + sub(line))
        if slow and j < n - 1:
            w(f"{ind}if s:")
            w(f"{ind}    x = {j + 1}")
            w(f"{ind}    break")
            exit_sites.add(j + 1)
    # the terminal: where the next instruction is, and whether to go round again
    if terminal is not None and terminal[0] == "jcc":
        w(f"{ind}it = 1 + it")
        if materialize:
            w(f"{ind}fl = (fl & NA) | {sub(end.expr)}")
        w(f"{ind}if taken:")
        w(f"{ind}    nrip = {target:#x}")
        if loops:
            w(f"{ind}    if it < maxit and not c.attention:")
            w(f"{ind}        continue")
        w(f"{ind}else:")
        w(f"{ind}    nrip = {fallthrough:#x}")
    else:
        if terminal is None:
            w(f"{ind}nrip = {fallthrough:#x}")
        w(f"{ind}it = 1 + it")
        if materialize:
            w(f"{ind}fl = (fl & NA) | {sub(end.expr)}")
        if loops:
            w(f"{ind}if it < maxit and not c.attention:")
            w(f"{ind}    continue")
    w(f"{ind}x = 0")
    w(f"{ind}break")
    # the state at (it, x): flags, registers, RIP, icount and the retirement ring
    sync: list[str] = []
    s = sync.append
    first = True
    for j in sorted(exit_sites):
        st = BASE if j == 0 else g.sites.get(j, BASE)
        if j == 0:
            if refs_base:
                continue
            e = f"({end.expr}) if it else (fl & ARITH)"
        else:
            if st.expr == "@B@" and refs_base:
                continue
            e = sub(st.expr)
        s(f"{'if' if first else 'elif'} x == {j}: fl = (fl & NA) | ({e})")
        first = False
    s("c.rflags = fl")
    for r in sorted(g.written):
        s(f"regs[{r}] = r{r}")
    s("c.rip = nrip if x == 0 and it else ADDRS[x]")
    s(f"N = it * {n} + x")
    s("if N:")
    s("    rt = c.retire; c.icount = i0 + N")
    s("    p = i0 & rt.mask")
    s(f"    if N <= {n} and p + N <= rt.capacity: "
      f"rt.rips[p:p + N] = RIPS if N == {n} else RIPS[:N]")
    s(f"    else: retire_run(rt.rips, rt.mask, i0, PAT, {n}, N)")
    w("    except BaseException:")
    for line in sync:
        w("        " + line)
    w("        raise")
    for line in sync:
        w("    " + line)
    w("    return True")
    src = "\n".join(L) + "\n"
    rips = array("Q", addrs)
    reps = max(1, 4096 // n) if loops else 1
    ns = dict(_GLOBALS_BASE)
    ns.update(ADDRS=tuple(addrs) + (fallthrough,), RIPS=rips, PAT=rips * reps,
              retire_run=retire_run)
    code = compile(src, f"<block {rip:#x}>", "exec")
    exec(code, ns)  # noqa: S102 - our own generated source
    fn = ns["block"]
    fn.source = src
    fn.length, fn.loops = n, loops
    return fn
