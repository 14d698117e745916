"""firmware/amd64: the committed kernel.elf is current, agrees with nitdbg.guest.abi, has
the code shapes the tools rely on, and works under QEMU (boot, shell, sysctl, NMI, ^C)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import capstone
import pytest
from elftools.elf.elffile import ELFFile
from hypothesis import given
from hypothesis import strategies as st
from qemu_serial import QemuSerial

from nitdbg.guest import abi, load_elf
from nitdbg.guest.boot import load_amd64

FW = Path(__file__).resolve().parent.parent / "firmware" / "amd64"
KERNEL = FW / "kernel.elf"
QEMU = shutil.which("qemu-system-x86_64")


def _loadable(path: Path) -> tuple[int, list[tuple[int, int, int, int, bytes]]]:
    img = load_elf(path)
    return img.entry, [(s.paddr, s.vaddr, s.memsz, s.flags, s.data) for s in img.segments]


@pytest.mark.skipif(
    not all(shutil.which(t) for t in ("make", "gcc", "ld")), reason="needs make, gcc and ld"
)
def test_committed_kernel_matches_a_fresh_build(tmp_path: Path) -> None:
    subprocess.run(
        ["make", "-s", "-C", str(FW), f"O={tmp_path}"], check=True, capture_output=True, text=True
    )
    assert _loadable(tmp_path / "kernel.elf") == _loadable(KERNEL), (
        "firmware/amd64/kernel.elf is stale: run `make -C firmware/amd64` and commit it"
    )


def test_kernel_is_linked_at_kernbase_plus_2m_and_boots_through_the_loader() -> None:
    img = load_elf(KERNEL)
    assert img.elfclass == 64 and img.machine == "EM_X86_64"
    (seg,) = img.segments
    assert (seg.vaddr, seg.paddr) == (abi.KERNEL_LOAD_VA, abi.KERNEL_LOAD_VA - abi.KERNBASE)
    missing = [s for s in abi.REQUIRED_SYMBOLS if s not in img.symbols]
    assert not missing, f"missing symbols: {missing}"
    boot = load_amd64(KERNEL, ncpus=2)
    assert boot.entry == img.symbols.address(abi.SYM_ENTRY)
    assert [v.gprs for v in boot.vcpus] == [{"rsi": 2}, {"rdi": 1, "rsi": 2}]


def _functions() -> dict[str, tuple[int, int]]:
    """FUNC symbols with a size: name -> (address, size)."""
    with KERNEL.open("rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        return {
            s.name: (s["st_value"], s["st_size"])
            for s in symtab.iter_symbols()
            if s["st_info"]["type"] == "STT_FUNC" and s["st_size"] > 0
        }


def _disasm(name: str, count: int | None = None) -> list[str]:
    img = load_elf(KERNEL)
    addr, size = _functions()[name]
    (seg,) = img.segments
    code = seg.data[addr - seg.vaddr : addr - seg.vaddr + size]
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    out = []
    for insn in md.disasm(code, addr):
        op = insn.op_str
        for m in re.findall(r"0x[0-9a-f]{6,}", op):  # branch targets by name
            hit = img.symbols.lookup(int(m, 16))
            if hit and hit[1] == 0:
                op = op.replace(m, hit[0])
        out.append(f"{insn.mnemonic} {op}".strip())
        if len(out) == count:
            break
    return out


def test_cpu_idle_acpi_is_exactly_sti_hlt_ret() -> None:
    # An NMI taken while halted pushes the address of the `ret` inside cpu_idle_acpi.
    assert _disasm(abi.SYM_CPU_IDLE) == ["sti", "hlt", "ret"]


def test_nmi_stub_builds_a_trapframe_and_returns_by_its_own_iretq() -> None:
    # push tf_err; make room down to tf_rdi; tf_trapno = T_NMI (19).
    assert _disasm(abi.SYM_NMI_HANDLER, 3) == [
        "push 0",
        f"sub rsp, {abi.trapframe_field('tf_err').offset:#x}",
        f"mov dword ptr [rsp + {abi.trapframe_field('tf_trapno').offset:#x}], 0x13",
    ]
    code = _disasm(abi.SYM_NMI_HANDLER)
    assert code[-2:] == [f"add rsp, {abi.trapframe_field('tf_rip').offset:#x}", "iretq"]
    img = load_elf(KERNEL)
    nmi_iret = img.symbols.address(abi.SYM_NMI_IRET)
    assert nmi_iret == sum(_functions()[abi.SYM_NMI_HANDLER]) - 2  # the final iretq


def test_common_exit_iretq_is_doreti_iret_and_fault_fixup_reenters_as_t_protflt() -> None:
    assert _disasm(abi.SYM_ALLTRAPS)[-1] == "iretq"
    img = load_elf(KERNEL)
    assert img.symbols.address(abi.SYM_DORETI_IRET) == sum(_functions()[abi.SYM_ALLTRAPS]) - 2
    assert _disasm(abi.SYM_DORETI_IRET_FAULT) == [
        f"sub rsp, {abi.trapframe_field('tf_rip').offset:#x}",
        f"mov qword ptr [rsp + {abi.trapframe_field('tf_err').offset:#x}], 0",
        f"mov dword ptr [rsp + 0x78], {abi.TrapType.T_PROTFLT:d}",
        f"jmp {abi.SYM_ALLTRAPS}",
    ]


def test_nmi_handler_path_reads_port_0x61_and_kdb_uses_the_hypercall_port() -> None:
    assert "in al, 0x61" in _disasm("isa_nmi")
    assert f"out {abi.NIT_HC_PORT:#x}, eax" in _disasm(abi.SYM_KDB_HYPERCALL)


def test_spin_loops_use_pause() -> None:
    for name in abi.SPIN_FUNCTIONS:
        assert "pause" in _disasm(name), name


def test_no_sse_x87_or_mmx_register_in_any_function() -> None:
    bad = re.compile(r"\b([xyz]mm\d+|st\(\d\)|mm\d)\b")
    for name in _functions():
        hits = [i for i in _disasm(name) if bad.search(i)]
        assert not hits, f"{name}: {hits}"


def _param_h() -> dict[str, int]:
    text = (FW / "param.h").read_text()
    return {
        m.group(1): int(m.group(2), 0)
        for m in re.finditer(r"^#define\s+(\w+)\s+(0x[0-9a-fA-F]+|\d+)\b", text, re.M)
    }


def test_param_h_agrees_with_the_abi_module() -> None:
    defs = _param_h()
    for f in abi.AMD64_TRAPFRAME:
        assert defs[f.name.upper()] == f.offset, f.name
    assert defs["TF_SIZE"] == abi.AMD64_TRAPFRAME_SIZE
    for t in abi.TrapType:
        assert defs[t.name] == t.value, t.name
    for name in ("NIT_HC_PORT", "NIT_HC_KDB_ENTER", "NIT_HC_PANIC", "IDT_COM1", "IDT_SYSCALL",
                 "IDT_TIMER",
                 "IDT_ERROR", "IDT_SPURIOUS", "GCODE_SEL", "GDATA_SEL", "GUDATA_SEL",
                 "GUCODE_SEL", "GUCODE32_SEL", "GPROC0_SEL", "USER_BASE", "USER_STACK_TOP",
                 "KERNBASE"):  # fmt: skip
        assert defs[name] == getattr(abi, name), name
    sysctl_c = (FW / "sysctl.c").read_text()
    for s in abi.GUEST_SYSCTLS.values():
        assert re.search(rf'"{re.escape(s.name)}", [(&void *)]*{s.symbol},', sysctl_c), s.name


def test_trapframe_layout_is_contiguous_and_192_bytes() -> None:
    end = 0
    for f in abi.AMD64_TRAPFRAME:
        assert f.offset == end, f.name
        end += f.size
    assert end == abi.AMD64_TRAPFRAME_SIZE == 192


@given(st.dictionaries(st.sampled_from([f.name for f in abi.AMD64_TRAPFRAME]),
                       st.integers(0, 2**16 - 1)))  # fmt: skip
def test_trapframe_pack_unpack_round_trip(values: dict[str, int]) -> None:
    frame = abi.unpack_trapframe(abi.pack_trapframe(values))
    assert {k: frame[k] for k in values} == values
    assert all(v == 0 for k, v in frame.items() if k not in values)


def test_trapframe_helpers_reject_bad_input_with_one_line() -> None:
    with pytest.raises(abi.AbiError, match="192 bytes, got 10"):
        abi.unpack_trapframe(bytes(10))
    with pytest.raises(abi.AbiError, match="no trapframe field 'tf_eip'"):
        abi.pack_trapframe({"tf_eip": 1})
    with pytest.raises(abi.AbiError, match="does not fit in 2 bytes"):
        abi.pack_trapframe({"tf_cs": 1 << 16} | {"tf_ds": 1 << 16})
    base = abi.pack_trapframe({"tf_rip": 5})
    assert abi.unpack_trapframe(abi.pack_trapframe({"tf_rflags": 0x346}, base))["tf_rip"] == 5


def test_trap_names_follow_freebsd_trap_msg() -> None:
    assert abi.trap_name(abi.TrapType.T_PROTFLT) == "general protection fault"
    assert abi.trap_name(abi.TrapType.T_BPTFLT) == "breakpoint instruction fault"
    assert abi.trap_name(abi.TrapType.T_TRCTRAP) == "trace trap"
    assert abi.trap_name(abi.TrapType.T_NMI) == "non-maskable interrupt trap"
    assert abi.VECTOR_TO_TRAPTYPE[13] == abi.TrapType.T_PROTFLT
    assert sorted(abi.VECTOR_TO_TRAPTYPE) == list(range(32))
    assert abi.user_rip_to_image(0x400010, 0xFFFFFFFF80204000) == 0xFFFFFFFF80204010


# --- under QEMU ---------------------------------------------------------------------------

needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not found")


def _boot(**kw: object) -> QemuSerial:
    return QemuSerial(KERNEL, qemu=QEMU, timeout=10, **kw)  # type: ignore[arg-type]


@needs_qemu
def test_qemu_boot_banner_prompt_and_sysctl_round_trip() -> None:
    with _boot() as q:
        assert q.expect("# ") == "nitdbg amd64 firmware: 1 CPUs\n# "
        t1 = int(q.send_line("sysctl kern.ticks").removeprefix("kern.ticks: "))
        assert q.send_line("sysctl machdep.kdb_on_nmi") == "machdep.kdb_on_nmi: 0\n"
        assert q.send_line("sysctl machdep.kdb_on_nmi=1") == "machdep.kdb_on_nmi: 0 -> 1\n"
        assert q.send_line("sysctl machdep.kdb_on_nmi") == "machdep.kdb_on_nmi: 1\n"
        assert q.send_line("sysctl hw.ncpu") == "hw.ncpu: 1\n"
        assert q.send_line("sysctl kern.ostype") == "kern.ostype: FreeBSD\n"
        assert q.send_line("sysctl kern.ticks=5") == "sysctl: oid 'kern.ticks' is read only\n"
        assert q.send_line("sysctl no.such") == "sysctl: unknown oid 'no.such'\n"
        assert q.send_line("frob x") == "frob: not found\n"
        assert "while [ 1 ]; do : done" in q.send_line("help")
        t2 = int(q.send_line("sysctl kern.ticks").removeprefix("kern.ticks: "))
        assert t2 > t1 > 0


@needs_qemu
def test_qemu_nmi_runs_the_handler_and_kdb_on_nmi_enters_the_debugger(tmp_path: Path) -> None:
    log = tmp_path / "int.log"
    with _boot(extra_args=("-d", "int", "-D", str(log))) as q:
        q.expect("# ")
        q.monitor("nmi")  # kdb_on_nmi=0: handled and returned
        assert q.send_line("sysctl machdep.kdb_on_nmi=1") == "machdep.kdb_on_nmi: 0 -> 1\n"
        q.monitor("nmi")  # the hypercall is a no-op under QEMU, so kdb_trap returns
        q.expect("NMI ... going to debugger\n")
        assert q.send_line("sysctl machdep.kdb_on_nmi=0") == "machdep.kdb_on_nmi: 1 -> 0\n"
    nmis = re.findall(r"v=02 .* IP=0020:([0-9a-f]+)", log.read_text(errors="replace"))
    assert len(nmis) == 2
    # Both taken in the kernel (mostly idle: RIP = the `ret` after `hlt` in cpu_idle_acpi).
    assert all(int(ip, 16) >= abi.KERNEL_LOAD_VA for ip in nmis), nmis


@needs_qemu
def test_qemu_while_loop_spins_in_ring_3_until_ctrl_c() -> None:
    with _boot() as q:
        q.expect("# ")
        q._pump(0)
        start = len(q.transcript)
        q.send("while [ 1 ]; do : done\r")
        q.expect("done\n", since=start)
        # Mostly in ring 3 (a snapshot may land in the clock interrupt instead).
        snaps = []
        for _ in range(10):
            snaps.append(q.monitor("info registers"))
            if "CPL=3" in snaps[-1]:
                break
            time.sleep(0.05)
        assert any(re.search(r"^CS =0043 ", r, re.M) and "CPL=3" in r for r in snaps), snaps[0]
        q.send("\x03")
        assert q.expect("# ", since=start).endswith("done\n^C\n# ")
        assert q.send_line("sysctl hw.ncpu") == "hw.ncpu: 1\n"


@needs_qemu
def test_qemu_smp_nmi_with_kdb_on_nmi_0_is_handled_on_every_cpu() -> None:
    with _boot(extra_args=("-smp", "2")) as q:
        assert q.expect("# ").startswith("nitdbg amd64 firmware: 2 CPUs\n")
        q.monitor("nmi")  # QEMU's `nmi` asserts LINT1 on every CPU
        assert q.send_line("sysctl hw.ncpu") == "hw.ncpu: 2\n"
        syms = load_elf(KERNEL).symbols
        rips = re.findall(r"RIP=([0-9a-f]{16})", q.monitor("info registers -a"))
        where = [syms.lookup(int(r, 16)) for r in rips]
        assert len(where) == 2 and not any(w and w[0] in abi.SPIN_FUNCTIONS for w in where)
