"""What the host tools say when they refuse."""

from __future__ import annotations

POWERED_OFF = "vm {name} is powered off (bhyvectl --vm={name} --force-reset boots it again)"


class HostError(Exception):
    """A host command line rejected before it ran; str() is the whole message (it ends with
    a newline, as the tool would print it)."""
