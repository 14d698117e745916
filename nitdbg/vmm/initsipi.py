"""INIT and STARTUP (SIPI) for a vCPU: the wait-for-SIPI state and the real-mode start.

A PC starts only its bootstrap processor; the others sit in wait-for-SIPI until the BSP
sends INIT, then STARTUP IPIs through its local APIC (SDM vol 3 8.4.4, "MP Initialization
Example"; APM vol 2 15.19 for INIT under SVM).

- INIT puts the processor in the state of APM vol 2 table 14-1 ("Initial Processor
  State") -- real mode, CS F000:FFF0 with base FFFF0000, EDX = the CPUID family/model/
  stepping, DR6/DR7 at their reset values, EFER 0 -- resets its local APIC (SDM 11.4.7.3:
  "INIT ... the local APIC is reset, except the APIC ID and arbitration ID") and leaves it
  waiting for a SIPI.
- A STARTUP IPI to a processor in wait-for-SIPI starts it at CS = vector << 8, base
  vector << 12, IP = 0: real mode at physical 000VV000h. A SIPI to a processor that is not
  waiting is ignored (SDM 8.4.4.1), so the second SIPI of INIT-SIPI-SIPI does nothing once
  the first has started the AP.
- While waiting for a SIPI the vCPU runs nothing: interrupts do not wake it; an NMI sent
  to it stays pending until it runs (nitdbg's choice; the manuals do not say).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..x86.insn.system import cpuid_values
from ..x86.regs import RDX

if TYPE_CHECKING:
    from .vcpu import Vcpu
    from .vm import Vm

CR0_INIT = 0x6000_0010          # CD, NW, ET (APM table 14-1)
ATTR_REAL_CODE = 0x09B          # present, code, execute/read, accessed; 16-bit
ATTR_REAL_DATA = 0x093          # present, data, read/write, accessed
ATTR_LDT = 0x082
ATTR_TSS_BUSY16 = 0x083


def _init_state(v: Vcpu) -> None:
    """Load the INIT state of APM table 14-1 into the VMCB save area and the GPRs."""
    vmcb = v.vmcb
    vmcb.seg("cs").set(0xF000, ATTR_REAL_CODE, 0xFFFF, 0xFFFF_0000)
    for name in ("ds", "es", "fs", "gs", "ss"):
        vmcb.seg(name).set(0, ATTR_REAL_DATA, 0xFFFF, 0)
    vmcb.seg("gdtr").set(0, 0, 0xFFFF, 0)
    vmcb.seg("idtr").set(0, 0, 0xFFFF, 0)
    vmcb.seg("ldtr").set(0, ATTR_LDT, 0xFFFF, 0)
    vmcb.seg("tr").set(0, ATTR_TSS_BUSY16, 0xFFFF, 0)
    vmcb.cr0, vmcb.cr3, vmcb.cr4, vmcb.efer = CR0_INIT, 0, 0, 0
    vmcb.cr2 = 0
    vmcb.rflags = 0x2
    vmcb.rip = 0xFFF0
    vmcb.rsp = 0
    vmcb.rax = 0
    vmcb.dr6, vmcb.dr7 = 0xFFFF_0FF0, 0x400
    vmcb.cpl = 0
    vmcb.interrupt_shadow = 0
    vmcb.eventinj = 0
    regs = v.cpu.regs
    for i in range(len(regs)):
        regs[i] = 0
    regs[RDX] = cpuid_values(v.cpu, 1, 0)[0]     # family/model/stepping, as after RESET
    v.nextrip = vmcb.rip


def enter_wait_for_sipi(vm: Vm, v: Vcpu) -> None:
    """INIT: reset the vCPU and its local APIC and leave it waiting for a STARTUP IPI."""
    if v.svm.in_guest:
        # It was interrupted mid-quantum: bring its state out of guest mode first; the INIT
        # discards it anyway.
        v.svm.kick()
    _init_state(v)
    vm.vlapics[v.id].reset()
    v.exception_pending = None
    v.exitintinfo = 0
    v.halted = True
    v.wait_sipi = True
    v.log("INIT: vcpu %d waits for SIPI", v.id)


def startup(vm: Vm, v: Vcpu, vector: int) -> bool:
    """STARTUP IPI: start a waiting vCPU in real mode at vector << 12. False if ignored."""
    if not v.wait_sipi:
        v.log("SIPI vector %#x ignored: vcpu %d is not waiting for SIPI", vector, v.id)
        return False
    vmcb = v.vmcb
    vmcb.seg("cs").set(vector << 8, ATTR_REAL_CODE, 0xFFFF, vector << 12)
    vmcb.rip = 0
    v.nextrip = 0
    v.wait_sipi = False
    v.halted = False
    v.log("SIPI: vcpu %d starts at %#x:0000 (%#x)", v.id, vector << 8, vector << 12)
    return True
