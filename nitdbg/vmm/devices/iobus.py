"""The I/O port bus: devices claim port ranges; IN/OUT go to the owner.

An access to a port nobody claims reads as all ones of the access size and a
write to it is dropped -- what an ISA bus with nothing answering returns, and
what bhyve's and QEMU's default handlers do.  An access that straddles ports
owned by different devices (or none) is split into byte accesses, each going to
its own owner, the way an 8-bit ISA device sees a 16/32-bit IN/OUT.  An access
that runs past port 0xFFFF is split the same way; its bytes beyond 0xFFFF fall
outside the 64 KiB I/O space (SDM vol 1 19.3, QEMU's 64 KiB io address space)
and, with no device there, read as all ones and are dropped on a write.  The
IOPM has bits for them too (APM vol 2 15.10.1: its third 4 KiB covers ports
past 0xFFFF), so the intercept check sees the whole access.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

PORT_LIMIT = 0x10000
ACCESS_SIZES = (1, 2, 4)


class IoBusError(ValueError):
    """A host-side misuse of the bus (bad port, size, value, overlap or snapshot)."""


class IoDevice(Protocol):
    """What a device on the bus provides.

    ``port`` is the absolute port number; the bus guarantees that
    ``[port, port + size)`` lies inside the device's registered range.
    ``vcpu`` is the id of the vCPU doing the access (port 0x61 cares).
    ``state()`` returns JSON-safe plain values only (int, bool, str, None, lists, dicts).
    """

    name: str

    def io_read(self, port: int, size: int, vcpu: int) -> int: ...

    def io_write(self, port: int, size: int, value: int, vcpu: int) -> None: ...

    def state(self) -> dict[str, Any]: ...

    def load_state(self, state: dict[str, Any]) -> None: ...


def checked_state(state: Any, spec: dict[str, type], device: str) -> dict[str, Any]:
    """Validate a device state dict against ``{key: type}`` before loading it.

    Devices call this first in ``load_state`` so a bad dict changes nothing.
    """
    if not isinstance(state, dict):
        raise IoBusError(f"{device}: state must be a dict")
    for key, typ in spec.items():
        if key not in state:
            raise IoBusError(f"{device}: state lacks {key!r}")
        value = state[key]
        if typ is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise IoBusError(f"{device}: state {key!r} must be an int")
        if not isinstance(value, typ):
            raise IoBusError(f"{device}: state {key!r} must be {typ.__name__}")
    return state


def size_mask(size: int) -> int:
    return (1 << (8 * size)) - 1


def check_access(port: int, size: int) -> None:
    """What no IN/OUT can produce: a port outside 0..0xFFFF or a size other than 1, 2, 4.
    An access that starts at a valid port and runs past 0xFFFF is a real guest access
    (`inl %dx` with DX=0xFFFE): the bus splits it (see read/write)."""
    if size not in ACCESS_SIZES:
        raise IoBusError(f"bad I/O access size {size} (must be 1, 2 or 4)")
    if not 0 <= port < PORT_LIMIT:
        raise IoBusError(f"bad I/O port {port:#x} for a {size}-byte access")


@dataclass(frozen=True)
class PortRange:
    base: int
    count: int
    device: IoDevice
    end: int = field(init=False)     # base + count, the first port after the range

    def __post_init__(self) -> None:
        object.__setattr__(self, "end", self.base + self.count)

    def covers(self, port: int, size: int) -> bool:
        return self.base <= port and port + size <= self.end


class IoBus:
    """Port -> device dispatch, plus checkpointing of every device's state."""

    def __init__(self) -> None:
        self._ranges: list[PortRange] = []
        self._owner: dict[int, PortRange] = {}
        self._devices: dict[str, IoDevice] = {}

    # -- registration ---------------------------------------------------------

    def register(self, device: IoDevice, base: int, count: int = 1) -> None:
        """Give ``device`` ports ``base .. base+count-1``.

        One device may own several ranges; a port has at most one owner.
        """
        if count < 1 or base < 0 or base + count > PORT_LIMIT:
            raise IoBusError(f"bad port range {base:#x}+{count} for {device.name}")
        for port in range(base, base + count):
            if port in self._owner:
                other = self._owner[port].device.name
                raise IoBusError(f"port {port:#x} already claimed by {other}")
        known = self._devices.get(device.name)
        if known is not None and known is not device:
            raise IoBusError(f"another device is already named {device.name!r}")
        rng = PortRange(base, count, device)
        self._ranges.append(rng)
        for port in range(base, base + count):
            self._owner[port] = rng
        self._devices[device.name] = device

    def owner(self, port: int) -> IoDevice | None:
        rng = self._owner.get(port)
        return rng.device if rng is not None else None

    @property
    def devices(self) -> dict[str, IoDevice]:
        return dict(self._devices)

    def ranges(self) -> list[tuple[int, int, str]]:
        """(base, count, device name) for every claimed range, by port."""
        return sorted((r.base, r.count, r.device.name) for r in self._ranges)

    # -- IN / OUT -------------------------------------------------------------

    def read(self, port: int, size: int, vcpu: int = 0) -> int:
        """IN of ``size`` bytes from ``port``."""
        if size not in ACCESS_SIZES or not 0 <= port < PORT_LIMIT:
            check_access(port, size)
        rng = self._owner.get(port)
        if rng is not None and rng.base <= port and port + size <= rng.end:   # covers()
            return rng.device.io_read(port, size, vcpu) & ((1 << (8 * size)) - 1)
        if rng is None and size == 1:
            return 0xFF
        # Straddling or partly unclaimed: assemble from byte reads, low byte first.
        value = 0
        for i in range(size):
            value |= self._read_byte(port + i, vcpu) << (8 * i)
        return value

    def write(self, port: int, size: int, value: int, vcpu: int = 0) -> None:
        """OUT of the low ``size`` bytes of ``value`` to ``port``."""
        if size not in ACCESS_SIZES or not 0 <= port < PORT_LIMIT:
            check_access(port, size)
        if not 0 <= value <= (1 << (8 * size)) - 1:
            raise IoBusError(f"value {value:#x} does not fit a {size}-byte OUT")
        rng = self._owner.get(port)
        if rng is not None and rng.base <= port and port + size <= rng.end:   # covers()
            rng.device.io_write(port, size, value, vcpu)
            return
        for i in range(size):
            byte_rng = self._owner.get(port + i)
            if byte_rng is not None:
                byte_rng.device.io_write(port + i, 1, (value >> (8 * i)) & 0xFF, vcpu)

    def _read_byte(self, port: int, vcpu: int) -> int:
        rng = self._owner.get(port)          # None past 0xFFFF: nothing decodes it
        if rng is None:
            return 0xFF
        return rng.device.io_read(port, 1, vcpu) & 0xFF

    # -- checkpoints ----------------------------------------------------------

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every device's state, keyed by device name (plain values only)."""
        return {name: dev.state() for name, dev in sorted(self._devices.items())}

    def restore(self, snapshot: dict[str, dict[str, Any]]) -> None:
        """Load a snapshot taken by :meth:`snapshot` on a bus with the same devices.

        Names are checked before any device is touched, so a mismatched
        snapshot changes nothing.
        """
        if not isinstance(snapshot, dict):
            raise IoBusError("device snapshot must be a dict of device states")
        missing = sorted(set(self._devices) - set(snapshot))
        extra = sorted(set(snapshot) - set(self._devices))
        if missing or extra:
            raise IoBusError(
                f"device snapshot does not match the bus (missing {missing}, unknown {extra})"
            )
        backup = self.snapshot()
        try:
            for name in sorted(self._devices):
                self._devices[name].load_state(snapshot[name])
        except (TypeError, ValueError, KeyError) as exc:
            for name in sorted(self._devices):
                self._devices[name].load_state(backup[name])
            raise IoBusError(f"bad device snapshot: {exc}") from None
