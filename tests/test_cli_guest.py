"""`--guest amd64|i386` on the TUI, console and run: the kernel by name, with the vCPU count
that guest boots with."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nitdbg.cli import _machine_kwargs, build_parser


@pytest.mark.parametrize("cmd", ["tui", "console", "run"])
@pytest.mark.parametrize("guest, kernel, vcpus", [("amd64", "amd64/kernel.elf", 2),
                                                  ("i386", "i386/kernel.elf", 1)])
def test_guest_by_name_picks_its_kernel_and_vcpu_count(cmd, guest, kernel, vcpus):
    kw = _machine_kwargs(build_parser().parse_args([cmd, "--guest", guest]))
    assert kw["kernel"].endswith("firmware/" + kernel) and kw["vcpus"] == vcpus


def test_vcpus_given_beats_the_guests_default():
    kw = _machine_kwargs(build_parser().parse_args(["console", "--guest", "amd64",
                                                    "--vcpus", "4"]))
    assert kw["vcpus"] == 4


def test_no_guest_keeps_the_machines_defaults():
    kw = _machine_kwargs(build_parser().parse_args(["console"]))
    assert kw["kernel"] is None and "vcpus" not in kw


def test_guest_and_kernel_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--guest", "i386", "--kernel", "x.elf"])
    assert "not allowed with argument --guest" in capsys.readouterr().err


def test_the_plans_i386_tsnmi_steps_from_the_console():
    script = ("@guest kldload tsnmi\n"
              "bhyvectl --vm=vm2 --assert-lapic-lvt=1 --cpu=0\n"
              "@guest sysctl debug.tsnmi\n"
              'bhyvectl --vm=vm2 --get-stats | grep "vNMI unblocked speculatively"\n')
    r = subprocess.run([sys.executable, "-m", "nitdbg", "console", "--no-record", "--guest",
                        "i386"], input=script, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "debug.tsnmi: 1" in r.stdout
    assert "Number of times vNMI unblocked speculatively\t1" in r.stdout


def test_the_tui_gets_the_guest_and_real_host_files(monkeypatch, tmp_path):
    import nitdbg.tui.app as app
    from nitdbg.cli import main
    from nitdbg.hostcmds import DiskFiles
    from nitdbg.tui.worker import MachineWorker
    seen = {}

    def run_app(kw, record, on_machine, host_dir):  # noqa: ANN001, ANN202
        seen.update(kw, host_dir=host_dir)
        return 0
    monkeypatch.setattr(app, "run_app", run_app)
    monkeypatch.chdir(tmp_path)
    assert main(["--guest", "i386", "--no-record"]) == 0
    assert seen["kernel"].endswith("firmware/i386/kernel.elf") and seen["vcpus"] == 1
    assert seen["host_dir"] == str(tmp_path)
    # the worker makes the host shell's files the real files there (after the first paint)
    kw = {k: v for k, v in seen.items() if k != "host_dir"}
    w = MachineWorker(kw, lambda msg: None, boot=False, host_dir=seen["host_dir"])
    w._start()
    files = w.m.shell.fs
    assert isinstance(files, DiskFiles) and files.cwd == str(tmp_path)
