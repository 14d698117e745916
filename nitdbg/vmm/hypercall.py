"""The hypercall ABI between the firmware and this hypervisor: the one source of these numbers
(guest/abi.py re-exports them for the firmware side; firmware/amd64/param.h is their C twin).

`outl %eax, $HYPERCALL_PORT` with EAX = call number is a hypercall; arguments in RDI, RSI, RDX.
"""

from __future__ import annotations

HYPERCALL_PORT = 0xE0
#: RDI = trapframe virtual address, RSI = T_* trap type, RDX = cpu id.  The host debugger
#: may edit the frame; the guest then returns through its trap exit path (iretq).
HC_KDB_ENTER = 1
#: RDI = pointer to a NUL-terminated message.  The host stops the VM.
HC_PANIC = 2

HYPERCALL_NAMES: dict[int, str] = {HC_KDB_ENTER: "kdb_enter", HC_PANIC: "panic"}
