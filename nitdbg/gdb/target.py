"""The register file gdb is told about (qXfer:features:read:target.xml) and its g/p order.

amd64 follows binutils-gdb gdb/features/i386/64bit-core.xml (rax, rbx, rcx, rdx, rsi, rdi,
rbp, rsp, r8-r15, rip, then eflags and the six selectors as 32-bit registers, then the x87
registers) plus 64bit-segments.xml (fs_base, gs_base); i386 follows 32bit-core.xml, whose
GPRs are in hardware order. The x87 registers are not modelled by nitdbg: they read as the
FNINIT state and writes to them are refused.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reg:
    name: str
    bits: int
    source: str | None      # key of Machine.live_regs, or None for an x87 register
    type: str = "int"
    group: str | None = None
    reset: int = 0          # x87: the value after FNINIT

    @property
    def size(self) -> int:
        return self.bits // 8


def _x87() -> list[Reg]:
    regs = [Reg(f"st{i}", 80, None, "i387_ext", "float") for i in range(8)]
    for name, reset in (("fctrl", 0x37F), ("fstat", 0), ("ftag", 0xFFFF), ("fiseg", 0),
                        ("fioff", 0), ("foseg", 0), ("fooff", 0), ("fop", 0)):
        regs.append(Reg(name, 32, None, "int", "float", reset))
    return regs


_SEGS = [Reg(n, 32, n, "int32") for n in ("cs", "ss", "ds", "es", "fs", "gs")]

AMD64 = ([Reg(n, 64, n, "int64") for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi")]
         + [Reg("rbp", 64, "rbp", "data_ptr"), Reg("rsp", 64, "rsp", "data_ptr")]
         + [Reg(f"r{i}", 64, f"r{i}", "int64") for i in range(8, 16)]
         + [Reg("rip", 64, "rip", "code_ptr"), Reg("eflags", 32, "rflags", "i386_eflags")]
         + _SEGS + _x87())
AMD64_SEGMENTS = [Reg("fs_base", 64, "fs_base", "int"), Reg("gs_base", 64, "gs_base", "int")]

I386 = ([Reg(e, 32, r, "int32") for e, r in (("eax", "rax"), ("ecx", "rcx"), ("edx", "rdx"),
                                             ("ebx", "rbx"))]
        + [Reg("esp", 32, "rsp", "data_ptr"), Reg("ebp", 32, "rbp", "data_ptr")]
        + [Reg("esi", 32, "rsi", "int32"), Reg("edi", 32, "rdi", "int32")]
        + [Reg("eip", 32, "rip", "code_ptr"), Reg("eflags", 32, "rflags", "i386_eflags")]
        + _SEGS + _x87())

_EFLAGS = """  <flags id="i386_eflags" size="4">
    <field name="CF" start="0" end="0"/><field name="" start="1" end="1"/>
    <field name="PF" start="2" end="2"/><field name="AF" start="4" end="4"/>
    <field name="ZF" start="6" end="6"/><field name="SF" start="7" end="7"/>
    <field name="TF" start="8" end="8"/><field name="IF" start="9" end="9"/>
    <field name="DF" start="10" end="10"/><field name="OF" start="11" end="11"/>
    <field name="NT" start="14" end="14"/><field name="RF" start="16" end="16"/>
    <field name="VM" start="17" end="17"/><field name="AC" start="18" end="18"/>
    <field name="VIF" start="19" end="19"/><field name="VIP" start="20" end="20"/>
    <field name="ID" start="21" end="21"/>
  </flags>
"""


@dataclass(frozen=True)
class Layout:
    arch: str
    regs: tuple[Reg, ...]
    xml: str

    def index(self, name: str) -> int | None:
        for i, r in enumerate(self.regs):
            if r.name == name:
                return i
        return None


def _reg_xml(r: Reg, num: int) -> str:
    group = f' group="{r.group}"' if r.group else ""
    return f'  <reg name="{r.name}" bitsize="{r.bits}" type="{r.type}" regnum="{num}"{group}/>\n'


def layout(amd64: bool) -> Layout:
    core = AMD64 if amd64 else I386
    regs = list(core)
    body = ['<feature name="org.gnu.gdb.i386.core">\n', _EFLAGS]
    body += [_reg_xml(r, i) for i, r in enumerate(core)]
    body.append("</feature>\n")
    if amd64:
        body.append('<feature name="org.gnu.gdb.i386.segments">\n')
        for r in AMD64_SEGMENTS:
            body.append(_reg_xml(r, len(regs)))
            regs.append(r)
        body.append("</feature>\n")
    arch = "i386:x86-64" if amd64 else "i386"
    xml = ('<?xml version="1.0"?>\n<!DOCTYPE target SYSTEM "gdb-target.dtd">\n<target>\n'
           f"<architecture>{arch}</architecture>\n" + "".join(body) + "</target>\n")
    return Layout(arch, tuple(regs), xml)


def encode(r: Reg, regs: dict[str, int]) -> bytes:
    value = r.reset if r.source is None else regs[r.source]
    return (value & ((1 << r.bits) - 1)).to_bytes(r.size, "little")
