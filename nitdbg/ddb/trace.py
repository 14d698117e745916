"""`bt` / `trace` / `where` (after sys/amd64/amd64/db_trace.c): start at the trapped
instruction of the debugger's frame, guess the first frame from the instruction there, then
follow the %rbp chain; a return into calltrap / nmi_calltrap / Xdblfault (or an interrupt
stub) means a trapframe sits above the frame, printed as `--- trap ... ---`.

The walk needs frame pointers: a kernel built without -fno-omit-frame-pointer gives only
the frames that can be found from the trapframe itself."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..guest.abi import KERNBASE, unpack_trapframe
from .errors import DdbError

if TYPE_CHECKING:
    from .main import Ddb

TRAP_FRAMES = ("calltrap", "fork_trampoline", "nmi_calltrap", "Xdblfault")
INTR_FRAMES = ("Xtimerint", "Xerrorint", "Xspuriousint")
SYSCALL_FRAMES = ("Xfast_syscall", "Xint0x80_syscall")
MAX_FRAMES = 1024


def inkernel(addr: int) -> bool:
    return addr >= KERNBASE


def _name(db: Ddb, addr: int) -> str:
    hit = db.symbols.lookup(addr)
    return hit[0] if hit else f"{addr:#x}"


def backtrace(db: Ddb, count: int = -1) -> str:
    tf = db.frame()
    pc, rsp, frame = tf["tf_rip"], tf["tf_rsp"], tf["tf_rbp"]
    out = [f"Tracing pid {db.thread[0]} tid {db.thread[1]}\n"]
    limited = count < 0 or count > MAX_FRAMES
    count = MAX_FRAMES if limited else count
    first = True
    q = db.read_q
    while count > 0:
        count -= 1
        name = _name(db, pc)
        hit = db.symbols.lookup(pc)
        offset = hit[1] if hit else pc
        actframe = frame
        if first:
            first = False
            try:
                instr = int.from_bytes(db.read(pc, 4), "little")
            except DdbError:
                instr = 0
            if instr == 0xE5894855:              # pushq %rbp; movq %rsp,%rbp
                actframe = rsp - 8
            elif instr & 0xFFFFFF == 0xE58948:   # movq %rsp,%rbp
                actframe = rsp
            elif instr & 0xFF == 0xC3 or offset == 0:   # ret, or an assembler symbol
                actframe = rsp - 8
        out.append(f"{name}() at {db.symbols.format(pc)}/frame {actframe:#x}\n")
        try:
            if actframe != frame:
                # `frame` belongs to the caller
                pc = q(actframe + 8)
                continue
            rip, rbp = q(frame + 8), q(frame)
        except DdbError:
            break
        caller = _name(db, rip - 1)
        kind = ("trap" if caller in TRAP_FRAMES else "interrupt" if caller in INTR_FRAMES
                else "syscall" if caller in SYSCALL_FRAMES else None)
        if kind is not None:
            out.append(f"{caller}() at {db.symbols.format(rip)}/frame {frame:#x}\n")
            tfa = frame + 16
            if inkernel(tfa):
                try:
                    t = unpack_trapframe(db.read(tfa, 192))
                except DdbError:
                    break
                rip, rbp = t["tf_rip"], t["tf_rbp"]
                head = (f"--- trap {t['tf_trapno']:#x}" if kind == "trap"
                        else f"--- syscall ({t['tf_rax']})" if kind == "syscall"
                        else "--- interrupt")
                out.append(f"{head}, rip = {rip:#x}, rsp = {t['tf_rsp']:#x}, "
                           f"rbp = {rbp:#x} ---\n")
        pc, frame = rip, rbp
        if inkernel(pc) and not inkernel(frame):
            out.append(f"{_name(db, pc)}() at {db.symbols.format(pc)}/frame {frame:#x}\n")
            break
        if not inkernel(frame):
            break
    else:
        if limited:        # say the walk was cut, rather than end as if the chain ended
            out.append(f"--- stopped after {MAX_FRAMES} frames: the frame chain goes on "
                       "(it may loop) ---\n")
    return "".join(out)
