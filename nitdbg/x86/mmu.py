"""Paging, linear memory access through the TLBs, and instruction fetch into the decode
cache (with the code-page masks that catch self-modifying code)."""

from __future__ import annotations

from .decode import Insn, unsupported_text
from .faults import Fault, Unsupported
from .hooks import ACC_FETCH, ACC_USER, ACC_WRITE
from .regs import (
    CR0_PG,
    CR0_WP,
    CR4_PAE,
    CR4_PSE,
    CS,
    EFER_LMA,
    EFER_NXE,
    canonical,
)
from .state import CpuState


class Mmu(CpuState):
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
