"""Instruction semantics, one module per family. Importing this package registers every
translator in nitdbg.x86.decode.TRANSLATORS (keyed by capstone instruction id)."""

from . import arith, control, data, iret, logic, system  # noqa: F401
