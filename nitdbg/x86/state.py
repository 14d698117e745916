"""The vCPU's architectural state, its mode, its per-mode caches and its clock."""

from __future__ import annotations

from collections.abc import Callable

from . import blocks, fastpath
from . import insn as _insn  # noqa: F401  (registers the translators)
from .decode import Decoder, Insn
from .faults import InternalError
from .hooks import Hooks
from .hoststop import HostStop
from .memory import PhysMem
from .regs import (
    CR0_PE,
    CS,
    DR6_INIT,
    DR7_INIT,
    EFER_LMA,
)
from .retire import RetireLog
from .segments import ATTR_DB, ATTR_L, DescTable, Segment


class CpuState:
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
        self.internal_error: InternalError | None = None   # a bug in nitdbg stopped the vCPU
        # time and the retirement log
        self.icount = 0
        self.time_offset = 0
        self.retire = RetireLog(retire_order)
        # translation: TLBs per privilege class, decode caches per (mode, cpl class)
        self.decoder = Decoder()
        self._tlbs: dict[int, tuple[dict[int, bytearray], dict[int, bytearray]]] = {}
        self._icaches: dict[tuple[int, int], dict[int, Insn]] = {}
        self.code_pages: dict[int, bytearray] = {}     # hppn -> mask of cached code bytes
        # hppn -> the addresses cached from it, by decode cache
        self._code_rips: dict[int, list[tuple[dict[int, Insn], tuple[int, ...]]]] = {}
        self.tlb_r: dict[int, bytearray] = {}
        self.tlb_w: dict[int, bytearray] = {}
        self._sup_r, self._sup_w = self._tlbs.setdefault(0, ({}, {}))
        self.icache: dict[int, Insn] = {}
        # instruction-fetch translations since the last flush: (linear page << 1 | user) ->
        # host-physical page, so that fetching a new instruction on a page already fetched
        # from does not walk the guest's and the nested tables again (an instruction TLB)
        self.itlb: dict[int, int] = {}
        # translated blocks (blocks.py), per (mode, cpl class) like the decode caches, and how
        # often the fast path reached each start address not yet translated
        self.blocks_enabled = blocks.enabled_by_default()
        self._bcaches: dict[tuple[int, int], dict[int, blocks.Block | None]] = {}
        self.bcache: dict[int, blocks.Block | None] = {}
        self.bhot: dict[int, int] = {}
        self.bnext: dict[int, int] = {}       # visit count at which to consider it again
        # the translation budget (blocks.XLATE_BURST), refilled by retired instructions
        self.xlate_tokens = blocks.XLATE_BURST
        self.xlate_at = 0
        # long-mode event delivery and IRETQ through their fast paths (fastpath.py)
        self.fast_events = fastpath.enabled_by_default()
        self.mode = 16
        self._mode_key: tuple[int, int, int, int] | None = None   # update_mode's last inputs
        self.data_bps: list[tuple[int, int, int, int]] = []   # (lo, hi, rw, index)
        self.exec_bps: list[tuple[int, int]] = []             # (addr, index)
        self.host_stop: HostStop | None = None    # the gdb stub's conditions (hoststop.py)
        self.update_mode()

    # ------------------------------------------------------------------ mode and caches
    def update_mode(self) -> None:
        """Recompute code size and CPL-dependent caches after CS, CR0, EFER changes."""
        cs = self.seg[CS]
        # Every VMRUN calls this; the outcome depends only on these bits (the cache dicts
        # are cleared in place, never replaced), so unchanged inputs change nothing.
        inputs = (self.cr0 & CR0_PE, self.efer & EFER_LMA, cs.attrib & (ATTR_L | ATTR_DB),
                  self.cpl)
        if inputs == self._mode_key:
            self.attention = True
            return
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
        bc = self._bcaches.get(key)
        if bc is None:
            bc = self._bcaches[key] = {}
        self.bcache = bc
        self._mode_key = (*inputs[:3], self.cpl)     # (CPL is 0 now without PE)
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
        self.itlb.clear()
        self.drop_blocks()
        self.code_pages.clear()
        self._code_rips.clear()
        self.update_debug()

    def drop_blocks(self) -> None:
        """Forget every translated block (their instructions changed or were remapped)."""
        for bc in self._bcaches.values():
            bc.clear()
        self.bhot.clear()
        self.bnext.clear()

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
