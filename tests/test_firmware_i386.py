"""firmware/i386: the committed kernel.elf is current, has what nitdbg needs, and works
under QEMU: the tsnmi module's task-gate NMI handler runs on every NMI."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import capstone
import pytest
from qemu_serial import QemuSerial, find_qemu, run_script

from nitdbg.guest import load_elf, load_kernel
from nitdbg.guest.multiboot import find_header

FW = Path(__file__).resolve().parent.parent / "firmware" / "i386"
KERNEL = FW / "kernel.elf"

REQUIRED_SYMBOLS = [
    "_start", "kmain", "cpu_idle", "breakpoint", "alltraps", "doreti", "doreti_iret", "trap",
    "Xnmi", "Xdbg", "Xbpt", "Xprot", "Xtimerint", "Xspuriousint", "tsnmi_handler", "tsnmi_iret",
    "tsnmi_load", "debug_tsnmi", "nmi_count", "ticks", "kdb_on_nmi", "common_tss", "idt", "gdt",
]  # fmt: skip


def _loadable(path_or_bytes: Path | bytes) -> tuple[int, list[tuple[int, int, int, int, bytes]]]:
    img = load_elf(path_or_bytes)
    return img.entry, [(s.paddr, s.vaddr, s.memsz, s.flags, s.data) for s in img.segments]


@pytest.mark.skipif(
    not all(shutil.which(t) for t in ("make", "gcc", "ld")), reason="needs make, gcc and ld"
)
def test_committed_kernel_matches_a_fresh_build(tmp_path: Path) -> None:
    subprocess.run(
        ["make", "-s", "-C", str(FW), f"O={tmp_path}"], check=True, capture_output=True, text=True
    )
    fresh = tmp_path / "kernel.elf"
    assert _loadable(fresh) == _loadable(KERNEL), (
        "firmware/i386/kernel.elf is stale: run `make -C firmware/i386` and commit it"
    )


def test_kernel_is_a_multiboot_elf32_with_the_required_symbols() -> None:
    raw = KERNEL.read_bytes()
    hdr = find_header(raw)
    assert hdr is not None and hdr.offset < 8192 and not hdr.aout_kludge
    img = load_elf(raw)
    assert img.elfclass == 32 and img.machine == "EM_386"
    missing = [s for s in REQUIRED_SYMBOLS if s not in img.symbols]
    assert not missing, f"missing symbols: {missing}"
    assert not any(s.flags & 2 and s.flags & 1 for s in img.segments), "no W+X segment"
    boot = load_kernel(KERNEL, 1)
    assert boot.mode == "protected" and boot.entry == img.symbols.address("_start")


def _disasm(name: str, count: int) -> list[str]:
    img = load_elf(KERNEL)
    addr = img.symbols.address(name)
    (seg,) = [s for s in img.segments if s.vaddr <= addr < s.vaddr + s.filesz]
    code = seg.data[addr - seg.vaddr : addr - seg.vaddr + 32]
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
    out = []
    for insn in md.disasm(code, addr):
        op = insn.op_str
        # Branch and memory targets by name, so the test reads like the source.
        for m in re.findall(r"0x[0-9a-f]+", op):
            hit = img.symbols.lookup(int(m, 16))
            if hit and hit[1] == 0:
                op = op.replace(m, hit[0])
        out.append(f"{insn.mnemonic} {op}".strip())
        if len(out) == count:
            break
    return out


def test_cpu_idle_is_sti_hlt() -> None:
    assert _disasm("cpu_idle", 3) == ["sti", "hlt", "ret"]


def test_tsnmi_handler_reads_port_0x61_counts_irets_and_starts_over() -> None:
    # The IRET with NT=1 returns through the TSS back link; the next NMI resumes the
    # task at the JMP, which goes back to the start (SDM vol 3, 7.3 and 7.4).
    assert _disasm("tsnmi_handler", 4) == [
        "in al, 0x61",
        "inc dword ptr [debug_tsnmi]",
        "iretd",
        "jmp tsnmi_handler",
    ]


def test_nmi_interrupt_gate_stub_builds_a_freebsd_trapframe() -> None:
    # pushl $0 (tf_err); pushl $T_NMI (19, tf_trapno); then alltraps: pushal; ds; es; fs.
    assert _disasm("Xnmi", 3) == ["push 0", "push 0x13", "jmp alltraps"]
    assert _disasm("alltraps", 4) == ["pushal", "push ds", "push es", "push fs"]


def test_multiboot_header_flags_ask_for_memory_info() -> None:
    raw = KERNEL.read_bytes()
    hdr = find_header(raw)
    assert hdr is not None
    magic, flags, checksum = struct.unpack_from("<3I", raw, hdr.offset)
    assert (magic, flags) == (0x1BADB002, 0x3) and (magic + flags + checksum) & 0xFFFFFFFF == 0


# --- under QEMU ---------------------------------------------------------------

needs_qemu = pytest.mark.skipif(find_qemu() is None, reason="qemu-system-i386/x86_64 not found")


def _value(out: str, name: str) -> str:
    m = re.search(rf"^{re.escape(name)}: (.*)$", out, re.M)
    assert m, f"no {name} in {out!r}"
    return m.group(1)


@needs_qemu
def test_qemu_boot_banner_prompt_and_sysctl_round_trip() -> None:
    with QemuSerial(KERNEL, timeout=15) as q:
        banner = q.expect("# ")
        assert banner.startswith("nit/i386 test kernel (tsnmi)\n")
        assert "LINT1 NMI" in banner
        assert q.send_line("sysctl kern.ostype") == "kern.ostype: FreeBSD\n"
        assert q.send_line("sysctl kern.ostype=nit") == "kern.ostype: FreeBSD -> nit\n"
        assert q.send_line("sysctl kern.ostype") == "kern.ostype: nit\n"
        assert q.send_line("sysctl machdep.kdb_on_nmi=1") == "machdep.kdb_on_nmi: 0 -> 1\n"
        assert q.send_line("sysctl debug.tsnmi=5") == "sysctl: oid 'debug.tsnmi' is read only\n"
        assert q.send_line("sysctl no.such") == "sysctl: unknown oid 'no.such'\n"
        assert q.send_line("frob") == "frob: Command not found.\n"
        assert "kldload tsnmi" in q.send_line("help")
        assert int(_value(q.send_line("sysctl kern.ticks"), "kern.ticks")) > 0


@needs_qemu
def test_qemu_nmi_through_interrupt_gate_then_through_the_tsnmi_task_gate() -> None:
    with QemuSerial(KERNEL, timeout=15) as q:
        q.expect("# ")
        # Without the module: the ordinary interrupt-gate handler counts.
        q.monitor("nmi")
        out = q.send_line("sysctl debug.nmi_count debug.tsnmi")
        assert (_value(out, "debug.nmi_count"), _value(out, "debug.tsnmi")) == ("1", "0")

        assert q.send_line("kldload tsnmi").startswith("tsnmi: loaded")
        q.monitor("nmi")
        assert q.send_line("sysctl debug.tsnmi") == "debug.tsnmi: 1\n"
        # A second NMI re-enters the task: the first IRET really went back through the link.
        q.monitor("nmi")
        out = q.send_line("sysctl debug.tsnmi debug.nmi_count")
        assert (_value(out, "debug.tsnmi"), _value(out, "debug.nmi_count")) == ("2", "1")
        # Back in the kernel's own task, with the NMI TSS no longer busy (type 9).
        regs = q.monitor("info registers")
        assert re.search(r"^TR\s*=0018\b", regs, re.M), regs
        nmi_tss_desc = load_elf(KERNEL).symbols.address("gdt") + 0x20
        words = q.monitor(f"xp /2wx {nmi_tss_desc:#x}").split(":")[1].split()
        assert (int(words[1], 16) >> 8) & 0xF == 0x9, f"NMI TSS still busy: {words}"
        assert "module already loaded" in q.send_line("kldload tsnmi")

        assert q.send_line("kldunload tsnmi") == "tsnmi: unloaded\n"
        q.monitor("nmi")
        out = q.send_line("sysctl debug")
        assert (_value(out, "debug.tsnmi"), _value(out, "debug.nmi_count")) == ("2", "2")


@needs_qemu
def test_qemu_run_script_transcript_of_the_seed_tsnmi_sequence() -> None:
    transcript = run_script(
        KERNEL,
        [
            ("serial", "kldload tsnmi"),
            ("monitor", "nmi"),
            ("serial", "sysctl debug.tsnmi"),
            ("monitor", "nmi"),
            ("serial", "sysctl debug.tsnmi"),
        ],
        timeout=15,
    )
    after_banner = transcript[transcript.index("# ") :]
    assert re.fullmatch(
        r"# kldload tsnmi\ntsnmi: loaded[^\n]*\n"
        r"# sysctl debug.tsnmi\ndebug.tsnmi: 1\n"
        r"# sysctl debug.tsnmi\ndebug.tsnmi: 2\n# ",
        after_banner,
    ), after_banner
