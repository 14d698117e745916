"""Instruction semantics, one module per family. Importing this package registers every
translator in nitdbg.x86.decode.TRANSLATORS (keyed by capstone instruction id)."""

from . import arith, bits, control, data, far, iret, logic, shift, string, system  # noqa: F401
