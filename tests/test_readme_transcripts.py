"""The README's console examples are real: each block prints exactly what the console prints
for its lines (regenerate with `python3 tests/readme_transcripts.py`)."""

from __future__ import annotations

import pytest
from readme_transcripts import README, examples, run_console, typed_lines

EXAMPLES = examples(README.read_text())


def test_the_readme_has_an_example_for_every_section_of_the_plan():
    text = README.read_text()
    for section in ("Single step the guest kernel", "Pending interrupt during iret tracing",
                    "Pending NMI during iret tracing", "Nested page fault during iret tracing",
                    "#GP exception triggered by iret", "Miscellaneous", "Combining the knobs"):
        assert f"#### {section}" in text
    assert len(EXAMPLES) >= 10


@pytest.mark.parametrize("ex", EXAMPLES, ids=[f"example{i}" for i in range(len(EXAMPLES))])
def test_a_readme_console_example_is_what_the_console_prints(ex):
    assert typed_lines(ex.out) == ex.lines.splitlines()     # the block shows the lines typed
    assert run_console(ex) == ex.out
