"""A GDB remote stub for the machine: `nitdbg run --gdb [HOST:]PORT`."""

from .server import GdbServer, parse_endpoint, serve_in_thread
from .stub import Stub

__all__ = ["GdbServer", "Stub", "parse_endpoint", "serve_in_thread"]
