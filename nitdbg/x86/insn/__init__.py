"""Instruction semantics, one module per family. Importing this package registers every
translator in nitdbg.x86.decode.TRANSLATORS (keyed by capstone instruction id)."""

from . import (  # noqa: F401
    arith,
    bits,
    control,
    data,
    far,
    fpu,
    iret,
    logic,
    shift,
    string,
    stringio,
    system,
    xlat,
)
