"""The VMCB: a 4 KiB byte layout with named fields (AMD APM vol 2, appendix B).

Every field is a property over the bytes, so what a user sees is exactly what a
processor would read at VMRUN. Offsets follow APM vol 2 table B-1 (control area)
and table B-2 (state-save area, at 0x400), cross-checked with FreeBSD's vmcb.h.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator

VMCB_SIZE = 0x1000
STATE_OFF = 0x400  # state-save area starts here (APM vol 2 table B-2)


class VmcbError(ValueError):
    """Bad field name, intercept name or value for the VMCB."""


class _Field:
    """A little-endian integer field of `size` bytes, optionally a bit range inside it."""

    __slots__ = ("name", "offset", "size", "lo", "width", "mask", "in_dump", "_unpack",
                 "_pack")

    def __init__(self, offset: int, size: int, lo: int = 0, width: int | None = None,
                 in_dump: bool = True) -> None:
        self.in_dump = in_dump  # False for views that repeat bits another field shows
        self.name = ""
        self.offset = offset
        self.size = size
        self.lo = lo
        self.width = width if width is not None else size * 8 - lo
        self.mask = (1 << self.width) - 1
        # every field is 1, 2, 4 or 8 bytes: one struct call instead of a slice and from_bytes
        st = struct.Struct("<" + {1: "B", 2: "H", 4: "I", 8: "Q"}[size])
        self._unpack, self._pack = st.unpack_from, st.pack_into

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Vmcb | None, owner: type | None = None):
        if obj is None:
            return self
        return (self._unpack(obj.buf, self.offset)[0] >> self.lo) & self.mask

    def __set__(self, obj: Vmcb, value: int) -> None:
        value = int(value)
        if value < 0 or value > self.mask:
            raise VmcbError(f"vmcb: value {value:#x} does not fit in {self.name} "
                            f"({self.width} bits)")
        raw = self._unpack(obj.buf, self.offset)[0]
        self._pack(obj.buf, self.offset, (raw & ~(self.mask << self.lo)) | (value << self.lo))


# --- intercept vectors (APM vol 2 table B-1) ------------------------------------------------

OFF_CR_INTERCEPTS = 0x000
OFF_DR_INTERCEPTS = 0x004
OFF_EXCEPTION_INTERCEPTS = 0x008
OFF_CTRL1 = 0x00C
OFF_CTRL2 = 0x010
OFF_CTRL3 = 0x014

_CTRL1_BITS = (
    "INTR", "NMI", "SMI", "INIT", "VINTR", "CR0_SEL_WRITE", "IDTR_READ", "GDTR_READ",
    "LDTR_READ", "TR_READ", "IDTR_WRITE", "GDTR_WRITE", "LDTR_WRITE", "TR_WRITE", "RDTSC",
    "RDPMC", "PUSHF", "POPF", "CPUID", "RSM", "IRET", "INTn", "INVD", "PAUSE", "HLT", "INVLPG",
    "INVLPGA", "IOIO_PROT", "MSR_PROT", "TASK_SWITCH", "FERR_FREEZE", "SHUTDOWN",
)
_CTRL2_BITS = (
    "VMRUN", "VMMCALL", "VMLOAD", "VMSAVE", "STGI", "CLGI", "SKINIT", "RDTSCP", "ICEBP",
    "WBINVD", "MONITOR", "MWAIT", "MWAIT_CONDITIONAL", "XSETBV", "RDPRU", "EFER_WRITE_TRAP",
) + tuple(f"CR{n}_WRITE_TRAP" for n in range(16))
_CTRL3_BITS = ("INVLPGB", "INVLPGB_ILLEGAL", "INVPCID", "MCOMMIT", "TLBSYNC")

# name -> (word offset, bit); the one table every intercept helper uses.
INTERCEPTS: dict[str, tuple[int, int]] = {}
for _n in range(16):
    INTERCEPTS[f"CR{_n}_READ"] = (OFF_CR_INTERCEPTS, _n)
    INTERCEPTS[f"CR{_n}_WRITE"] = (OFF_CR_INTERCEPTS, 16 + _n)
for _n in range(16):
    INTERCEPTS[f"DR{_n}_READ"] = (OFF_DR_INTERCEPTS, _n)
    INTERCEPTS[f"DR{_n}_WRITE"] = (OFF_DR_INTERCEPTS, 16 + _n)
for _bit, _name in enumerate(_CTRL1_BITS):
    INTERCEPTS[_name] = (OFF_CTRL1, _bit)
for _bit, _name in enumerate(_CTRL2_BITS):
    INTERCEPTS[_name] = (OFF_CTRL2, _bit)
for _bit, _name in enumerate(_CTRL3_BITS):
    INTERCEPTS[_name] = (OFF_CTRL3, _bit)
del _n, _bit, _name

EXCEPTION_MNEMONICS = {
    0: "#DE", 1: "#DB", 2: "#NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM", 8: "#DF",
    10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF", 17: "#AC", 18: "#MC",
    19: "#XF", 20: "#VE", 21: "#CP", 28: "#HV", 29: "#VC", 30: "#SX",
}


def exception_mnemonic(vector: int) -> str:
    return EXCEPTION_MNEMONICS.get(vector, f"#{vector}")


# --- TLB control and clean bits -------------------------------------------------------------

TLB_FLUSH_NOTHING = 0
TLB_FLUSH_ALL = 1
TLB_FLUSH_GUEST = 3
TLB_FLUSH_GUEST_NONGLOBAL = 7

CLEAN_BITS = ("I", "IOPM", "ASID", "TPR", "NP", "CRx", "DRx", "DT", "SEG", "CR2", "LBR", "AVIC")

# --- segments in the state-save area --------------------------------------------------------

# contracts: ES=0, CS=1, SS=2, DS=3, FS=4, GS=5; then the descriptor-table registers.
SEGMENT_NAMES = ("es", "cs", "ss", "ds", "fs", "gs", "gdtr", "ldtr", "idtr", "tr")
SEGMENT_OFFSETS = {name: STATE_OFF + 0x10 * i for i, name in enumerate(SEGMENT_NAMES)}


class Segment:
    """View of one {u16 selector, u16 attrib, u32 limit, u64 base} record in the VMCB."""

    __slots__ = ("_vmcb", "name", "offset")

    def __init__(self, vmcb: Vmcb, name: str) -> None:
        self._vmcb = vmcb
        self.name = name
        self.offset = SEGMENT_OFFSETS[name]

    def _get(self, rel: int, size: int) -> int:
        o = self.offset + rel
        return int.from_bytes(self._vmcb.buf[o:o + size], "little")

    def _put(self, rel: int, size: int, value: int, what: str) -> None:
        value = int(value)
        if value < 0 or value >> (size * 8):
            raise VmcbError(f"vmcb: {self.name}.{what} value {value:#x} out of range")
        o = self.offset + rel
        self._vmcb.buf[o:o + size] = value.to_bytes(size, "little")

    @property
    def selector(self) -> int:
        return self._get(0, 2)

    @selector.setter
    def selector(self, v: int) -> None:
        self._put(0, 2, v, "selector")

    @property
    def attrib(self) -> int:
        return self._get(2, 2)

    @attrib.setter
    def attrib(self, v: int) -> None:
        # APM vol 2 15.5.1: the VMCB keeps a 12-bit packed attribute (type..G).
        if int(v) >> 12:
            raise VmcbError(f"vmcb: {self.name}.attrib {int(v):#x} wider than 12 bits")
        self._put(2, 2, v, "attrib")

    @property
    def limit(self) -> int:
        return self._get(4, 4)

    @limit.setter
    def limit(self, v: int) -> None:
        self._put(4, 4, v, "limit")

    @property
    def base(self) -> int:
        return self._get(8, 8)

    @base.setter
    def base(self, v: int) -> None:
        self._put(8, 8, v, "base")

    def set(self, selector: int, attrib: int, limit: int, base: int) -> None:
        self.selector, self.attrib, self.limit, self.base = selector, attrib, limit, base

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.selector, self.attrib, self.limit, self.base)

    def __repr__(self) -> str:
        return (f"Segment({self.name}: sel={self.selector:#06x} attr={self.attrib:#05x} "
                f"limit={self.limit:#x} base={self.base:#x})")


class Vmcb:
    """A 4 KiB VMCB. `buf` is the single source of truth."""

    # Control area (APM vol 2 table B-1).
    cr_intercepts = _Field(OFF_CR_INTERCEPTS, 4)
    cr_read_intercepts = _Field(OFF_CR_INTERCEPTS, 4, 0, 16, in_dump=False)
    cr_write_intercepts = _Field(OFF_CR_INTERCEPTS, 4, 16, 16, in_dump=False)
    dr_intercepts = _Field(OFF_DR_INTERCEPTS, 4)
    dr_read_intercepts = _Field(OFF_DR_INTERCEPTS, 4, 0, 16, in_dump=False)
    dr_write_intercepts = _Field(OFF_DR_INTERCEPTS, 4, 16, 16, in_dump=False)
    exception_intercepts = _Field(OFF_EXCEPTION_INTERCEPTS, 4)
    ctrl1_intercepts = _Field(OFF_CTRL1, 4)
    ctrl2_intercepts = _Field(OFF_CTRL2, 4)
    ctrl3_intercepts = _Field(OFF_CTRL3, 4)
    pause_filter_threshold = _Field(0x03C, 2)
    pause_filter_count = _Field(0x03E, 2)
    iopm_base_pa = _Field(0x040, 8)
    msrpm_base_pa = _Field(0x048, 8)
    tsc_offset = _Field(0x050, 8)
    asid = _Field(0x058, 4)
    tlb_control = _Field(0x05C, 1)
    # 0x60: the virtual interrupt control word (V_TPR 7:0, V_IRQ 8, V_INTR_PRIO 19:16,
    # V_IGN_TPR 20, V_INTR_MASKING 24, V_INTR_VECTOR 39:32).
    v_intr_control = _Field(0x060, 8, in_dump=False)
    v_tpr = _Field(0x060, 1)
    v_irq = _Field(0x061, 1, 0, 1)
    vgif = _Field(0x061, 1, 1, 1)
    # Virtual NMI (APM vol 2 15.21.x; Linux svm.h): int_ctl bits 11, 12 and 26.
    v_nmi_pending = _Field(0x061, 1, 3, 1)
    v_nmi_blocking = _Field(0x061, 1, 4, 1)       # AMD's V_NMI_MASK
    v_nmi_enable = _Field(0x063, 1, 2, 1)
    v_intr_prio = _Field(0x062, 1, 0, 4)
    v_ign_tpr = _Field(0x062, 1, 4, 1)
    v_intr_masking = _Field(0x063, 1, 0, 1)
    v_intr_vector = _Field(0x064, 1)
    interrupt_shadow = _Field(0x068, 8, 0, 1)
    guest_interrupt_mask = _Field(0x068, 8, 1, 1)
    exitcode = _Field(0x070, 8)
    exitinfo1 = _Field(0x078, 8)
    exitinfo2 = _Field(0x080, 8)
    exitintinfo = _Field(0x088, 8)
    np_enable = _Field(0x090, 8, 0, 1)
    avic_apic_bar = _Field(0x098, 8)
    ghcb_pa = _Field(0x0A0, 8)
    eventinj = _Field(0x0A8, 8)
    n_cr3 = _Field(0x0B0, 8)
    lbr_virtualization_enable = _Field(0x0B8, 8, 0, 1)
    vmcb_clean = _Field(0x0C0, 4)
    nrip = _Field(0x0C8, 8)
    guest_insn_len = _Field(0x0D0, 1)

    # State-save area (APM vol 2 table B-2), offsets relative to 0x400.
    cpl = _Field(STATE_OFF + 0x0CB, 1)
    efer = _Field(STATE_OFF + 0x0D0, 8)
    cr4 = _Field(STATE_OFF + 0x148, 8)
    cr3 = _Field(STATE_OFF + 0x150, 8)
    cr0 = _Field(STATE_OFF + 0x158, 8)
    dr7 = _Field(STATE_OFF + 0x160, 8)
    dr6 = _Field(STATE_OFF + 0x168, 8)
    rflags = _Field(STATE_OFF + 0x170, 8)
    rip = _Field(STATE_OFF + 0x178, 8)
    rsp = _Field(STATE_OFF + 0x1D8, 8)
    s_cet = _Field(STATE_OFF + 0x1E0, 8)
    ssp = _Field(STATE_OFF + 0x1E8, 8)
    isst_addr = _Field(STATE_OFF + 0x1F0, 8)
    rax = _Field(STATE_OFF + 0x1F8, 8)
    star = _Field(STATE_OFF + 0x200, 8)
    lstar = _Field(STATE_OFF + 0x208, 8)
    cstar = _Field(STATE_OFF + 0x210, 8)
    sfmask = _Field(STATE_OFF + 0x218, 8)
    kernel_gs_base = _Field(STATE_OFF + 0x220, 8)
    sysenter_cs = _Field(STATE_OFF + 0x228, 8)
    sysenter_esp = _Field(STATE_OFF + 0x230, 8)
    sysenter_eip = _Field(STATE_OFF + 0x238, 8)
    cr2 = _Field(STATE_OFF + 0x240, 8)
    g_pat = _Field(STATE_OFF + 0x268, 8)
    dbgctl = _Field(STATE_OFF + 0x270, 8)
    br_from = _Field(STATE_OFF + 0x278, 8)
    br_to = _Field(STATE_OFF + 0x280, 8)
    last_excp_from = _Field(STATE_OFF + 0x288, 8)
    last_excp_to = _Field(STATE_OFF + 0x290, 8)

    __slots__ = ("buf", "es", "cs", "ss", "ds", "fs", "gs", "gdtr", "ldtr", "idtr", "tr")

    def __init__(self, data: bytes | bytearray | None = None) -> None:
        if data is None:
            self.buf = bytearray(VMCB_SIZE)
        else:
            if len(data) != VMCB_SIZE:
                raise VmcbError(f"vmcb: image is {len(data)} bytes, expected {VMCB_SIZE}")
            self.buf = bytearray(data)
        for name in SEGMENT_NAMES:
            object.__setattr__(self, name, Segment(self, name))

    # -- segments -----------------------------------------------------------------------------

    def seg(self, index_or_name: int | str) -> Segment:
        """Segment by contract index (ES=0 .. GS=5) or by name ("cs", "gdtr", ...)."""
        if isinstance(index_or_name, int):
            if not 0 <= index_or_name < 6:
                raise VmcbError(f"vmcb: no segment register {index_or_name}")
            return getattr(self, SEGMENT_NAMES[index_or_name])
        if index_or_name not in SEGMENT_OFFSETS:
            raise VmcbError(f"vmcb: no segment named {index_or_name!r}")
        return getattr(self, index_or_name)

    # -- guest instruction bytes (decode assist) -------------------------------------------------

    @property
    def guest_insn_bytes(self) -> bytes:
        """The valid prefix of the 15 bytes at 0xD1 (length from 0xD0)."""
        n = min(self.guest_insn_len, 15)
        return bytes(self.buf[0xD1:0xD1 + n])

    def set_guest_insn_bytes(self, data: bytes) -> None:
        if len(data) > 15:
            raise VmcbError(f"vmcb: {len(data)} guest instruction bytes, at most 15 fit")
        self.buf[0xD1:0xE0] = bytes(data).ljust(15, b"\0")
        self.guest_insn_len = len(data)

    # -- intercepts ---------------------------------------------------------------------------

    @staticmethod
    def _intercept_slot(name: str) -> tuple[int, int]:
        try:
            return INTERCEPTS[name]
        except KeyError:
            raise VmcbError(f"vmcb: unknown intercept {name!r}") from None

    def _bit(self, offset: int, bit: int) -> bool:
        return bool(self.buf[offset + (bit >> 3)] >> (bit & 7) & 1)

    def _set_bit(self, offset: int, bit: int, on: bool) -> None:
        i = offset + (bit >> 3)
        if on:
            self.buf[i] |= 1 << (bit & 7)
        else:
            self.buf[i] &= ~(1 << (bit & 7)) & 0xFF

    def set_intercept(self, name: str, on: bool = True) -> None:
        offset, bit = self._intercept_slot(name)
        self._set_bit(offset, bit, on)

    def intercepted(self, name: str) -> bool:
        offset, bit = self._intercept_slot(name)
        return self._bit(offset, bit)

    @staticmethod
    def _check_vector(vector: int) -> None:
        if not 0 <= vector < 32:
            raise VmcbError(f"vmcb: exception vector {vector} not in 0..31")

    def set_exception_intercept(self, vector: int, on: bool = True) -> None:
        self._check_vector(vector)
        self._set_bit(OFF_EXCEPTION_INTERCEPTS, vector, on)

    def exception_intercepted(self, vector: int) -> bool:
        self._check_vector(vector)
        return self._bit(OFF_EXCEPTION_INTERCEPTS, vector)

    def intercept_names(self) -> list[str]:
        """Names of every set intercept in VMCB order: CR, DR, exceptions (#DB ...), CTRLn."""
        out: list[str] = []
        excs_done = False
        for name, (offset, bit) in INTERCEPTS.items():
            if offset > OFF_EXCEPTION_INTERCEPTS and not excs_done:
                excs_done = True
                out.extend(exception_mnemonic(v) for v in range(32)
                           if self._bit(OFF_EXCEPTION_INTERCEPTS, v))
            if self._bit(offset, bit):
                out.append(name)
        return out

    # -- clean bits ---------------------------------------------------------------------------

    def clean_names(self) -> list[str]:
        v = self.vmcb_clean
        return [n for i, n in enumerate(CLEAN_BITS) if v >> i & 1]

    # -- display and checkpoints ----------------------------------------------------------------

    @classmethod
    def field_names(cls) -> list[str]:
        return [name for name, attr in _iter_fields(cls)]

    def dump(self) -> list[tuple[str, int]]:
        """(field name, value) for every named field in APM order (segments at 0x400)."""
        out: list[tuple[str, int]] = []
        segs_done = False
        for name, field in _iter_fields(type(self)):
            if not field.in_dump:
                continue
            if field.offset >= STATE_OFF and not segs_done:
                segs_done = True
                for segname in SEGMENT_NAMES:
                    s = self.seg(segname)
                    out.append((f"{segname}.selector", s.selector))
                    out.append((f"{segname}.attrib", s.attrib))
                    out.append((f"{segname}.limit", s.limit))
                    out.append((f"{segname}.base", s.base))
            out.append((name, field.__get__(self)))
            if name == "guest_insn_len":
                out.append(("guest_insn_bytes", int.from_bytes(self.guest_insn_bytes, "big")))
        return out

    def digest(self) -> str:
        return hashlib.sha256(self.buf).hexdigest()

    def copy(self) -> Vmcb:
        return Vmcb(self.buf)

    def field_offset(self, name: str) -> int:
        f = getattr(type(self), name, None)
        if not isinstance(f, _Field):
            raise VmcbError(f"vmcb: no field named {name!r}")
        return f.offset

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vmcb) and self.buf == other.buf

    __hash__ = None  # type: ignore[assignment]


def _iter_fields(cls: type) -> Iterator[tuple[str, _Field]]:
    items = [(name, attr) for name, attr in vars(cls).items() if isinstance(attr, _Field)]
    # Order by offset then bit so the dump reads like the APM table.
    items.sort(key=lambda kv: (kv[1].offset, kv[1].lo, -kv[1].width))
    yield from items


# --- I/O and MSR permission maps ------------------------------------------------------------

IOPM_SIZE = 12 * 1024
MSRPM_SIZE = 8 * 1024


class Iopm:
    """I/O permission map (APM vol 2 15.10.1): one bit per port, 12 KiB.

    A multi-byte access is intercepted if the bit of any port it touches is set; the
    extra bits after port 0xFFFF exist for accesses that wrap past the end.
    """

    __slots__ = ("buf",)

    def __init__(self, data: bytes | None = None) -> None:
        self.buf = bytearray(IOPM_SIZE) if data is None else bytearray(data)
        if len(self.buf) != IOPM_SIZE:
            raise VmcbError(f"iopm: image is {len(self.buf)} bytes, expected {IOPM_SIZE}")

    @staticmethod
    def _check(port: int, size: int) -> None:
        if not 0 <= port <= 0xFFFF:
            raise VmcbError(f"iopm: port {port:#x} out of range")
        if size not in (1, 2, 4):
            raise VmcbError(f"iopm: access size {size} is not 1, 2 or 4")

    def set(self, port: int, on: bool = True, size: int = 1) -> None:
        self._check(port, size)
        for p in range(port, port + size):
            if on:
                self.buf[p >> 3] |= 1 << (p & 7)
            else:
                self.buf[p >> 3] &= ~(1 << (p & 7)) & 0xFF

    def set_all(self, on: bool = True) -> None:
        fill = 0xFF if on else 0
        self.buf[:] = bytes([fill]) * IOPM_SIZE

    def io_intercepted(self, port: int, size: int = 1) -> bool:
        buf = self.buf
        if size == 1 and 0 <= port <= 0xFFFF:       # one bit: the common IN/OUT of a byte
            return bool(buf[port >> 3] >> (port & 7) & 1)
        self._check(port, size)
        return any(buf[p >> 3] >> (p & 7) & 1 for p in range(port, port + size))

    def digest(self) -> str:
        return hashlib.sha256(self.buf).hexdigest()


# MSRPM vectors (APM vol 2 15.11): (first MSR, byte offset); 2 bits per MSR, read then write.
_MSRPM_RANGES = ((0x0000_0000, 0x000), (0xC000_0000, 0x800), (0xC001_0000, 0x1000))
_MSRS_PER_RANGE = 0x2000


def msrpm_bit(msr: int, write: bool) -> int | None:
    """Bit index of `msr` in the MSRPM, or None if the MSR is outside every vector."""
    for first, byte_off in _MSRPM_RANGES:
        if first <= msr < first + _MSRS_PER_RANGE:
            return byte_off * 8 + (msr - first) * 2 + (1 if write else 0)
    return None


class Msrpm:
    """MSR permission map (APM vol 2 15.11): 8 KiB, 2 bits per MSR.

    An MSR outside the three covered ranges is always intercepted.
    """

    __slots__ = ("buf",)

    def __init__(self, data: bytes | None = None) -> None:
        self.buf = bytearray(MSRPM_SIZE) if data is None else bytearray(data)
        if len(self.buf) != MSRPM_SIZE:
            raise VmcbError(f"msrpm: image is {len(self.buf)} bytes, expected {MSRPM_SIZE}")

    def set(self, msr: int, read: bool | None = None, write: bool | None = None) -> None:
        for is_write, on in ((False, read), (True, write)):
            if on is None:
                continue
            bit = msrpm_bit(msr, is_write)
            if bit is None:
                raise VmcbError(f"msrpm: MSR {msr:#x} is not covered by the map")
            if on:
                self.buf[bit >> 3] |= 1 << (bit & 7)
            else:
                self.buf[bit >> 3] &= ~(1 << (bit & 7)) & 0xFF

    def set_range(self, first: int, count: int, read: bool | None = None,
                  write: bool | None = None) -> None:
        """set() on each of the `count` MSRs from `first`, which must lie in one vector
        (their bit pairs are then adjacent): one masked store over the map."""
        if count <= 0:
            return
        lo, hi = msrpm_bit(first, False), msrpm_bit(first + count - 1, False)
        if lo is None or hi is None or hi - lo != 2 * (count - 1):
            raise VmcbError(f"msrpm: MSRs {first:#x}..{first + count - 1:#x} are not in one "
                            "vector of the map")
        pairs = ((1 << 2 * count) - 1) // 3        # bit 0 of every MSR's pair: 0b0101...01
        ones = (pairs if read else 0) | (pairs << 1 if write else 0)
        zeros = (pairs if read is False else 0) | (pairs << 1 if write is False else 0)
        v = int.from_bytes(self.buf, "little")
        v = (v | ones << lo) & ~(zeros << lo)
        self.buf[:] = v.to_bytes(MSRPM_SIZE, "little")

    def set_all(self, on: bool = True) -> None:
        fill = 0xFF if on else 0
        self.buf[:] = bytes([fill]) * MSRPM_SIZE

    def msr_intercepted(self, msr: int, write: bool) -> bool:
        bit = msrpm_bit(msr, write)
        if bit is None:
            return True
        return bool(self.buf[bit >> 3] >> (bit & 7) & 1)

    def digest(self) -> str:
        return hashlib.sha256(self.buf).hexdigest()
