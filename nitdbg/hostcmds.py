"""The host shell of the seed: bhyvectl, sysctl, ktrdump, sleep, cat and `| grep`, typed
exactly as the test plan types them (a leading `sudo` is accepted and ignored).

Files written with `ktrdump -o` live in the machine's own small file table, so a session
replays the same way on every machine; `cat` reads them back.
"""

from __future__ import annotations

import re
import shlex
from typing import TYPE_CHECKING

from .svm.intinfo import IntInfo
from .vmm.ktr import run_ktrdump

POWERED_OFF = "vm {name} is powered off (bhyvectl --vm={name} --force-reset boots it again)"

if TYPE_CHECKING:
    from .machine import Machine

NS_PER_SEC = 1_000_000_000

BHYVECTL_USAGE = (
    "Usage: bhyvectl --vm=<vmname>\n"
    "       [--cpu=<vcpu_number>]\n"
    "       [--inject-nmi]\n"
    "       [--assert-lapic-lvt=<pin>]\n"
    "       [--get-stats]\n"
    "       [--get-rip]\n"
    "       [--get-rflags]\n"
    "       [--get-dr6]\n"
    "       [--get-intinfo]\n"
    "       [--get-vmcb-intercepts]\n"
    "       [--get-vmcb-exit-details]\n"
    "       [--get-vmcb-virq]\n"
    "       [--capname=<capname>]\n"
    "       [--setcap=<0|1>]\n"
    "       [--getcap]\n"
    "       [--force-reset]\n"
    "       [--force-poweroff]\n")
_FLAGS = ("force-reset", "force-poweroff", "inject-nmi", "get-stats", "get-rip", "get-rflags",
          "get-dr6", "get-intinfo", "get-vmcb-intercepts", "get-vmcb-exit-details",
          "get-vmcb-virq", "getcap")
_VALUED = ("vm", "cpu", "assert-lapic-lvt", "capname", "setcap")
CAPS = ("pause_exit",)


class HostShell:
    """Runs host command lines against a Machine and returns what a terminal would show."""

    def __init__(self, machine: Machine):
        self.m = machine
        self.files: dict[str, str] = {}

    def run(self, line: str) -> str:
        line = line.strip()
        if not line:
            return ""
        try:
            stages = [shlex.split(s) for s in _split_pipes(line)]
        except ValueError as e:
            return f"sh: syntax error: {e}\n"
        out = ""
        for i, argv in enumerate(stages):
            if argv and argv[0] == "sudo":
                argv = argv[1:]
            if not argv:
                return "sh: syntax error near unexpected token `|'\n"
            if i == 0:
                out = self._command(argv)
            elif argv[0] == "grep":
                out = _grep(argv[1:], out)
            else:
                return f"sh: only grep may follow a pipe here, not '{argv[0]}'\n"
        return out

    def _command(self, argv: list[str]) -> str:
        name, args = argv[0], argv[1:]
        fn = {"bhyvectl": self.bhyvectl, "sysctl": self.sysctl, "ktrdump": self.ktrdump,
              "sleep": self.sleep, "cat": self.cat, "grep": lambda a: _grep(a, "")}.get(name)
        if fn is None:
            return f"{name}: command not found (host commands: bhyvectl, sysctl, ktrdump, " \
                   "sleep, cat, grep)\n"
        return fn(args)

    # ------------------------------------------------------------------ sysctl / ktrdump
    def sysctl(self, args: list[str]) -> str:
        if not args:
            return "usage: sysctl [-bdehiNnoqTtWx] [ -B <bufsize> ] [-f filename] " \
                   "name[=value] ...\n"
        res = self.m.vm.sysctl.run(args)
        return res.stdout + res.stderr

    def ktrdump(self, args: list[str]) -> str:
        res = run_ktrdump(self.m.vm.ktr, args)
        if res.outfile is not None and not res.status:
            self.files[res.outfile] = res.text
        return res.stdout + res.stderr

    def cat(self, args: list[str]) -> str:
        out = []
        for a in args:
            if a in self.files:
                out.append(self.files[a])
            else:
                out.append(f"cat: {a}: No such file or directory\n")
        return "".join(out)

    def sleep(self, args: list[str]) -> str:
        if len(args) != 1:
            return "usage: sleep seconds\n"
        try:
            secs = float(args[0])
            if secs < 0 or secs > 3600:
                raise ValueError
        except ValueError:
            return f"sleep: invalid time interval: {args[0]}\n"
        self.m.run(until_ns=self.m.now() + int(secs * NS_PER_SEC))
        return ""

    # ------------------------------------------------------------------ bhyvectl
    def bhyvectl(self, args: list[str]) -> str:
        # Parse and validate the whole command line first: a rejected command changes nothing.
        opts: dict[str, str | bool] = {}
        for a in args:
            if not a.startswith("--"):
                return f"bhyvectl: unexpected argument '{a}'\n" + BHYVECTL_USAGE
            key, eq, val = a[2:].partition("=")
            if key in _FLAGS and not eq:
                opts[key] = True
            elif key in _VALUED and eq:
                opts[key] = val
            else:
                return f"bhyvectl: unrecognized option `{a}'\n" + BHYVECTL_USAGE
        vmname = opts.get("vm")
        if not vmname:
            return BHYVECTL_USAGE
        if vmname != self.m.vm.name:
            return f"vm_open: {vmname} could not be opened: No such file or directory " \
                   f"(the VM is {self.m.vm.name})\n"
        ncpu = len(self.m.vcpus)
        try:
            cpu = int(str(opts.get("cpu", "0")), 0)
        except ValueError:
            return f"bhyvectl: invalid vcpu '{opts['cpu']}' (0 to {ncpu - 1}, or -1 for all)\n"
        if cpu != -1 and not 0 <= cpu < ncpu:
            return f"bhyvectl: vcpu {cpu} out of range (the VM has {ncpu} vcpus: 0 to " \
                   f"{ncpu - 1}, or -1 for all)\n"
        cpus = list(range(ncpu)) if cpu == -1 else [cpu]
        pin = None
        if "assert-lapic-lvt" in opts:
            try:
                pin = int(str(opts["assert-lapic-lvt"]), 0)
                if not 0 <= pin <= 5:
                    raise ValueError
            except ValueError:
                return f"bhyvectl: invalid lapic lvt pin '{opts['assert-lapic-lvt']}' " \
                       "(0 to 5; 1 is LINT1, wired to NMI)\n"
        cap = None
        if "capname" in opts:
            cap = str(opts["capname"])
            if cap not in CAPS:
                return f"bhyvectl: capability \"{cap}\" is not supported (capabilities: " \
                       f"{', '.join(CAPS)})\n"
            if "setcap" in opts and opts["setcap"] not in ("0", "1"):
                return f"bhyvectl: invalid setcap value '{opts['setcap']}' (0 or 1)\n"
        elif "setcap" in opts or opts.get("getcap"):
            return "bhyvectl: --setcap and --getcap need --capname (capabilities: " \
                   f"{', '.join(CAPS)})\n"
        resets = [k for k in ("force-reset", "force-poweroff") if opts.get(k)]
        if len(resets) > 1:
            return "bhyvectl: --force-reset and --force-poweroff exclude each other\n"
        acts = opts.get("inject-nmi") or pin is not None or "setcap" in opts
        if acts and self.m.powered_off:
            return f"bhyvectl: {POWERED_OFF.format(name=self.m.vm.name)}\n"
        # act
        out: list[str] = []
        if opts.get("inject-nmi"):
            for c in cpus:
                self.m.inject_nmi(c)
        if pin is not None:
            for c in cpus:
                self.m.assert_lapic_lvt(c, pin)
        if cap is not None:
            if "setcap" in opts:
                for c in cpus:
                    self.m.vm.set_pause_exits(c, opts["setcap"] == "1")
            if opts.get("getcap"):
                for c in cpus:
                    on = self.m.vcpus[c].vmcb.intercepted("PAUSE")
                    out.append(f"Capability \"{cap}\" is {'set' if on else 'not set'} "
                               f"on vcpu {c}\n")
        for c in cpus:
            v = self.m.vcpus[c]
            vmcb = v.vmcb
            if opts.get("get-rip"):
                out.append(f"rip[{c}]\t\t0x{vmcb.rip:016x}\n")
            if opts.get("get-rflags"):
                out.append(f"rflags[{c}]\t0x{vmcb.rflags:016x}\n")
            if opts.get("get-dr6"):
                out.append(f"dr6[{c}]\t\t0x{vmcb.dr6:016x}\n")
            if opts.get("get-intinfo"):
                pending = IntInfo.decode(v.exitintinfo).describe()
                cur = v.exception_pending.describe() if v.exception_pending else "n/a"
                out.append(f"pending:\t{pending}\ncurrent:\t{cur}\n")
            if opts.get("get-vmcb-intercepts"):
                out.append(f"cr_intercept[{c}]\t0x{vmcb.cr_intercepts:08x}\n"
                           f"dr_intercept[{c}]\t0x{vmcb.dr_intercepts:08x}\n"
                           f"exc_intercept[{c}]\t0x{vmcb.exception_intercepts:08x}\n"
                           f"inst1_intercept[{c}]\t0x{vmcb.ctrl1_intercepts:08x}\n"
                           f"inst2_intercept[{c}]\t0x{vmcb.ctrl2_intercepts:08x}\n")
            if opts.get("get-vmcb-exit-details"):
                out.append(f"vmcb_exitcode[{c}]\t0x{vmcb.exitcode:016x}\n"
                           f"vmcb_exitinfo1[{c}]\t0x{vmcb.exitinfo1:016x}\n"
                           f"vmcb_exitinfo2[{c}]\t0x{vmcb.exitinfo2:016x}\n"
                           f"vmcb_exitintinfo[{c}]\t0x{vmcb.exitintinfo:016x}\n")
            if opts.get("get-vmcb-virq"):
                virq = int.from_bytes(vmcb.buf[0x60:0x68], "little")
                out.append(f"v_irq/tpr[{c}]\t0x{virq:016x}\n")
        if opts.get("get-stats"):
            for c in cpus:
                out.append(self.m.vm.stats.format_stats(c))
                if not out[-1].endswith("\n"):
                    out[-1] += "\n"
        if opts.get("force-reset"):
            self.m.force_reset()
        elif opts.get("force-poweroff"):
            self.m.force_poweroff()
        return "".join(out)


def _split_pipes(line: str) -> list[str]:
    """Split on | outside quotes."""
    parts, cur, quote = [], [], ""
    for ch in line:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
            cur.append(ch)
        elif ch == "|":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _grep(args: list[str], text: str) -> str:
    count = invert = icase = False
    pats = []
    for a in args:
        if a.startswith("-") and len(a) > 1 and not pats:
            for f in a[1:]:
                if f == "c":
                    count = True
                elif f == "v":
                    invert = True
                elif f == "i":
                    icase = True
                else:
                    return f"grep: invalid option -- {f}\nusage: grep [-civ] pattern\n"
        else:
            pats.append(a)
    if len(pats) != 1:
        return "usage: grep [-civ] pattern\n"
    try:
        rx = re.compile(pats[0], re.IGNORECASE if icase else 0)
    except re.error as e:
        return f"grep: {e}\n"
    lines = [ln for ln in text.splitlines() if bool(rx.search(ln)) != invert]
    if count:
        return f"{len(lines)}\n"
    return "".join(ln + "\n" for ln in lines)
