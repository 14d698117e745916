"""The `nitdbg` command: the TUI by default, and the console, headless run, scenarios,
replay and bench subcommands."""

from __future__ import annotations

import argparse
import sys

from . import __version__


class _Policies:
    """Every registered NMI policy (the default first), as --policy's choices: read from
    nitdbg.vmm.nmi_policy only when argparse asks (a --policy given, --help), so the TUI's
    first paint does not wait for every policy module and what they import."""

    def _names(self) -> tuple[str, ...]:
        from .vmm.nmi_policy import POLICIES as registered
        return tuple(registered)

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self):  # noqa: ANN204
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


POLICIES = _Policies()


def _record_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--record", metavar="FILE.nitrec",
                   help="record the session here (default: the user's data directory)")
    g.add_argument("--no-record", action="store_true", help="do not record the session")


def _record_target(a: argparse.Namespace) -> str | None:
    if a.no_record:
        return None
    return a.record or ""


# The guests by name: their kernel and the vCPUs they boot with by default (the i386 guest
# is multiboot v1, which starts only the BSP).
GUESTS = {"amd64": ("amd64/kernel.elf", 2), "i386": ("i386/kernel.elf", 1)}


def _machine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--guest", choices=tuple(GUESTS), default=None,
                   help="the guest by name: amd64 (the FreeBSD-like 64-bit kernel, 2 vCPUs; "
                        "the default) or i386 (the 32-bit tsnmi kernel, 1 vCPU)")
    g.add_argument("--kernel", help="a guest ELF of your own (default: --guest amd64)")
    p.add_argument("--vcpus", type=int, default=None,
                   help="number of vCPUs (default: 2 for amd64, 1 for i386 and any multiboot"
                   " kernel, as QEMU's -smp: its APs wait for INIT-SIPI-SIPI)")
    # a metavar: argparse would list the choices (import every policy) to build one
    p.add_argument("--policy", choices=POLICIES, default="iret-tracing", metavar="POLICY",
                   help="how the hypervisor ends NMI blocking: %(choices)s")
    p.add_argument("--ram", type=int, default=64, help="guest RAM in MiB (default 64)")
    p.add_argument("--vm", default="vm2", help="VM name (default vm2, as the seed)")
    p.add_argument("--tunable", action="append", default=[], metavar="NAME=VALUE",
                   help="boot-time tunable, e.g. hw.vmm.trace_guest_exceptions=1")
    p.add_argument("--boot", choices=("auto", "amd64", "multiboot"), default="auto",
                   help="boot path: auto (ELF64 -> nitdbg's long-mode boot, else multiboot),"
                   " or force one (multiboot runs a kernel's own QEMU entry, e.g. the amd64"
                   " firmware's INIT-SIPI-SIPI start of its APs); a recorded session keeps it")


def _machine_kwargs(a: argparse.Namespace) -> dict:
    tunables = {}
    for t in a.tunable:
        name, eq, value = t.partition("=")
        if not eq:
            raise SystemExit(f"nitdbg: --tunable needs NAME=VALUE, not '{t}'")
        tunables[name] = value
    kernel, vcpus = a.kernel, a.vcpus
    if a.guest is not None:
        from .machine import FIRMWARE_DIR
        path, default_vcpus = GUESTS[a.guest]
        kernel = str(FIRMWARE_DIR / path)
        vcpus = default_vcpus if vcpus is None else vcpus
    kw = {"kernel": kernel, "policy": a.policy, "ram_size": a.ram << 20, "name": a.vm,
          "tunables": tunables}
    if vcpus is not None:
        kw["vcpus"] = vcpus
    if getattr(a, "boot", "auto") != "auto":
        kw["boot"] = a.boot
    return kw


def _make_machine(a: argparse.Namespace):
    from .machine import Machine, MachineError
    try:
        return Machine(**_machine_kwargs(a))
    except MachineError as e:
        print(f"nitdbg: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nitdbg",
        description="See, step by step, how a hypervisor on AMD SVM tracks NMI blocking.")
    p.add_argument("--version", action="version", version=f"nitdbg {__version__}")
    sub = p.add_subparsers(dest="cmd")
    t = sub.add_parser("tui", help="the Textual app (the default)")
    _machine_args(t)
    _record_args(t)
    t.add_argument("--gdb", metavar="[HOST:]PORT",
                   help="also serve gdb here (loopback unless a host is given)")
    t.add_argument("--timeline", action="store_true",
                   help="keep the history for `back` / `back-stop` (on with --gdb)")
    c = sub.add_parser("console", help="the machine on a line prompt (host$, guest#, db>)")
    _machine_args(c)
    _record_args(c)
    c.add_argument("--replay", metavar="FILE", help="play a recorded session back")
    c.add_argument("--gdb", metavar="[HOST:]PORT",
                   help="also serve gdb here (loopback unless a host is given)")
    c.add_argument("--timeline", action="store_true",
                   help="keep the history for `back` / `back-stop` at host$ (on with --gdb)")
    r = sub.add_parser("run", help="run a guest ELF headless")
    _machine_args(r)
    r.add_argument("--max-instructions", type=int, default=100_000_000)
    r.add_argument("--max-seconds", type=float, default=10.0,
                   help="stop after this much virtual time (default 10 s)")
    r.add_argument("--sysctl", action="append", default=[], metavar="NAME=VALUE",
                   help="host sysctl to set before running (repeatable)")
    r.add_argument("--serial-out", metavar="FILE", help="write the guest serial output here")
    r.add_argument("--events-out", metavar="FILE.jsonl", help="JSON Lines event log")
    r.add_argument("--trace-instructions", action="store_true",
                   help="include every retired instruction in the events log")
    r.add_argument("--gdb", metavar="[HOST:]PORT",
                   help="wait for gdb here before the first guest instruction (loopback "
                        "unless a host is given); reverse-stepi/continue work")
    d = sub.add_parser("diff", help="compare a multiboot kernel's run with QEMU's, step by step")
    d.add_argument("--qemu", metavar="KERNEL", required=True,
                   help="multiboot kernel run under nitdbg and qemu-system-x86_64 -singlestep")
    d.add_argument("--vcpus", type=int, default=None, help="vCPUs on both sides (default 1)")
    d.add_argument("--max-instructions", type=int, default=20_000,
                   help="instructions per vCPU to compare (default 20000)")
    d.add_argument("--timeout", type=float, default=60.0,
                   help="wall-clock seconds QEMU may run (default 60)")
    sub.add_parser("scenario", help="the seed's test plan as scenarios", add_help=False)
    sub.add_parser("replay", help="replay a recorded .nitrec session", add_help=False)
    sub.add_parser("compare", help="scenario x NMI policy, each against hardware",
                   add_help=False)
    b = sub.add_parser("bench", help="performance figures")
    b.add_argument("--json", action="store_true")
    b.add_argument("--runs", type=int, default=5)
    b.add_argument("--vs-unicorn", action="store_true",
                   help="also run loops a and b under Unicorn (pip install -e '.[bench]')")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("scenario", "replay", "compare"):
        return _delegate(argv[0], argv[1:])
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["tui", *argv]          # no subcommand: the TUI, with its options
    p = build_parser()
    a = p.parse_args(argv)
    try:
        if a.cmd == "tui":
            return _tui(a)
        if a.cmd == "console":
            return _console(a)
        if a.cmd == "run":
            from .runner import run_headless
            if not _check_run(a):
                return 2
            if a.gdb:
                return _run_gdb(a)
            return run_headless(a, _make_machine(a))
        if a.cmd == "diff":
            from .qemudiff import main_diff
            if not _check_diff(a):
                return 2
            return main_diff(a.qemu, a.vcpus, a.max_instructions, a.timeout)
        if a.cmd == "bench":
            from . import bench
            return bench.run(a.json, a.runs, extra=_bench_extras(), vs_unicorn=a.vs_unicorn)
    except KeyboardInterrupt:
        return 130
    p.print_help()
    return 2


def _refuse(msg: str) -> bool:
    print(f"nitdbg: {msg}", file=sys.stderr)
    return False


def _check_run(a: argparse.Namespace) -> bool:
    """`nitdbg run`'s bounds and output files, checked before anything is built or run
    (the fuzzer found nan/inf seconds raising, negative bounds running nothing with exit
    0, and --serial-out DIR raising after the run)."""
    import math
    import os
    if a.max_instructions < 1:
        return _refuse(f"--max-instructions must be at least 1, not {a.max_instructions}")
    if not (math.isfinite(a.max_seconds) and 0 < a.max_seconds <= 1e6):
        return _refuse(f"--max-seconds must be in (0, 1000000], not {a.max_seconds}")
    for s in a.sysctl:
        if "=" not in s:
            return _refuse(f"--sysctl needs NAME=VALUE, not '{s}'")
    for opt, path in (("--serial-out", a.serial_out), ("--events-out", a.events_out)):
        if path is None:
            continue
        parent = os.path.dirname(os.path.abspath(path))
        if not path or os.path.isdir(path) or not os.path.isdir(parent):
            return _refuse(f"{opt} {path!r}: not a file in an existing folder")
    return True


def _check_diff(a: argparse.Namespace) -> bool:
    """`nitdbg diff`'s bounds, before QEMU is started."""
    import math
    if a.max_instructions < 1:
        return _refuse(f"--max-instructions must be at least 1, not {a.max_instructions}")
    if not (math.isfinite(a.timeout) and 0 < a.timeout <= 3600):
        return _refuse(f"--timeout must be in (0, 3600] seconds, not {a.timeout}")
    from .guest.boot import MAX_VCPUS
    if a.vcpus is not None and not 1 <= a.vcpus <= MAX_VCPUS:
        return _refuse(f"--vcpus must be in 1..{MAX_VCPUS}, not {a.vcpus}")
    return True


def _tui(a: argparse.Namespace) -> int:
    try:
        from .tui.app import run_app
    except ImportError as e:
        print(f"nitdbg: the TUI is not available ({e}); try 'nitdbg console'", file=sys.stderr)
        return 1
    import os

    on_machine = None
    if a.gdb or a.timeline:
        try:
            on_machine = _tui_gdb_hook(a)
        except ValueError as e:
            print(f"nitdbg: {e}", file=sys.stderr)
            return 2
    # host$ files are real files in the current directory, as in console (the worker makes
    # them: nitdbg.hostcmds is imported after the first paint)
    return run_app(_machine_kwargs(a), record=_record_target(a), on_machine=on_machine,
                   host_dir=os.getcwd()) or 0


def _tui_gdb_hook(a: argparse.Namespace):  # noqa: ANN202 - the worker's on_machine hook
    """--gdb / --timeline for the TUI: the hook its machine worker calls (on the worker
    thread, once the machine is built and booted) to serve gdb beside it, or to keep the
    history. The worker's inputs go through the machine's @_input methods, which take the
    stub's lock. A bad endpoint raises ValueError here, before the app starts."""
    from .gdb.server import parse_endpoint
    if a.gdb:
        parse_endpoint(a.gdb)

    def on_machine(m, say) -> None:  # noqa: ANN001 - a Machine, say(text, source)
        if a.gdb:
            from .gdb import serve_in_thread
            try:
                srv = serve_in_thread(m, a.gdb, log=lambda s: say(s + "\n", "info"))
            except OSError as e:
                say(f"gdb: {a.gdb}: {e.strerror or e}\n", "error")
                return
            say(f"gdb: serving on {srv.address[0]}:{srv.address[1]}\n", "info")
        else:
            from .timeline import Timeline
            Timeline(m)
    return on_machine


def _console(a: argparse.Namespace) -> int:
    from . import console
    if a.replay:
        try:
            from .session import main_replay
        except ImportError as e:
            print(f"nitdbg: replay is not available ({e})", file=sys.stderr)
            return 1
        return main_replay([a.replay, "--show", "--step", "--verify"])
    target = _record_target(a)
    if target is None:
        m = _make_machine(a)
        return console.main(m) if _console_extras(a, m) else 1
    from .machine import MachineError
    from .session import SessionError, start_recording
    try:
        rec = start_recording(target or None, **_machine_kwargs(a))
    except (MachineError, SessionError, OSError) as e:
        print(f"nitdbg: {e}", file=sys.stderr)
        return 1
    try:
        if not _console_extras(a, rec.machine):
            return 1
        return console.main(rec)
    finally:
        rec.close()
        print(f"session recorded: {rec.path}", file=sys.stderr)


def _console_extras(a: argparse.Namespace, m) -> bool:  # noqa: ANN001 - a Machine
    """--timeline and --gdb for the console; False (after one line) if --gdb cannot serve."""
    if a.gdb:
        from .gdb import serve_in_thread
        try:
            serve_in_thread(m, a.gdb)
        except (ValueError, OSError) as e:
            print(f"nitdbg: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
            return False
    elif a.timeline:
        from .timeline import Timeline
        Timeline(m)
    return True


def _run_gdb(a: argparse.Namespace) -> int:
    """`nitdbg run --gdb`: hold the machine for gdb (like qemu -s -S); after gdb detaches
    the run goes on headless, after `kill` it ends."""
    from .gdb import GdbServer, parse_endpoint
    from .runner import run_headless
    from .timeline import Timeline
    try:
        host, port = parse_endpoint(a.gdb)
    except ValueError as e:
        print(f"nitdbg: {e}", file=sys.stderr)
        return 2
    m = _make_machine(a)
    for s in a.sysctl:
        res = m.vm.sysctl.run([s])
        if res.status:
            print(res.stderr.strip(), file=sys.stderr)
            return 1
    a.sysctl = []
    try:
        server = GdbServer(m, host, port)
    except OSError as e:
        print(f"nitdbg: --gdb {host}:{port}: {e.strerror or e}", file=sys.stderr)
        return 1
    Timeline(m)
    how = server.serve()
    if how == "kill":
        sys.stdout.buffer.write(m.console_output())
        sys.stdout.flush()
        return 0
    m.timeline = None                  # gdb has gone: no more history to keep
    return run_headless(a, m)


def _delegate(cmd: str, rest: list[str]) -> int:
    try:
        if cmd == "scenario":
            from .scenarios import main_scenario
            return main_scenario(rest)
        if cmd == "compare":
            from .compare import main_compare
            return main_compare(rest)
        from .session import main_replay
        return main_replay(rest)
    except ImportError as e:
        print(f"nitdbg: '{cmd}' is not available ({e})", file=sys.stderr)
        return 1


def _bench_extras() -> dict:
    extras = {}
    try:
        from .scenarios import bench_figures as scen
        extras["scenarios"] = scen
    except ImportError:
        pass
    try:
        from .tui.bench import bench_figures as tui
        extras["tui"] = tui
    except ImportError:
        pass
    from .gdb.bench import bench_figures as gdb
    extras["gdb"] = gdb
    return extras


if __name__ == "__main__":
    sys.exit(main())
