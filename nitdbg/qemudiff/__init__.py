"""`nitdbg diff --qemu`: a multiboot kernel under nitdbg and under QEMU, step by step.

core.py runs both sides and finds the first divergence; rules.py names the manual's rule
a side breaks there."""

from .core import (
                   Delivery,
                   DiffError,
                   Divergence,
                   Step,
                   Trace,
                   compare,
                   main_diff,
                   parse_qemu_log,
                   report,
                   run_nitdbg,
                   run_qemu,
)

__all__ = ["Delivery", "DiffError", "Divergence", "Step", "Trace", "compare", "main_diff",
           "parse_qemu_log", "report", "run_nitdbg", "run_qemu"]
