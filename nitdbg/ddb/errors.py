"""The one exception class of the debugger: a line of ddb's own words, nothing changed."""

from __future__ import annotations


class DdbError(Exception):
    """A command failed; str(e) is the line ddb prints (e.g. "Symbol 'foo' not found")."""
