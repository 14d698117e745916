"""The guest layer: kernel images (ELF, multiboot), symbols and boot state.

Loaders return a `BootImage` (bytes to place in guest RAM plus one `VcpuBootState`
per vCPU); the machine layer applies it. Errors a person can cause (a bad file, a
bad vCPU count) raise a `LoadError` subclass with a one-line message.
"""

from nitdbg.guest.boot import (
    BadBootConfig,
    BootImage,
    SegmentState,
    VcpuBootState,
    load_amd64,
    load_kernel,
)
from nitdbg.guest.elf import BadImage, ElfImage, LoadError, Segment, load_elf
from nitdbg.guest.multiboot import load_multiboot
from nitdbg.guest.symbols import BadExpression, Symbol, SymbolNotFound, SymbolTable

__all__ = [
    "BadBootConfig",
    "BadExpression",
    "BadImage",
    "BootImage",
    "ElfImage",
    "LoadError",
    "Segment",
    "SegmentState",
    "Symbol",
    "SymbolNotFound",
    "SymbolTable",
    "VcpuBootState",
    "load_amd64",
    "load_elf",
    "load_kernel",
    "load_multiboot",
]
