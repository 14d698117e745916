"""`nitdbg console` driven by a script on stdin, as a user runs a section of the seed."""

from __future__ import annotations

import re
import subprocess
import sys


def console(script: str, *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "nitdbg", "console", "--no-record", *args],
                       input=script, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    return r.stdout


def test_seed_first_section_steps_across_the_nmi_iret_without_skipping():
    script = ("@guest sysctl machdep.kdb_on_nmi=1\n"
              "bhyvectl --vm=vm2 --assert-lapic-lvt=1 --cpu=0\n"
              + "s\n" * 20 + "show audit\n")
    out = console(script)
    stops = re.findall(r"Stopped at\t(\S+):", out)
    assert stops[0] == "cpu_idle_acpi+0x2"            # the instruction after the hlt
    assert len(stops) == 21
    assert "db> show audit\nstep audit: 20 steps checked, no instruction skipped" in out


def test_broadcast_nmi_deadlock_is_reported_by_the_watchdog():
    out = console("@guest sysctl machdep.kdb_on_nmi=1\n"
                  "bhyvectl --vm=vm2 --assert-lapic-lvt=1 --cpu=-1\n")
    m = re.search(r"watchdog: no vCPU makes progress: (.*)", out)
    assert m, out[-2000:]
    assert re.search(r"vCPU 0 spins in stop_cpus_hard\+0x[0-9a-f]+", m.group(1))
    assert re.search(r"vCPU 1 spins in stop_cpus_hard\+0x[0-9a-f]+", m.group(1))


def test_bad_input_gets_one_line_in_the_tools_own_words():
    out = console("bhyvectl --vm=vm9 --get-stats\nsysctl debug.nit.nope=1\nfrobnicate\n"
                  "@nowhere\n@db s\n")
    assert "vm_open: vm9 could not be opened: No such file or directory (the VM is vm2)\n" \
        in out
    assert "sysctl: unknown oid 'debug.nit.nope'\n" in out
    assert "frobnicate: command not found" in out
    assert "console: unknown surface '@nowhere'" in out
    assert "console: the guest is not in the debugger\n" in out


def test_guest_while_loop_runs_in_user_mode_until_ctrl_c():
    out = console("@guest\nwhile [ 1 ]; do : done\n^C\nsysctl kern.ostype\n")
    tail = out[out.index("guest# ^C"):]
    assert "^C\n# " in tail and "kern.ostype: FreeBSD" in tail


def test_console_records_by_default_and_the_session_replays(tmp_path):
    path = tmp_path / "s.nitrec"
    r = subprocess.run([sys.executable, "-m", "nitdbg", "console", "--record", str(path)],
                       input="@guest sysctl machdep.kdb_on_nmi=1\n"
                             "bhyvectl --vm=vm2 --assert-lapic-lvt=1 --cpu=0\ns\n",
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and f"session recorded: {path}" in r.stderr
    v = subprocess.run([sys.executable, "-m", "nitdbg", "replay", str(path), "--verify"],
                       capture_output=True, text=True, timeout=300)
    assert v.returncode == 0 and v.stdout.startswith("OK "), v.stdout + v.stderr


def test_the_deadlock_is_said_once_and_force_reset_gets_the_guest_back():
    out = console("@guest sysctl machdep.kdb_on_nmi=1\n"
                  "bhyvectl --vm=vm2 --assert-lapic-lvt=1 --cpu=-1\n"
                  "sysctl debug.nit.delay_usecs\n"
                  "bhyvectl --vm=vm2 --get-rip\n"
                  "bhyvectl --vm=vm2 --force-reset\n"
                  "@guest sysctl kern.ostype\n")
    assert out.count("watchdog: no vCPU makes progress") == 1
    assert "(bhyvectl --vm=vm2 --force-reset reboots the VM)" in out
    tail = out[out.index("host$ bhyvectl --vm=vm2 --force-reset"):]
    assert "nitdbg amd64 firmware: 2 CPUs" in tail and "kern.ostype: FreeBSD" in tail


def test_the_plans_host_lines_typed_at_db_run_on_the_host_and_stay_at_db():
    out = console("@guest sysctl machdep.kdb_on_nmi=1\n"
                  "bhyvectl --vm=vm2 --assert-lapic-lvt=1 --cpu=0\n"
                  "sudo sysctl debug.nit.delay_usecs=5\n"
                  "sudo bhyvectl --vm=vm2 --get-stats | grep -c vNMI\n"
                  "s\n")
    assert "db> sudo sysctl debug.nit.delay_usecs=5\n(sysctl runs on the host; you stay at " \
           "db>)\ndebug.nit.delay_usecs: 0 -> 5\ndb> sudo bhyvectl" in out
    assert "\ndb> s\n" in out and "Stopped at" in out[out.index("db> s\n"):]


def test_help_at_host_lists_the_host_commands():
    out = console("help\n")
    assert "host$ help\nHost commands" in out and "--force-poweroff" in out
