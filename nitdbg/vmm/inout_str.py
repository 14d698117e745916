"""String I/O emulation for the IOIO exit of INS/OUTS (EXITINFO1.STR; APM vol 2 15.10.2), after
bhyve's usr.sbin/bhyve/inout.c emulate_inout: the hypervisor walks the guest's page tables
for each element (vm_copy_setup, with the guest's CPL and the access's permissions), moves
it between the port and guest memory, steps rSI/rDI and, with REP, rCX. At most 16
iterations per exit ("Limit number of back-to-back in/out emulations to 16"), then the
instruction restarts (vm_restart_instruction) while rCX is not 0; with RFLAGS.TF one
iteration per exit, so the guest's single-step trap comes between iterations as on the
processor (SDM vol 3 17.3.1.4). A guest page fault is injected with CR2 and the instruction
restarts there, with the iterations before it complete.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..svm.exitcodes import IoioInfo
from ..svm.svm import Exit
from ..x86.faults import Fault
from ..x86.hooks import ACC_WRITE
from ..x86.regs import DF, DR6_BS, FS, GS, RCX, RDI, RSI, TF

if TYPE_CHECKING:
    from .vcpu import Vcpu

MAX_ITERATIONS = 16


def _set(regs: list[int], i: int, value: int, addr_size: int) -> None:
    """rCX/rSI/rDI in the address size: 16-bit merges, 32/64-bit replace (zero-extend)."""
    if addr_size == 16:
        regs[i] = (regs[i] & ~0xFFFF) | (value & 0xFFFF)
    else:
        regs[i] = value


def emulate_inout_str(v: Vcpu, io: IoioInfo, e: Exit) -> None:
    cpu, vmcb = v.cpu, v.vmcb
    regs = cpu.regs
    asz = io.addr_size or (64 if cpu.mode == 64 else 32)
    am = (1 << asz) - 1
    index = RDI if io.is_in else RSI
    down = bool(vmcb.rflags & DF)
    delta = -io.size if down else io.size
    count = regs[RCX] & am if io.rep else 1
    todo = min(count, 1 if vmcb.rflags & TF else MAX_ITERATIONS)
    seg = cpu.seg[io.seg]
    base = seg.base if cpu.mode != 64 or io.seg in (FS, GS) else 0
    lmask = 0xFFFF_FFFF_FFFF_FFFF if cpu.mode == 64 else 0xFFFF_FFFF
    off = regs[index] & am
    done = 0
    fault: Fault | None = None
    while done < todo:
        gla = (base + off) & lmask
        try:
            _element(v, io, gla)
        except Fault as f:
            fault = f
            break
        off = (off + delta) & am
        done += 1
    if done:
        _set(regs, index, off, asz)
        if io.rep:
            _set(regs, RCX, count - done, asz)
    if fault is not None:
        vmcb.rip = e.rip                       # the faulting iteration restarts
        if vmcb.rflags & TF:
            vmcb.dr6 = vmcb.dr6 & ~DR6_BS      # no single-step trap: it did not complete
        vmcb.cr2 = fault.cr2 if fault.cr2 is not None else 0
        v.reflect_exception(fault.vector, fault.error_code)
    elif io.rep and count - done:
        vmcb.rip = e.rip                       # vm_restart_instruction: more to do
        v.restarts += 1                        # work that retires nothing (Vcpu.run)


def _element(v: Vcpu, io: IoioInfo, gla: int) -> None:
    """One element between port and guest memory; raises Fault for a guest #PF."""
    vm, size = v.vm, io.size
    access = ACC_WRITE if io.is_in else 0
    # an element may cross a page: translate both ends before moving anything
    hpas = [_hpa(v, gla, access)]
    if (gla & 0xFFF) + size > 0x1000:
        hpas.append(_hpa(v, (gla | 0xFFF) + 1, access))
    first = min(size, 0x1000 - (gla & 0xFFF))
    if io.is_in:
        data = vm.iobus.read(io.port, size, v.id).to_bytes(size, "little")
        for hpa, part in zip(hpas, (data[:first], data[first:]), strict=False):
            if hpa is not None and part:
                vm.mem.write_bytes(hpa, part)
                for other in vm.vcpus:
                    other.cpu.invalidate_code_page(hpa >> 12)
    else:
        raw = b""
        for hpa, n in zip(hpas, (first, size - first), strict=False):
            if n:
                raw += vm.mem.read_bytes(hpa, n) if hpa is not None else b"\xff" * n
        vm.iobus.write(io.port, size, int.from_bytes(raw, "little"), v.id)


def _hpa(v: Vcpu, gla: int, access: int) -> int | None:
    """None: the guest-physical address is not guest RAM (an unbacked bus: reads float,
    writes are dropped)."""
    try:
        return v.vm.gla2hpa(v, gla, access)
    except ValueError:
        return None
