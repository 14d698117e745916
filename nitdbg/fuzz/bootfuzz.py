"""Multiboot kernels, fuzzed: a raw a.out-kludge kernel (or the i386 ELF kernel) whose
multiboot header is mutated: flags, checksum, header/load/load_end/bss_end/entry addresses
(below the info page, over it, past the end of RAM, entry outside the image), ELF program
headers made to overlap or leave RAM; run through `nitdbg run --kernel FILE` as a user
would. A refusal is one line on stderr and a non-zero exit; nothing may print a traceback,
and exit 70 (an internal error of the vCPU) never happens."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

from hypothesis import strategies as st

from ..machine import I386_KERNEL
from .clirun import judge_cli, run_cli
from .targets import Outcome, Target

MAGIC = 0x1BADB002
AOUT = 1 << 16
LOAD = 0x100000
RAM = 64 << 20
RUN_INSNS = 20_000

ADDRS32 = [0, 0x1000, 0x8FFC, 0x9000, 0x9FFF, 0xA000, 0xFFFFF, LOAD - 4, LOAD, LOAD + 0x1F,
           LOAD + 0x20, LOAD + 0x21, LOAD + 0x1000, RAM - 0x1000, RAM - 1, RAM, RAM + 0x1000,
           0xFEC00000, 0xFEE00000, 0x7FFFFFFF, 0xFFFFF000, 0xFFFFFFFF]


def _header(flags: int, fields: list[int], bad_sum: bool = False) -> bytes:
    csum = (-(MAGIC + flags)) & 0xFFFFFFFF
    if bad_sum:
        csum ^= 1
    return struct.pack("<3I", MAGIC, flags, csum) + struct.pack("<5I", *fields)


def aout_kernel(code: bytes, flags: int = AOUT, fields: list[int] | None = None,
                bad_sum: bool = False, pad: int = 0) -> bytes:
    """A flat kernel loaded at 1 MiB: the multiboot header, then `code` at the entry."""
    f = fields if fields is not None else [LOAD, LOAD, 0, 0, LOAD + 32]
    return _header(flags, f, bad_sum) + code + bytes(pad)


# ---------------------------------------------------------------------- multiboot headers
@st.composite
def multiboot_case(draw: Callable) -> tuple[list[str], bytes]:
    """(extra `nitdbg run` options, the kernel file's bytes)."""
    opts = draw(st.sampled_from([[]] * 12 + [["--vcpus", "2"], ["--ram", "8"], ["--ram", "1"],
                                             ["--boot", "multiboot"], ["--boot", "amd64"],
                                             ["--vcpus", "0"]]))
    if draw(st.integers(0, 3)) == 0:
        return opts, _elf_case(draw)
    flags = AOUT | draw(st.sampled_from([0, 0, 1, 2, 3, 4, 7, 8, 0x80, 0x8000]))
    if draw(st.integers(0, 5)) == 0:
        flags = draw(st.integers(0, 0xFFFFFFFF))
    fields = [LOAD, LOAD, 0, 0, LOAD + 32]
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, 4))
        fields[i] = draw(st.sampled_from(ADDRS32) | st.integers(0, 0xFFFFFFFF))
    code = draw(st.sampled_from([b"\xf4", b"\xeb\xfe", b"\xfa\xf4", b"\x0f\x0b",
                                 b"\xb0\x01\xe6\xf4", b"\xcd\x03"]))
    raw = bytearray(aout_kernel(code, flags, fields, bad_sum=draw(st.integers(0, 9)) == 0,
                                pad=draw(st.sampled_from([0, 3, 4096]))))
    where = draw(st.sampled_from([0, 0, 0, 4, 8, 2, 8180, 8192]))
    if where:
        raw = bytearray(bytes(where)) + raw          # the header further in (or too far)
    if draw(st.integers(0, 4)) == 0:
        raw = raw[:draw(st.integers(0, len(raw)))]
    return opts, bytes(raw)


def _elf_case(draw: Callable) -> bytes:
    """The i386 kernel with its program headers bent: overlapping, outside RAM, on the
    multiboot information page, sizes that do not add up."""
    b = bytearray(I386_KERNEL.read_bytes())
    phoff, = struct.unpack_from("<I", b, 28)
    phentsize, phnum = struct.unpack_from("<HH", b, 42)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, max(0, phnum - 1)))
        field = draw(st.sampled_from([4, 8, 12, 16, 20, 24]))   # offset vaddr paddr filesz
        where = phoff + i * phentsize + field                   # memsz flags
        if where + 4 <= len(b):
            struct.pack_into("<I", b, where, draw(st.sampled_from(ADDRS32)
                                                  | st.integers(0, 0xFFFFFFFF)))
    if draw(st.booleans()):                                     # the ELF entry
        struct.pack_into("<I", b, 24, draw(st.sampled_from(ADDRS32)))
    return bytes(b)


def multiboot_target(tmpdir: Path) -> Target:
    def run(case: tuple[list[str], bytes]) -> Outcome:
        opts, raw = case
        p = tmpdir / "mb.kernel"
        p.write_bytes(raw)
        code, err, escaped = run_cli(["run", "--kernel", str(p), *opts,
                                      "--max-instructions", str(RUN_INSNS)])
        out = judge_cli(code, err, escaped)
        # a refusal at load is one line (a guest that ran may say more on stderr)
        if out.kind == "rejected" and err.lstrip().startswith("nitdbg: ") \
                and err.strip().count("\n") > 0:
            return Outcome("multiline", err[:300])
        return out

    return Target("multiboot", multiboot_case(), run)
