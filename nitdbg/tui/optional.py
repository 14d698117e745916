"""Parts of nitdbg the TUI can do without (scenarios, sessions): None until they are there."""

from __future__ import annotations


def optional(module: str, *names: str):
    """Parts still being written by others (scenarios, session): None until they land."""
    try:
        mod = __import__(f"nitdbg.{module}", fromlist=list(names))
        return tuple(getattr(mod, n) for n in names)
    except (ImportError, AttributeError):
        return None
