"""The narrow interface through which the layer above sees and intercepts the vCPU.

The x86 layer calls these at the architectural points where AMD SVM can intercept (APM vol 2
15.8-15.14). The base class is bare metal: nothing is intercepted, I/O and MSRs go to plain
devices, guest-physical is host-physical. The SVM layer overrides what it intercepts and
raises `Intercepted` to end guest execution with a #VMEXIT.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .cpu import Cpu


class IoDevice(Protocol):
    def read(self, port: int, size: int) -> int: ...
    def write(self, port: int, size: int, value: int) -> None: ...


# Access kinds for guest-physical accesses (match the #PF/NPF error-code bits).
ACC_WRITE, ACC_USER, ACC_FETCH = 2, 4, 16


class Hooks:
    """Bare-metal platform: an I/O port map, MSRs the CPU does not own, no intercepts."""

    def __init__(self) -> None:
        self.io: dict[int, IoDevice] = {}
        self.msrs: dict[int, int] = {}
        self.shutdown_reason: str | None = None

    # --- events ---
    def exception(self, cpu: Cpu, vector: int, error_code: int | None) -> None:
        """An exception is about to be delivered to the guest (after DR6 is updated)."""

    def nmi(self, cpu: Cpu) -> None:
        """A pending NMI is about to be taken."""

    def intr(self, cpu: Cpu) -> None:
        """A pending maskable interrupt is about to be taken."""

    def shutdown(self, cpu: Cpu, reason: str) -> None:
        """Triple fault or other shutdown condition: the vCPU stops."""
        self.shutdown_reason = reason

    # --- instructions (called before the instruction has any effect) ---
    def insn(self, cpu: Cpu, name: str, next_rip: int) -> None:
        """iret, hlt, pause, cpuid, rdtsc, invlpg, vmmcall, vmrun, icebp, intn, task_switch.

        `next_rip` is the address of the following instruction (SVM's nRIP)."""

    def io_in(self, cpu: Cpu, port: int, size: int, next_rip: int) -> int:
        dev = self.io.get(port)
        return dev.read(port, size) if dev is not None else (1 << (8 * size)) - 1

    def io_out(self, cpu: Cpu, port: int, size: int, value: int, next_rip: int) -> None:
        dev = self.io.get(port)
        if dev is not None:
            dev.write(port, size, value)

    def io_string(self, cpu: Cpu, port: int, size: int, is_in: bool, rep: bool,
                  addr_size: int, seg: int, next_rip: int) -> None:
        """INS/OUTS is about to run (after its I/O permission check): the layer above may
        intercept it whole (SVM: IOIO with STR/REP, APM vol 2 15.10.2). Bare metal: no."""

    def rdmsr(self, cpu: Cpu, msr: int, next_rip: int) -> int | None:
        """Value of an MSR the CPU does not hold itself, or None for #GP."""
        return self.msrs.get(msr)

    def wrmsr(self, cpu: Cpu, msr: int, value: int, next_rip: int) -> bool:
        """False raises #GP."""
        if msr in self.msrs:
            self.msrs[msr] = value
            return True
        return False

    # --- memory ---
    def gpa(self, cpu: Cpu, gpa: int, access: int, walk: bool) -> int:
        """Guest-physical -> host-physical (nested paging); `walk` marks page-table reads."""
        return gpa

    def unsupported(self, cpu: Cpu, rip: int, code: bytes, text: str) -> None:
        """The guest executed an instruction nitdbg does not implement (it gets #UD)."""
