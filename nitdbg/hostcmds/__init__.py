"""The host side of the test plan: a shell with bhyvectl, sysctl, ktrdump, sleep, cat, grep."""

from .errors import POWERED_OFF, HostError
from .files import DiskFiles, HostFiles, MemoryFiles
from .help import HOST_COMMANDS
from .shell import HostShell

__all__ = ["HOST_COMMANDS", "POWERED_OFF", "DiskFiles", "HostError", "HostFiles", "HostShell",
           "MemoryFiles"]
