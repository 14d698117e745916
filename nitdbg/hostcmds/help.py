"""`help` at host$: the host commands and the options this host understands."""

from __future__ import annotations

HOST_COMMANDS = ("bhyvectl", "sysctl", "ktrdump", "sleep", "cat", "grep", "head", "tail", "wc",
                 "help")
PIPE_FILTERS = ("grep", "head", "tail", "wc")

_HELP = {
    "bhyvectl": """\
bhyvectl --vm=vm2 [--cpu=N|-1] ACTION...      the VM's control tool (--cpu=-1: every vCPU)
  --assert-lapic-lvt=1        raise LINT1 of the local APIC: an NMI, as the test plan does
  --inject-nmi                inject an NMI directly (vm_inject_nmi)
  --get-stats                 the vmm counters ("vNMI unblocked precisely", ...)
  --get-rip --get-rflags --get-dr6 --get-intinfo
  --get-vmcb-intercepts --get-vmcb-exit-details --get-vmcb-virq
  --capname=pause_exit --setcap=0|1 | --getcap
                              PAUSE exits off/on (off de-clutters the KTR log)
  --force-reset               reboot the VM (same kernel, vCPUs, policy; KTR and knobs stay)
  --force-poweroff            stop the VM (--force-reset boots it again)
""",
    "sysctl": """\
sysctl [-adeiNnqt] NAME[=VALUE] ...          the host's sysctls
  debug.nit.delay_usecs=N  debug.nit.recursive_nmi=1  debug.nit.invalidate_nested_mappings=1
  debug.nit.bounce_to_userspace=1  debug.nit.iret_trigger_gpf=1   (the test knobs)
  debug.ktr.clear=1  debug.ktr.entries   hw.vmm.trace_guest_exceptions (a boot tunable:
  nitdbg console --tunable hw.vmm.trace_guest_exceptions=1)
  guest sysctls (machdep.kdb_on_nmi, kern.ticks, ...) are typed at guest#
""",
    "ktrdump": """\
ktrdump [-cflqrtH] [-o FILE]                 the KTR trace, newest first (-l: oldest first)
  -c cpu  -t timestamp  -f file and line  -H thread  -r relative times  -q no header
  -o FILE writes FILE (relative to the console's directory): ktrdump -cto /tmp/ktrdump.out
""",
    "sleep": """\
sleep SECONDS                                 let SECONDS of virtual time pass (0 to 3600)
""",
    "cat": """\
cat FILE ...                                  print files
""",
    "grep": """\
grep [-EFGHchilnqsvx] [-A N] [-B N] [-C N] [-e PATTERN] PATTERN [FILE ...]
  reads FILEs or the piped text (CMD | grep ...); -E extended, -F fixed strings, -i ignore
  case, -v invert, -c count, -n line numbers, -l file names, -x whole lines, -A/-B/-C context.
  Patterns are POSIX (basic, or extended with -E), matched in linear time; back-references
  are refused.
""",
    "head": """\
head [-n N] [FILE ...]                        the first N lines (10); tail: the last N
""",
    "tail": """\
tail [-n N] [FILE ...]                        the last N lines (10)
""",
    "wc": """\
wc [-lwc] [FILE ...]                          lines, words, bytes
""",
    "help": """\
help [COMMAND]                                this text
""",
}

_INTRO = """\
Host commands (a leading `sudo` is accepted; `CMD | grep ...`, `| head`, `| tail`, `| wc`):
"""
_OUTRO = """\
The console: @guest / @host / @db switch the prompt; `@guest LINE` sends one line to the guest.
At db> the host commands above run on the host and leave you at db>.
"""


def host_help(command: str | None = None) -> str | None:
    if command is None:
        return _INTRO + "".join(_HELP[c] for c in HOST_COMMANDS if c != "tail") + _OUTRO
    return _HELP.get(command)
