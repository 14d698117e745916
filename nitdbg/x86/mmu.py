"""Paging, linear memory access through the TLBs, and instruction fetch into the decode
cache (with the code-page masks that catch self-modifying code)."""

from __future__ import annotations

import struct

from .decode import TRANSLATORS, Insn, unsupported_text
from .faults import BUG_ERRORS, Fault, InternalError, Unsupported
from .hooks import ACC_FETCH, ACC_USER, ACC_WRITE
from .paging import walk
from .regs import (
    CS,
)
from .state import CpuState

# Decoded instructions by (the 15 fetched bytes, address, mode), shared by every vCPU of the
# process: an Insn holds no CPU state, and every new machine decodes the same firmware.
_DECODED: dict[tuple[bytes, int, int], tuple[Insn, object]] = {}
_DECODED_MAX = 1 << 17
_ONES = [b"\x01" * n for n in range(16)]    # code-page mask runs


class _SharedPage:
    """The instructions decoded, by any machine of the process, from one image of a page at
    one linear page in one mode: a new machine that fetches from a page with the same bytes
    takes them all at its first fetch there, instead of fetching each one again (every
    machine runs the same firmware)."""

    __slots__ = ("image", "insns", "mask", "translators")

    def __init__(self, image: bytes) -> None:
        self.image = image
        self.insns: dict[int, Insn] = {}         # rip -> instruction
        self.mask = bytearray(4096)              # the code-page mask they make
        self.translators: dict[int, object] = {}  # capstone id -> translator that built them


# (mode, linear page, CS base outside 64-bit mode) -> _SharedPage
_PAGES: dict[tuple[int, int, int], _SharedPage] = {}
_PAGES_MAX = 1 << 10

# Little-endian loads and stores of 1, 2, 4 and 8 bytes straight from/into a page: no slice
# and no intermediate bytes object (other sizes take int.from_bytes / to_bytes). A value
# that does not fit takes to_bytes too, so it fails as it always did (OverflowError).
_LOAD = {n: struct.Struct(f).unpack_from for n, f in ((1, "<B"), (2, "<H"), (4, "<I"),
                                                     (8, "<Q"))}
_STORE = {n: struct.Struct(f).pack_into for n, f in ((1, "<B"), (2, "<H"), (4, "<I"),
                                                    (8, "<Q"))}
_STRUCT_ERROR = struct.error


class Mmu(CpuState):
    # ------------------------------------------------------------------ paging
    def translate(self, lin: int, access: int) -> int:
        """Linear -> guest-physical with the page walk of the current paging mode
        (x86/paging.py, the walk the debugger shares). Raises #PF (SDM 4.7 error code, CR2)
        or #GP for non-canonical addresses. Sets accessed and dirty bits as the walk goes."""
        return walk(self, lin, access, self._pt_read, self._pt_write)

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
            ld = _LOAD.get(size)
            if ld is not None:
                return ld(p, off)[0]
            return int.from_bytes(p[off:off + size], "little")
        return self._rd_slow(lin, size, 0)

    def wr(self, lin: int, size: int, value: int) -> None:
        p = self.tlb_w.get(lin >> 12)
        off = lin & 0xFFF
        if p is not None and off + size <= 4096:
            st = _STORE.get(size)
            if st is not None:
                try:
                    st(p, off, value)
                    return
                except _STRUCT_ERROR:
                    pass
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
        if self.host_stop is not None and self.host_stop.watches:
            self.host_stop.access(lin, size, False)
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
        if self.host_stop is not None and self.host_stop.watches:
            self.host_stop.access(lin, size, True)
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
        if self.host_stop is not None and self.host_stop.watches_page(pn):
            return True
        return any(lo >> 12 == pn or (hi - 1) >> 12 == pn for lo, hi, _, _ in self.data_bps)

    def _data_bp_check(self, lin: int, size: int, write: bool) -> None:
        # Data breakpoints are traps: DR6.Bn is reported after the instruction (SDM 17.3.1.2).
        for lo, hi, rw, i in self.data_bps:
            if lin < hi and lo < lin + size and (write or rw == 3):
                self.pending_db |= 1 << i
                self.attention = True

    def invalidate_code_page(self, hppn: int) -> None:
        """Self-modifying code: drop decoded instructions of a physical page being written."""
        mask = self.code_pages.pop(hppn, None)
        rips = self._code_rips.pop(hppn, ())
        if mask is None and not rips:
            # No instruction was decoded from this page (every cached instruction, and so
            # every block, registered its pages here): nothing to drop. A host-side write
            # (ddb's trapframe) then keeps the translated blocks of the whole guest.
            return
        for cache, some in rips:
            for rip in some:
                cache.pop(rip, None)
        # A translated block may hold any of them: drop all blocks, and make a block that is
        # running stop at the next instruction boundary (self-modifying code).
        self.drop_blocks()
        self.attention = True

    def _fetch_hpa(self, lin: int) -> int:
        """lin_to_hpa for an instruction fetch, through the instruction TLB: a page is
        walked (guest tables, then nested) on its first fetch after a flush, as the decode
        cache already serves every instruction fetched before without a walk."""
        key = (lin >> 12) << 1 | (self.cpl == 3)
        base = self.itlb.get(key)
        if base is not None:
            return base | (lin & 0xFFF)
        hpa = self.lin_to_hpa(lin, ACC_FETCH)
        self.itlb[key] = hpa & ~0xFFF
        return hpa

    def fetch_insn(self, rip: int) -> Insn:
        """Fetch, decode and translate the instruction at linear `rip`, caching it."""
        mode = self.mode
        lin = rip if mode == 64 else (rip + self.seg[CS].base) & 0xFFFF_FFFF
        hpa = self._fetch_hpa(lin)
        off = lin & 0xFFF
        page = self.mem.page(hpa >> 12) if off <= 4096 - 15 else None
        if page is None:
            return self._fetch_insn_slow(rip, lin, hpa)
        # the common case: 15 bytes of RAM on one page
        hppn = hpa >> 12
        cache = self.icache
        pkey = (mode, lin >> 12, 0 if mode == 64 else self.seg[CS].base)
        shared = _PAGES.get(pkey)
        if hppn not in self.code_pages:
            self._new_code_page(hppn)
            if shared is not None and page == shared.image and self._prefill(hppn, shared):
                insn = cache.get(rip)
                if insn is not None:
                    return insn
        insn = self._decode(bytes(page[off:off + 15]), rip, mode)
        cache[rip] = insn
        n = insn.length
        self.code_pages[hppn][off:off + n] = _ONES[n]
        self._code_rips[hppn].append((cache, (rip,)))
        # offer it to the machines that will fetch from the same page image
        tr = TRANSLATORS.get(insn.id)
        if shared is None or shared.translators.get(insn.id, tr) is not tr:
            # (new, or its instructions of this kind were built by a translator since replaced)
            if len(_PAGES) >= _PAGES_MAX:
                _PAGES.clear()
            shared = _PAGES[pkey] = _SharedPage(bytes(page))
        if page == shared.image:
            # (the instruction last: a machine that sees it sees its mask bits and translator)
            shared.mask[off:off + n] = _ONES[n]
            shared.translators[insn.id] = tr
            shared.insns[rip] = insn
        return insn

    def _prefill(self, hppn: int, shared: _SharedPage) -> bool:
        """Cache every instruction another machine decoded from this page image, as if each
        had been fetched: the first fetch from the page has walked the tables, and the ones
        after it would not walk again before a flush (the instruction TLB), which drops them
        all. Their bytes are in the page's mask, so a write to any of them drops them
        (self-modifying code)."""
        cache = self.icache
        # Copies, each one C call: a machine on another thread may add to the page meanwhile,
        # and every instruction in this copy already has its mask bits and translator there.
        insns = shared.insns.copy()
        if not cache.keys().isdisjoint(insns):
            return False      # (the same addresses cached from another page: keep those)
        for i, t in list(shared.translators.items()):
            if TRANSLATORS.get(i) is not t:       # a translator was replaced (tests)
                return False
        cache.update(insns)
        self.code_pages[hppn] = bytearray(shared.mask)
        self._code_rips[hppn].append((cache, tuple(insns)))
        return True

    def _decode(self, code: bytes, rip: int, mode: int) -> Insn:
        """The translated instruction (the process-wide cache or capstone); unsupported and
        translator bugs raise as the front ends expect."""
        try:
            key = (code, rip, mode)
            hit = _DECODED.get(key)
            # (the translator that built it must still be the registered one)
            if hit is not None and TRANSLATORS.get(hit[0].id) is hit[1]:
                insn = hit[0]
            else:
                insn = self.decoder.translate(code, rip, mode)
                if len(_DECODED) >= _DECODED_MAX:
                    _DECODED.clear()
                _DECODED[key] = (insn, TRANSLATORS.get(insn.id))
        except BUG_ERRORS as e:
            # a translator bug: the run stops and the front end names the instruction
            ci = self.decoder.decode(code, rip, mode)
            n = ci.size if ci is not None else 1
            text = f"{ci.mnemonic} {ci.op_str}".strip() if ci is not None else "(bad)"
            raise InternalError(rip, code[:n], text, e) from None
        if insn.fn is None:
            text = unsupported_text(insn)
            self.last_unsupported = (rip, insn.code, text)
            self.hooks.unsupported(self, rip, insn.code, text)
            raise Unsupported(text)
        return insn

    def _new_code_page(self, hppn: int) -> None:
        """The first instruction cached from physical page `hppn`: writes to it must now be
        checked against its mask (self-modifying code), so no TLB may hold it writable."""
        self.code_pages[hppn] = bytearray(4096)
        self._code_rips[hppn] = []
        page = self.mem.pages.get(hppn)
        for _r, w in self._tlbs.values():
            for k in [k for k, v in w.items() if v is page]:
                del w[k]

    def _fetch_insn_slow(self, rip: int, lin: int, hpa: int) -> Insn:
        """An instruction whose 15 bytes cross a page end, or not on RAM."""
        off = lin & 0xFFF
        first = min(15, 4096 - off)
        code = self.mem.read_bytes(hpa, first)
        pages = [(hpa >> 12, off, first)]
        if first < 15:
            try:
                hpa2 = self._fetch_hpa(lin + first)
                code += self.mem.read_bytes(hpa2, 15 - first)
                pages.append((hpa2 >> 12, 0, 15 - first))
            except Fault:
                need = self.decoder.length(code, rip, self.mode)
                if need is None or need > first:
                    raise
        insn = self._decode(code, rip, self.mode)
        cache = self.icache
        cache[rip] = insn
        n = insn.length
        for hppn, start, avail in pages:
            take = min(n, avail)
            if hppn not in self.code_pages:
                self._new_code_page(hppn)
            self.code_pages[hppn][start:start + take] = _ONES[take]
            self._code_rips[hppn].append((cache, (rip,)))
            n -= take
            if n <= 0:
                break
        return insn
