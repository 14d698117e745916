"""ELF images for the guest loaders (pyelftools underneath).

`load_elf` reads an x86 ELF executable and returns its loadable segments with every
check done up front: a file that is not ELF, is cut short, is for another machine or
places a segment outside guest RAM raises `BadImage` with one line, and nothing
partial is returned.
"""

from __future__ import annotations

import io
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError, ELFParseError
from elftools.elf.elffile import ELFFile

from nitdbg.guest.symbols import SymbolTable

ELF_MAGIC = b"\x7fELF"
PT_LOAD = "PT_LOAD"
MACHINE_NAMES = {"EM_X86_64": "x86-64", "EM_386": "i386"}
_EHDR_SIZE = {1: 52, 2: 64}  # by EI_CLASS
_PHDR_SIZE = {1: 32, 2: 56}
KERNEL_MAX = 128 << 20   # bytes: a kernel file larger than this is refused before reading

Source = str | os.PathLike[str] | bytes | bytearray | memoryview


class LoadError(ValueError):
    """A kernel image or boot configuration the loaders refuse (one-line message)."""


class BadImage(LoadError):
    """The kernel file itself is unusable: not ELF, truncated, wrong machine, bad layout."""


@dataclass(frozen=True)
class Segment:
    """One PT_LOAD segment: `data` (p_filesz bytes) followed by zeros up to `memsz`."""

    paddr: int
    vaddr: int
    data: bytes
    memsz: int
    flags: int  # PF_X 1, PF_W 2, PF_R 4

    @property
    def filesz(self) -> int:
        return len(self.data)

    def image(self) -> bytes:
        """The segment as it must appear in memory, bss zero-filled (built once: the parsed
        image is shared, so every machine booted from it shares these bytes too)."""
        img = self.__dict__.get("_image")
        if img is None:
            img = self.__dict__["_image"] = self.data + bytes(self.memsz - len(self.data))
        return img


@dataclass(frozen=True)
class ElfImage:
    name: str
    elfclass: int  # 32 or 64
    machine: str  # "EM_X86_64" or "EM_386"
    entry: int
    segments: tuple[Segment, ...]
    symbols: SymbolTable = field(repr=False)
    raw: bytes = field(repr=False)


def read_source(src: Source, name: str | None = None) -> tuple[bytes, str]:
    """The bytes of a path or a bytes-like object, and a name for messages."""
    if isinstance(src, bytes | bytearray | memoryview):
        return bytes(src), name or "<image>"
    path = Path(src)
    label = name or path
    if "\0" in str(path):      # the OS refuses it with ValueError (a session's config)
        raise BadImage(f"{str(label)!r}: not a valid file name")
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            # /dev/zero, a FIFO, a directory: refused before a byte is read
            raise BadImage(f"{label}: not a regular file")
        if st.st_size > KERNEL_MAX:
            raise BadImage(f"{label}: {st.st_size} bytes is larger than a kernel may be "
                           f"({_mib(KERNEL_MAX)})")
        with path.open("rb") as f:
            raw = f.read(KERNEL_MAX + 1)      # bounded even if the file grows meanwhile
    except OSError as e:
        raise BadImage(f"{label}: cannot read: {e.strerror or e}") from None
    if len(raw) > KERNEL_MAX:
        raise BadImage(f"{label}: larger than a kernel may be ({_mib(KERNEL_MAX)})")
    return raw, name or path.name


def elf_class(raw: bytes) -> int | None:
    """32 or 64 for an ELF file (by EI_CLASS), None when `raw` is not ELF."""
    if len(raw) < 5 or raw[:4] != ELF_MAGIC or raw[4] not in (1, 2):
        return None
    return 32 if raw[4] == 1 else 64


def elf_machine(raw: bytes) -> int | None:
    """e_machine of an ELF header, None when too short to hold one."""
    if len(raw) < 20 or raw[:4] != ELF_MAGIC:
        return None
    return struct.unpack_from("<H" if raw[5] != 2 else ">H", raw, 18)[0]


def _mib(n: int) -> str:
    return f"{n >> 20} MiB" if n % (1 << 20) == 0 else f"{n:#x} bytes"


def load_elf(
    src: Source,
    *,
    ram_size: int = 64 << 20,
    machines: tuple[str, ...] = ("EM_X86_64", "EM_386"),
    name: str | None = None,
) -> ElfImage:
    """Parse and check an ELF executable; raise `BadImage` on anything unusable."""
    raw, name = read_source(src, name)
    return parse_elf(raw, name, ram_size=ram_size, machines=machines)


# Parsed images by (bytes, name, RAM size, machines): every new machine boots the same
# firmware, and an ElfImage (frozen segments, a SymbolTable built once) is never changed after
# parsing, so machines share it. Only successful parses are kept; a bad file is parsed (and
# refused with its own message) every time.
_PARSED: dict[tuple[bytes, str, int, tuple[str, ...]], ElfImage] = {}
_PARSED_MAX = 8


def parse_elf(
    raw: bytes, name: str, *, ram_size: int, machines: tuple[str, ...] = ("EM_X86_64", "EM_386")
) -> ElfImage:
    key = (bytes(raw), name, ram_size, tuple(machines))
    img = _PARSED.get(key)
    if img is None:
        img = _parse_elf(raw, name, ram_size=ram_size, machines=machines)
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.pop(next(iter(_PARSED)))
        _PARSED[key] = img
    return img


def _parse_elf(
    raw: bytes, name: str, *, ram_size: int, machines: tuple[str, ...]
) -> ElfImage:
    if len(raw) < 4 or raw[:4] != ELF_MAGIC:
        raise BadImage(f"{name}: not an ELF file")
    if len(raw) < 6:
        raise BadImage(f"{name}: truncated ELF (file header cut short at {len(raw)} bytes)")
    cls = raw[4]
    if cls not in _EHDR_SIZE:
        raise BadImage(f"{name}: bad ELF class {cls} (want 1 for ELF32 or 2 for ELF64)")
    if raw[5] != 1:
        raise BadImage(f"{name}: not a little-endian ELF file (EI_DATA {raw[5]})")
    if len(raw) < _EHDR_SIZE[cls]:
        raise BadImage(f"{name}: truncated ELF (file header cut short at {len(raw)} bytes)")
    try:
        elf = ELFFile(io.BytesIO(raw))
        header = elf.header
        machine = header["e_machine"]
        if machine not in machines:
            want = " or ".join(MACHINE_NAMES.get(m, m) for m in machines)
            raise BadImage(f"{name}: wrong architecture: {machine}, need {want}")
        if header["e_type"] != "ET_EXEC":
            raise BadImage(f"{name}: not an executable ({header['e_type']}), need ET_EXEC")
        phoff, phnum = header["e_phoff"], header["e_phnum"]
        if phoff + phnum * _PHDR_SIZE[cls] > len(raw):
            raise BadImage(f"{name}: truncated ELF (program headers past end of file)")
        segments = []
        for i, ph in enumerate(elf.iter_segments()):
            if ph["p_type"] != PT_LOAD or ph["p_memsz"] == 0:
                continue
            off, filesz, memsz = ph["p_offset"], ph["p_filesz"], ph["p_memsz"]
            paddr = ph["p_paddr"]
            if off + filesz > len(raw):
                raise BadImage(
                    f"{name}: truncated ELF (segment {i} at file offset {off:#x}+{filesz:#x}"
                    f" past end of file, {len(raw):#x} bytes)"
                )
            if filesz > memsz:
                raise BadImage(f"{name}: segment {i} has p_filesz {filesz:#x} > p_memsz {memsz:#x}")
            if paddr + memsz > ram_size:
                raise BadImage(
                    f"{name}: segment at {paddr:#x} outside guest RAM ({_mib(ram_size)})"
                )
            segments.append(
                Segment(paddr, ph["p_vaddr"], raw[off : off + filesz], memsz, ph["p_flags"])
            )
        if not segments:
            raise BadImage(f"{name}: no loadable segment (PT_LOAD)")
        _check_overlaps(name, segments)
        symbols = SymbolTable.from_elffile(elf)
        entry = header["e_entry"]
    except BadImage:
        raise
    except (ELFError, ELFParseError, struct.error, EOFError, ValueError, OverflowError,
            KeyError, IndexError) as e:  # fmt: skip
        # pyelftools raises these when a table points past the end of the file or a
        # header field is out of range.
        raise BadImage(f"{name}: truncated or malformed ELF ({_first_line(e)})") from None
    return ElfImage(
        name=name,
        elfclass=32 if cls == 1 else 64,
        machine=machine,
        entry=entry,
        segments=tuple(segments),
        symbols=symbols,
        raw=raw,
    )


def _check_overlaps(name: str, segments: list[Segment]) -> None:
    spans = sorted((s.paddr, s.paddr + s.memsz) for s in segments)
    for (a0, a1), (b0, _) in zip(spans, spans[1:], strict=False):
        if b0 < a1:
            raise BadImage(f"{name}: segments at {a0:#x} and {b0:#x} overlap in memory")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
