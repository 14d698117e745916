"""The architectural vCPU: state, paging, the step loop and the instruction-boundary events.

The hot loop runs cached, pre-translated instructions and checks one flag, `attention`; every
state change that can produce an event at an instruction boundary (TF, RF, a pending NMI or
interrupt, an interrupt shadow, a pending debug trap, enabled breakpoints, HLT) sets it, and
the slow step then works through the boundary in the order of SDM vol 3 table 6-2 / APM vol 2
8.5 before executing one instruction with all debug checks.
"""

from __future__ import annotations

from collections.abc import Callable

from . import insn as _insn  # noqa: F401  (registers the translators)
from . import interrupts
from .decode import F_LOADS_RF, F_NO_SSTEP, Decoder, Insn, unsupported_text
from .faults import Fault, Intercepted, Unsupported
from .hooks import ACC_FETCH, ACC_USER, ACC_WRITE, Hooks
from .memory import PhysMem
from .regs import (
    CR0_PE,
    CR0_PG,
    CR0_WP,
    CR4_PAE,
    CR4_PSE,
    CS,
    DR6_BS,
    DR6_INIT,
    DR7_INIT,
    EFER_LMA,
    EFER_NXE,
    IF,
    RF,
    SHADOW_MOVSS,
    SHADOW_STI,
    TF,
    canonical,
)
from .retire import EV_EXCEPTION, RetireLog
from .segments import ATTR_DB, ATTR_L, DescTable, Segment

M64 = 0xFFFF_FFFF_FFFF_FFFF



class Cpu:
    def __init__(self, mem: PhysMem, hooks: Hooks | None = None, vcpu_id: int = 0,
                 retire_order: int = 18):
        self.mem = mem
        self.hooks = hooks or Hooks()
        self.vcpu_id = vcpu_id
        self.regs = [0] * 16
        self.rip = 0xFFF0
        self.rflags = 0x2
        self.seg = [Segment() for _ in range(6)]
        self.seg[CS].attrib = 0x9B
        self.ldtr = Segment(0, 0, 0xFFFF, 0x82)
        self.tr = Segment(0, 0, 0xFFFF, 0x8B)
        self.gdtr = DescTable()
        self.idtr = DescTable()
        self.cr0 = 0x6000_0010
        self.cr2 = self.cr3 = self.cr4 = self.efer = 0
        self.cr8 = 0
        self.dr = [0, 0, 0, 0, DR6_INIT, DR7_INIT, DR6_INIT, DR7_INIT]   # DR4/5 alias DR6/7
        self.star = self.lstar = self.cstar = self.sfmask = 0
        self.kernel_gs_base = 0
        self.tsc_aux = 0
        self.sysenter = [0, 0, 0]
        self.cpl = 0
        # events
        self.nmi_pending = False
        self.nmi_blocked = False
        self.intr_pending = False
        self.intr_ack: Callable[[], int | None] = lambda: None
        self.halted = False
        self.shutdown = False
        self.shadow = 0
        self.pending_db = 0
        self.attention = True
        self.stop_requested = False
        self.stop_reason = ""
        self.delivering: tuple[str, int, int | None] | None = None  # (kind, vector, errcode)
        # the task switch being made when hooks.insn(c, "task_switch", ...) is called:
        # reason "iret" / "jmp" / "call" / "gate", the new TSS selector, the error code
        self.task_switch_reason = ""
        self.task_switch_sel = 0
        self.task_switch_errcode: int | None = None
        self.last_unsupported: tuple[int, bytes, str] | None = None
        # time and the retirement log
        self.icount = 0
        self.time_offset = 0
        self.retire = RetireLog(retire_order)
        # translation: TLBs per privilege class, decode caches per (mode, cpl class)
        self.decoder = Decoder()
        self._tlbs: dict[int, tuple[dict[int, bytearray], dict[int, bytearray]]] = {}
        self._icaches: dict[tuple[int, int], dict[int, Insn]] = {}
        self.code_pages: dict[int, bytearray] = {}     # hppn -> mask of cached code bytes
        self._code_rips: dict[int, list[tuple[dict[int, Insn], int]]] = {}
        self.tlb_r: dict[int, bytearray] = {}
        self.tlb_w: dict[int, bytearray] = {}
        self._sup_r, self._sup_w = self._tlbs.setdefault(0, ({}, {}))
        self.icache: dict[int, Insn] = {}
        self.mode = 16
        self.data_bps: list[tuple[int, int, int, int]] = []   # (lo, hi, rw, index)
        self.exec_bps: list[tuple[int, int]] = []             # (addr, index)
        self.update_mode()

    # ------------------------------------------------------------------ mode and caches
    def update_mode(self) -> None:
        """Recompute code size and CPL-dependent caches after CS, CR0, EFER changes."""
        cs = self.seg[CS]
        if not self.cr0 & CR0_PE:
            self.mode = 16
        elif self.efer & EFER_LMA and cs.attrib & ATTR_L:
            self.mode = 64
        else:
            self.mode = 32 if cs.attrib & ATTR_DB else 16
        self.cpl = 0 if not self.cr0 & CR0_PE else self.cpl
        user = 1 if self.cpl == 3 else 0
        tl = self._tlbs.get(user)
        if tl is None:
            tl = self._tlbs[user] = ({}, {})
        self.tlb_r, self.tlb_w = tl
        key = (self.mode, user)
        ic = self._icaches.get(key)
        if ic is None:
            ic = self._icaches[key] = {}
        self.icache = ic
        self.attention = True

    def set_cpl(self, cpl: int) -> None:
        if cpl != self.cpl:
            self.cpl = cpl
            self.update_mode()

    def flush_tlb(self) -> None:
        """Drop every cached translation and decoded instruction (CR3 load, paging change,
        INVLPG, nested-paging change)."""
        for r, w in self._tlbs.values():
            r.clear()
            w.clear()
        for ic in self._icaches.values():
            ic.clear()
        self.code_pages.clear()
        self._code_rips.clear()
        self.update_debug()

    def update_debug(self) -> None:
        """Rebuild breakpoint lists from DR0-DR3/DR7 (SDM 17.2.4, APM 13.1.1.5)."""
        dr7 = self.dr[7]
        self.exec_bps = []
        self.data_bps = []
        for i in range(4):
            if not (dr7 >> (2 * i)) & 3:
                continue
            rw = (dr7 >> (16 + 4 * i)) & 3
            ln = (dr7 >> (18 + 4 * i)) & 3
            size = (1, 2, 8, 4)[ln]
            addr = self.dr[i]
            if rw == 0:
                self.exec_bps.append((addr, i))
            elif rw in (1, 3):
                lo = addr & ~(size - 1)
                self.data_bps.append((lo, lo + size, rw, i))
        if self.data_bps:
            # watched pages must take the slow path so every access is checked
            for _lo, _hi, _rw, _i in self.data_bps:
                for r, w in self._tlbs.values():
                    r.pop(_lo >> 12, None)
                    w.pop(_lo >> 12, None)
                    r.pop((_hi - 1) >> 12, None)
                    w.pop((_hi - 1) >> 12, None)
        self.attention = True

    # ------------------------------------------------------------------ time
    def now(self) -> int:
        return self.icount * self.retire.ns_per_insn + self.time_offset

    def advance_time(self, ns: int) -> None:
        """Jump the vCPU's virtual clock (HLT to a deadline, a host-side delay)."""
        if ns > 0:
            self.time_offset += ns
            self.retire.time_offset_changed(self.icount, self.time_offset)

    # ------------------------------------------------------------------ paging
    def translate(self, lin: int, access: int) -> int:
        """Linear -> guest-physical with the page walk of the current paging mode.

        Raises #PF (SDM 4.7 error code, CR2) or #GP/#SS for non-canonical addresses.
        Sets accessed and dirty bits as the walk goes.
        """
        if self.mode == 64 and not canonical(lin):
            raise Fault(13, 0)
        if not self.cr0 & CR0_PG:
            return lin & 0xFFFF_FFFF
        user = self.cpl == 3 and not access & 0x100  # 0x100: implicit supervisor access
        write = access & ACC_WRITE
        fetch = access & ACC_FETCH
        wp = self.cr0 & CR0_WP
        rd = self._pt_read
        if self.efer & EFER_LMA or self.cr4 & CR4_PAE:
            if not self.efer & EFER_LMA:
                raise Unsupported("PAE paging outside long mode")
            levels = ((39, 0), (30, 1), (21, 2), (12, 3))
            table = self.cr3 & 0x000F_FFFF_FFFF_F000
            ok_w = ok_u = True
            nx = False
            for shift, lvl in levels:
                ea = table + ((lin >> shift) & 0x1FF) * 8
                e = rd(ea, 8)
                if not e & 1:
                    self._pf(lin, 0, access, user)
                ok_w = ok_w and bool(e & 2)
                ok_u = ok_u and bool(e & 4)
                nx = nx or bool(e >> 63 and self.efer & EFER_NXE)
                if not e & 0x20:
                    self._pt_write(ea, 8, e | 0x20)
                if lvl == 3 or (lvl in (1, 2) and e & 0x80):
                    self._check_perm(lin, access, user, write, fetch, wp, ok_w, ok_u, nx)
                    if write and not e & 0x40:
                        self._pt_write(ea, 8, e | 0x60)
                    page_mask = (1 << shift) - 1
                    return ((e & 0x000F_FFFF_FFFF_F000) & ~page_mask) | (lin & page_mask)
                table = e & 0x000F_FFFF_FFFF_F000
            raise AssertionError("unreachable")
        # 32-bit paging (SDM 4.3)
        ea = (self.cr3 & 0xFFFF_F000) + ((lin >> 22) & 0x3FF) * 4
        pde = rd(ea, 4)
        if not pde & 1:
            self._pf(lin, 0, access, user)
        if not pde & 0x20:
            self._pt_write(ea, 4, pde | 0x20)
        if pde & 0x80 and self.cr4 & CR4_PSE:
            self._check_perm(lin, access, user, write, fetch, wp, bool(pde & 2), bool(pde & 4),
                             False)
            if write and not pde & 0x40:
                self._pt_write(ea, 4, pde | 0x60)
            return (pde & 0xFFC0_0000) | (lin & 0x3F_FFFF)
        ea2 = (pde & 0xFFFF_F000) + ((lin >> 12) & 0x3FF) * 4
        pte = rd(ea2, 4)
        if not pte & 1:
            self._pf(lin, 0, access, user)
        self._check_perm(lin, access, user, write, fetch, wp, bool(pde & pte & 2),
                         bool(pde & pte & 4), False)
        if not pte & 0x20 or (write and not pte & 0x40):
            self._pt_write(ea2, 4, pte | 0x20 | (0x40 if write else 0))
        return (pte & 0xFFFF_F000) | (lin & 0xFFF)

    def _check_perm(self, lin: int, access: int, user: bool, write: int, fetch: int, wp: int,
                    ok_w: bool, ok_u: bool, nx: bool) -> None:
        if (user and not ok_u) or (write and not ok_w and (user or wp)) or (fetch and nx):
            self._pf(lin, 1, access, user)

    def _pf(self, lin: int, present: int, access: int, user: bool) -> None:
        code = present | (access & (ACC_WRITE | ACC_FETCH)) | (ACC_USER if user else 0)
        if not self.efer & EFER_NXE:
            code &= ~ACC_FETCH
        raise Fault(14, code, cr2=lin)

    def _pt_read(self, gpa: int, size: int) -> int:
        return self.mem.read(self.hooks.gpa(self, gpa, 0, True), size)

    def _pt_write(self, gpa: int, size: int, value: int) -> None:
        self.mem.write(self.hooks.gpa(self, gpa, ACC_WRITE, True), size, value)

    def lin_to_hpa(self, lin: int, access: int) -> int:
        gpa = self.translate(lin, access)
        user = ACC_USER if self.cpl == 3 and not access & 0x100 else 0
        return self.hooks.gpa(self, gpa, (access & (ACC_WRITE | ACC_FETCH)) | user, False)

    # ------------------------------------------------------------------ memory access
    def rd(self, lin: int, size: int) -> int:
        p = self.tlb_r.get(lin >> 12)
        off = lin & 0xFFF
        if p is not None and off + size <= 4096:
            return int.from_bytes(p[off:off + size], "little")
        return self._rd_slow(lin, size, 0)

    def wr(self, lin: int, size: int, value: int) -> None:
        p = self.tlb_w.get(lin >> 12)
        off = lin & 0xFFF
        if p is not None and off + size <= 4096:
            p[off:off + size] = value.to_bytes(size, "little")
            return
        self._wr_slow(lin, size, value, 0)

    def rd_sys(self, lin: int, size: int) -> int:
        """Implicit supervisor read (descriptor tables, TSS, the interrupt stack frame),
        allowed at any CPL; it uses the supervisor TLB."""
        p = self._sup_r.get(lin >> 12)
        off = lin & 0xFFF
        if p is not None and off + size <= 4096:
            return int.from_bytes(p[off:off + size], "little")
        return self._rd_slow(lin, size, 0x100)

    def wr_sys(self, lin: int, size: int, value: int) -> None:
        p = self._sup_w.get(lin >> 12)
        off = lin & 0xFFF
        if p is not None and off + size <= 4096:
            p[off:off + size] = value.to_bytes(size, "little")
            return
        self._wr_slow(lin, size, value, 0x100)

    def _rd_slow(self, lin: int, size: int, flags: int) -> int:
        if self.mode != 64:
            lin &= 0xFFFF_FFFF
        off = lin & 0xFFF
        if off + size > 4096:   # split across pages: translate both before reading
            n1 = 4096 - off
            lo = self._rd_slow(lin, n1, flags)
            hi = self._rd_slow(lin + n1, size - n1, flags)
            return lo | (hi << (8 * n1))
        hpa = self.lin_to_hpa(lin, flags)
        if self.data_bps:
            self._data_bp_check(lin, size, False)
        page = self.mem.page(hpa >> 12)
        if page is None:
            return self.mem.read(hpa, size)
        if not self._watched(lin):
            (self._sup_r if flags else self.tlb_r)[lin >> 12] = page
        return int.from_bytes(page[off:off + size], "little")

    def _wr_slow(self, lin: int, size: int, value: int, flags: int) -> None:
        if self.mode != 64:
            lin &= 0xFFFF_FFFF
        off = lin & 0xFFF
        if off + size > 4096:
            n1 = 4096 - off
            # both pages must be writable before either is written
            self.lin_to_hpa(lin, ACC_WRITE | flags)
            self.lin_to_hpa(lin + n1, ACC_WRITE | flags)
            self._wr_slow(lin, n1, value & ((1 << (8 * n1)) - 1), flags)
            self._wr_slow(lin + n1, size - n1, value >> (8 * n1), flags)
            return
        hpa = self.lin_to_hpa(lin, ACC_WRITE | flags)
        if self.data_bps:
            self._data_bp_check(lin, size, True)
        hppn = hpa >> 12
        page = self.mem.page(hppn)
        if page is None:
            self.mem.write(hpa, size, value)
            return
        mask = self.code_pages.get(hppn)
        if mask is not None:
            if any(mask[off:off + size]):
                self.invalidate_code_page(hppn)
        elif not self._watched(lin):
            if flags:
                self._sup_w[lin >> 12] = page
                self._sup_r[lin >> 12] = page
            else:
                self.tlb_w[lin >> 12] = page
                self.tlb_r[lin >> 12] = page
        page[off:off + size] = value.to_bytes(size, "little")

    def _watched(self, lin: int) -> bool:
        pn = lin >> 12
        return any(lo >> 12 == pn or (hi - 1) >> 12 == pn for lo, hi, _, _ in self.data_bps)

    def _data_bp_check(self, lin: int, size: int, write: bool) -> None:
        # Data breakpoints are traps: DR6.Bn is reported after the instruction (SDM 17.3.1.2).
        for lo, hi, rw, i in self.data_bps:
            if lin < hi and lo < lin + size and (write or rw == 3):
                self.pending_db |= 1 << i
                self.attention = True

    def invalidate_code_page(self, hppn: int) -> None:
        """Self-modifying code: drop decoded instructions of a physical page being written."""
        self.code_pages.pop(hppn, None)
        for cache, rip in self._code_rips.pop(hppn, ()):
            cache.pop(rip, None)

    def read_virt(self, lin: int, n: int) -> bytes:
        """Debugger read by linear address, without side effects on TLB contents."""
        return bytes(self._rd_slow(lin + i, 1, 0x100) for i in range(n))

    # ------------------------------------------------------------------ decode
    def fetch_insn(self, rip: int) -> Insn:
        """Fetch, decode and translate the instruction at linear `rip`, caching it."""
        lin = rip if self.mode == 64 else (rip + self.seg[CS].base) & 0xFFFF_FFFF
        acc = ACC_FETCH
        hpa = self.lin_to_hpa(lin, acc)
        off = lin & 0xFFF
        first = min(15, 4096 - off)
        code = self.mem.read_bytes(hpa, first)
        pages = [(hpa >> 12, off, first)]
        if first < 15:
            try:
                hpa2 = self.lin_to_hpa(lin + first, acc)
                code += self.mem.read_bytes(hpa2, 15 - first)
                pages.append((hpa2 >> 12, 0, 15 - first))
            except Fault:
                need = self.decoder.length(code, rip, self.mode)
                if need is None or need > first:
                    raise
        try:
            insn = self.decoder.translate(code, rip, self.mode)
        except Exception as e:  # noqa: BLE001 - a translator bug must not crash the host:
            # the guest gets #UD and the record names the instruction (DESIGN.md)
            ci = self.decoder.decode(code, rip, self.mode)
            n = ci.size if ci is not None else 1
            text = (f"unsupported instruction {code[:n].hex(' ')} "
                    f"({ci.mnemonic + ' ' + ci.op_str if ci else '(bad)'}) at {rip:#x}: "
                    f"translator error {type(e).__name__}")
            self.last_unsupported = (rip, bytes(code[:n]), text)
            self.hooks.unsupported(self, rip, bytes(code[:n]), text)
            raise Unsupported(text) from None
        if insn.fn is None:
            text = unsupported_text(insn)
            self.last_unsupported = (rip, insn.code, text)
            self.hooks.unsupported(self, rip, insn.code, text)
            raise Unsupported(text)
        cache = self.icache
        cache[rip] = insn
        n = insn.length
        for hppn, start, avail in pages:
            take = min(n, avail)
            mask = self.code_pages.get(hppn)
            if mask is None:
                mask = self.code_pages[hppn] = bytearray(4096)
                for _r, w in self._tlbs.values():   # writes to it must now be checked
                    for k in [k for k, v in w.items() if v is self.mem.pages.get(hppn)]:
                        del w[k]
            mask[start:start + take] = b"\x01" * take
            self._code_rips.setdefault(hppn, []).append((cache, rip))
            n -= take
            if n <= 0:
                break
        return insn

    # ------------------------------------------------------------------ running
    def run(self, budget: int) -> int:
        """Run up to `budget` instructions. Returns the number retired; `stop_reason` says why
        it stopped: "budget", "hlt", "intercept", "shutdown", "stop"."""
        ring = self.retire.rips
        mask = self.retire.mask
        self.stop_reason = ""
        start = self.icount
        end = start + budget
        # Anything that changes the decode cache in use (mode, CPL) sets `attention`, so the
        # local copy is refreshed after every slow step.
        icache = self.icache
        while self.icount < end:
            if self.attention:
                if self._slow_step() < 0:
                    return self.icount - start
                icache = self.icache
                continue
            rip = self.rip
            insn = icache.get(rip)
            try:
                if insn is None:
                    insn = self.fetch_insn(rip)
                self.rip = insn.next
                insn.fn(self)
            except Fault as f:
                self.rip = rip
                if self._fault(f) < 0:
                    return self.icount - start
                icache = self.icache
                continue
            except Intercepted:
                self.rip = rip
                self.stop_reason = "intercept"
                return self.icount - start
            except (ArithmeticError, LookupError, TypeError, ValueError) as e:
                # A bug in an instruction's semantics must not escape as a Python
                # exception: the guest gets #UD and the record names the instruction.
                self.rip = rip
                if self._internal_error(rip, e) < 0:
                    return self.icount - start
                icache = self.icache
                continue
            n = self.icount
            ring[n & mask] = rip
            self.icount = n + 1
        self.stop_reason = "budget"
        return self.icount - start

    def _slow_step(self) -> int:
        """One instruction boundary with every event check, then at most one instruction.

        Returns 1 if an instruction retired, 0 if only an event was handled, -1 to stop.
        """
        if self.shutdown:
            self.stop_reason = "shutdown"
            return -1
        if self.stop_requested:
            self.stop_requested = False
            self.stop_reason = "stop"
            return -1
        shadow = self.shadow
        try:
            r = self._boundary_event(shadow)
        except Fault as f:
            return 0 if self._fault(f) >= 0 else -1
        except Intercepted:
            self.stop_reason = "intercept"
            return -1
        if r:
            return r if r < 0 else 0
        self.shadow = 0
        rip = self.rip
        rflags = self.rflags
        pending = self.pending_db
        try:
            insn = self.icache.get(rip)
            if insn is None:
                insn = self.fetch_insn(rip)
            # 7. Instruction breakpoints are faults checked before execution, ignored when
            # RF=1 (SDM 17.3.1.1, APM 13.1.3.1).
            if self.exec_bps and not rflags & RF:
                lin = rip if self.mode == 64 else (rip + self.seg[CS].base) & 0xFFFF_FFFF
                hit = 0
                for addr, i in self.exec_bps:
                    if addr == lin:
                        hit |= 1 << i
                if hit:
                    self.dr[6] |= hit
                    self.deliver_exception(1, None, fault=True)
                    return 0
            self.rip = insn.next
            insn.fn(self)
        except Fault as f:
            # The instruction did not complete: no single-step trap for it, and data
            # breakpoints it hit before faulting are dropped (SDM 17.3.1.2).
            self.pending_db = pending
            self.rip = rip
            self.shadow = 0
            return 0 if self._fault(f) >= 0 else -1
        except Intercepted:
            self.pending_db = pending
            self.rip = rip
            self.shadow = shadow
            self.stop_reason = "intercept"
            return -1
        except (ArithmeticError, LookupError, TypeError, ValueError) as e:
            self.rip = rip
            self.shadow = 0
            return 0 if self._internal_error(rip, e) >= 0 else -1
        # RF is cleared once an instruction completes, unless that instruction loaded it
        # (IRET, task switch): then it lasts one more instruction (APM 13.1.3.1).
        if self.rflags & RF and not insn.flags & F_LOADS_RF:
            self.rflags &= ~RF
        # TF is sampled at the start of the instruction: an instruction that sets TF is not
        # followed by a #DB, one that clears it still is (SDM 17.3.1.4, APM 13.1.4).
        if rflags & TF and not insn.flags & F_NO_SSTEP:
            self.pending_db |= DR6_BS
        self.retire.rips[self.icount & self.retire.mask] = rip
        self.icount += 1
        self._recompute_attention()
        return 1

    def wake_event(self) -> bool:
        """An event that ends HLT: an unblocked NMI or an unmasked INTR (SDM vol 2 HLT)."""
        return bool((self.nmi_pending and not self.nmi_blocked)
                    or (self.intr_pending and self.rflags & IF))

    def _boundary_event(self, shadow: int) -> int:
        """Take the highest-priority event pending at this instruction boundary.

        Returns 0 when the next instruction may execute, 1 when an event was delivered,
        -1 to stop (halted). The order is SDM vol 3 table 6-2 (APM vol 2 8.5):
          4. traps on the previous instruction: single-step, data breakpoints, task-switch T
          5. NMI
          6. maskable interrupts (INTR)
          7. code breakpoints (in _slow_step, with the instruction fetch)
        A halted CPU takes nothing until a wake event arrives: a single-step trap from the
        HLT itself is delivered first after wake-up, with RIP after the HLT (REFERENCE.md,
        checked on QEMU and Bochs).
        """
        if self.halted and not self.wake_event():
            self.stop_reason = "hlt"
            return -1
        # 4. Traps from the previous instruction. After MOV SS / POP SS they wait until the
        # next instruction completes (SDM 6.8.3).
        if self.pending_db and shadow != SHADOW_MOVSS:
            self.dr[6] |= self.pending_db
            self.pending_db = 0
            self.halted = False
            self.deliver_exception(1, None)
            return 1
        # 5, 6. NMI, then INTR; both held off by an interrupt shadow (APM 15.21.5).
        if self.nmi_pending and not self.nmi_blocked and not shadow:
            self.hooks.nmi(self)
            self.nmi_pending = False
            self.nmi_blocked = True     # until the next IRET (SDM 6.7.1)
            self.halted = False
            interrupts.deliver(self, 2, "nmi", None)
            return 1
        if self.intr_pending and self.rflags & IF and not shadow:
            self.hooks.intr(self)
            vector = self.intr_ack()
            if vector is not None:
                self.halted = False
                interrupts.deliver(self, vector, "intr", None)
                return 1
        if self.halted:
            self.stop_reason = "hlt"
            return -1
        return 0

    def _recompute_attention(self) -> None:
        self.attention = bool(
            self.rflags & (TF | RF) or self.pending_db or self.shadow or self.nmi_pending
            or (self.intr_pending and self.rflags & IF) or self.exec_bps or self.halted
            or self.shutdown or self.stop_requested)

    def request_stop(self) -> None:
        self.stop_requested = True
        self.attention = True

    # ------------------------------------------------------------------ events
    def _fault(self, f: Fault) -> int:
        """Deliver an exception raised by an instruction or an event delivery."""
        try:
            if isinstance(f, Unsupported):
                self.last_unsupported = self.last_unsupported or (self.rip, b"", f.text)
            self.deliver_exception(f.vector, f.error_code, fault=True, cr2=f.cr2)
        except Intercepted:
            self.stop_reason = "intercept"
            return -1
        return -1 if self.shutdown else 0

    def _internal_error(self, rip: int, e: Exception) -> int:
        insn = self.icache.get(rip)
        text = (f"nitdbg internal error executing {insn.text if insn else '?'} at {rip:#x}: "
                f"{type(e).__name__}: {e}")
        code = insn.code if insn else b""
        self.last_unsupported = (rip, code, text)
        self.hooks.unsupported(self, rip, code, text)
        return self._fault(Unsupported(text))

    def deliver_exception(self, vector: int, error_code: int | None, fault: bool = False,
                          cr2: int | None = None) -> None:
        """Raise an exception at the current RIP: offer it to the layer above, and deliver it
        through the IDT. A fault during delivery escalates (SDM 6.15 table 6-5)."""
        if cr2 is not None:
            self.cr2 = cr2
        self.hooks.exception(self, vector, error_code)
        try:
            interrupts.deliver(self, vector, "fault" if fault else "trap", error_code)
        except Fault as f2:
            self._escalate(vector, f2)

    # Exception classes for double-fault detection (SDM vol 3 table 6-4, APM vol 2 8.2.9).
    CONTRIBUTORY = frozenset({0, 10, 11, 12, 13})

    def _escalate(self, first: int, f2: Fault) -> None:
        """A second exception `f2` arose while delivering `first` (-1: NMI or INTR, benign).

        SDM table 6-5: benign first -> the second is handled serially; contributory then
        contributory, or #PF then contributory/#PF -> #DF; anything while delivering #DF ->
        shutdown (triple fault)."""
        self.delivering = None
        second = f2.vector
        if first == 8:
            self.triple_fault(f"exception {second} while delivering #DF")
            return
        if f2.cr2 is not None:
            self.cr2 = f2.cr2
        contributory = self.CONTRIBUTORY
        if (first in contributory and second in contributory) or (
                first == 14 and (second in contributory or second == 14)):
            self.hooks.exception(self, 8, 0)
            try:
                interrupts.deliver(self, 8, "fault", 0)
            except Fault as f3:
                self.delivering = None
                self.triple_fault(f"exception {f3.vector} while delivering #DF")
            return
        self.deliver_exception(second, f2.error_code, fault=True)

    def triple_fault(self, reason: str) -> None:
        """Shutdown (SDM 6.15 #DF, APM 8.2.9): the vCPU stops; never an exception to Python."""
        self.shutdown = True
        self.halted = False
        self.attention = True
        self.stop_reason = "shutdown"
        self.hooks.shutdown(self, reason)

    def inject(self, kind: str, vector: int, error_code: int | None = None) -> None:
        """Deliver an event now, at the current RIP (SVM EVENTINJ). kind: intr, nmi,
        exception, softint. A fault while delivering it is delivered (or escalated) in turn;
        NMI blocking is the injector's business (the hypervisor tracks virtual NMIs)."""
        try:
            if kind == "exception":
                # Injected events are not subject to intercept checks (APM 15.20); a fault
                # raised while delivering one is. An injected event is delivered as if it
                # had occurred in the guest (APM 15.20): #BP and #OF are traps, whose frame
                # does not get RF=1 (SDM 17.3.1.1).
                interrupts.deliver(self, vector, "trap" if vector in (3, 4) else "fault",
                                   error_code)
            else:
                interrupts.deliver(self, vector, "soft" if kind == "softint" else kind,
                                   error_code)
        except Fault as f2:
            self._escalate(vector if kind == "exception" else -1, f2)
        self.halted = False
        self.attention = True

    # ------------------------------------------------------------------ input pins
    def raise_nmi(self) -> None:
        """Assert the NMI input. While NMIs are blocked one NMI is held pending; further ones
        merge into it (SDM 6.7.1)."""
        self.nmi_pending = True
        self.attention = True

    def set_intr_line(self, pending: bool, ack: Callable[[], int | None] | None = None) -> None:
        """Drive the INTR input. `ack` is the interrupt-acknowledge cycle: it returns the
        vector (or None if the request went away) when the CPU takes the interrupt."""
        self.intr_pending = pending
        if ack is not None:
            self.intr_ack = ack
        self.attention = True

    def retire_events_total(self) -> int:
        """How many events were ever recorded (the event ring keeps only the newest)."""
        return self._events_total

    _events_total = 0

    def record_event(self, kind: int, vector: int, error_code: int | None, rip: int,
                     rflags: int, info: int = 0) -> None:
        from .retire import Event
        self._events_total += 1
        self.retire.add_event(Event(self.icount, kind, vector, error_code, rip, rflags,
                                    self.dr[6], info))

    # ------------------------------------------------------------------ helpers
    def set_rflags(self, value: int) -> None:
        self.rflags = value | 0x2
        self.attention = True

    def snapshot_regs(self) -> dict[str, int]:
        from .regs import GPR_NAMES
        d = {n: self.regs[i] for i, n in enumerate(GPR_NAMES)}
        d.update(rip=self.rip, rflags=self.rflags, cr0=self.cr0, cr2=self.cr2, cr3=self.cr3,
                 cr4=self.cr4, efer=self.efer, dr6=self.dr[6], dr7=self.dr[7])
        for name, s in zip(("es", "cs", "ss", "ds", "fs", "gs"), self.seg, strict=True):
            d[name] = s.sel
        return d


__all__ = ["Cpu", "canonical", "EV_EXCEPTION", "F_LOADS_RF", "F_NO_SSTEP", "M64",
           "SHADOW_MOVSS", "SHADOW_STI", "DR6_BS"]
