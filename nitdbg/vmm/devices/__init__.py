"""The hypervisor's emulated I/O devices and the port bus they sit on."""

from nitdbg.vmm.devices.debugcon import DEBUGCON_PORT, DebugCon
from nitdbg.vmm.devices.debugexit import DEBUGEXIT_PORT, DEBUGEXIT_PORTS, DebugExit
from nitdbg.vmm.devices.iobus import IoBus, IoBusError, IoDevice
from nitdbg.vmm.devices.nmiport import NMI_SC_PORT, NmiStatusPort
from nitdbg.vmm.devices.uart16550 import COM1_BASE, COM1_PORTS, Uart16550

__all__ = [
    "COM1_BASE",
    "COM1_PORTS",
    "DEBUGCON_PORT",
    "DEBUGEXIT_PORT",
    "DEBUGEXIT_PORTS",
    "NMI_SC_PORT",
    "DebugCon",
    "DebugExit",
    "IoBus",
    "IoBusError",
    "IoDevice",
    "NmiStatusPort",
    "Uart16550",
]
