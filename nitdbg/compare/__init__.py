"""`nitdbg compare`: the scenario x policy table, each cell judged against the hardware
reference (see nitdbg/reference/)."""

from .cli import main_compare
from .matrix import Cell, compare_scenarios, run_cell, run_matrix, table, to_json

__all__ = ["Cell", "compare_scenarios", "main_compare", "run_cell", "run_matrix", "table",
           "to_json"]
