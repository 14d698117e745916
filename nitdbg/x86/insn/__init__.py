"""Instruction semantics, one module per family. Importing this package registers every
translator in nitdbg.x86.decode.TRANSLATORS (keyed by capstone instruction id)."""

from . import arith, bits, control, data, iret, logic, shift, system  # noqa: F401
