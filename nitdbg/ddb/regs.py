"""The registers ddb shows and writes: those of the trapframe the guest handed to the
debugger (FreeBSD amd64 db_regs[] over kdb_frame), plus the vCPU's debug registers."""

from __future__ import annotations

from ..guest.abi import AMD64_TRAPFRAME, AMD64_TRAPFRAME_SIZE, pack_trapframe, unpack_trapframe

#: db_regs[] order of FreeBSD amd64 (`show registers`), name -> trapframe field.
SHOW_REGS: tuple[tuple[str, str], ...] = (
    ("cs", "tf_cs"), ("ds", "tf_ds"), ("es", "tf_es"), ("fs", "tf_fs"), ("gs", "tf_gs"),
    ("ss", "tf_ss"), ("rax", "tf_rax"), ("rcx", "tf_rcx"), ("rdx", "tf_rdx"),
    ("rbx", "tf_rbx"), ("rsp", "tf_rsp"), ("rbp", "tf_rbp"), ("rsi", "tf_rsi"),
    ("rdi", "tf_rdi"), ("r8", "tf_r8"), ("r9", "tf_r9"), ("r10", "tf_r10"),
    ("r11", "tf_r11"), ("r12", "tf_r12"), ("r13", "tf_r13"), ("r14", "tf_r14"),
    ("r15", "tf_r15"), ("rip", "tf_rip"), ("rflags", "tf_rflags"),
)
FRAME_REGS = dict(SHOW_REGS)
DEBUG_REGS = ("dr0", "dr1", "dr2", "dr3", "dr4", "dr5", "dr6", "dr7")
TF_FIELDS = {f.name for f in AMD64_TRAPFRAME}

__all__ = ["SHOW_REGS", "FRAME_REGS", "DEBUG_REGS", "TF_FIELDS", "AMD64_TRAPFRAME_SIZE",
           "pack_trapframe", "unpack_trapframe"]
