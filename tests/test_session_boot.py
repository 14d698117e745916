"""A session keeps the boot path it was recorded with (`--boot`), so replay boots the
machine the same way: a forced multiboot boot of the amd64 firmware (its QEMU entry, the
APs started by INIT-SIPI-SIPI) replays as multiboot, not as nitdbg's direct boot."""

from __future__ import annotations

import json
from pathlib import Path

from nitdbg.session import replay, start_recording
from nitdbg.session.format import read_session


def test_a_multiboot_session_records_its_boot_path_and_replays_booting_the_same_way(tmp_path):
    path = tmp_path / "multiboot.nitrec"
    rec = start_recording(path, vcpus=2, boot="multiboot", sync=False)
    rec.boot_to_prompt()
    rec.type_line("sysctl kern.ostype")
    rec.close()
    header = json.loads(path.read_text().splitlines()[0])
    assert header["config"]["boot"] == "multiboot"
    read_session(path)                                   # the schema accepts the field
    res = replay(path, verify=True)
    assert res.ok, res.divergence
    assert res.machine.boot_path() == "multiboot"


def test_a_session_recorded_without_boot_replays_with_the_automatic_boot(tmp_path):
    path = tmp_path / "auto.nitrec"
    rec = start_recording(path, vcpus=1, sync=False)
    rec.boot_to_prompt()
    rec.close()
    assert "boot" not in json.loads(path.read_text().splitlines()[0])["config"]
    res = replay(path, verify=True)
    assert res.ok and res.machine.boot_path() == "auto"


def test_a_session_with_an_unknown_boot_path_is_refused_with_one_line(tmp_path):
    import pytest

    from nitdbg.session.format import SessionError
    sample = Path(__file__).resolve().parent.parent / "sessions" / "guest-breakpoint.nitrec"
    lines = sample.read_text().splitlines()
    header = json.loads(lines[0])
    header["config"]["boot"] = "uefi"
    bad = tmp_path / "bad.nitrec"
    bad.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    with pytest.raises(SessionError) as e:
        read_session(bad)
    assert "boot" in str(e.value) and "\n" not in str(e.value)
