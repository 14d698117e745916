"""Fuzzers of nitdbg's inputs: host, ddb and console commands, session files, ELF files and
guest code. `python3 -m nitdbg.fuzz` runs a long campaign; tests/test_fuzz_*.py run short,
bounded ones in the suite."""
