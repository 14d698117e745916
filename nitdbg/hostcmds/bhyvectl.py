"""bhyvectl(8) as the test plan types it: parse and validate the whole command line, then
act (a wrong --capname never leaves an NMI pending); errors list the valid names."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..svm.intinfo import IntInfo
from .errors import POWERED_OFF, HostError

if TYPE_CHECKING:
    from ..machine import Machine

BHYVECTL_USAGE = (
    "Usage: bhyvectl --vm=<vmname>\n"
    "       [--cpu=<vcpu_number>]\n"
    "       [--inject-nmi]\n"
    "       [--assert-lapic-lvt=<pin>]\n"
    "       [--get-stats]\n"
    "       [--get-rip]\n"
    "       [--get-rflags]\n"
    "       [--get-dr6]\n"
    "       [--set-dr0..3=<address>]\n"
    "       [--set-dr7=<value>]\n"
    "       [--get-intinfo]\n"
    "       [--get-vmcb-intercepts]\n"
    "       [--get-vmcb-exit-details]\n"
    "       [--get-vmcb-virq]\n"
    "       [--capname=<capname>]\n"
    "       [--setcap=<0|1>]\n"
    "       [--getcap]\n"
    "       [--force-reset]\n"
    "       [--force-poweroff]\n")
FLAGS = ("force-reset", "force-poweroff", "inject-nmi", "get-stats", "get-rip", "get-rflags",
         "get-dr6", "get-intinfo", "get-vmcb-intercepts", "get-vmcb-exit-details",
         "get-vmcb-virq", "getcap")
SET_DR = ("set-dr0", "set-dr1", "set-dr2", "set-dr3", "set-dr7")
VALUED = ("vm", "cpu", "assert-lapic-lvt", "capname", "setcap", *SET_DR)
# bhyve's VM_CAP_PAUSE_EXIT; `--capname=pause_exit --setcap=0` turns PAUSE exits off
CAPS = ("pause_exit",)


def prepare_bhyvectl(m: Machine, args: list[str]) -> Callable[[], str]:
    """Parse and validate a bhyvectl command line; the returned action makes it happen.
    Raises HostError with bhyvectl's message: a rejected command changes nothing."""
    opts: dict[str, str | bool] = {}
    for a in args:
        if not a.startswith("--"):
            raise HostError(f"bhyvectl: unexpected argument '{a}'\n" + BHYVECTL_USAGE)
        key, eq, val = a[2:].partition("=")
        if key in FLAGS and not eq:
            opts[key] = True
        elif key in VALUED and eq:
            opts[key] = val
        else:
            raise HostError(f"bhyvectl: unrecognized option `{a}'\n" + BHYVECTL_USAGE)
    vmname = opts.get("vm")
    if not vmname:
        raise HostError(BHYVECTL_USAGE)
    if vmname != m.vm.name:
        raise HostError(f"vm_open: {vmname} could not be opened: No such file or directory "
                        f"(the VM is {m.vm.name})\n")
    ncpu = len(m.vcpus)
    try:
        cpu = int(str(opts.get("cpu", "0")), 0)
    except ValueError:
        raise HostError(f"bhyvectl: invalid vcpu '{opts['cpu']}' (0 to {ncpu - 1}, or -1 for "
                        "all)\n") from None
    if cpu != -1 and not 0 <= cpu < ncpu:
        raise HostError(f"bhyvectl: vcpu {cpu} out of range (the VM has {ncpu} vcpus: 0 to "
                        f"{ncpu - 1}, or -1 for all)\n")
    cpus = list(range(ncpu)) if cpu == -1 else [cpu]
    pin = None
    if "assert-lapic-lvt" in opts:
        try:
            pin = int(str(opts["assert-lapic-lvt"]), 0)
        except ValueError:
            pin = -1
        if not 0 <= pin <= 5:
            raise HostError(f"bhyvectl: invalid lapic lvt pin '{opts['assert-lapic-lvt']}' "
                            "(0 to 5; 1 is LINT1, wired to NMI)\n")
    cap = None
    if "capname" in opts:
        cap = str(opts["capname"])
        if cap not in CAPS:
            raise HostError(f"bhyvectl: capability \"{cap}\" is not supported "
                            f"(capabilities: {', '.join(CAPS)})\n")
        if "setcap" in opts and opts["setcap"] not in ("0", "1"):
            raise HostError(f"bhyvectl: invalid setcap value '{opts['setcap']}' (0 or 1)\n")
    elif "setcap" in opts or opts.get("getcap"):
        raise HostError("bhyvectl: --setcap and --getcap need --capname (capabilities: "
                        f"{', '.join(CAPS)})\n")
    if opts.get("force-reset") and opts.get("force-poweroff"):
        raise HostError("bhyvectl: --force-reset and --force-poweroff exclude each other\n")
    drs: dict[int, int] = {}
    for key in SET_DR:
        if key in opts:
            try:
                val = int(str(opts[key]), 0)
            except ValueError:
                val = -1
            if not 0 <= val < 1 << 64:
                raise HostError(f"bhyvectl: invalid value for --{key} '{opts[key]}'\n")
            drs[int(key[-1])] = val
    acts = opts.get("inject-nmi") or pin is not None or "setcap" in opts or drs
    if acts and m.powered_off:
        raise HostError(f"bhyvectl: {POWERED_OFF.format(name=m.vm.name)}\n")

    def act() -> str:
        out: list[str] = []
        if opts.get("inject-nmi"):
            for c in cpus:
                m.inject_nmi(c)
        if pin is not None:
            for c in cpus:
                m.assert_lapic_lvt(c, pin)
        if cap is not None:
            if "setcap" in opts:
                for c in cpus:
                    m.vm.set_pause_exits(c, opts["setcap"] == "1")
            if opts.get("getcap"):
                for c in cpus:
                    on = m.vcpus[c].vmcb.intercepted("PAUSE")
                    out.append(f"Capability \"{cap}\" is {'set' if on else 'not set'} "
                               f"on vcpu {c}\n")
        for c in cpus:
            if drs:
                _set_drs(m, c, drs)
            v = m.vcpus[c]
            vmcb = v.vmcb
            if opts.get("get-rip"):
                out.append(f"rip[{c}]\t\t0x{vmcb.rip:016x}\n")
            if opts.get("get-rflags"):
                # as the policy lets tools read it (KVM hides its NMI-window TF/RF)
                out.append(f"rflags[{c}]\t0x{v.guest_rflags:016x}\n")
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
                out.append(m.vm.stats.format_stats(c))
                if not out[-1].endswith("\n"):
                    out[-1] += "\n"
        if opts.get("force-reset"):
            m.force_reset()
        elif opts.get("force-poweroff"):
            m.force_poweroff()
        return "".join(out)

    return act


def _set_drs(m: Machine, c: int, drs: dict[int, int]) -> None:
    """vm_set_register(VM_REG_GUEST_DRn): DR0-3 live in the vCPU, DR7 in the VMCB."""
    v = m.vcpus[c]
    for n, val in drs.items():
        v.set_dr(n, val)
