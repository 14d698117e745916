"""The virtual machine as the hypervisor sees it: memory and nested paging, vCPUs, vLAPICs,
devices, the KTR ring, stats, the sysctl tree with the seed's debug.nit knobs, and the NMI
policy. No wall clock: each vCPU's virtual time is its retired instructions plus the jumps
the hypervisor makes (HLT, delay_usecs)."""

from __future__ import annotations

from ..svm.npt import NestedPageTable
from ..svm.vmcb import Iopm, Msrpm
from ..x86.cpu import Cpu
from ..x86.faults import Fault
from ..x86.hooks import Hooks
from ..x86.memory import PhysMem
from ..x86.paging import ACC_SUPERVISOR, walk
from ..x86.regs import EFER_LMA, RDI, RDX, RSI
from . import initsipi
from .devices.debugcon import DebugCon
from .devices.debugexit import DebugExit
from .devices.iobus import IoBus
from .devices.nmiport import NmiStatusPort
from .devices.uart16550 import Uart16550
from .hypercall import HC_KDB_ENTER, HC_PANIC, HYPERCALL_PORT
from .ktr import Ktr, register_ktr_sysctls
from .nmi_policy import NmiPolicy, make_policy
from .pcplatform import PcPlatform
from .stats import VmmStats
from .sysctl import NitKnobs, SysctlTree, register_nit_knobs, register_vmm_tunables
from .vcpu import UserExit, Vcpu
from .vlapic import Vlapic

XAPIC_BASE = 0xFEE0_0000
NS_PER_USEC = 1000


class ApicMmio:
    """The xAPIC page: every vCPU sees its own local APIC at the same address."""

    def __init__(self, vm: Vm):
        self.vm = vm

    def mmio_read(self, offset: int, size: int) -> int:
        return self.vm.vlapics[self.vm.current_vcpu].mmio_read(offset, size)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        self.vm.vlapics[self.vm.current_vcpu].mmio_write(offset, size, value)
        self.vm.stop_if_kicked()


class HostView(Hooks):
    """The hypervisor's own view of guest-physical memory (its memory map, not the nested
    page tables), for walks it makes on the guest's behalf."""

    def __init__(self, npt: NestedPageTable):
        super().__init__()
        self.npt = npt

    def gpa(self, cpu: Cpu, gpa: int, access: int, walk: bool) -> int:
        m = self.npt.backing(gpa)
        if m is None:
            raise ValueError(f"guest-physical address {gpa:#x} is not guest memory")
        return m.hpa + (gpa - m.gpa)


class Vm:
    def __init__(self, name: str = "vm2", ncpus: int = 2, ram_size: int = 64 << 20,
                 policy: str = "iret-tracing", retire_order: int = 18):
        if not 1 <= ncpus <= 16:
            raise ValueError(f"vcpus must be between 1 and 16, not {ncpus}")
        self.name = name
        self.ram_size = ram_size
        self.mem = PhysMem(ram_size)
        self.mem.map_mmio(XAPIC_BASE, 0x1000, ApicMmio(self))
        # Nested paging: guest-physical RAM backed 1:1 by host-physical pages, plus the
        # xAPIC page (an "equivalent device mapping": accesses reach the vLAPIC directly).
        self.npt = NestedPageTable()
        self.npt.map(0, 0, ram_size)
        self.npt.map(XAPIC_BASE, XAPIC_BASE, 0x1000)
        self._hostview = HostView(self.npt)
        self.iopm = Iopm()
        self.iopm.set_all(True)
        self.msrpm = Msrpm()
        self.msrpm.set(0x1B, read=True, write=True)
        self.msrpm.set_range(0x800, 0x100, read=True, write=True)    # the x2APIC MSRs
        self.ktr = Ktr()
        self.stats = VmmStats(ncpus)
        self.sysctl = SysctlTree()
        self.knobs = NitKnobs()
        register_nit_knobs(self.sysctl, self.knobs)
        register_vmm_tunables(self.sysctl, self.knobs)
        register_ktr_sysctls(self.sysctl, self.ktr)
        self.vcpus: list[Vcpu] = []
        self.policy = make_policy(policy)
        self.console_out = bytearray()
        self.debugcon_out = bytearray()
        self.iobus = IoBus()
        self.com1 = Uart16550(on_output=self._console_bytes)
        self.iobus.register(self.com1, 0x3F8, 8)
        self.debugcon = DebugCon(on_output=self._debugcon_bytes)
        self.iobus.register(self.debugcon, 0xE9, 1)
        self.debug_exit = DebugExit()
        self.iobus.register(self.debug_exit, 0xF4, 4)
        self.iobus.register(self.debug_exit, 0x501, 2)   # QEMU's default iobase, iosize
        self.nmiport = NmiStatusPort(on_read=self._port61_read)
        self.iobus.register(self.nmiport, 0x61, 1)
        self.current_vcpu = 0
        self.resched = False          # a vCPU woke another: end the running slice early
        self.vlapics: list[Vlapic] = []
        for i in range(ncpus):
            cpu = Cpu(self.mem, vcpu_id=i, retire_order=retire_order)
            self.vcpus.append(Vcpu(self, i, cpu))
        for i in range(ncpus):
            v = self.vcpus[i]
            self.vlapics.append(Vlapic(i, v.now, on_nmi=v.inject_nmi, on_ipi=self._ipi,
                                       peers=self._peers))
        self.pc = PcPlatform(self)    # I/O APIC, RTC, PIT, 8259 pair (vmm/pcplatform.py)
        for v in self.vcpus:
            self._init_vmcb(v)
        self.policy = self._policy       # the policy's own VMCB setup on every vCPU
        self.booted = False

    @property
    def policy(self) -> NmiPolicy:
        """The NMI policy (an ops table owning each vCPU's NMI state)."""
        return self._policy

    @policy.setter
    def policy(self, p: NmiPolicy) -> None:
        self._policy = p
        for v in self.vcpus:
            p.vcpu_init(v)

    # Device callbacks are bound methods, not closures, so a deep copy of the machine (a
    # checkpoint) calls into its own copy.
    def _console_bytes(self, data: bytes) -> None:
        self.console_out.extend(data)

    def _debugcon_bytes(self, data: bytes) -> None:
        self.debugcon_out.extend(data)

    def _peers(self) -> list[Vlapic]:
        return self.vlapics

    # ------------------------------------------------------------------ setup
    def _init_vmcb(self, v: Vcpu) -> None:
        """The intercepts bhyve's svm_vmcb_init sets up."""
        vmcb = v.vmcb
        for name in ("INTR", "NMI", "SMI", "INIT", "HLT", "IOIO_PROT", "MSR_PROT",
                     "SHUTDOWN", "PAUSE", "VMRUN", "VMMCALL", "FERR_FREEZE", "INVD"):
            vmcb.set_intercept(name, True)
        vmcb.set_exception_intercept(18, True)   # #MC always goes to the host
        vmcb.v_intr_masking = 1
        vmcb.np_enable = 1
        vmcb.asid = 1 + v.id

    def boot(self) -> None:
        """Apply boot-time tunables (hw.vmm.trace_guest_exceptions) and freeze them."""
        if self.knobs.trace_guest_exceptions:
            for v in self.vcpus:
                for vec in range(32):
                    if vec not in (2, 9):
                        v.vmcb.set_exception_intercept(vec, True)
        self.sysctl.boot()
        self.booted = True

    def set_pause_exits(self, vcpu: int, on: bool) -> None:
        self.vcpus[vcpu].vmcb.set_intercept("PAUSE", on)

    # ------------------------------------------------------------------ time
    def next_deadline(self, v: Vcpu) -> int | None:
        d = self.vlapics[v.id].next_deadline()
        if v.id == 0:                 # the platform timers run on vCPU 0's clock
            p = self.pc.next_deadline()
            if p is not None and (d is None or p < d):
                d = p
        return d

    def fire_timers(self, v: Vcpu) -> None:
        vl = self.vlapics[v.id]
        now = v.cpu.now()
        if v.id == 0:
            self.pc.fire(now)
        d = vl.next_deadline()
        if d is not None and d <= now:
            if vl.fire(now):
                self.stats.incr(v.id, "VLAPIC_INTR_TIMER")
            v.halted = v.halted and not v.wake_pending()

    def sleep_until_event(self, v: Vcpu) -> bool:
        """A halted vCPU with nothing pending jumps to its next timer deadline; False if it
        has none (only another vCPU or the host can wake it)."""
        d = self.next_deadline(v)
        if d is None:
            return False
        if d > v.now():
            v.cpu.advance_time(d - v.now())
        return True

    def stop_if_kicked(self) -> None:
        """In bhyve a guest's access to the xAPIC or I/O APIC page is an NPF exit (the page is
        not mapped; vmm emulates the access), so an interrupt the write made pending is
        injected, or its window opened, before the guest's next instruction. The model does
        the access inline: a write that kicked the vCPU making it stops that vCPU at the next
        instruction boundary, where the kick's exit and the injection run."""
        v = self.vcpus[self.current_vcpu]
        if v.kicked and v.svm.in_guest:
            v.cpu.request_stop()

    # ------------------------------------------------------------------ events
    def _ipi(self, src: int, dests: list[int], mode: str, vector: int) -> None:
        t = self.vcpus[src].now()
        for d in dests:
            target = self.vcpus[d]
            if target.halted:
                self.resched = True
            if target.halted and target.now() < t:
                target.cpu.advance_time(t - target.now())   # wakes no earlier than sent
            if mode == "nmi":
                target.inject_nmi()
            elif mode == "fixed":
                self.vlapics[d].set_intr(vector)
                target.halted = target.halted and not target.wake_pending()
                target.kick()
            elif mode == "init":
                initsipi.enter_wait_for_sipi(self, target)
            elif mode == "startup":
                initsipi.startup(self, target, vector)
            self.stats.incr(src, "IPIS_SENT", 1, d)

    def assert_lapic_lvt(self, vcpu: int, pin: int) -> None:
        """bhyvectl --assert-lapic-lvt=PIN --cpu=N (vm_lapic_local_irq)."""
        self.stats.incr(vcpu, "LVTS_TRIGGERRED", 1, pin)
        v = self.vcpus[vcpu]
        before = v.nmi_pending
        self.vlapics[vcpu].trigger_lvt(pin)
        if v.nmi_pending and not before:
            v.recursive_nmi_armed = True

    def inject_nmi(self, vcpu: int) -> None:
        """bhyvectl --inject-nmi."""
        v = self.vcpus[vcpu]
        v.inject_nmi()
        v.recursive_nmi_armed = True

    # ------------------------------------------------------------------ the seed's knobs
    def _port61_read(self, vcpuid: int) -> None:
        """The guest NMI handler reads port 0x61: delay_usecs and recursive_nmi act here."""
        v = self.vcpus[vcpuid]
        k = self.knobs
        if k.delay_usecs:
            v.log("Delaying %d usecs", k.delay_usecs)
            v.cpu.advance_time(k.delay_usecs * NS_PER_USEC)
            self.fire_timers(v)
        if k.recursive_nmi and v.recursive_nmi_armed:
            # one recursive NMI per NMI asserted from the host, as the test expects 2 in all
            v.recursive_nmi_armed = False
            v.log("Injecting recursive vNMI")
            v.inject_nmi()

    def knobs_at_iret_exit(self, v: Vcpu) -> None:
        """Called by the NMI policy at the IRET exit, after its own KTR line ("vNMI iret
        tracing enabled" for iret-tracing), before the guest re-enters at the IRET."""
        k = self.knobs
        if k.iret_trigger_gpf:
            self._iret_trigger_gpf(v)
        if k.invalidate_nested_mappings:
            v.log("Removing all nested pages")
            self.npt.unmap_all()
            for other in self.vcpus:
                other.cpu.flush_tlb()

    def _iret_trigger_gpf(self, v: Vcpu) -> None:
        """Rewrite the return %rip of the NMI frame on the guest stack to a non-canonical
        address, so that the IRET raises #GP."""
        cpu = v.cpu
        rsp = v.vmcb.rsp
        size = 8 if v.vmcb.efer & EFER_LMA else 4
        try:
            hpa = self.gla2hpa(v, rsp)
        except (Fault, ValueError) as e:   # a guest page we cannot reach: say so
            v.log("Cannot rewrite the iret frame at %#lx: %s", rsp, str(e))
            return
        old = self.mem.read(hpa, size)
        bad = 0xDEADBEEFBEEFDEAD if size == 8 else 0xDEADBEEF
        self.mem.write(hpa, size, bad)
        cpu.flush_tlb()
        v.log("NMI iret frame rip %#lx at %#lx updated to non-canonical value %#lx", old, rsp,
              bad)

    # ------------------------------------------------------------------ guest memory access
    def gla2hpa(self, v: Vcpu, gla: int, access: int = ACC_SUPERVISOR) -> int:
        """Translate a guest-linear address with the guest's own paging (bhyve's
        vm_gla2gpa, setting accessed/dirty bits as the access would) and the hypervisor's
        map of guest RAM. It does not go through the nested page tables, so it works while
        they are invalidated. `access`: ACC_* bits checked at the guest's CPL (default an
        implicit supervisor read). Raises Fault (#PF) for an unmapped guest address or a
        denied access and ValueError for one outside guest RAM."""
        cpu = v.cpu
        saved = cpu.hooks
        cpu.hooks = self._hostview
        try:
            gpa = cpu.translate(gla, access)
            return self._hostview.gpa(cpu, gpa, 0, False)
        finally:
            cpu.hooks = saved

    def gla2hpa_nofault(self, v: Vcpu, gla: int) -> int:
        """gla2hpa without side effects (bhyve's vm_gla2gpa_nofault, check_only): the walk
        sets no accessed or dirty bit, so a debugger reading memory leaves the guest's page
        tables as they were, whether the read succeeds or not."""
        cpu, view = v.cpu, self._hostview
        gpa = walk(cpu, gla, ACC_SUPERVISOR,
                   lambda a, size: self.mem.read(view.gpa(cpu, a, 0, True), size))
        return view.gpa(cpu, gpa, 0, False)

    def read_guest(self, v: Vcpu, gla: int, n: int) -> bytes:
        """Read guest-virtual memory the way the vCPU sees it (one walk per page, with no
        side effect on the guest's page tables)."""
        out = bytearray()
        while n > 0:
            chunk = min(n, 4096 - (gla & 0xFFF))
            out += self.mem.read_bytes(self.gla2hpa_nofault(v, gla), chunk)
            gla = (gla + chunk) & 0xFFFF_FFFF_FFFF_FFFF
            n -= chunk
        return bytes(out)

    def write_guest(self, v: Vcpu, gla: int, data: bytes) -> None:
        """Write guest-virtual memory; decoded instructions cached from it are dropped on
        every vCPU (a debugger planting int3 is self-modifying code)."""
        plan = []                      # translate every page first: all or nothing
        i = 0
        while i < len(data):
            chunk = min(len(data) - i, 4096 - (gla & 0xFFF))
            plan.append((self.gla2hpa_nofault(v, gla), data[i:i + chunk]))
            gla = (gla + chunk) & 0xFFFF_FFFF_FFFF_FFFF
            i += chunk
        for hpa, part in plan:
            self.mem.write_bytes(hpa, part)
            for other in self.vcpus:
                other.cpu.invalidate_code_page(hpa >> 12)

    # ------------------------------------------------------------------ hypercall
    def hypercall(self, v: Vcpu) -> UserExit | None:
        """outl %eax, $HYPERCALL_PORT from the guest firmware (nitdbg/vmm/hypercall.py)."""
        nr = v.vmcb.rax & 0xFFFF_FFFF
        regs = v.cpu.regs
        if nr == HC_KDB_ENTER:
            return UserExit("kdb", v.id, {"trapframe": regs[RDI], "type": regs[RSI] & 0xFFFF,
                                          "cpu": regs[RDX] & 0xFFFF})
        if nr == HC_PANIC:
            return UserExit("panic", v.id, {"message": regs[RDI]})
        return None


__all__ = ["Vm", "UserExit", "HYPERCALL_PORT"]
