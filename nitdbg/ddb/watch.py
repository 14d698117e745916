"""Hardware data watchpoints in DR0-DR3 (after amd64 db_md_set_watchpoint and
db_md_clr_watchpoint). DR0-3 live in the vCPU; DR7 lives in the VMCB save area and is loaded
on the next VMRUN (load_guest -> update_debug), as on AMD (APM vol 2 15.5.1)."""

from __future__ import annotations

from dataclasses import dataclass

from ..vmm.vm import Vm
from .errors import DdbError

DR7_RW_WRITE, DR7_RW_RDWR, DR7_RW_EXEC = 1, 3, 0
_LEN_BITS = {1: 0, 2: 1, 4: 3, 8: 2}          # DR7 LENn encoding (SDM 17.2.4)
_LEN_OF = {0: 1, 1: 2, 3: 4, 2: 8}
_TYPE_NAMES = {0: "execute", 1: "write", 3: "read/write", 2: "invalid"}


def dr7_enabled(dr7: int, i: int) -> bool:
    return bool((dr7 >> (2 * i)) & 3)


@dataclass(frozen=True)
class HwWatch:
    slot: int
    address: int
    length: int
    access: int


class HwWatchpoints:
    """The same watchpoints on every vCPU, as FreeBSD sets them on every CPU."""

    def __init__(self, vm: Vm):
        self.vm = vm

    def _dr7(self) -> int:
        return self.vm.vcpus[0].vmcb.dr7

    def active(self) -> list[HwWatch]:
        v = self.vm.vcpus[0]
        dr7 = v.vmcb.dr7
        out = []
        for i in range(4):
            if dr7_enabled(dr7, i):
                rw = (dr7 >> (16 + 4 * i)) & 3
                ln = (dr7 >> (18 + 4 * i)) & 3
                out.append(HwWatch(i, v.cpu.dr[i], _LEN_OF[ln], rw))
        return out

    def _apply(self, slot: int, addr: int, dr7: int) -> None:
        for v in self.vm.vcpus:
            v.cpu.dr[slot] = addr
            v.vmcb.dr7 = dr7
            v.cpu.dr[7] = dr7
            v.cpu.update_debug()

    def set(self, addr: int, size: int) -> None:
        """hwatch addr,size: split into 8/4/2/1-byte write watchpoints in free slots."""
        if size <= 0:
            raise DdbError("hardware watchpoint could not be set")
        dr7 = self._dr7()
        free = [i for i in range(4) if not dr7_enabled(dr7, i)]
        plan: list[tuple[int, int, int]] = []
        a, left = addr, size
        for i in free:
            if left <= 0:
                break
            w = 8 if left >= 8 else 4 if left > 2 else left
            while a % w:                  # a DR address must be aligned to its length
                w //= 2
            plan.append((i, a, w))
            a += w
            left -= w
        if left > 0:
            raise DdbError("hardware watchpoint could not be set")
        for i, a, w in plan:
            dr7 &= ~((3 << (2 * i)) | (0xF << (16 + 4 * i)))
            dr7 |= (2 << (2 * i)) | ((DR7_RW_WRITE | (_LEN_BITS[w] << 2)) << (16 + 4 * i))
            self._apply(i, a, dr7)

    def clear(self, addr: int, size: int) -> None:
        """dhwatch addr,size: drop every watchpoint whose address is in [addr, addr+size)."""
        dr7 = self._dr7()
        hit = [w for w in self.active() if addr <= w.address < addr + size]
        if not hit:
            raise DdbError("hardware watchpoint could not be deleted")
        for w in hit:
            dr7 &= ~((3 << (2 * w.slot)) | (0xF << (16 + 4 * w.slot)))
            self._apply(w.slot, 0, dr7)

    def listing(self) -> str:
        out = ["\nhardware watchpoints:\n",
               "  watch    status        type  len             address\n",
               "  -----  --------  ----------  ---  ------------------\n"]
        v = self.vm.vcpus[0]
        dr7 = v.vmcb.dr7
        for i in range(4):
            if dr7_enabled(dr7, i):
                rw = (dr7 >> (16 + 4 * i)) & 3
                ln = _LEN_OF[(dr7 >> (18 + 4 * i)) & 3]
                out.append(f"  {i:<5d}  {'enabled':>8s}  {_TYPE_NAMES[rw]:>10s}  {ln:3d}  "
                           f"0x{v.cpu.dr[i]:016x}\n")
            else:
                out.append(f"  {i:<5d}  {'disabled':>8s}\n")
        return "".join(out)
